"""SidewaysModel: Sideways (and BP) behind Keras' compile / fit / evaluate.

  model = sideways_tf.SidewaysModel(stages, algorithm="sideways")
  model.compile(optimizer="adam")
  model.fit(train_ds, validation_data=eval_ds, epochs=3, steps_per_epoch=100)

A thin adapter, not a second engine: `train_step` is
:meth:`sideways_tf.trainer.Trainer.train_step` (gradients from
:meth:`sideways_tf.Pipeline.clip_gradients`, one optimizer step per clip),
`evaluate` is :meth:`Trainer.evaluate` batch by batch, `predict` is
:meth:`Pipeline.predict_frames` averaged over time and `export` is
:func:`sideways_tf.serving.export.export_saved_model`. The step functions run the
Trainer's own compiled functions from Python (Keras never traces them), so
the numbers fit logs are the numbers bin/train logs.

Checkpoints: the stages' weights, the Sideways buffers (non-trainable weights
of each SidewaysModule), the pipeline's tick counter, the optimizer and the
position inside the current epoch are all in ``model.save_weights`` files, so
``keras.callbacks.BackupAndRestore`` resumes at the step after the last
backup, not at the start of the epoch. See docs/keras.md.
"""

from __future__ import annotations

import pathlib
from typing import Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from sideways_tf.engine import algorithms
from sideways_tf.engine import pipeline as pipeline_lib
from sideways_tf.training.trainer import Trainer

_STATE_KEY = "ticks_seen"


def _unpack(data, need_labels: bool):
  """A dataset element -> (video, label or None).

  Elements are ``(video, label)`` tuples or ``{"video", "label"}`` dicts
  (Keras wraps a bare video as ``(video,)``).
  """
  if isinstance(data, dict):
    missing = [k for k in ("video", "label") if k not in data and (
        k == "video" or need_labels)]
    if missing:
      raise ValueError(
          f"dataset elements that are dicts need the keys 'video' and "
          f"'label'; missing {missing} in keys {sorted(data)}")
    video, label = data["video"], data.get("label")
  elif isinstance(data, (tuple, list)):
    if not 1 <= len(data) <= 3:
      raise ValueError(
          f"dataset elements must be (video, label) or {{'video', 'label'}},"
          f" got a tuple of {len(data)} items")
    video = data[0]
    label = data[1] if len(data) > 1 else None
    if len(data) == 3 and data[2] is not None:
      raise ValueError("sample weights are not supported: every clip of a "
                       "Sideways batch weighs the same")
  else:
    video, label = data, None
  video = tf.convert_to_tensor(video)
  if video.shape.rank != 5:
    raise ValueError(
        f"video must have shape [B, T, H, W, C], got shape {video.shape}")
  if not video.dtype.is_floating:
    raise ValueError(
        f"video must be float (e.g. uint8 / 255), got dtype {video.dtype.name}")
  if need_labels:
    if label is None:
      raise ValueError("training and evaluation need labels: give "
                       "(video, label) or {'video', 'label'} elements")
    label = tf.convert_to_tensor(label)
    if not label.dtype.is_integer or label.shape.rank != 1:
      raise ValueError(
          f"label must be integer class ids of shape [B], got dtype "
          f"{label.dtype.name} and shape {label.shape}")
  return video, label


class _Ratio(keras.metrics.Metric):
  """sum(numerator) / sum(denominator), in float64 like Trainer.evaluate."""

  def __init__(self, name):
    super().__init__(name=name, dtype="float64")
    self.numerator = self.add_variable((), "zeros", "float64", name="num")
    self.denominator = self.add_variable((), "zeros", "float64", name="den")

  def update_state(self, numerator, denominator):
    self.numerator.assign_add(tf.cast(numerator, tf.float64))
    self.denominator.assign_add(tf.cast(denominator, tf.float64))

  def result(self):
    return tf.math.divide_no_nan(self.numerator, self.denominator)


class _EpochPosition(keras.callbacks.Callback):
  """Keeps model.epoch_step (steps done in the current epoch) for resuming.

  Put first in the callback list: its on_epoch_end zeroes the count before
  BackupAndRestore saves, and its on_epoch_begin runs after BackupAndRestore
  (its on_train_begin) restored a mid-epoch count, which the model then
  skips.
  """

  def on_train_begin(self, logs=None):
    self.model.epoch_step.assign(0)  # a restore may overwrite it next

  def on_epoch_begin(self, epoch, logs=None):
    self.model._steps_to_skip = int(self.model.epoch_step.numpy())

  def on_epoch_end(self, epoch, logs=None):
    self.model.epoch_step.assign(0)


