"""Keras callbacks for SidewaysModel.fit.

``GradientFidelity`` writes the Sideways-vs-BP gradient diagnostic that
bin/train writes (``fidelity/cosine/module_<k>``,
``fidelity/norm_ratio/module_<k>``; docs/tensorboard.md) from inside
``fit``, with the same code (:mod:`sideways_tf.run.summaries`). Every standard
Keras callback (TensorBoard, ModelCheckpoint, BackupAndRestore, EarlyStopping,
ReduceLROnPlateau, CSVLogger) works as it does for any Keras model.
"""

from __future__ import annotations

import pathlib
from typing import Optional

import keras
import tensorflow as tf

from sideways_tf.run import summaries


class GradientFidelity(keras.callbacks.Callback):
  """Every `every_n_steps` training steps, how close Sideways is to BP.

  Computes both clip gradients with ``Pipeline.compute_gradients`` on the
  batch the step just trained on (after its update, as bin/train does
  before the next one), and writes their per-module cosine and norm ratio to
  ``log_dir/<subdir>`` (default ``train``, next to keras' TensorBoard
  callback). The values are also kept in ``self.history`` as
  ``(step, {module: {"cosine", "norm_ratio"}})``.
  """

  def __init__(self, log_dir, every_n_steps: int = 100,
               subdir: Optional[str] = "train"):
    super().__init__()
    if int(every_n_steps) < 1:
      raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
    self.log_dir = pathlib.Path(log_dir)
    self.every_n_steps = int(every_n_steps)
    self.subdir = subdir
    self.history = []
    self._writer = None

  def on_train_begin(self, logs=None):
    if not hasattr(self.model, "pipeline"):
      raise ValueError(f"GradientFidelity needs a sideways_tf.SidewaysModel, "
                       f"got {type(self.model).__name__}")
    path = self.log_dir / self.subdir if self.subdir else self.log_dir
    self._writer = tf.summary.create_file_writer(str(path))

  def on_train_batch_end(self, batch, logs=None):
    step = int(self.model.optimizer.iterations.numpy())
    if step % self.every_n_steps or self.model.last_batch is None:
      return
    frames, labels = self.model.last_batch
    if int(frames.shape[0]) != self.model.state_batch_size:
      return  # a BP model's partial batch: the Sideways buffers don't fit it
    pipeline = self.model.pipeline
    sideways = pipeline.compute_gradients(frames, labels, "sideways")
    bp = pipeline.compute_gradients(frames, labels, "bp")
    fidelity = summaries.gradient_fidelity(pipeline, sideways, bp)
    summaries.write_fidelity(self._writer, step, fidelity)
    self.history.append((step, fidelity))

  def on_train_end(self, logs=None):
    if self._writer is not None:
      self._writer.flush()
