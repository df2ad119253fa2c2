"""algorithm="gpipe": BP's exact gradient, pipelined over the stages."""

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
from sideways_tf.benchmark import exactness
from sideways_tf.engine import gpipe
from sideways_tf.training.trainer import Trainer
from tests import util
from tests.test_pipeline import numpy_reference

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHAPE = (6, 6, 2)


def assert_exact(actual, expected, tolerance=1e-5):
  """max |a - e| <= tolerance * max |e|, per variable."""
  actual, expected = util.to_numpy(actual), util.to_numpy(expected)
  assert len(actual) == len(expected)
  for a, e in zip(actual, expected):
    assert a.shape == e.shape
    assert np.abs(a - e).max() <= tolerance * np.abs(e).max(), (
        np.abs(a - e).max(), np.abs(e).max())


@pytest.mark.parametrize("rematerialize", [False, True])
@pytest.mark.parametrize("micro_batch_frames", [1, 2, 3, 6])
def test_gpipe_equals_bp(micro_batch_frames, rematerialize):
  stages = util.conv_stages(3)
  frames = util.moving_clip(batch=2, frames=6, shape=SHAPE)
  labels = util.labels_for(2)
  bp = sideways_tf.Pipeline(stages).compute_gradients_and_metrics(
      frames, labels, "bp")
  pipe = sideways_tf.Pipeline(stages,
                              gpipe_micro_batch_frames=micro_batch_frames,
                              gpipe_rematerialize=rematerialize)
  result = pipe.compute_gradients_and_metrics(frames, labels, "gpipe")
  assert all(np.abs(g).max() > 1e-3 for g in util.to_numpy(bp.gradients))
  assert_exact(result.gradients, bp.gradients)
  np.testing.assert_allclose(float(result.loss), float(bp.loss), rtol=1e-6)
  np.testing.assert_allclose(float(result.accuracy), float(bp.accuracy),
                             rtol=1e-6)
  assert float(result.num_loss_terms) == float(bp.num_loss_terms) == 12


@pytest.mark.parametrize("rematerialize", [False, True])
@pytest.mark.parametrize("num_modules,num_frames", [(2, 8), (3, 8), (4, 2)])
def test_gpipe_matches_the_numpy_bp_reference(num_modules, num_frames,
                                              rematerialize):
  """Also with more stages than micro-batches (L = 4, M = 2)."""
  stages = util.dense_stages(num_modules)
  pipe = sideways_tf.Pipeline(stages, gpipe_rematerialize=rematerialize)
  frames = util.moving_clip(batch=3, frames=num_frames, shape=(5,))
  labels = util.labels_for(3)
  weights = [tuple(np.asarray(v, np.float64) for v in s.trainable_variables)
             for s in stages]
  expected = numpy_reference(weights, frames.astype(np.float64), labels, "bp")
  assert_exact(pipe.compute_gradients(frames, labels, "gpipe"), expected)


def test_single_stage_gpipe_is_bp():
  stages = util.conv_stages(1)
  frames = util.moving_clip(batch=2, frames=4, shape=SHAPE)
  labels = util.labels_for(2)
  assert_exact(
      sideways_tf.Pipeline(stages, gpipe_rematerialize=True)
      .compute_gradients(frames, labels, "gpipe"),
      sideways_tf.Pipeline(stages).compute_gradients(frames, labels, "bp"))


@pytest.mark.parametrize("rematerialize", [False, True])
def test_loss_scale_leaves_gradients_unscaled(rematerialize):
  pipe = sideways_tf.Pipeline(util.conv_stages(3),
                              gpipe_rematerialize=rematerialize)
  frames, labels = pipe.prepare_inputs(
      util.moving_clip(batch=2, frames=6, shape=SHAPE), util.labels_for(2),
      "gpipe")
  plain = pipe.clip_gradients(frames, labels, "gpipe")
  scaled = pipe.clip_gradients(frames, labels, "gpipe", loss_scale=1024.0)
  assert_exact(scaled.gradients, plain.gradients)
  np.testing.assert_allclose(float(scaled.loss), float(plain.loss), rtol=1e-6)


def test_one_trace_across_clips_of_one_shape():
  pipe = sideways_tf.Pipeline(util.conv_stages(3))
  for seed in range(3):
    pipe.compute_gradients(util.moving_clip(2, 6, SHAPE, seed=seed),
                           util.labels_for(2), "gpipe")
  assert pipe.trace_count == 1