class SidewaysModel(keras.Model):
  """A video classifier cut into modules, trained with Sideways or BP by fit.

  Args:
    stages: Keras layers, one per Sideways module; the last emits logits.
    algorithm: one of ``sideways_tf.ALGORITHMS`` ("sideways", "bp", "gpipe").
    devices: ``None`` or one TF device per stage.
    skips: Skip-Sideways skips ``{k: [j, ...]}`` (docs/skip_sideways.md).
    class_names: optional names of the classes; exported with the model.
    update_every_ticks: 0 = one optimizer step per clip; N = every N ticks
      (online learning, see Trainer).
    replay_modules: Sideways only: the bottom N modules take their backward
      step at the input their gradient belongs to (docs/fidelity.md; 2 is
      what the shipped real-data configs use).
    skip_combine: how a stage joins its skip inputs, "concat" or "add".
  """

  def __init__(self, stages: Sequence[keras.layers.Layer],
               algorithm: str = "sideways",
               devices: Optional[Sequence[Optional[str]]] = None,
               skips=None, *, class_names: Optional[Sequence[str]] = None,
               update_every_ticks: int = 0, replay_modules: int = 0,
               skip_combine: str = "concat", name: str = "sideways_model",
               **kwargs):
    super().__init__(name=name, **kwargs)
    algorithms.get(algorithm)  # ValueError naming the known ones
    self.algorithm = algorithm
    self.update_every_ticks = int(update_every_ticks)
    self.class_names = None if class_names is None else [
        str(c) for c in class_names]
    self.pipeline = pipeline_lib.Pipeline(stages, devices=devices,
                                          skips=skips,
                                          skip_combine=skip_combine,
                                          replay_modules=replay_modules)
    # Keras tracks the modules (and through them the stages and buffers) for
    # save_weights / BackupAndRestore / ModelCheckpoint.
    self.sideways_modules = list(self.pipeline.modules)
    self.epoch_step = self.add_weight(
        shape=(), dtype="int64", initializer="zeros", trainable=False,
        name="epoch_step")
    self.trainer = None
    self.frame_shape = None
    self.state_batch_size = None
    self.last_batch = None  # (video, label) of the last training step
    self._steps_to_skip = 0
    self._train_loss = keras.metrics.Mean(name="loss")
    self._train_accuracy = keras.metrics.Mean(name="accuracy")
    self._eval_loss = _Ratio("loss")
    self._eval_clip_accuracy = _Ratio("clip_accuracy")
    self._eval_frame_accuracy = _Ratio("frame_accuracy")
    self._clip_metrics = []

  # ------------------------------------------------------------- set-up

  def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
    """`loss`: None (per-frame sparse cross-entropy on logits), a
    ``keras.losses.Loss`` or ``fn(labels, logits) -> [B]``. `metrics`: extra
    Keras metrics of (labels, clip logits), reported by evaluate."""
    defaults = {"run_eagerly": (False,), "jit_compile": ("auto", False),
                "steps_per_execution": (1,)}
    for key, value in kwargs.items():
      if not any(type(value) is type(d) and value == d
                 for d in defaults.get(key, ())):
        raise ValueError(
            f"compile({key}={value!r}) is not supported by SidewaysModel: "
            f"the steps run the Pipeline's own compiled functions")
    if isinstance(loss, str):
      raise ValueError(
          f"loss={loss!r}: give None (per-frame sparse cross-entropy on "
          f"logits), a keras.losses.Loss instance or fn(labels, logits) -> [B]")
    if loss is None:
      loss_fn = pipeline_lib.sparse_softmax_cross_entropy
    elif isinstance(loss, keras.losses.Loss):
      loss_fn = loss.call  # per-example, unreduced
    elif callable(loss):
      loss_fn = loss
    else:
      raise ValueError(f"loss must be None, a keras.losses.Loss or a "
                       f"callable, got {loss!r}")
    super().compile(optimizer=optimizer, loss=None, metrics=None)
    self.pipeline.loss_fn = loss_fn
    self.pipeline._compiled.clear()  # traces captured the old loss
    self._clip_metrics = []
    for metric in metrics or []:
      if metric in ("accuracy", "acc"):
        raise ValueError(
            f"metrics={metric!r}: accuracy is always reported (fit: "
            f"'accuracy', evaluate: 'clip_accuracy' and 'frame_accuracy')")
      metric = keras.metrics.get(metric)
      if not isinstance(metric, keras.metrics.Metric):
        raise ValueError(f"metrics must be names or keras.metrics.Metric "
                         f"instances, got {metric!r}")
      if metric.name in ("loss", "accuracy", "clip_accuracy",
                         "frame_accuracy"):
        raise ValueError(f"metric name {metric.name!r} is taken by the "
                         f"model's own logs; name the metric otherwise")
      self._clip_metrics.append(metric)
    self.trainer = Trainer(self.pipeline, self.optimizer, self.algorithm,
                           update_every_ticks=self.update_every_ticks)
    if self.built:
      self.trainer._build_optimizer()

  def build(self, input_shape):
    """`input_shape` = [B, T, H, W, C] of the training batches.

    Creates every variable a checkpoint holds: the stages' weights, the
    Sideways buffers for batch size B (fixed from here on) and, if compiled,
    the optimizer's slots. Call it before ``load_weights`` in a new process.
    """
    shape = tuple(input_shape)
    if len(shape) != 5 or any(d is None for d in shape[:1] + shape[2:]):
      raise ValueError(f"input_shape must be [B, T, H, W, C] with B, H, W, C "
                       f"known, got {input_shape}")
    batch_size, frame_shape = int(shape[0]), tuple(int(d) for d in shape[2:])
    if self.built:
      self._check_batch(batch_size, frame_shape)
      return
    self.pipeline.allocate_state(batch_size, frame_shape)
    if list(self.pipeline.modules) != list(self.sideways_modules):
      raise RuntimeError("the pipeline replaced its modules")
    self.state_batch_size, self.frame_shape = batch_size, frame_shape
    self.built = True
    if self.trainer is not None:
      self.trainer._build_optimizer()

  def _check_batch(self, batch_size, frame_shape):
    if self.frame_shape is not None and tuple(frame_shape) != self.frame_shape:
      raise ValueError(f"frames of shape {list(frame_shape)} but the model "
                       f"was built for frames of shape {list(self.frame_shape)}")
    if (algorithms.get(self.algorithm).streams and
        self.state_batch_size is not None and
        batch_size != self.state_batch_size):
      raise ValueError(
          f"a Sideways training batch of {batch_size} clips, but the model's "
          f"buffers hold batches of {self.state_batch_size}: batch the "
          f"training data to a fixed size (drop_remainder=True)")

  def _build_from(self, x, y=None, batch_size=None):
    if self.built:
      return
    if isinstance(x, tf.data.Dataset):
      spec = x.element_spec
      video_spec = (spec["video"] if isinstance(spec, dict) else
                    spec[0] if isinstance(spec, tuple) else spec)
      shape = tuple(getattr(video_spec, "shape", ()))
      if len(shape) != 5:
        raise ValueError(f"dataset elements must hold a video of shape "
                         f"[B, T, H, W, C], got element_spec {spec}")
      if shape[0] is None or None in shape[2:]:
        shape = tuple(_unpack(next(iter(x)), True)[0].shape)
    elif isinstance(x, dict) or x is None:
      raise ValueError("fit takes a tf.data.Dataset of (video, label) or "
                       "{'video', 'label'} batches, or arrays x=videos, "
                       f"y=labels; got x={type(x)!r}")
    else:
      shape = tuple(np.shape(x))
      if len(shape) != 5:
        raise ValueError(
            f"x must be videos [N, T, H, W, C], got shape {shape}")
      shape = (min(batch_size or 32, shape[0]),) + shape[1:]
    self.build(shape)

  # ---------------------------------------------------------- the steps

  @property
  def metrics(self):
    # One metric per name (evaluate's "loss" is listed as the train one's).
    return [self._train_loss, self._train_accuracy,
            self._eval_clip_accuracy, self._eval_frame_accuracy,
            *self._clip_metrics]

  def reset_metrics(self):
    super().reset_metrics()
    self._eval_loss.reset_state()

  def fit(self, x=None, y=None, batch_size=None, epochs=1, callbacks=None,
          **kwargs):
    self._assert_compile_called("fit")
    self._build_from(x, y, batch_size)
    callbacks = [_EpochPosition()] + list(callbacks or [])
    if isinstance(x, tf.data.Dataset):
      kwargs.setdefault("shuffle", False)  # a dataset shuffles itself
    return super().fit(x, y, batch_size=batch_size, epochs=epochs,
                       callbacks=callbacks, **kwargs)

  def train_step(self, data):
    """One Trainer step (Pipeline gradients, optimizer update) on a batch."""
    video, label = _unpack(data, need_labels=True)
    if not self.built:
      self.build(video.shape)
    self._check_batch(int(video.shape[0]), tuple(video.shape[2:]))
    self.last_batch = (video, label)
    step = self.trainer.train_step(video, label)
    self.epoch_step.assign_add(1)
    self._train_loss.update_state(step["loss"])
    self._train_accuracy.update_state(step["accuracy"])
    return {"loss": self._train_loss.result(),
            "accuracy": self._train_accuracy.result()}

  def test_step(self, data):
    """Trainer.evaluate on one batch, accumulated as its sums."""
    video, label = _unpack(data, need_labels=True)
    self._remember_frame_shape(video)
    metrics = self.trainer.evaluate([{"video": video, "label": label}])
    clips = int(label.shape[0])
    frames = clips * int(video.shape[1])
    self._eval_loss.update_state(metrics["loss"] * frames, frames)
    self._eval_clip_accuracy.update_state(metrics["clip_accuracy"] * clips,
                                          clips)
    self._eval_frame_accuracy.update_state(
        metrics["frame_accuracy"] * frames, frames)
    if self._clip_metrics:
      logits = self(video)
      for metric in self._clip_metrics:
        metric.update_state(label, logits)
    logs = {m.name: m.result() for m in (
        self._eval_loss, self._eval_clip_accuracy, self._eval_frame_accuracy,
        *self._clip_metrics)}
    return logs

  def predict_step(self, data):
    video, _ = _unpack(data, need_labels=False)
    return self(video)

  def call(self, videos, training=False):
    """Clip logits [B, C]: the mean of the per-frame logits."""
    del training  # inference; training goes through train_step
    videos = tf.convert_to_tensor(videos)
    self._remember_frame_shape(videos)
    return tf.reduce_mean(self.pipeline.predict_frames(videos), axis=1)

  def _remember_frame_shape(self, video):
    if self.frame_shape is None and video.shape.rank == 5:
      self.frame_shape = tuple(int(d) for d in video.shape[2:])

  def make_train_function(self, force=False):
    if self.train_function is None or force:
      def train_function(iterator):
        data = next(iterator)
        if self._steps_to_skip > 0:  # done before the restored backup
          self._steps_to_skip -= 1
          return {"loss": self._train_loss.result(),
                  "accuracy": self._train_accuracy.result()}
        return self.train_step(data)
      self.train_function = train_function
    return self.train_function

  def make_test_function(self, force=False):
    if self.test_function is None or force:
      self.test_function = lambda iterator: self.test_step(next(iterator))
    return self.test_function

  def make_predict_function(self, force=False):
    if self.predict_function is None or force:
      def predict_function(data):
        outputs = [self.predict_step(d) for d in data]
        return outputs[0] if len(outputs) == 1 else tf.concat(outputs, 0)
      self.predict_function = predict_function
    return self.predict_function

  # ------------------------------------------------------- checkpoints

  def save_own_variables(self, store):
    super().save_own_variables(store)
    store[_STATE_KEY] = np.asarray(self.pipeline.ticks_seen.numpy())

  def load_own_variables(self, store):
    keys = list(store.keys())
    if _STATE_KEY in keys:
      self.pipeline.ticks_seen.assign(np.asarray(store[_STATE_KEY]))
    super().load_own_variables({k: store[k] for k in keys
                                if k != _STATE_KEY})

  # ------------------------------------------------------------ export

  def export(self, filepath, format="sideways_saved_model",
             overwrite: bool = False, class_names=None, tflite: bool = False,
             **kwargs):
    """The SavedModel of bin/export: clip `serving_default`, streaming
    `init_state` / `step`, class names inside (docs/export.md). With
    `tflite`, also FILEPATH/tflite/step.tflite (as bin/export --tflite).

    ``format="tf_saved_model"`` etc. fall through to ``keras.Model.export``.
    """
    if format != "sideways_saved_model":
      return super().export(filepath, format=format, **kwargs)
    from sideways_tf.serving import export as export_lib  # noqa: PLC0415
    if self.frame_shape is None:
      raise ValueError("the model has not seen a frame yet: build, fit or "
                       "predict first so the export knows the frame shape")
    path = export_lib.export_saved_model(
        self.pipeline, self.frame_shape, pathlib.Path(filepath),
        overwrite=overwrite, class_names=class_names or self.class_names)
    if tflite:
      export_lib.export_tflite(path)
    return path
