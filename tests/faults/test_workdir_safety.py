"""A workdir's completed work is never lost to a refused or mistaken run.

A run that is refused writes nothing (another model's data, a checkpoint
that does not fit); a workdir whose checkpoints/ disappeared is not trained
again from step 0 over its logs; one-class data is refused before it trains
to a loss of 0 that means nothing.
"""

import json
import os
import shutil
import subprocess

import pytest

from sideways_tf.run import checkpoints
from sideways_tf.run import user_errors
from sideways_tf.run import workdir_lock
from sideways_tf.training import train_lib
from tests.faults import harness


def _contents(workdir):
  """Every file of the workdir and its bytes."""
  return {p.relative_to(workdir).as_posix(): p.read_bytes()
          for p in sorted(workdir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def video_folders(tmp_path_factory):
  """Prepared folders of 1, 2 and 3 classes (tiny 16x16 videos)."""
  from tests.data.conftest import write_video
  from sideways_tf.data import video_folder
  root = tmp_path_factory.mktemp("videos")
  folders = {}
  for count in (1, 2, 3):
    for name in "abc"[:count]:
      for index in range(3):
        write_video(root / f"in{count}" / name / f"{name}{index}.avi", 8,
                    height=16, width=16)
    folders[count] = root / f"out{count}"
    video_folder.prepare(
        root / f"in{count}", folders[count], video_folder.PrepareOptions(
            short_side=0, videos_per_shard=4, test_fraction=0.4),
        progress=False)
  return folders


def _video_config(data_dir, path, num_steps=2):
  cfg = harness.config(data_dir, num_steps=num_steps, eval_every=2,
                       checkpoint_every=2)
  cfg.data.update(dict(name="video_folder", path=str(path), num_classes=0,
                       label_key="label", data_dir=""))
  return cfg


@pytest.mark.parametrize("model_info", ["kept", "missing"])
def test_other_data_in_a_workdir_is_refused_and_changes_nothing(
    video_folders, data_dir, tmp_path, model_info):
  """data.path may change on resume (the data may move): 2-class data in the
  workdir of a 3-class run is refused before anything is written, by
  model_info.json or, without it, by the checkpoint that does not fit."""
  workdir = tmp_path / "run"
  train_lib.train(_video_config(data_dir, video_folders[3]), workdir)
  if model_info == "missing":
    (workdir / "model_info.json").unlink()
  before = _contents(workdir)
  with pytest.raises(ValueError, match=(
      r"holds a model of other data \(num_classes: 3 -> 2; .*class_names"
      if model_info == "kept" else r"does not fit the model")
      + r".*another --workdir.*--overwrite"):
    train_lib.train(_video_config(data_dir, video_folders[2], 4), workdir)
  assert _contents(workdir) == before
  if model_info == "missing":
    return
  # The good run still evaluates and exports.
  assert 0 <= train_lib.evaluate(workdir)["clip_accuracy"] <= 1
  assert int(train_lib.restore_for_inference(workdir).step) == 2


def test_deleted_checkpoints_are_not_trained_again_from_step_0(
    run, data_dir):
  shutil.rmtree(run / "checkpoints")
  before = _contents(run)
  with pytest.raises(checkpoints.CheckpointError, match=(
      r"saved a checkpoint at step 4 .* holds none .*refusing to start "
      r"again from step 0.*--overwrite")):
    train_lib.train(harness.config(data_dir, num_steps=6), run)
  assert _contents(run) == before
  assert json.loads((run / "last_checkpoint.json").read_text()) == {
      "step": 4, "path": "checkpoints/ckpt-4"}
  result = train_lib.train(harness.config(data_dir, num_steps=2), run,
                           overwrite=True)
  assert result["step"] == 2
  assert json.loads((run / "eval.json").read_text())["step"] == 2


def test_a_run_killed_before_its_first_checkpoint_starts_again(
    run, data_dir):
  """No checkpoint was ever recorded: step 0 is where the run was."""
  shutil.rmtree(run / "checkpoints")
  (run / "last_checkpoint.json").unlink(missing_ok=True)
  result = train_lib.train(harness.config(data_dir, num_steps=2), run)
  assert result["step"] == 2
  assert checkpoints.checkpoint_steps(run / "checkpoints") == [2]


def test_one_class_is_warned_at_prepare_and_refused_at_train(
    video_folders, data_dir, tmp_path, capfd):
  from sideways_tf.data import video_folder
  video_folder.prepare(video_folders[1].parent / "in1", tmp_path / "again",
                       video_folder.PrepareOptions(short_side=0),
                       progress=False)
  err = capfd.readouterr().err
  assert "WARNING: only one class folder" in err and "(a)" in err
  workdir = tmp_path / "run"
  result = subprocess.run(
      harness.train_cmd(workdir, data_dir, "--config.data.name=video_folder",
                        f"--config.data.path={video_folders[1]}",
                        "--config.data.num_classes=0",
                        "--config.data.label_key=label"),
      capture_output=True, text=True, timeout=600)
  assert result.returncode == user_errors.EXIT_USER, result.stderr[-2000:]
  assert "the training data has 1 class (a)" in result.stderr
  assert "Traceback" not in result.stderr
  assert not (workdir / "config.json").exists()


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_lost_lock_is_detected(tmp_path, how):
  workdir = tmp_path / "run"
  lock = workdir_lock.WorkdirLock(workdir).acquire()
  try:
    lock.check()  # held: no error
    shutil.rmtree(workdir)
    if how == "replaced":  # a second run locked a new file at the path
      second = workdir_lock.WorkdirLock(workdir).acquire()
      second.check()
    with pytest.raises(workdir_lock.WorkdirLockLostError,
                       match=r"lock .*/run/\.lock of this run is "
                       + ("gone" if how == "deleted" else "another file")):
      lock.check()
  finally:
    lock.release()


def test_deleting_the_workdir_of_a_live_run_stops_it(trained, tmp_path,
                                                     data_dir):
  """The workdir is deleted under a live bin/train, which would otherwise
  recreate checkpoints/ without its lock: it stops at its next save with
  exit 2, naming the lock."""
  workdir = harness.copy_run(trained, tmp_path)
  first = subprocess.Popen(
      harness.train_cmd(workdir, data_dir, "--config.train.num_steps=100000",
                        "--config.train.checkpoint_every=1",
                        "--config.train.eval_every=0"),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    harness.wait_for(lambda: checkpoints.checkpoint_steps(
        workdir / "checkpoints")[0] >= 6, first)
    # `rm -rf` in one step (the live run keeps adding files meanwhile).
    os.rename(workdir, tmp_path / "deleted")
    shutil.rmtree(tmp_path / "deleted", ignore_errors=True)
    out, err = first.communicate(timeout=300)
  finally:
    if first.poll() is None:
      first.kill()
      first.wait()
  assert first.returncode == user_errors.EXIT_USER, err[-2000:]
  assert f"the lock {workdir / '.lock'} of this run is gone" in err
  assert "Traceback" not in err
  # At most the save under way when the workdir went was written.
  assert len(checkpoints.checkpoint_steps(workdir / "checkpoints")) <= 1
