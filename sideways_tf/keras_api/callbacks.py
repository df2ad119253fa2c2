"""Keras callbacks for SidewaysModel.fit.

``GradientFidelity`` writes the Sideways-vs-BP gradient diagnostic that
bin/train writes (``fidelity/cosine/module_<k>``,
``fidelity/norm_ratio/module_<k>``; docs/tensorboard.md) from inside
``fit``, with the same code (:mod:`sideways_tf.run.summaries`).
``BackupAndRestore`` is Keras' own, with backups that survive a kill during
their write (``SidewaysModel.fit`` uses it in place of a
``keras.callbacks.BackupAndRestore``). Every other standard Keras callback
(TensorBoard, ModelCheckpoint, EarlyStopping, ReduceLROnPlateau, CSVLogger)
works as it does for any Keras model.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import sys
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


class BackupAndRestore(keras.callbacks.BackupAndRestore):
  """keras.callbacks.BackupAndRestore whose backup survives a kill -9.

  Keras rewrites ``latest.weights.h5`` in place, so a kill during the write
  leaves a truncated file that no rerun can load. Here each backup is
  written to temporary files, then renamed over the previous one, which is
  kept (``latest.weights.h5.bkp``, ``training_metadata.json.bkp``). The
  metadata records the SHA-256 of its weights file, so a restore pairs
  weights and metadata of the same backup whatever moment a kill hit, and
  falls back to the previous backup (with a warning) when the newest is
  unreadable; with no usable backup at all it raises a ValueError naming
  the files and what to do. Arguments are Keras' (the previous backup is
  always kept, whatever ``double_checkpoint`` says).
  """

  @classmethod
  def from_keras(cls, callback: keras.callbacks.BackupAndRestore):
    """This callback with the arguments of a Keras one."""
    return cls(callback.backup_dir, save_freq=callback.save_freq,
               double_checkpoint=callback.double_checkpoint,
               delete_checkpoint=callback.delete_checkpoint)

  def _save_model(self):
    os.makedirs(self.backup_dir, exist_ok=True)
    suffix = f".tmp-{os.getpid()}"
    weights = self._weights_path + suffix + ".weights.h5"  # Keras' suffix
    metadata = self._training_metadata_path + suffix
    self.model.save_weights(filepath=weights, overwrite=True)
    _sync(weights)
    with open(metadata, "w") as f:
      json.dump({"epoch": self._current_epoch,
                 "batch": self._last_batch_seen,
                 "weights_sha256": _sha256(weights)}, f)
    _sync(metadata)
    for path in (self._weights_path, self._training_metadata_path):
      if os.path.exists(path):
        os.replace(path, path + ".bkp")
    os.replace(weights, self._weights_path)
    os.replace(metadata, self._training_metadata_path)

  def on_train_begin(self, logs=None):
    pairs, problems = self._backups()
    restored = None
    for weights, metadata in pairs:
      try:
        self._load(weights, metadata)
      except (OSError, ValueError, KeyError) as error:
        problems.append(f"{weights}: {_one_line(error)}")
        continue
      restored = weights
      break
    self._remove_temporary_files()
    if problems and restored:
      print(f"WARNING: BackupAndRestore: a backup in {self.backup_dir} is "
            f"unusable ({'; '.join(problems)}); restored the newest usable "
            f"one, {restored}", file=sys.stderr, flush=True)
    elif problems:
      raise ValueError(
          f"BackupAndRestore: no usable backup in {self.backup_dir} "
          f"({'; '.join(problems)}). Delete {self.backup_dir} to train "
          f"from the start (every backed-up step is lost), or put a good "
          f"copy of it back.")

  def _backups(self):
    """([(weights, metadata)] to try, newest first; [why others fail]).

    A metadata file names its weights by hash, so the pairs are found
    whatever step of `_save_model` a kill interrupted (a complete temporary
    metadata file belongs to the newest backup). One without a hash
    (written by keras.callbacks.BackupAndRestore) pairs with the weights
    next to it.
    """
    weights_files = [p for p in (self._weights_path,
                                 self._weights_path + ".bkp")
                     if os.path.exists(p)]
    temporary = sorted(str(p) for p in pathlib.Path(self.backup_dir).glob(
        pathlib.Path(self._training_metadata_path).name + ".tmp-*"))
    pairs, problems = [], []
    for metadata in [self._training_metadata_path, *temporary,
                     self._training_metadata_path + ".bkp"]:
      if not os.path.exists(metadata):
        continue
      try:
        with open(metadata) as f:
          digest = json.load(f).get("weights_sha256")
      except ValueError as error:
        if metadata not in temporary:  # a half-written one is no backup
          problems.append(f"{metadata}: {_one_line(error)}")
        continue
      if digest is None:
        plain = metadata.replace(self._training_metadata_path,
                                 self._weights_path)
        pairs += [(plain, metadata)] if plain in weights_files else []
        continue
      match = [w for w in weights_files if _sha256(w) == digest]
      if match:
        pairs.append((match[0], metadata))
      elif metadata not in temporary:
        problems.append(f"{metadata}: no weights file with its SHA-256 "
                        f"(truncated by a kill?)")
    if not pairs and weights_files and not problems:  # as Keras: weights
      pairs.append((weights_files[0], self._training_metadata_path))
    return pairs, problems

  def _load(self, weights, metadata):
    """Keras' own restore, pointed at one backup pair (Keras loads only
    files named *.weights.h5: a .bkp one is read through a copy)."""
    copy = None
    if not weights.endswith(".weights.h5"):
      copy = f"{self._weights_path}.tmp-{os.getpid()}.weights.h5"
      shutil.copyfile(weights, copy)
    paths = self._weights_path, self._training_metadata_path
    self._weights_path, self._training_metadata_path = (copy or weights,
                                                        metadata)
    try:
      self._load_model()
    finally:
      self._weights_path, self._training_metadata_path = paths
      if copy:
        os.remove(copy)

  def _remove_temporary_files(self):
    """Half-written backups of killed processes (never read)."""
    directory = pathlib.Path(self.backup_dir)
    if directory.is_dir():
      for path in directory.glob("*.tmp-*"):
        path.unlink(missing_ok=True)


def _sha256(path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _sync(path) -> None:
  """On disk before the rename that publishes it (a power loss too)."""
  with open(path, "rb+") as f:
    os.fsync(f.fileno())


def _one_line(error) -> str:
  return f"{type(error).__name__}: {' '.join(str(error).split())[:160]}"
