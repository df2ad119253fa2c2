"""algorithm="pipelined_bp": the tick engine with every module below the top
replayed (engine/pipelined_bp.py): pipelined BP with input stashing and
recomputation, exact for the frames whose gradient reaches each module.

Tolerance: the engine sums the same per-frame products as BP in another
order (per tick instead of in one batched op), float32 rounding of a few
hundred terms: the replay tests' 1e-4 relative / 1e-6 absolute.
"""

import logging

import keras
import numpy as np
import pytest

import sideways_tf
from sideways_tf.engine import algorithms
from sideways_tf.training.trainer import Trainer
from tests import util
from tests.engine.test_replay import by_module

SHAPE = (6, 6, 2)


@pytest.mark.parametrize("make_stages,shape,num_modules,num_frames", [
    (util.dense_stages, (5,), 2, 5),
    (util.dense_stages, (5,), 4, 9),
    (util.conv_stages, SHAPE, 3, 8),
])
def test_module_k_gets_bp_of_the_frames_whose_gradient_reaches_it(
    make_stages, shape, num_modules, num_frames):
  """Module k: BP's gradient of frames 1..T-2L+k+1 (summed), over the
  B*(T-L+1) valid loss terms, on a plain Pipeline (replay_modules=0)."""
  pipe = sideways_tf.Pipeline(make_stages(num_modules))
  frames = util.moving_clip(batch=2, frames=num_frames, shape=shape)
  labels = util.labels_for(2)
  got = by_module(pipe, pipe.compute_gradients(frames, labels,
                                               "pipelined_bp"))
  big_l, t = num_modules, num_frames
  for k in range(1, big_l + 1):
    n = t - 2 * big_l + k + 1
    bp = by_module(pipe, pipe.compute_gradients(frames[:, :n], labels, "bp"))
    for g, exact in zip(got[k - 1], bp[k - 1]):
      assert np.abs(exact).max() > 1e-4
      np.testing.assert_allclose(g, exact * n / (t - big_l + 1),
                                 rtol=1e-4, atol=1e-6)


def test_pipelined_bp_is_sideways_with_every_module_below_the_top_replayed():
  stages = util.conv_stages(4)
  frames = util.moving_clip(batch=2, frames=9, shape=SHAPE)
  labels = util.labels_for(2)
  named = sideways_tf.Pipeline(stages).compute_gradients_and_metrics(
      frames, labels, "pipelined_bp")
  replayed = sideways_tf.Pipeline(
      stages, replay_modules=3).compute_gradients_and_metrics(
          frames, labels, "sideways")
  for a, b in zip(named.gradients, replayed.gradients):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
  assert float(named.num_loss_terms) == float(replayed.num_loss_terms) == 12
  np.testing.assert_allclose(float(named.loss), float(replayed.loss),
                             rtol=1e-6)
  # And it is not plain Sideways on this moving clip.
  plain = sideways_tf.Pipeline(stages).compute_gradients(frames, labels)
  assert not all(np.allclose(a, b, rtol=1e-3, atol=1e-5)
                 for a, b in zip(util.to_numpy(plain),
                                 util.to_numpy(named.gradients)))


def test_a_stream_in_chunks_equals_the_whole_clip():
  """What is in flight at a chunk's end is carried into the next chunk."""
  pipe = sideways_tf.Pipeline(util.dense_stages(3))
  util.assert_two_chunks_equal_whole(
      pipe, util.moving_clip(batch=2, frames=10, shape=(5,)),
      util.labels_for(2), split=4, terms=(2, 6), algorithm="pipelined_bp")


def test_buffers_are_the_replay_buffers_of_l_minus_1_modules_flat_in_t(
    caplog):
  pipe = sideways_tf.Pipeline(util.dense_stages(4))
  labels = util.labels_for(2)
  assert pipe.replayed_modules == 0
  pipe.compute_gradients(util.moving_clip(2, 8, (5,)), labels, "pipelined_bp")
  assert pipe.replayed_modules == 3
  assert [m.input_history.shape[0] for m in pipe.modules[:3]] == [6, 4, 2]
  shapes = [tuple(v.shape) for v in pipe.state_variables]
  pipe.compute_gradients(util.moving_clip(2, 40, (5,)), labels,
                         "pipelined_bp")
  assert [tuple(v.shape) for v in pipe.state_variables] == shapes
  # A Sideways call on the same Pipeline goes back to its own replay (0),
  # with new buffers, and says so.
  with caplog.at_level(logging.WARNING):
    pipe.compute_gradients(util.moving_clip(2, 8, (5,)), labels, "sideways")
  assert pipe.replayed_modules == 0
  assert "reallocating the buffers for 0 replayed module(s)" in caplog.text
  with pytest.raises(ValueError, match="3 replayed module"):
    pipe.compute_gradients(util.moving_clip(2, 8, (5,)), labels,
                           "pipelined_bp", reset=False)


