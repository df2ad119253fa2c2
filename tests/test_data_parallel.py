"""Data parallel replicas (training/data_parallel.py; docs/scaling.md).

The multi-device cases run in their own process with 4 logical CPUs
(tests/data_parallel_check.py: TF sets up devices once per process); the
config checks and bin/train's refusals need no devices.
"""

import os
import pathlib
import subprocess
import sys

import keras
import pytest

import sideways_tf
from sideways_tf.configs import default
from sideways_tf.training import builder
from sideways_tf.training.data_parallel import DataParallel
from tests import util

ROOT = pathlib.Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")


def run_check(*args):
  result = subprocess.run(
      [sys.executable, "-m", "tests.data_parallel_check", *map(str, args)],
      cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
  return result.stdout


@pytest.mark.parametrize("replicas,per_replica", [(2, 1), (2, 2)])
def test_replicas_apply_the_whole_batch_gradient(replicas, per_replica):
  """Every algorithm: the step R replicas apply is the one-replica gradient
  of the whole batch (to float32 rounding), each replica's buffers hold its
  own clips, and its weights, buffers and ops sit on its devices."""
  assert f"OK gradients {replicas} x {per_replica}" in run_check(
      "gradients", replicas, per_replica)


def test_batch_norm_replicas_keep_their_own_statistics():
  assert "OK batch_norm" in run_check("batch_norm")


def test_online_updates_with_replicas_stash_every_replicas_weights():
  assert "OK online" in run_check("online")


def test_float16_replicas_skip_an_overflowing_step_together():
  assert "OK loss_scale" in run_check("loss_scale")


def test_keras_model_with_replicas(tmp_path):
  """SidewaysModel(devices=rows of replicas): fit equals the one-replica
  model's, weight files load across replica counts."""
  assert "OK keras" in run_check("keras", tmp_path)


def test_checkpoints_restore_across_replica_counts(tmp_path):
  assert "OK checkpoint" in run_check("checkpoint", tmp_path / "data",
                                      tmp_path / "runs")


def test_one_replica_is_the_pipeline_itself():
  pipeline = sideways_tf.Pipeline(util.dense_stages(2))
  parallel = DataParallel(pipeline)
  assert parallel.replicas == [pipeline] and parallel.num_replicas == 1
  trainer = sideways_tf.Trainer(pipeline, keras.optimizers.SGD(0.1), "bp")
  assert trainer.data_parallel.replicas == [pipeline]


@pytest.mark.parametrize("devices,message", [
    ([["/CPU:0"], ["/CPU:0"]], "first devices must differ"),
    ([["/CPU:0", "/CPU:0"]], "one device per stage"),
    ([], "every replica's devices"),
    ([["/CPU:0"], ["/GPU:7"]], "does not see"),
])
def test_bad_device_rows_are_named(devices, message):
  pipeline = sideways_tf.Pipeline(util.dense_stages(1))
  with pytest.raises(ValueError, match=message):
    DataParallel(pipeline, devices)


def config(**fields):
  config = default.get_config()
  config.update(fields)
  return config


@pytest.mark.parametrize("fields,message", [
    (dict(replicas=0), "positive integer"),
    (dict(replicas=True), "positive integer"),
    (dict(replicas=3), "must divide --config.train.batch_size=8"),
    (dict(replicas=2), "needs at least 2 devices"),
    (dict(replicas=4, devices=("/GPU:0", "/GPU:1")),
     "needs at least 4 devices"),
    (dict(replicas=2, devices=("/GPU:0", "/GPU:1", "/GPU:2")),
     "must divide the 3 devices"),
    (dict(replicas=2, distributed=True, devices=("/GPU:0", "/GPU:1")),
     "not supported"),
])
def test_bad_replicas_are_config_errors(fields, message):
  with pytest.raises(ValueError, match=message):
    builder.check_replicas(config(**fields))


def test_device_rows_split_the_devices_into_replicas():
  gpus = [f"/GPU:{i}" for i in range(8)]
  assert builder.device_rows(gpus, 1, 8) == [[g] for g in gpus]
  assert builder.device_rows(gpus[:4], 2, 2) == [gpus[:2], gpus[2:4]]
  assert builder.device_rows((), 4, 1) == [None]
  with pytest.raises(ValueError, match="replicas x modules = 8"):
    builder.device_rows(gpus[:4], 4, 2)


@pytest.mark.parametrize("override,message", [
    ("--config.replicas=3", "must divide --config.train.batch_size=8"),
    ("--config.replicas=0", "--config.replicas must be a positive integer"),
    ("--config.replicas=2", "needs at least 2 devices"),
    ("--config.replicas=2 --config.model.num_modules=1 "
     "--config.devices=('/GPU:0','/GPU:1')", "does not see"),
])
def test_bin_train_refuses_a_bad_replica_count(tmp_path, override, message):
  workdir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, "bin/train", *override.split(), f"--workdir={workdir}",
       "--config.train.num_steps=1"],
      cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stdout + result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines()
            if line.startswith("train: error:")]
  assert len(errors) == 1 and message in errors[0], result.stderr[-3000:]
  assert not workdir.exists()  # refused before the workdir was touched
