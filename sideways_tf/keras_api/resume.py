"""Resuming SidewaysModel.fit where it stopped, not at the epoch's start.

Keras' BackupAndRestore restores the weights and the epoch; a Sideways run
also needs the pipeline's tick counter (it decides which buffers hold real
frames) and the position inside the epoch. The model keeps the position in
its `epoch_step` weight (saved with every other weight); the tick counter is
an engine variable outside Keras' tracking, so the model's own-variables
store carries it under :data:`TICKS_KEY`. After a restore the train function
skips the batches the backup had already trained on.
"""

from __future__ import annotations

import keras
import numpy as np

TICKS_KEY = "ticks_seen"


class EpochPosition(keras.callbacks.Callback):
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


def skipping_train_function(model):
  """Keras' train function: `model.train_step` on the next batch, except for
  the batches done before the restored backup, which are drawn and dropped
  (the logs stay those of the last step)."""
  def train_function(iterator):
    data = next(iterator)
    if model._steps_to_skip > 0:  # done before the restored backup
      model._steps_to_skip -= 1
      return {"loss": model._train_loss.result(),
              "accuracy": model._train_accuracy.result()}
    return model.train_step(data)
  return train_function


def save_ticks(store, pipeline) -> None:
  store[TICKS_KEY] = np.asarray(pipeline.ticks_seen.numpy())


def load_ticks(store, pipeline) -> dict:
  """Restores the tick counter if `store` has it; the rest of the store."""
  keys = list(store.keys())
  if TICKS_KEY in keys:
    pipeline.ticks_seen.assign(np.asarray(store[TICKS_KEY]))
  return {k: store[k] for k in keys if k != TICKS_KEY}
