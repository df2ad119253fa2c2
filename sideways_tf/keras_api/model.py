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
backup, not at the start of the epoch (`resume.py`); ``fit`` runs it as
:class:`sideways_tf.callbacks.BackupAndRestore`, whose backups survive a kill
during their write. Inputs, losses and metrics are checked and converted in
`inputs.py`. The class is read in three files: this one (the Keras face:
compile, build, fit, the clip logits, checkpoints, export), `pipelines.py`
(the Pipeline, its replicas and the Trainer it makes, replay_modules="auto")
and `steps.py` (the per-batch train / test / predict steps and their
metrics). See docs/keras.md.
"""

from __future__ import annotations

import pathlib
from typing import Optional, Sequence

import keras
import tensorflow as tf

from sideways_tf.engine import algorithms
from sideways_tf.keras_api import callbacks as callbacks_lib
from sideways_tf.keras_api import inputs
from sideways_tf.keras_api import pipelines
from sideways_tf.keras_api import resume
from sideways_tf.keras_api import steps
from sideways_tf.serving import export as export_lib
from sideways_tf.training import auto_replay


class SidewaysModel(pipelines.PipelineMethods, steps.StepMethods,
                    keras.Model):
  """A video classifier cut into modules, trained with Sideways or BP by fit.

  Args:
    stages: Keras layers, one per Sideways module; the last emits logits.
    algorithm: one of ``sideways_tf.ALGORITHMS`` ("sideways", "bp", "gpipe",
      "pipelined_bp").
    devices: ``None``, one TF device per stage, or for data parallelism one
      such row per replica (``[["/GPU:0", "/GPU:1"], ["/GPU:2",
      "/GPU:3"]]``: 2 replicas x 2 stage devices, each replica on B/R clips
      of every batch; training/data_parallel.py). Replicas need an
      optimizer compile creates (a name or config), or one made under
      ``model.data_parallel.scope()``.
    skips: Skip-Sideways skips ``{k: [j, ...]}`` (docs/skip_sideways.md).
    class_names: optional names of the classes; exported with the model.
    update_every_ticks: 0 = one optimizer step per clip; N = every N ticks
      (online learning, see Trainer).
    replay_modules: Sideways only: the bottom N modules take their backward
      step at the input their gradient belongs to (docs/fidelity.md; 2 is
      what the shipped real-data configs use). "auto": chosen from the first
      batches the first `fit` sees, at the initial weights
      (training/auto_replay.py); `model.replay_modules` then holds the number
      (pass it as an int to rebuild the same model for `load_weights`).
      ``algorithm="pipelined_bp"`` replays every module below the top
      whatever this says.
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
    self._init_pipeline(stages, devices, skips, skip_combine,
                        auto_replay.check(replay_modules))
    self.epoch_step = self.add_weight(
        shape=(), dtype="int64", initializer="zeros", trainable=False,
        name="epoch_step")
    self.trainer = None
    self.frame_shape = None
    self.state_batch_size = None
    self.last_batch = None  # (video, label) of the last training step
    self._steps_to_skip = 0
    self._init_metrics()

  # ------------------------------------------------------------- set-up

  def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
    """`loss`: None (per-frame sparse cross-entropy on logits), a
    ``keras.losses.Loss`` or ``fn(labels, logits) -> [B]``. `metrics`: extra
    Keras metrics of (labels, clip logits), reported by evaluate."""
    inputs.check_compile_options(kwargs)
    loss_fn = inputs.per_example_loss(loss)
    with self.data_parallel.scope():  # replicas: a mirrored optimizer
      super().compile(optimizer=optimizer, loss=None, metrics=None)
    self.pipeline.loss_fn = loss_fn
    self.pipeline._compiled.clear()  # traces captured the old loss
    self._clip_metrics = inputs.clip_metrics(metrics)
    self.trainer = self._new_trainer()
    if self.built:
      self.trainer._build_optimizer()

  def build(self, input_shape):
    """`input_shape` = [B, T, H, W, C] of the training batches.

    Creates every variable a checkpoint holds: the stages' weights, the
    Sideways buffers for batch size B (fixed from here on) and, if compiled,
    the optimizer's slots. Call it before ``load_weights`` in a new process.
    """
    if self._replay_auto:
      raise ValueError(
          "replay_modules='auto' is chosen from the first batches the first "
          "fit sees: call fit before building, predicting or loading "
          "weights, or pass the number (model.replay_modules of the model "
          "that chose it)")
    batch_size, frame_shape = inputs.batch_and_frame_shape(input_shape)
    if self.built:
      self._check_batch(batch_size, frame_shape)
      return
    if batch_size % self.data_parallel.num_replicas:
      raise ValueError(
          f"a batch of {batch_size} clips cannot be split evenly over "
          f"{self.data_parallel.num_replicas} replicas; batch the training "
          f"data to a multiple of {self.data_parallel.num_replicas}")
    self.data_parallel.build(frame_shape)  # replicas: mirrored weights
    self.pipeline.allocate_state(batch_size, frame_shape)
    if list(self.pipeline.modules) != list(self.sideways_modules):
      raise RuntimeError("the pipeline replaced its modules")
    self.state_batch_size, self.frame_shape = batch_size, frame_shape
    self.built = True
    if self.trainer is not None:
      self.trainer._build_optimizer()

  def _check_batch(self, batch_size, frame_shape):
    inputs.check_batch(batch_size, frame_shape, self.state_batch_size,
                       self.frame_shape,
                       fixed_batch=algorithms.get(self.algorithm).streams)

  # ------------------------------------------------- fit, clip logits

  def fit(self, x=None, y=None, batch_size=None, epochs=1, callbacks=None,
          **kwargs):
    self._assert_compile_called("fit")
    if self._replay_auto:
      self._choose_replay(inputs.first_clips(x, batch_size,
                                             auto_replay.MEASURE_BATCHES))
    if not self.built:
      self.build(inputs.training_input_shape(x, batch_size))
    # Keras' BackupAndRestore rewrites its backup in place (a kill during
    # the write loses it): the same callback with atomic backups instead.
    callbacks = [resume.EpochPosition()] + [
        callbacks_lib.BackupAndRestore.from_keras(c)
        if type(c) is keras.callbacks.BackupAndRestore else c
        for c in callbacks or []]
    if isinstance(x, tf.data.Dataset):
      kwargs.setdefault("shuffle", False)  # a dataset shuffles itself
    return super().fit(x, y, batch_size=batch_size, epochs=epochs,
                       callbacks=callbacks, **kwargs)

  def call(self, videos, training=False):
    """Clip logits [B, C]: the mean of the per-frame logits."""
    del training  # inference; training goes through train_step
    videos = tf.convert_to_tensor(videos)
    self._remember_frame_shape(videos)
    return tf.reduce_mean(self.pipeline.predict_frames(videos), axis=1)

  # ------------------------------------------------------- checkpoints

  def save_own_variables(self, store):
    super().save_own_variables(store)
    resume.save_ticks(store, self.pipeline)

  def load_own_variables(self, store):
    super().load_own_variables(resume.load_ticks(store, self.pipeline))

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
    return export_lib.export_trained(
        self.pipeline, self.frame_shape, pathlib.Path(filepath),
        overwrite=overwrite, class_names=class_names or self.class_names,
        tflite=tflite)
