"""Keep-N rotation and readers of a live run's checkpoints.

The rotation keeps `train.keep_checkpoints` of what is on disk, whatever the
`checkpoint` state file said before the run (garbled, stale, missing a
checkpoint a kill left unlisted, or a bad newest one moved aside); readers
(bin/evaluate, bin/export) that lose the race with the rotation read the
newest checkpoint that still exists.
"""

import json
import os

import pytest
import tensorflow as tf

from sideways_tf.run import checkpoints
from sideways_tf.training import train_lib
from tests.faults import harness
from tests.faults.harness import ckpt


def _state_lists_only(workdir, step):
  """The state file as the manager wrote it before saving the newer
  checkpoints: a kill between a checkpoint's files and the state file."""
  directory = workdir / "checkpoints"
  (directory / "checkpoint").unlink()
  stamp = os.path.getmtime(ckpt(workdir, step))
  tf.compat.v1.train.update_checkpoint_state(
      str(directory), f"ckpt-{step}", [f"ckpt-{step}"],
      all_model_checkpoint_timestamps=[stamp], last_preserved_timestamp=0.0)


@pytest.mark.parametrize("fault", ["garbled_state", "unlisted_newest",
                                   "unlisted_older", "newest_moved_aside"])
def test_keep_n_applies_to_every_checkpoint_on_disk(run, data_dir, fault):
  state = run / "checkpoints" / "checkpoint"
  if fault == "garbled_state":
    state.write_text("garbage {{{ not a proto\n")
  elif fault == "unlisted_newest":
    _state_lists_only(run, 2)
  elif fault == "unlisted_older":
    _state_lists_only(run, 4)
  else:
    harness.truncate(ckpt(run, 4, ".data"))
  result = train_lib.train(harness.config(data_dir, num_steps=12), run)
  assert result["step"] == 12
  # keep_checkpoints=3: the three newest, nothing older survives.
  assert checkpoints.checkpoint_steps(run / "checkpoints") == [12, 10, 8]
  listed = tf.train.get_checkpoint_state(str(run / "checkpoints"))
  assert [os.path.basename(p) for p in listed.all_model_checkpoint_paths] \
      == ["ckpt-8", "ckpt-10", "ckpt-12"]


def test_a_healthy_state_file_is_left_alone(run, data_dir, capfd):
  state = run / "checkpoints" / "checkpoint"
  before = state.read_bytes()
  assert checkpoints.newest_readable(run / "checkpoints")[0] == str(
      ckpt(run, 4, ""))
  assert state.read_bytes() == before
  assert "WARNING" not in capfd.readouterr().err


def _rotate_after_listing(monkeypatch, deleted):
  """The seam of the race: the first listing returns the newest checkpoint,
  then a live run's rotation deletes it before it is read (as keep-N
  deletes, index first)."""
  listed = checkpoints.newest_verified

  def racing(directory):
    prefix = listed(directory)
    if not deleted:
      for path in sorted(tf.io.gfile.glob(prefix + ".*")):
        os.remove(path)
      deleted.append(prefix)
    return prefix

  monkeypatch.setattr(checkpoints, "newest_verified", racing)


@pytest.mark.parametrize("reader", ["evaluate", "export"])
def test_a_reader_that_loses_the_race_reads_the_newest_left(
    run, monkeypatch, capfd, reader):
  deleted = []
  _rotate_after_listing(monkeypatch, deleted)
  if reader == "evaluate":
    metrics = train_lib.evaluate(run, num_batches=1)
    assert 0 <= metrics["clip_accuracy"] <= 1
    assert json.loads((run / "eval.json").read_text())["step"] == 2
  else:
    assert int(train_lib.restore_for_inference(run).step) == 2
  assert deleted == [str(ckpt(run, 4, ""))]
  assert "unusable" not in capfd.readouterr().err  # a race is no fault


def test_a_checkpoint_deleted_while_verified_is_no_fault(run, monkeypatch,
                                                         capfd):
  """The rotation deletes the newest while its tensors are being read."""
  verify = checkpoints.verify

  def deleted_while_read(prefix):
    if str(prefix).endswith("ckpt-4"):
      for path in tf.io.gfile.glob(str(prefix) + ".*"):
        os.remove(path)
    return verify(prefix)

  monkeypatch.setattr(checkpoints, "verify", deleted_while_read)
  assert checkpoints.newest_verified(run / "checkpoints") == str(
      ckpt(run, 2, ""))
  assert "unusable" not in capfd.readouterr().err


def test_a_checkpoint_rotated_away_right_after_it_was_read_is_used(
    run, monkeypatch):
  """The rotation deletes the checkpoint just after its values were read:
  they are in memory, the read succeeded. (tf.train.Checkpoint.restore
  would then create its save_counter from the deleted files and fail, and
  keep failing on every retry, as bin/evaluate did on a live run.)"""
  read = tf.train.Checkpoint.read
  deleted = []

  def read_then_rotate(self, save_path, *args, **kwargs):
    status = read(self, save_path, *args, **kwargs)
    if not deleted:
      for path in tf.io.gfile.glob(str(save_path) + ".*"):
        os.remove(path)
      deleted.append(str(save_path))
    return status

  monkeypatch.setattr(tf.train.Checkpoint, "read", read_then_rotate)
  assert int(train_lib.restore_for_inference(run).step) == 4
  assert deleted == [str(ckpt(run, 4, ""))]
