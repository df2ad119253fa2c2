"""The training loop and the entry points: logs, checkpoints, resume, export."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from sideways_tf.configs import default
from sideways_tf.run import checkpoints
from sideways_tf.training import train_lib
from sideways_tf.training.trainer import Trainer

ROOT = pathlib.Path(__file__).resolve().parent.parent


def tiny_config(data_dir, **train):
  config = default.get_config()
  config.data.image_size = 16
  config.data.num_frames = 8  # >= 2L-1: every module gets a gradient
  config.data.num_train = 32
  config.data.num_test = 16
  config.data.data_dir = str(data_dir)
  config.model.widths = (4, 8, 8)
  config.train.batch_size = 4
  config.eval.batch_size = 8
  config.train.update(dict(num_steps=4, log_every=2, eval_every=4,
                           checkpoint_every=2, fidelity_every=2,
                           stage_time_every=2))
  config.train.update(train)
  return config


def tags(logdir):
  accumulator = event_accumulator.EventAccumulator(
      str(logdir), size_guidance={event_accumulator.TENSORS: 0,
                                  event_accumulator.IMAGES: 0})
  accumulator.Reload()
  found = accumulator.Tags()
  return set(found["tensors"]) | set(found["images"]), accumulator


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("data")


def test_train_writes_the_named_tensorboard_tags(tmp_path, data_dir):
  result = train_lib.train(tiny_config(data_dir), tmp_path)
  assert result["step"] == 4
  train_tags, accumulator = tags(tmp_path / "train")
  expected = {"train/loss", "train/accuracy", "train/learning_rate",
              "train/frames_per_second", "config"}
  expected |= {f"stages/{k}/seconds" for k in range(1, 5)}
  expected |= {f"fidelity/{m}/module_{k}" for k in range(1, 5)
               for m in ("cosine", "norm_ratio", "update_cosine")}
  expected |= {f"fidelity/lag_change/module_{k}" for k in range(1, 4)}
  expected.add("fidelity/risk")
  assert expected <= train_tags, expected - train_tags
  assert any(t.startswith("input/clips") for t in train_tags), train_tags
  # Fidelity is a real comparison: the top module's per-tick gradients are
  # exact (its clip gradient covers frames 1..T-L+1, BP's all T: close to 1);
  # the lower ones lag behind.
  cosine_top = tf.make_ndarray(
      accumulator.Tensors("fidelity/cosine/module_4")[0].tensor_proto)
  assert 0.95 < cosine_top <= 1.0 + 1e-6
  eval_tags, _ = tags(tmp_path / "eval")
  assert {"eval/loss", "eval/accuracy", "eval/frame_accuracy"} <= eval_tags
  saved = json.loads((tmp_path / "eval.json").read_text())
  assert saved["step"] == 4 and 0 <= saved["clip_accuracy"] <= 1
  assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.index")) \
      == ["ckpt-2.index", "ckpt-4.index"]


def test_resume_continues_the_step_count(tmp_path, data_dir):
  train_lib.train(tiny_config(data_dir, num_steps=2), tmp_path)
  first = train_lib.restore_for_inference(tmp_path)
  weights_at_2 = [np.asarray(v) for v in first.pipeline.trainable_variables]
  result = train_lib.train(tiny_config(data_dir, num_steps=4), tmp_path)
  assert result["step"] == 4
  resumed = train_lib.restore_for_inference(tmp_path)
  assert int(resumed.step) == 4
  assert not np.allclose(np.asarray(resumed.pipeline.trainable_variables[0]),
                         weights_at_2[0])


def test_other_config_in_workdir_is_refused_unless_overwrite(tmp_path,
                                                             data_dir):
  train_lib.train(tiny_config(data_dir, num_steps=2), tmp_path)
  other = tiny_config(data_dir, num_steps=2)
  other.model.num_modules = 3
  with pytest.raises(ValueError, match=r"model.num_modules: 4 -> 3"):
    train_lib.train(other, tmp_path)
  result = train_lib.train(other, tmp_path, overwrite=True)
  assert result["step"] == 2
  assert json.loads((tmp_path / "config.json").read_text())["model"][
      "num_modules"] == 3


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    tmp_path, data_dir, monkeypatch):
  real_step = Trainer.train_step
  calls = []

  def poisoned(self, frames, labels):
    calls.append(1)
    metrics = real_step(self, frames, labels)
    if len(calls) == 3:  # the update of step 3 ruins the weights
      variable = self.pipeline.trainable_variables[0]
      variable.assign(tf.fill(variable.shape, float("nan")))
      metrics["loss"] = float("nan")
    return metrics

  monkeypatch.setattr(Trainer, "train_step", poisoned)
  config = tiny_config(data_dir, num_steps=6, checkpoint_every=1)
  with pytest.raises(FloatingPointError, match=r"loss is nan at step 3.*ckpt-2"):
    train_lib.train(config, tmp_path)
  assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith(
      "ckpt-2")
  restored = train_lib.restore_for_inference(tmp_path)
  assert all(np.all(np.isfinite(np.asarray(v)))
             for v in restored.pipeline.trainable_variables)


def test_pipelined_bp_checkpoints_its_replay_buffers_and_resumes(tmp_path,
                                                                 data_dir):
  config = tiny_config(data_dir, num_steps=2, fidelity_every=0)
  config.algorithm = "pipelined_bp"
  train_lib.train(config, tmp_path)
  restored = train_lib.restore_for_inference(tmp_path)
  assert restored.pipeline.replayed_modules == 3  # config.replay_modules = 0
  histories = [np.asarray(m.input_history)
               for m in restored.pipeline.modules[:3]]
  assert [h.shape[0] for h in histories] == [6, 4, 2]
  assert all(np.abs(h).max() > 0 for h in histories)  # the checkpoint's
  config.train.num_steps = 4
  assert train_lib.train(config, tmp_path)["step"] == 4


def test_chunked_bp_trains_from_the_config_key(tmp_path, data_dir):
  config = tiny_config(data_dir, num_steps=2, fidelity_every=0)
  config.algorithm, config.bp_chunk_frames = "bp", 3
  assert train_lib.train(config, tmp_path)["step"] == 2
  assert json.loads((tmp_path / "config.json").read_text())[
      "bp_chunk_frames"] == 3
  restored = train_lib.restore_for_inference(tmp_path)
  assert restored.pipeline.algorithm_options["bp"].chunk_frames == 3


# ------------------------------------------------------- the entry points

def run_bin(args, timeout=600, **kwargs):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run([sys.executable] + args, cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout,
                        **kwargs)


def tiny_flags(data_dir, workdir, steps):
  return ["bin/train", f"--workdir={workdir}",
          "--config.data.image_size=16", "--config.data.num_frames=8",
          "--config.data.num_train=32", "--config.data.num_test=16",
          f"--config.data.data_dir={data_dir}",
          "--config.model.widths=(4, 8, 8)", "--config.train.batch_size=4",
          f"--config.train.num_steps={steps}", "--config.train.log_every=1",
          "--config.train.checkpoint_every=1", "--config.train.eval_every=0",
          "--config.train.fidelity_every=0",
          "--config.train.stage_time_every=0"]


def wait_for_checkpoint(workdir, process, limit=300):
  deadline = time.time() + limit
  while time.time() < deadline:
    if list((workdir / "checkpoints").glob("ckpt-*.index")):
      return
    if process.poll() is not None:
      raise AssertionError(process.stdout.read() + process.stderr.read())
    time.sleep(0.2)
  raise AssertionError("no checkpoint appeared")


@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, data_dir, how):
  workdir = tmp_path / "run"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  process = subprocess.Popen(
      [sys.executable] + tiny_flags(data_dir, workdir, 100000), cwd=ROOT,
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    wait_for_checkpoint(workdir, process)
    time.sleep(0.5)
    process.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGTERM)
    stdout, _ = process.communicate(timeout=120)
  finally:
    if process.poll() is None:
      process.kill()
  # The resume rule (docs/robustness.md): the newest readable checkpoint. A
  # kill -9 between writing ckpt-N and the `checkpoint` file leaves that file
  # one checkpoint behind; the resumed run still starts from ckpt-N.
  latest = checkpoints.newest_verified(workdir / "checkpoints")
  stopped_at = int(latest.rsplit("-", 1)[1])
  if how == "sigterm":  # a clean save: the `checkpoint` file agrees
    assert latest == tf.train.latest_checkpoint(str(workdir / "checkpoints"))
    # Non-zero (128 + SIGTERM): `bin/train && bin/export` must not export.
    assert process.returncode == 143, stdout
    assert f"Stopped by signal at step {stopped_at} (SIGTERM)" in stdout
  resumed = run_bin(tiny_flags(data_dir, workdir, stopped_at + 2))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"Resumed from {latest} at step {stopped_at}." in resumed.stdout
  assert f"{stopped_at + 2} steps (2 this run)" in resumed.stdout


def test_evaluate_and_export_from_a_workdir(tmp_path, data_dir):
  workdir = tmp_path / "run"
  assert run_bin(tiny_flags(data_dir, workdir, 2)).returncode == 0
  evaluated = run_bin(["bin/evaluate", f"--workdir={workdir}"])
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  metrics = json.loads(evaluated.stdout[evaluated.stdout.index("{"):])
  assert set(metrics) == {"clip_accuracy", "frame_accuracy", "loss"}
  exported = run_bin(["bin/export", f"--workdir={workdir}",
                      f"--output={tmp_path / 'saved'}", "--tflite"])
  assert exported.returncode == 0, exported.stderr[-3000:]
  class_names = json.loads((workdir / "model_info.json").read_text())[
      "class_names"]
  for names in ("assets.extra/class_names.txt", "tflite/class_names.txt"):
    assert (tmp_path / "saved" / names).read_text().splitlines() == (
        class_names)
  assert (tmp_path / "saved" / "tflite" / "step.tflite").stat().st_size > 0
  model = tf.saved_model.load(str(tmp_path / "saved"))
  assert set(model.signatures) >= {"serving_default", "init_state", "step"}
  out = model.signatures["serving_default"](
      video=tf.zeros([1, 6, 16, 16, 3], tf.uint8))
  assert out["frame_logits"].shape == (1, 6, 4)
  assert out["labels"].numpy()[0].decode() in class_names


@pytest.mark.parametrize("args,message", [
    (["--config.train.no_such_key=1"], "no_such_key"),
    (["--config.algorithm=backprop"],
     "'sideways', 'bp', 'gpipe' or 'pipelined_bp'"),
    (["--algorithm=backprop"], "backprop"),
    (["stray"], "unexpected arguments"),
    (["--config.model.name=vgg99"], "unknown model 'vgg99'"),
])
def test_bad_flags_give_clear_errors(tmp_path, args, message):
  result = run_bin(["bin/train", f"--workdir={tmp_path}"] + args)
  assert result.returncode != 0
  assert message in result.stderr + result.stdout