@pytest.mark.parametrize("rematerialize", [False, True])
def test_trainer_sgd_step_is_w_minus_lr_times_the_gpipe_gradient(
    rematerialize):
  pipe = sideways_tf.Pipeline(util.conv_stages(3), gpipe_micro_batch_frames=2,
                              gpipe_rematerialize=rematerialize)
  frames = util.moving_clip(batch=2, frames=6, shape=SHAPE)
  labels = util.labels_for(2)
  grads = util.to_numpy(pipe.compute_gradients(frames, labels, "bp"))
  before = util.to_numpy(pipe.trainable_variables)
  metrics = Trainer(pipe, keras.optimizers.SGD(0.5), "gpipe").train_step(
      frames, labels)
  for w, w0, g in zip(util.to_numpy(pipe.trainable_variables), before, grads):
    np.testing.assert_allclose(w, w0 - 0.5 * g, rtol=1e-5, atol=1e-6)
  assert metrics["loss"] > 0 and 0 <= metrics["accuracy"] <= 1


def test_rematerialisation_keeps_only_stage_inputs():
  """Without re-materialisation TF's gradient loop stacks every activation
  of every micro-batch; with it the forward loop stores only stage inputs
  (one TensorList per stage above the first) and nothing is stacked."""
  def accumulated_tensors(rematerialize):
    pipe = sideways_tf.Pipeline(util.conv_stages(3),
                                gpipe_rematerialize=rematerialize)
    frames, labels = pipe.prepare_inputs(
        util.moving_clip(2, 6, SHAPE), util.labels_for(2), "gpipe")
    graph = tf.function(lambda f, l: pipe.clip_gradients(
        f, l, "gpipe")).get_concrete_function(frames, labels).graph
    graph_def = graph.as_graph_def()
    nodes = list(graph_def.node) + [n for f in graph_def.library.function
                                    for n in f.node_def]
    return sum(n.op == "TensorListPushBack" for n in nodes), sum(
        n.op == "TensorListSetItem" for n in nodes)
  pushes, set_items = accumulated_tensors(False)
  assert pushes > 4 and set_items == 0
  pushes, set_items = accumulated_tensors(True)
  assert pushes == 0 and set_items == 2


# --------------------------------------------------------------- rejections

def test_rejects_micro_batches_that_do_not_divide_the_clip():
  pipe = sideways_tf.Pipeline(util.conv_stages(2), gpipe_micro_batch_frames=4)
  with pytest.raises(ValueError, match=r"micro_batch_frames = 4 .* T = 6"):
    pipe.compute_gradients(util.moving_clip(2, 6, SHAPE), util.labels_for(2),
                           "gpipe")


@pytest.mark.parametrize("value", [0, -1, 1.5, "2", True])
def test_rejects_bad_micro_batch_frames(value):
  with pytest.raises(ValueError, match="micro_batch_frames"):
    sideways_tf.Pipeline(util.conv_stages(2), gpipe_micro_batch_frames=value)


def test_rejects_bad_rematerialize():
  with pytest.raises(ValueError, match="rematerialize must be True or False"):
    sideways_tf.Pipeline(util.conv_stages(2), gpipe_rematerialize="yes")


def test_rejects_batch_norm_stages():
  stages = util.conv_stages(2)
  stages[0] = keras.Sequential([keras.layers.Conv2D(4, 3, padding="same"),
                                keras.layers.BatchNormalization()],
                               name="conv_bn")
  pipe = sideways_tf.Pipeline(stages)
  with pytest.raises(ValueError, match=r"stage 0 \(conv_bn\).*batch norm"):
    pipe.compute_gradients(util.moving_clip(2, 4, SHAPE), util.labels_for(2),
                           "gpipe")


def test_rejects_skips():
  pipe = sideways_tf.Pipeline(util.dense_stages(3), skips={2: [0]},
                              skip_combine="add")
  with pytest.raises(ValueError, match="Skip-Sideways"):
    pipe.compute_gradients(util.moving_clip(2, 6), util.labels_for(2),
                           "gpipe")


# ------------------------------------------------- devices and the binary

