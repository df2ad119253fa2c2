"""Fault injection: each test breaks something on purpose and checks that
nothing is lost beyond one checkpoint interval and that the message names the
file and the fix (checkpoints, workdir lock, signals, NaN, temp files)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from sideways_tf.run import checkpoints
from sideways_tf.run import user_errors
from sideways_tf.run import workdir_lock
from sideways_tf.training import builder
from sideways_tf.training import train_lib
from sideways_tf.training import workdir as workdir_lib
from tests import util
from tests.faults.harness import ROOT
from tests.faults.harness import ckpt
from tests.faults.harness import config
from tests.faults.harness import flip as _flip
from tests.faults.harness import train_cmd as _train_cmd
from tests.faults.harness import truncate as _truncate
from tests.faults.harness import wait_for as _wait_for


# ------------------------------------------- 1, 2: checkpoint integrity


@pytest.mark.parametrize("fault", ["delete_index", "truncate_data",
                                   "flip_data"])
def test_bad_latest_checkpoint_falls_back_to_the_previous(
    run, data_dir, capfd, fault):
  if fault == "delete_index":
    ckpt(run, 4).unlink()
  elif fault == "truncate_data":
    _truncate(ckpt(run, 4, ".data"))
  else:
    _flip(ckpt(run, 4, ".data"))
  result = train_lib.train(config(data_dir, num_steps=6), run)
  out, err = capfd.readouterr()
  # Resumed from ckpt-2 (2 steps lost, one interval), not from step 0.
  assert result["step"] == 6
  assert f"Resumed from {ckpt(run, 2, '')} at step 2" in out
  assert "(4 this run)" in out
  assert "WARNING: checkpoint" in err and "ckpt-4 is unusable" in err
  # The bad one is kept aside for inspection; the good ones survive rotation.
  assert list((run / "checkpoints" / "corrupt").glob("ckpt-4*"))
  assert ckpt(run, 2).exists() and ckpt(run, 6).exists()


@pytest.mark.parametrize("fault", ["delete", "garbage"])
def test_missing_or_garbage_state_file_resumes_from_the_newest(
    run, data_dir, capfd, fault):
  state = run / "checkpoints" / "checkpoint"
  if fault == "delete":
    state.unlink()
  else:
    state.write_text("garbage {{{ not a proto\n")
  result = train_lib.train(config(data_dir, num_steps=6), run)
  out, err = capfd.readouterr()
  assert result["step"] == 6
  assert f"Resumed from {ckpt(run, 4, '')} at step 4" in out
  assert "(2 this run)" in out
  assert str(state) in err and "ckpt-4" in err
  assert tf.train.latest_checkpoint(str(run / "checkpoints")).endswith(
      "ckpt-6")


def test_evaluate_and_export_use_the_newest_readable_checkpoint(run, capfd):
  _truncate(ckpt(run, 4, ".data"))
  metrics = train_lib.evaluate(run, num_batches=1)
  assert 0 <= metrics["clip_accuracy"] <= 1
  exp = train_lib.restore_for_inference(run)
  assert int(exp.step) == 2
  err = capfd.readouterr().err
  assert f"checkpoint {ckpt(run, 4, '')} is unusable" in err
  assert ckpt(run, 4).exists()  # readers move nothing


def test_no_readable_checkpoint_refuses_to_start_from_scratch(run, data_dir):
  for step in (2, 4):
    _truncate(ckpt(run, step, ".data"))
  sizes = {p.name: p.stat().st_size for p in (run / "checkpoints").iterdir()}
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"no readable checkpoint.*ckpt-4.*--overwrite"):
    train_lib.train(config(data_dir, num_steps=6), run)
  # Nothing deleted or rewritten.
  assert sizes == {p.name: p.stat().st_size
                   for p in (run / "checkpoints").iterdir()}
  # --overwrite starts again.
  result = train_lib.train(config(data_dir, num_steps=2), run, overwrite=True)
  assert result["step"] == 2 and not ckpt(run, 4).exists()


def test_verify_names_non_finite_values(tmp_path):
  variable = tf.Variable([1.0, np.inf], name="w")
  prefix = tf.train.Checkpoint(w=variable).write(str(tmp_path / "ckpt-1"))
  assert "non-finite" in checkpoints.verify(prefix)
  variable.assign([1.0, 2.0])
  prefix = tf.train.Checkpoint(w=variable).write(str(tmp_path / "ckpt-2"))
  assert checkpoints.verify(prefix) is None


# ------------------------------------------------ 14: temporary files


def test_stale_temporary_files_are_removed_at_start(run, data_dir):
  leftovers = [run / "checkpoints" / "checkpoint.tmp1a2b3c",
               run / "checkpoints" / "ckpt-6_temp" / "part-00000-of-00001",
               run / ".config.json.tmp-999999999"]
  for path in leftovers:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("partial")
  result = train_lib.train(config(data_dir, num_steps=6), run)
  assert result["step"] == 6
  for path in leftovers:
    assert not path.exists(), path
  assert not (run / "checkpoints" / "ckpt-6_temp").exists()


# ------------------------------------------------ 4: NaN guard, resume


def test_nan_guard_checks_optimizer_slots(data_dir, tmp_path):
  exp = builder.build(config(data_dir))
  manager = tf.train.CheckpointManager(exp.checkpoint, str(tmp_path), 3)
  slot = [v for v in exp.optimizer.variables if "momentum" in v.path][0]
  slot.assign(np.full(slot.shape, np.inf, np.float32))
  with pytest.raises(FloatingPointError, match=f"{slot.path}.*learning_rate"):
    workdir_lib.save_checkpoint(exp, manager, 2)
  assert not list(tmp_path.glob("ckpt-*"))


def test_learning_rate_is_resumable(run, data_dir):
  result = train_lib.train(
      config(data_dir, num_steps=6, learning_rate=1e-4), run)
  assert result["step"] == 6
  reader = tf.train.load_checkpoint(str(ckpt(run, 6, "")))
  names = [n for n in reader.get_variable_to_shape_map()
           if "_learning_rate" in n]
  assert names and np.isclose(reader.get_tensor(names[0]), 1e-4)
  assert json.loads((run / "config.json").read_text())[
      "train"]["learning_rate"] == 1e-4


# ------------------------------------------------ 3: workdir lock


_HOLDER = ("import sys, time; sys.path.insert(0, {root!r}); "
           "from sideways_tf import workdir_lock; "
           "lock = workdir_lock.WorkdirLock({workdir!r}).acquire(); "
           "print('locked', flush=True); time.sleep(120)")


def test_lock_refuses_a_second_run_and_is_stale_after_kill_9(tmp_path):
  workdir = tmp_path / "run"
  holder = subprocess.Popen(
      [sys.executable, "-c", _HOLDER.format(root=str(ROOT),
                                            workdir=str(workdir))],
      stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(workdir_lock.WorkdirLockedError,
                       match=f"in use by PID {holder.pid} on .*--workdir"):
      workdir_lock.WorkdirLock(workdir).acquire()
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  # The kernel dropped the flock; the file still names the dead holder.
  assert json.loads((workdir / ".lock").read_text())["pid"] == holder.pid
  lock = workdir_lock.WorkdirLock(workdir).acquire()
  assert json.loads((workdir / ".lock").read_text())["pid"] == os.getpid()
  lock.release()
  assert workdir_lock.read_holder(workdir / ".lock") == {}


def test_second_train_refused_then_sigterm_saves_and_exits_143(
    trained, tmp_path, data_dir):
  """Items 3 and 6 on real bin/train processes."""
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  first = subprocess.Popen(
      _train_cmd(workdir, data_dir, "--config.train.num_steps=100000",
                 "--config.train.checkpoint_every=1000",
                 "--config.train.eval_every=1"),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  evaluated_before = (workdir / "eval.json").stat().st_mtime
  try:
    # Training has started once the run is past its resume line.
    _wait_for(lambda: workdir_lock.read_holder(workdir / ".lock").get(
        "pid") == first.pid and (workdir / "model_info.json").stat().st_mtime
        > (trained / "model_info.json").stat().st_mtime, first)
    second = subprocess.run(_train_cmd(workdir, data_dir),
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == user_errors.EXIT_LOCKED
    assert f"in use by PID {first.pid}" in second.stderr
    assert "Traceback" not in second.stderr + second.stdout
    # In the loop (its SIGTERM saves) once a step of this run evaluated.
    _wait_for(lambda: (workdir / "eval.json").stat().st_mtime
              > evaluated_before, first)
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=300)
  finally:
    if first.poll() is None:
      first.kill()
  assert first.returncode == 143, err
  assert "Traceback" not in err
  assert "checkpoint saved" in out
  saved = checkpoints.checkpoint_steps(workdir / "checkpoints")
  assert saved[0] > 4  # the interrupted run saved where it stopped
  assert checkpoints.verify(ckpt(workdir, saved[0], "")) is None
  assert workdir_lock.read_holder(workdir / ".lock") == {}  # released


def test_sigint_during_start_up_exits_130_without_traceback(
    tmp_path, data_dir):
  # A shell without job control starts background jobs with SIGINT ignored,
  # and Python keeps an ignored SIGINT ignored: give the run Ctrl-C's default.
  process = subprocess.Popen(
      _train_cmd(tmp_path / "run", data_dir),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  line = process.stdout.readline()  # printed before TensorFlow loads
  assert line.startswith("Training tiny"), line
  process.send_signal(signal.SIGINT)
  out, err = process.communicate(timeout=300)
  assert process.returncode == 130, err
  assert "Traceback" not in err and "KeyboardInterrupt" not in err


# ------------------------------------------------ 7: bad prepared data


@pytest.fixture
def prepared_videos(tmp_path):
  from tests.data.conftest import write_video
  from sideways_tf.data import video_folder
  root = tmp_path / "videos"
  for name in ("a", "b"):
    for index in range(4):
      write_video(root / name / f"{name}{index}.avi", 8, height=16, width=16)
  output_dir = tmp_path / "records"
  options = video_folder.PrepareOptions(short_side=0, videos_per_shard=2,
                                        test_fraction=0.5)
  summary = video_folder.prepare(root, output_dir, options, progress=False)
  assert summary["shards_written"] >= 2
  return root, output_dir, options


def _video_config(data_dir, path):
  cfg = config(data_dir, num_steps=2, eval_every=2, checkpoint_every=2)
  cfg.data.update(dict(name="video_folder", path=str(path), num_classes=0,
                       label_key="label", data_dir=""))
  return cfg


def test_bad_eval_shard_is_named_and_prepare_rewrites_it(
    prepared_videos, tmp_path, data_dir):
  from sideways_tf.data import shard_check
  from sideways_tf.data import video_folder
  root, output_dir, options = prepared_videos
  metadata = json.loads((output_dir / "metadata.json").read_text())
  bad = output_dir / metadata["splits"]["test"]["shards"][0]
  _flip(bad)
  checked, found = shard_check.verify_folder(output_dir)
  assert checked == sum(len(s["shards"]) for s in metadata["splits"].values())
  assert [path for path, _ in found] == [str(bad)]
  # Training reaches the final eval, which names the shard and the repair.
  with pytest.raises(shard_check.DataError,
                     match=rf"bad shard {bad}.*rerun bin/prepare_videos"):
    train_lib.train(_video_config(data_dir, output_dir), tmp_path / "run")
  # The step before the eval is not lost.
  assert checkpoints.checkpoint_steps(tmp_path / "run" / "checkpoints") == [2]
  # A rerun of prepare rewrites the bad shard (and only it).
  summary = video_folder.prepare(root, output_dir, options, progress=False)
  assert summary["shards_written"] == 1
  assert shard_check.verify_folder(output_dir)[1] == []


def test_invalid_json_names_the_file(prepared_videos, run):
  from sideways_tf.data import shard_check
  from sideways_tf.data import video_folder
  _, output_dir, _ = prepared_videos
  (output_dir / "metadata.json").write_text('{"format_version": ')
  with pytest.raises(shard_check.DataError,
                     match=f"{output_dir / 'metadata.json'} is not valid JSON"):
    video_folder.read_metadata(output_dir)
  (run / "config.json").write_text("{ not json")
  with pytest.raises(ValueError,
                     match=f"{run / 'config.json'} is not valid JSON"):
    workdir_lib.load_config(run)


def test_prepare_videos_verify_flag(prepared_videos):
  _, output_dir, _ = prepared_videos
  ok = subprocess.run([sys.executable, str(ROOT / "bin" / "prepare_videos"),
                       "--verify", f"--output_dir={output_dir}"],
                      capture_output=True, text=True, timeout=300)
  assert ok.returncode == 0 and "shards OK" in ok.stdout, ok.stderr
  shard = sorted(output_dir.glob("*.tfrecord"))[0]
  _truncate(shard)
  bad = subprocess.run([sys.executable, str(ROOT / "bin" / "prepare_videos"),
                        "--verify", f"--output_dir={output_dir}"],
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode == user_errors.EXIT_USER
  assert f"BAD {shard}" in bad.stdout and "truncated" in bad.stdout
  assert "Traceback" not in bad.stderr


# ------------------------------------------------ 8: which videos are read


def test_video_extensions_ignored_files_downscale_and_split_warning(
    tmp_path, capfd):
  from tests.data.conftest import write_video
  from sideways_tf.data import video_decode
  from sideways_tf.data import video_folder
  root = tmp_path / "videos"
  write_video(root / "phone" / "clip0.MOV", 8, height=16, width=24)
  write_video(root / "phone" / "clip1.m4v", 8, height=16, width=24)
  write_video(root / "other" / "clip2.mpg", 8, height=16, width=24,
              codec="mpeg1video")
  (root / "other" / "readme.txt").write_text("x")
  output_dir = tmp_path / "records"
  video_folder.prepare(root, output_dir, video_folder.PrepareOptions(
      short_side=128, test_fraction=0.01), progress=False)
  out, err = capfd.readouterr()
  metadata = json.loads((output_dir / "metadata.json").read_text())
  counts = {split: info["num_videos"]
            for split, info in metadata["splits"].items()}
  assert sum(counts.values()) == 3, (counts, metadata["skipped"])
  assert "Ignored 1 file" in out and "other/readme.txt" in out
  assert "with no test video" in err
  # Only ever downscale: 16x24 frames stay 16x24 with --short_side=128.
  shard = next(output_dir.glob("*-of-*.tfrecord"))
  example = tf.train.Example.FromString(
      next(iter(tf.data.TFRecordDataset(str(shard)))).numpy())
  sizes = [example.features.feature[k].int64_list.value[0]
           for k in ("height", "width")]
  assert sizes == [16, 24]
  assert video_decode._target_size(256, 512, 128) == (128, 256)
  record = json.loads(shard.with_suffix(".json").read_text())
  assert len(record["sha256"]) == 64 and record["bytes"] == shard.stat().st_size


# ------------------------------------------------ 5: distributed workers


def _worker_env(ports, index):
  env = dict(os.environ, TF_CONFIG=json.dumps({
      "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
      "task": {"type": "worker", "index": index}}))
  return env




def test_a_worker_whose_peers_never_start_names_them(tmp_path, data_dir):
  ports = util.free_ports(2)
  result = subprocess.run(
      _train_cmd(tmp_path / "run", data_dir, "--config.distributed=True",
                 "--config.start_timeout_seconds=5"),
      env=_worker_env(ports, 0), capture_output=True, text=True, timeout=300)
  assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
  assert (f"workers not started: worker:1 (127.0.0.1:{ports[1]})"
          in result.stderr)
  assert "Traceback" not in result.stderr and "I0000" not in result.stderr


def _start_workers(workdir, data_dir, *args):
  ports = util.free_ports(2)
  return [subprocess.Popen(
      _train_cmd(workdir, data_dir, "--config.distributed=True",
                 "--config.train.num_steps=100000",
                 "--config.train.eval_every=0", "--config.train.log_every=1",
                 *args),
      env=_worker_env(ports, i), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]


def _recorded_step(manager_dir):
  """The step of the checkpoint the manager's state file names (written
  after the checkpoint's files: a checkpoint whose files exist may not be
  recorded yet), or None."""
  newest = tf.train.latest_checkpoint(str(manager_dir))
  return None if newest is None else workdir_lib.checkpoint_step(newest)


def _wait_for_checkpoint(manager_dir, workers, step, seconds=900,
                         recorded=False):
  """True once a checkpoint of `step` or later exists (the keep-N rotation
  may already have deleted that one), or with `recorded` once the manager's
  state file names one; False if a worker ends first or after `seconds` (a
  busy machine takes minutes)."""
  deadline = time.time() + seconds
  while time.time() < deadline:
    if recorded:
      newest = _recorded_step(manager_dir)
      if newest is not None and newest >= step:
        return True
    else:
      steps = checkpoints.checkpoint_steps(manager_dir)
      if steps and steps[0] >= step:
        return True
    if any(worker.poll() is not None for worker in workers):
      return False
    time.sleep(0.2)
  return False


def _finish_workers(workers, kill=False):
  """[(stdout, stderr)] of each worker, once all have ended."""
  try:
    for worker in workers if kill else ():
      if worker.poll() is None:
        worker.kill()
    return [worker.communicate(timeout=900) for worker in workers]
  finally:
    for worker in workers:
      if worker.poll() is None:
        worker.kill()
        worker.wait()


def _tails(outputs):
  return "\n".join(f"--- worker {i}:\n{out[-1500:]}\n{err[-3000:]}"
                   for i, (out, err) in enumerate(outputs))


def test_sigterm_on_one_worker_stops_all_at_one_step_the_chief_saves(
    tmp_path, data_dir, trained):
  """SIGTERM to the non-chief: every worker stops after the same step with
  exit 143, the chief saves that step; the restarted workers resume from it,
  and when the chief is then killed the non-chief's WorkerLostError names
  the newest checkpoint (not the one it resumed from)."""
  del trained  # the data exists before the workers start (no race on it)
  workdir = tmp_path / "run"
  manager_dir = workdir / "checkpoints"
  workers = _start_workers(workdir, data_dir,
                           "--config.train.checkpoint_every=2")
  # A checkpoint saved: every worker is in its training loop.
  ready = _wait_for_checkpoint(manager_dir, workers, 2)
  if ready:
    workers[1].send_signal(signal.SIGTERM)
  outputs = _finish_workers(workers, kill=not ready)
  (chief_out, chief_err), (other_out, other_err) = outputs
  assert ready, _tails(outputs)
  assert workers[1].returncode == 143, _tails(outputs)
  assert workers[0].returncode == 143, _tails(outputs)
  stops = [re.search(r"Stopped by signal at step (\d+) \(SIGTERM on "
                     r"(this|another) worker; every worker stopped after "
                     r"this step\)", out)
           for out in (chief_out, other_out)]
  assert all(stops), _tails(outputs)
  assert [m.group(2) for m in stops] == ["another", "this"]
  step = int(stops[0].group(1))
  assert int(stops[1].group(1)) == step >= 2  # the same step on both
  assert checkpoints.checkpoint_steps(manager_dir)[0] == step
  assert checkpoints.verify(manager_dir / f"ckpt-{step}") is None
  assert f"the chief saved {manager_dir / f'ckpt-{step}'}" in other_out
  assert "Done" not in chief_out + other_out
  assert "Traceback" not in chief_err + other_err

  # Restart both: they resume from that step. Kill the chief a few
  # checkpoints later: the non-chief names the newest one.
  workers = _start_workers(workdir, data_dir,
                           "--config.train.checkpoint_every=1")
  # Waits for the state file, not the files: a kill between a checkpoint's
  # files and its record would leave the previous one the newest.
  ready = _wait_for_checkpoint(manager_dir, workers, step + 2, recorded=True)
  if ready:
    workers[0].send_signal(signal.SIGKILL)
  outputs = _finish_workers(workers, kill=not ready)
  (chief_out, _), (other_out, other_err) = outputs
  assert ready, _tails(outputs)
  for out in (chief_out, other_out):
    assert f"Resumed from {manager_dir / f'ckpt-{step}'} at step {step}." \
        in out, _tails(outputs)
  assert workers[1].returncode == user_errors.EXIT_WORKER_LOST, \
      _tails(outputs)
  newest = tf.train.latest_checkpoint(str(manager_dir))
  assert workdir_lib.checkpoint_step(newest) >= step + 2
  assert "worker 1 of 2: the gradient all-reduce" in other_err
  assert f"last checkpoint ({newest})" in other_err, other_err[-2000:]
  assert "Traceback" not in other_err
