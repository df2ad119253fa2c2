"""SidewaysModel.fit with BackupAndRestore, killed with SIGKILL and rerun.

Usage: python tests/keras_resume_check.py WORKDIR [--kill_at_step=N]
  [--kill_in_backup=N] [--snapshot_step=S]

3 epochs of 8 batches (a fixed, unshuffled order), a backup every 3 steps.
Writes WORKDIR/at_step_S.npz (S = 9: the state when the step-9 backup was
written), restored.npz (the state right after BackupAndRestore restored it),
final.npz, and done.json (the first step trained by this process).
--kill_in_backup=N: SIGKILL in the middle of writing the N-th backup (the
weights file is opened and half-written, as h5py writes it, then the process
dies).
"""

import json
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import sideways_tf  # noqa: E402
from tests import util  # noqa: E402


def snapshot(model):
  arrays = {}
  for i, v in enumerate(model.pipeline.trainable_variables):
    arrays[f"weight_{i}"] = np.array(v)
  for i, v in enumerate(model.pipeline.state_variables):
    arrays[f"buffer_{i}"] = np.array(v)
  for i, v in enumerate(model.optimizer.variables):
    arrays[f"optimizer_{i}"] = np.array(v)
  return arrays


class Recorder(keras.callbacks.Callback):
  def __init__(self, workdir, kill_at_step, snapshot_step):
    super().__init__()
    self.workdir, self.kill_at_step = workdir, kill_at_step
    self.snapshot_step = snapshot_step
    self.epoch = None
    self.first_trained = None
    self.start_step = None

  def on_train_begin(self, logs=None):  # after BackupAndRestore's
    self.start_step = int(self.model.optimizer.iterations)
    if self.start_step:
      np.savez(os.path.join(self.workdir, "restored.npz"),
               **snapshot(self.model))

  def on_epoch_begin(self, epoch, logs=None):
    self.epoch = epoch

  def on_train_batch_end(self, batch, logs=None):
    step = int(self.model.optimizer.iterations)
    if self.first_trained is None and step > self.start_step:
      self.first_trained = {"epoch": self.epoch, "batch": batch, "step": step}
    if step == self.snapshot_step and not self.start_step:
      np.savez(os.path.join(self.workdir, f"at_step_{step}.npz"),
               **snapshot(self.model))
    if step == self.kill_at_step:
      os.kill(os.getpid(), signal.SIGKILL)


def kill_in_backup(model, backup):
  """Makes the `backup`-th save_weights die half-way through its file."""
  save_weights, calls = model.save_weights, []

  def dying(filepath, *args, **kwargs):
    calls.append(filepath)
    if len(calls) == backup:
      with open(filepath, "wb") as f:  # h5py truncates, then writes
        f.write(b"\x89HDF\r\n\x1a\n" + bytes(100))
        f.flush()
      os.kill(os.getpid(), signal.SIGKILL)
    return save_weights(filepath, *args, **kwargs)

  model.save_weights = dying


def main(workdir, kill_at_step=0, kill_in_backup_at=0, snapshot_step=9):
  os.makedirs(workdir, exist_ok=True)
  keras.utils.set_random_seed(0)
  video = util.moving_clip(batch=16, frames=6, shape=(6, 6, 2), seed=1)
  label = util.labels_for(16).astype("int32")
  data = tf.data.Dataset.from_tensor_slices({"video": video, "label": label})
  model = sideways_tf.SidewaysModel(util.conv_stages(3))
  model.compile(optimizer=keras.optimizers.Adam(0.01))
  recorder = Recorder(workdir, kill_at_step, snapshot_step)
  if kill_in_backup_at:
    kill_in_backup(model, kill_in_backup_at)
  model.fit(data.batch(2, drop_remainder=True), epochs=3, verbose=0,
            callbacks=[keras.callbacks.BackupAndRestore(
                os.path.join(workdir, "backup"), save_freq=3), recorder])
  np.savez(os.path.join(workdir, "final.npz"), **snapshot(model))
  with open(os.path.join(workdir, "done.json"), "w") as f:
    json.dump({"first_trained": recorder.first_trained,
               "steps_trained": int(model.optimizer.iterations)
                                - recorder.start_step}, f)


def _flag(name, default=0):
  values = [int(a.split("=")[1]) for a in sys.argv[2:]
            if a.startswith(f"--{name}=")]
  return values[0] if values else default


if __name__ == "__main__":
  main(sys.argv[1], _flag("kill_at_step"), _flag("kill_in_backup"),
       _flag("snapshot_step", 9))