@pytest.mark.parametrize("num_devices", [2, 4])
def test_gpipe_on_logical_devices_equals_bp(num_devices):
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run(
      [sys.executable, "-m", "tests.gpipe_multi_device_check",
       str(num_devices)], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr[-4000:]
  assert result.stdout.strip().startswith(f"OK {num_devices} devices")


def test_bin_train_runs_gpipe(tmp_path):
  from tests.test_train_lib import run_bin, tiny_flags  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  result = run_bin(tiny_flags(tmp_path / "data", workdir, 3) + [
      "--config.algorithm=gpipe", "--config.gpipe.micro_batch_frames=2",
      "--config.gpipe.rematerialize=True"])
  assert result.returncode == 0, result.stdout + result.stderr[-4000:]
  assert "Done: gpipe, 3 steps" in result.stdout
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["algorithm"] == "gpipe"
  assert saved["gpipe"] == {"micro_batch_frames": 2, "rematerialize": True}
  assert tf.train.latest_checkpoint(str(workdir / "checkpoints")).endswith(
      "ckpt-3")


@pytest.mark.parametrize("rematerialize", [False, True])
def test_gpipe_ignores_replay(rematerialize):
  """Replay is a Sideways option; GPipe's gradient is BP's with it set."""
  stages = util.conv_stages(3)
  frames = util.moving_clip(batch=2, frames=6, shape=SHAPE)
  labels = util.labels_for(2)
  bp = sideways_tf.Pipeline(stages).compute_gradients(frames, labels, "bp")
  pipe = sideways_tf.Pipeline(stages, replay_modules=2,
                              gpipe_micro_batch_frames=2,
                              gpipe_rematerialize=rematerialize)
  assert_exact(pipe.compute_gradients(frames, labels, "gpipe"), bp)


def test_float64_reference_is_numpy_bp():
  """The benchmark's exactness reference: BP in float64 on the same
  weights, through the engine, equals the NumPy float64 BP (up to the
  engine's float32 loss: the gradient's 1/N scale is rounded to float32,
  about 3e-8 relative, far below the 1e-5 it has to resolve)."""
  stages = util.dense_stages(3)
  frames = util.moving_clip(batch=3, frames=4, shape=(5,))
  labels = util.labels_for(3)
  weights = [tuple(np.asarray(v, np.float64) for v in s.trainable_variables)
             for s in stages]
  expected = numpy_reference(weights, frames.astype(np.float64), labels, "bp")
  reference = exactness.float64_bp_gradients(stages, frames, labels)
  assert all(g.dtype == np.float64 for g in reference)
  assert exactness.max_relative_difference(reference, expected) <= 1e-7


@pytest.mark.parametrize("rematerialize", [False, True])
def test_gpipe_float32_is_within_1e_5_of_float64_bp(rematerialize):
  stages = util.conv_stages(3)
  frames = util.moving_clip(batch=2, frames=6, shape=SHAPE)
  labels = util.labels_for(2)
  reference = exactness.float64_bp_gradients(stages, frames, labels)
  gpipe = sideways_tf.Pipeline(
      stages, gpipe_micro_batch_frames=2,
      gpipe_rematerialize=rematerialize).compute_gradients(
          frames, labels, "gpipe")
  assert all(g.dtype == np.float32 for g in util.to_numpy(gpipe))
  assert exactness.max_relative_difference(gpipe, reference) <= 1e-5
  bp = sideways_tf.Pipeline(stages).compute_gradients(frames, labels, "bp")
  assert exactness.max_relative_difference(bp, reference) <= 1e-5


@pytest.mark.parametrize("rematerialize", [False, True])
def test_stage_timeline_follows_the_schedule(rematerialize):
  stages = util.conv_stages(3)
  frames = util.moving_clip(batch=2, frames=6, shape=SHAPE)
  labels = util.labels_for(2)
  pipe = sideways_tf.Pipeline(stages, gpipe_micro_batch_frames=2,
                              gpipe_rematerialize=rematerialize)
  times = gpipe.stage_timeline(pipe)(frames, labels)
  assert set(times) == ({"forward", "backward"} if rematerialize
                        else {"forward"})
  big_k, big_m = 3, 3
  for phase, stamps in times.items():
    assert stamps.shape == (big_m + big_k - 1, big_k, 2)
    works = ~np.isnan(stamps[:, :, 0])
    for k in range(big_k):
      first = k if phase == "forward" else big_k - 1 - k
      expected = np.zeros(big_m + big_k - 1, bool)
      if not (phase == "forward" and rematerialize and k == big_k - 1):
        expected[first:first + big_m] = True  # the re-run top skips forward
      np.testing.assert_array_equal(works[:, k], expected)
    worked = stamps[works]
    assert np.all(worked[:, 1] >= worked[:, 0])  # ends after it starts
