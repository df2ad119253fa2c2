"""Trainer: one train step for Sideways and BP, and clip/frame evaluation.

The two algorithms share everything (modules, loss, optimizer, data); they
differ only in the gradient, which comes from :class:`sideways_tf.Pipeline`.
By default the optimizer steps once per clip with the clip gradient. With
``update_every_ticks = N`` the clip is fed as a stream of N-tick chunks and the
optimizer steps after each chunk with that chunk's gradient (online learning);
the Sideways buffers carry over between chunks, so gradients still in flight
cross the update, as they would on a real stream. A replayed module then
replays each held input with the weights its original forward used (weight
stashing, `Pipeline.stash_replay_weights`), which the Trainer turns on.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional

import keras
import numpy as np
import tensorflow as tf

from sideways_tf.engine import algorithms
from sideways_tf.engine.pipeline import Pipeline
from sideways_tf.training.data_parallel import DataParallel


class DynamicLossScale(tf.Module):
  """Dynamic loss scaling for float16 stages (keras "mixed_float16").

  The loss is multiplied by `scale` where it is differentiated (see
  ``Pipeline.clip_gradients(loss_scale=...)``), so small float16 gradients do
  not underflow; the engine divides the gradients by it again. A step whose
  gradients are not all finite (float16 overflow) is skipped and the scale
  halved; after `growth_steps` finite steps in a row it is doubled. bfloat16
  has float32's range and needs none of this.
  """

  def __init__(self, initial_scale: float = 2.0 ** 15,
               growth_steps: int = 2000):
    super().__init__(name="loss_scale")
    self.scale = tf.Variable(float(initial_scale), dtype=tf.float32,
                             trainable=False, name="scale")
    self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False,
                                  name="good_steps")
    self.growth_steps = int(growth_steps)

  def update(self, gradients) -> tf.Tensor:
    """Adjusts the scale after a step; True iff `gradients` are all finite."""
    return self.record(tf.reduce_all(tf.stack(
        [tf.reduce_all(tf.math.is_finite(g)) for g in gradients])))

  def record(self, finite) -> tf.Tensor:
    """Adjusts the scale after a step whose gradients were all finite or
    not (with data parallelism: on every replica); returns `finite`."""
    grow = tf.logical_and(finite, self.good_steps + 1 >= self.growth_steps)
    new_scale = tf.where(finite, tf.where(grow, self.scale * 2.0, self.scale),
                         tf.maximum(self.scale / 2.0, 1.0))
    new_good_steps = tf.where(tf.logical_and(finite, tf.logical_not(grow)),
                              self.good_steps + 1, tf.zeros_like(
                                  self.good_steps))
    with tf.control_dependencies([self.scale.assign(new_scale),
                                  self.good_steps.assign(new_good_steps)]):
      return tf.identity(finite)


class Trainer:
  """Trains a pipeline's stages with Sideways or BP and any Keras optimizer."""

  def __init__(self, pipeline: Pipeline, optimizer: keras.optimizers.Optimizer,
               algorithm: str = "sideways", update_every_ticks: int = 0,
               gradient_transform=None, loss_scale=None,
               data_parallel: DataParallel = None):
    """`gradient_transform`, if given, maps the clip gradients (a list aligned
    with pipeline.trainable_variables) to the gradients applied, inside the
    compiled step: e.g. an all-reduce across workers. `loss_scale`, a
    :class:`DynamicLossScale`, is for float16 stages (mixed_float16).
    `data_parallel`, a :class:`DataParallel` of `pipeline`: R replicas, each
    computing the gradient of B/R clips of every batch, one step with their
    mean (create `optimizer` under its scope()); evaluation stays on
    `pipeline`."""
    algorithms.get(algorithm)  # ValueError naming the known ones
    if update_every_ticks < 0:
      raise ValueError(
          f"update_every_ticks must be >= 0 (0 = once per clip), got "
          f"{update_every_ticks}")
    data_parallel = data_parallel or DataParallel(pipeline)
    if data_parallel.pipeline is not pipeline:
      raise ValueError("data_parallel must be a DataParallel of this "
                       "trainer's pipeline")
    if data_parallel.num_replicas > 1 and gradient_transform is not None:
      raise ValueError(
          "gradient_transform (e.g. the all-reduce across workers) does not "
          "combine with data parallel replicas in one process")
    data_parallel.check_optimizer(optimizer)
    self.data_parallel = data_parallel
    self.pipeline = pipeline
    self.optimizer = optimizer
    self.algorithm = algorithm
    self.update_every_ticks = int(update_every_ticks)
    if self.update_every_ticks and algorithms.get(algorithm).streams:
      # Weights change within a replayed module's lag: replay held inputs
      # with the weights that computed them (docs/engine.md, "Replay"); in
      # every replica, and in the pipeline its checkpoints hold.
      for streaming in {id(p): p for p in [pipeline] +
                        data_parallel.replicas}.values():
        streaming.stash_replay_weights()
    self.gradient_transform = gradient_transform
    self.loss_scale = loss_scale
    self._step_fns = {}
    self._optimizer_built = False

  def train_step(self, frames, labels) -> Dict[str, float]:
    """Trains on one clip batch; returns its loss and accuracy as floats.

    Sideways loss/accuracy are over the valid ticks (the top module's frames
    t-L+1 for t >= L); BP's over all frames.
    """
    frames, labels = self.data_parallel.prepare_inputs(
        frames, labels, self.algorithm, reset=True)
    self._build_optimizer()
    if not self.update_every_ticks:
      loss, accuracy, _ = self._step(True, frames, labels)
      return {"loss": float(loss), "accuracy": float(accuracy)}

    # Online learning: N-tick chunks of one stream, an update after each.
    self.data_parallel.reset_state()
    totals = np.zeros(3)
    num_frames = frames.shape[1]
    for start in range(0, num_frames, self.update_every_ticks):
      chunk = frames[:, start:start + self.update_every_ticks]
      loss, accuracy, terms = self._step(False, chunk, labels)
      totals += np.array([float(loss), float(accuracy), 1.0]) * float(terms)
    num_terms = max(float(totals[2]), 1.0)
    return {"loss": float(totals[0]) / num_terms,
            "accuracy": float(totals[1]) / num_terms}

  def _step(self, reset: bool, frames, labels):
    # Traced and run in the strategy's scope (data parallelism's
    # cross-replica context; nothing for one replica).
    with self.data_parallel.scope():
      return self._step_fn(reset)(frames, labels)

  def _step_fn(self, reset: bool):
    if reset not in self._step_fns:
      parallel = self.data_parallel

      def step(frames, labels):
        result = parallel.clip_gradients(
            frames, labels, self.algorithm, reset=reset,
            loss_scale=None if self.loss_scale is None else
            self.loss_scale.scale)
        gradients = result.gradients
        if self.gradient_transform is not None:
          gradients = self.gradient_transform(gradients)
        should_apply = result.num_loss_terms > 0
        if self.loss_scale is not None:
          # After the all-reduce, so every worker takes the same decision.
          should_apply = tf.logical_and(should_apply, self.loss_scale.record(
              parallel.all_finite(gradients)))
        def apply():
          parallel.apply_gradients(self.optimizer, gradients)
          return tf.constant(True)
        # A chunk with no valid loss term (a stream's warm-up) has a zero
        # gradient: skip the step, which would still move momentum-based
        # optimizers. So is a float16 step that overflowed.
        tf.cond(should_apply, apply, lambda: tf.constant(False))
        return result.loss, result.accuracy, result.num_loss_terms
      self._step_fns[reset] = tf.function(step, autograph=False)
    return self._step_fns[reset]

  def _build_optimizer(self):
    if not self._optimizer_built:
      # Build the slots eagerly so no variable is created inside tf.function.
      with self.data_parallel.scope():
        self.optimizer.build(self.pipeline.trainable_variables)
      self._optimizer_built = True

  def evaluate(self, batches: Iterable,
               label_parts: Optional[Dict[str, tuple]] = None
               ) -> Dict[str, float]:
    """Clip and per-frame accuracy, every frame through all modules.

    `batches` yields {"video": [B,T,...], "label": [B]}. Clip logits are the
    mean of the per-frame logits. `label_parts` ({part: (divisor, count)},
    part = label // divisor % count, as moving digits' digit x direction):
    also "clip_accuracy/<part>", the predicted class's part right.
    """
    clip_correct = frame_correct = loss_sum = 0.0
    num_clips = num_frames = 0
    label_parts = dict(label_parts or {})
    part_correct = dict.fromkeys(label_parts, 0.0)
    for batch in batches:
      frames, labels = batch["video"], tf.cast(batch["label"], tf.int32)
      logits = self.pipeline.predict_frames(frames)  # [B, T, C]
      t = int(logits.shape[1])
      clip_pred = tf.argmax(tf.reduce_mean(logits, axis=1), -1,
                            output_type=tf.int32)
      frame_pred = tf.argmax(logits, -1, output_type=tf.int32)
      frame_labels = tf.repeat(labels[:, None], t, axis=1)
      clip_correct += float(tf.reduce_sum(tf.cast(clip_pred == labels,
                                                  tf.float32)))
      for part, (divisor, count) in label_parts.items():
        part_correct[part] += float(tf.reduce_sum(tf.cast(
            clip_pred // divisor % count == labels // divisor % count,
            tf.float32)))
      frame_correct += float(tf.reduce_sum(tf.cast(frame_pred == frame_labels,
                                                   tf.float32)))
      per_frame_loss = self.pipeline.loss_fn(
          tf.reshape(frame_labels, [-1]),
          tf.reshape(logits, [-1, logits.shape[-1]]))
      loss_sum += float(tf.reduce_sum(per_frame_loss))
      num_clips += int(labels.shape[0])
      num_frames += int(labels.shape[0]) * t
    if not num_clips:
      raise ValueError("evaluate got an empty dataset (no clips)")
    metrics = {"clip_accuracy": clip_correct / num_clips,
               "frame_accuracy": frame_correct / num_frames,
               "loss": loss_sum / num_frames}
    metrics.update({f"clip_accuracy/{part}": correct / num_clips
                    for part, correct in part_correct.items()})
    return metrics