def test_a_pipeline_built_with_l_minus_1_serves_both_without_reallocating(
    caplog):
  pipe = sideways_tf.Pipeline(util.dense_stages(3), replay_modules=2)
  frames, labels = util.moving_clip(2, 7, (5,)), util.labels_for(2)
  with caplog.at_level(logging.WARNING):
    a = pipe.compute_gradients(frames, labels, "pipelined_bp")
    b = pipe.compute_gradients(frames, labels, "sideways")
  assert "reallocating" not in caplog.text
  for x, y in zip(a, b):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-8)


def test_trainer_sgd_step_is_w_minus_lr_times_the_pipelined_bp_gradient():
  pipe = sideways_tf.Pipeline(util.conv_stages(3))
  frames = util.moving_clip(batch=2, frames=7, shape=SHAPE)
  labels = util.labels_for(2)
  grads = util.to_numpy(pipe.compute_gradients(frames, labels,
                                               "pipelined_bp"))
  before = util.to_numpy(pipe.trainable_variables)
  Trainer(pipe, keras.optimizers.SGD(0.5), "pipelined_bp").train_step(
      frames, labels)
  for w, w0, g in zip(util.to_numpy(pipe.trainable_variables), before, grads):
    np.testing.assert_allclose(w, w0 - 0.5 * g, rtol=1e-5, atol=1e-6)


def test_keras_model_and_registry_give_it_every_module_below_the_top():
  algorithm = algorithms.get("pipelined_bp")
  assert algorithm.exact and algorithm.streams
  assert algorithm.replay_modules(5, 0) == 4
  assert algorithms.get("sideways").replay_modules(5, 2) == 2
  model = sideways_tf.SidewaysModel(util.dense_stages(3),
                                    algorithm="pipelined_bp")
  assert model.pipeline.replay_modules == 2


def test_batch_norm_below_the_top_gives_the_replayed_sideways_gradient():
  """Replay recomputes batch-norm stages statelessly (docs/engine.md), so the
  named pipeline accepts them and is Sideways with L-1 replayed modules."""
  def stages():
    keras.utils.set_random_seed(0)
    layers = util.conv_stages(3)
    layers[1] = keras.Sequential([keras.layers.Conv2D(4, 3, padding="same"),
                                  keras.layers.BatchNormalization()])
    return layers
  clip, labels = util.moving_clip(2, 6, SHAPE), util.labels_for(2)
  named = sideways_tf.Pipeline(stages()).compute_gradients(
      clip, labels, "pipelined_bp")
  replayed = sideways_tf.Pipeline(stages(), replay_modules=2).compute_gradients(
      clip, labels, "sideways")
  for a, b in zip(named, replayed):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


def test_rejects_clips_shorter_than_the_pipeline():
  pipe = sideways_tf.Pipeline(util.dense_stages(3))
  with pytest.raises(ValueError, match="T = 2 < L = 3"):
    pipe.compute_gradients(util.moving_clip(2, 2, (5,)), util.labels_for(2),
                           "pipelined_bp")


def test_online_updates_stash_weights_on_a_pipeline_built_without_replay():
  """Trainer(update_every_ticks=N) turns weight stashing on for the modules
  pipelined_bp replays, even when the Pipeline itself replays none: each
  update is then the exact delayed gradient (tests/engine/test_replay_online)."""
  from tests.engine import test_replay_online as online  # the reference
  stages = util.dense_stages(3)
  frames = util.moving_clip(batch=2, frames=9, shape=(5,))
  labels = util.labels_for(2)
  want = online.online_sgd_reference(stages, frames, labels)
  pipe = sideways_tf.Pipeline(stages)  # replay_modules=0
  trainer = Trainer(pipe, keras.optimizers.SGD(online.LEARNING_RATE),
                    "pipelined_bp", update_every_ticks=online.EVERY)
  trainer.train_step(frames, labels)
  for got, expected in zip(pipe.trainable_variables, want):
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4,
                               atol=1e-5)
  assert pipe.replayed_modules == 2
  assert [len(m.weight_history) for m in pipe.modules] == [2, 2, 0]
