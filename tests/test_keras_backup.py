"""BackupAndRestore with SidewaysModel.fit survives a kill during its write.

Keras rewrites its backup in place; `fit` runs the callback as
sideways_tf.callbacks.BackupAndRestore, which writes a new backup beside the
previous one and renames it into place, and on an unreadable backup falls
back to the previous one or names the files and what to do.
"""

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import sideways_tf
from tests import util

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _resume_check(workdir, *args):
  return subprocess.run(
      [sys.executable, str(ROOT / "tests" / "keras_resume_check.py"),
       str(workdir), *args], cwd=str(ROOT), capture_output=True, text=True,
      timeout=600, env=dict(os.environ, PYTHONPATH=str(ROOT)))


@pytest.mark.slow  # three fit processes
def test_a_kill_during_the_backup_write_resumes_from_the_previous_backup(
    tmp_path):
  """Backups every 3 steps; SIGKILL half-way through writing the third
  (step 9): the rerun restores the step-6 backup exactly, trains from step
  7 and ends where an uninterrupted run ends."""
  run = tmp_path / "run"
  killed = _resume_check(run, "--kill_in_backup=3", "--snapshot_step=6")
  assert killed.returncode == -9, killed.stderr[-3000:]
  resumed = _resume_check(run)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  report = json.loads((run / "done.json").read_text())
  assert report["first_trained"] == {"epoch": 0, "batch": 6, "step": 7}
  backup = dict(np.load(run / "at_step_6.npz"))
  restored = dict(np.load(run / "restored.npz"))
  assert sorted(restored) == sorted(backup)
  for key, value in backup.items():
    np.testing.assert_array_equal(restored[key], value, err_msg=key)
  reference = _resume_check(tmp_path / "reference")
  assert reference.returncode == 0, reference.stderr[-3000:]
  final = dict(np.load(run / "final.npz"))
  for key, value in np.load(tmp_path / "reference" / "final.npz").items():
    np.testing.assert_allclose(final[key], value, rtol=1e-5, atol=1e-6,
                               err_msg=key)


SHAPE, FRAMES = (6, 6, 2), 6


def _fit(backup_dir, epochs, save_freq="epoch"):
  """A fresh model fitted with a Keras BackupAndRestore; returns it."""
  keras.utils.set_random_seed(0)
  video = util.moving_clip(batch=4, frames=FRAMES, shape=SHAPE, seed=1)
  data = tf.data.Dataset.from_tensor_slices(
      (video, util.labels_for(4).astype("int32"))).batch(2)
  model = sideways_tf.SidewaysModel(util.conv_stages(3))
  model.compile(optimizer=keras.optimizers.SGD(0.1))
  model.build((2, FRAMES) + SHAPE)
  model.fit(data, epochs=epochs, verbose=0, callbacks=[
      keras.callbacks.BackupAndRestore(str(backup_dir), save_freq=save_freq,
                                       delete_checkpoint=False)])
  return model


def test_each_backup_keeps_the_previous_and_pairs_it_by_hash(tmp_path):
  backup = tmp_path / "backup"
  _fit(backup, epochs=2)
  names = sorted(p.name for p in backup.iterdir())
  assert names == ["latest.weights.h5", "latest.weights.h5.bkp",
                   "training_metadata.json", "training_metadata.json.bkp"]
  for suffix, epoch in (("", 2), (".bkp", 1)):
    metadata = json.loads((backup / f"training_metadata.json{suffix}")
                          .read_text())
    assert metadata["epoch"] == epoch
    weights = (backup / f"latest.weights.h5{suffix}").read_bytes()
    assert metadata["weights_sha256"] == hashlib.sha256(weights).hexdigest()


def test_an_unreadable_newest_backup_falls_back_to_the_previous(
    tmp_path, capfd):
  backup = tmp_path / "backup"
  _fit(backup, epochs=2)
  (backup / "latest.weights.h5").write_bytes(b"")  # what a kill left
  model = _fit(backup, epochs=3)
  # The epoch-1 backup was restored: epochs 2 and 3 were trained (2 steps
  # each) after its 2 steps.
  assert int(model.optimizer.iterations) == 2 + 2 * 2
  err = capfd.readouterr().err
  assert "unusable" in err and str(backup / "latest.weights.h5.bkp") in err


def test_no_usable_backup_names_the_files_and_the_fix(tmp_path):
  backup = tmp_path / "backup"
  backup.mkdir()
  (backup / "latest.weights.h5").write_bytes(b"")
  (backup / "training_metadata.json").write_text('{"epoch": 1, "batch": 0}')
  with pytest.raises(ValueError, match=(
      rf"no usable backup in {backup} \({backup / 'latest.weights.h5'}: "
      rf".*Delete {backup} to train from the start")):
    _fit(backup, epochs=2)
