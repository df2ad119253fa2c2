"""The per-batch steps Keras' fit / evaluate / predict run on a SidewaysModel.

Keras calls a model's train, test and predict functions once per batch; a
SidewaysModel's are plain Python (Keras never traces them) around the
Trainer's own compiled functions, so the numbers fit logs are the numbers
bin/train logs:

* train: :meth:`Trainer.train_step` (one optimizer step per clip), its loss
  and accuracy averaged over the epoch; after a mid-epoch restore the
  batches trained before it are skipped (`resume.py`);
* test: :meth:`Trainer.evaluate` on the batch, kept as sums (:class:`Ratio`)
  so that the epoch's numbers are Trainer.evaluate's over all its batches;
* predict: the clip logits of `SidewaysModel.call`.

:class:`StepMethods` is a mixin of :class:`SidewaysModel` (model.py); the
metric objects it creates stay attributes of the model, so Keras tracks
them as before.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from sideways_tf.keras_api import inputs
from sideways_tf.keras_api import resume


class Ratio(keras.metrics.Metric):
  """sum(numerator) / sum(denominator), in float64 like Trainer.evaluate."""

  def __init__(self, name):
    super().__init__(name=name, dtype="float64")
    self.numerator = self.add_variable((), "zeros", "float64", name="num")
    self.denominator = self.add_variable((), "zeros", "float64", name="den")

  def update_state(self, numerator, denominator):
    self.numerator.assign_add(tf.cast(numerator, tf.float64))
    self.denominator.assign_add(tf.cast(denominator, tf.float64))

  def add_mean(self, mean, count):
    """Adds a batch's mean over `count` items (as Trainer.evaluate gives)."""
    self.update_state(mean * count, count)

  def result(self):
    return tf.math.divide_no_nan(self.numerator, self.denominator)


class StepMethods:
  """The train / test / predict steps of :class:`SidewaysModel` and their
  metrics (a mixin: it reads the model's `trainer`, `pipeline`, and calls
  its `build`, `_check_batch` and `__call__`)."""

  def _init_metrics(self):
    """The metrics the steps update (called once, by __init__)."""
    self._train_loss = keras.metrics.Mean(name="loss")
    self._train_accuracy = keras.metrics.Mean(name="accuracy")
    self._eval_loss = Ratio("loss")
    self._eval_clip_accuracy = Ratio("clip_accuracy")
    self._eval_frame_accuracy = Ratio("frame_accuracy")
    self._clip_metrics = []

  @property
  def metrics(self):
    # One metric per name (evaluate's "loss" is listed as the train one's).
    return [self._train_loss, self._train_accuracy,
            self._eval_clip_accuracy, self._eval_frame_accuracy,
            *self._clip_metrics]

  def reset_metrics(self):
    super().reset_metrics()
    self._eval_loss.reset_state()

  def train_step(self, data):
    """One Trainer step (Pipeline gradients, optimizer update) on a batch."""
    video, label = inputs.unpack(data, need_labels=True)
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
    video, label = inputs.unpack(data, need_labels=True)
    self._remember_frame_shape(video)
    metrics = self.trainer.evaluate([{"video": video, "label": label}])
    clips = int(label.shape[0])
    frames = clips * int(video.shape[1])
    self._eval_loss.add_mean(metrics["loss"], frames)
    self._eval_clip_accuracy.add_mean(metrics["clip_accuracy"], clips)
    self._eval_frame_accuracy.add_mean(metrics["frame_accuracy"], frames)
    if self._clip_metrics:
      logits = self(video)
      for metric in self._clip_metrics:
        metric.update_state(label, logits)
    return {m.name: m.result() for m in (
        self._eval_loss, self._eval_clip_accuracy, self._eval_frame_accuracy,
        *self._clip_metrics)}

  def predict_step(self, data):
    video, _ = inputs.unpack(data, need_labels=False)
    return self(video)

  def _remember_frame_shape(self, video):
    if self.frame_shape is None and video.shape.rank == 5:
      self.frame_shape = tuple(int(d) for d in video.shape[2:])

  def make_train_function(self, force=False):
    if self.train_function is None or force:
      self.train_function = resume.skipping_train_function(self)
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
