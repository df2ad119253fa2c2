"""Replay with batch norm (docs/engine.md, "Replay" and "Batch norm").

Sideways normalises each frame over its batch of B examples (one tick is
one frame of the batch). The engine's BP folds time into the batch and
normalises over B*T frames, a different model in training. The reference
for replay is therefore BP with *per-frame* batch statistics: every frame
through the composed stages on its own, in training mode. With every module
below the top replayed, module k's gradient must equal that reference's
gradient of the frames whose gradient reaches it (1..T-2L+k+1), and the
moving averages must be updated once per frame, as without replay.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import sideways_tf
from tests import util
from tests.engine.test_replay import by_module

MOMENTUM = 0.5  # large, so a second update per frame would show


def batch_norm_stages(num_modules, num_classes=3, seed=0):
  """Conv + batch norm + tanh modules; the top pools and classifies."""
  keras.utils.set_random_seed(seed)
  stages = []
  for k in range(num_modules):
    layers = [keras.layers.Conv2D(4, 3, padding="same", use_bias=False),
              keras.layers.BatchNormalization(momentum=MOMENTUM),
              keras.layers.Activation("tanh")]
    if k == num_modules - 1:
      layers += [keras.layers.GlobalAveragePooling2D(),
                 keras.layers.Dense(num_classes)]
    stage = keras.Sequential(layers, name=f"stage_{k}")
    stage.build((None, 6, 6, 2 if k == 0 else 4))
    stages.append(stage)
  return stages


def copy_of(stages):
  """The same stages with the same weights (moving statistics included)."""
  copies = batch_norm_stages(len(stages), seed=1)
  for source, target in zip(stages, copies):
    target.set_weights(source.get_weights())
  return copies


def per_frame_bp_gradients(stages, frames, labels):
  """BP of the mean per-frame loss where batch norm normalises each frame
  over its batch (the statistics Sideways uses), by GradientTape.

  Stateless, so the stages' moving averages are left alone.
  """
  variables = [v for s in stages for v in s.trainable_variables]
  with tf.GradientTape() as tape:
    losses = []
    for t in range(frames.shape[1]):
      x = tf.convert_to_tensor(frames[:, t])
      for stage in stages:
        x, _ = stage.stateless_call(stage.trainable_variables,
                                    stage.non_trainable_variables, x,
                                    training=True)
      losses.append(sideways_tf.sparse_softmax_cross_entropy(labels, x))
    loss = tf.reduce_mean(tf.stack(losses))
  return tape.gradient(loss, variables)


def moving_statistics(stages):
  return [np.asarray(v) for s in stages for v in s.non_trainable_variables]


def assert_per_frame_bp_gradients(pipe, frames, labels):
  """Module k's gradient from `pipe` is per-frame BP's gradient of the
  frames whose gradient reaches it (1..T-2L+k+1), scaled by the clip
  normalisation (T-L+1 valid loss terms)."""
  got = by_module(pipe, pipe.compute_gradients(frames, labels))
  big_l, t = pipe.num_modules, frames.shape[1]
  for k in range(1, big_l + 1):
    n = t - 2 * big_l + k + 1
    exact = by_module(pipe, per_frame_bp_gradients(
        pipe.stages, frames[:, :n], labels))
    for value, want in zip(got[k - 1], exact[k - 1]):
      # float32 through <= 4 conv + batch-norm layers and <= 10 ticks: a
      # relative error of ~1e-5 of the tensor's scale; 1e-4 leaves a
      # margin and is far below what the normalisation changes (below).
      scale = max(np.abs(want).max(), 1e-3)
      np.testing.assert_allclose(value, np.asarray(want) * n / (t - big_l + 1),
                                 rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("num_modules,num_frames", [(3, 8), (4, 9)])
def test_replaying_every_module_below_the_top_gives_per_frame_bp_gradients(
    num_modules, num_frames):
  pipe = sideways_tf.Pipeline(batch_norm_stages(num_modules),
                              replay_modules=num_modules - 1)
  frames = util.moving_clip(batch=3, frames=num_frames, shape=(6, 6, 2))
  labels = util.labels_for(3)
  assert_per_frame_bp_gradients(pipe, frames, labels)
  # The engine's BP normalises over B*T frames: another model in training,
  # so its gradient is not the reference (here it differs by far more than
  # the tolerance above).
  folded = by_module(pipe, pipe.compute_gradients(frames, labels, "bp"))
  bottom_exact = by_module(pipe, per_frame_bp_gradients(
      pipe.stages, frames, labels))[0][0]
  assert np.abs(folded[0][0] - bottom_exact).max() > 1e-2 * np.abs(
      bottom_exact).max()


@pytest.mark.parametrize("replay_modules", [1, 2, 3])
def test_partial_replay_on_a_static_clip_gives_per_frame_bp_gradients(
    replay_modules):
  """With nothing moving there is nothing to approximate: any replay with
  batch norm gives module k per-frame BP's gradient of the frames that
  reach it. (Partial replay with batch norm collapsed on moving digits,
  docs/fidelity.md: this rules out an arithmetic defect of that path.)"""
  pipe = sideways_tf.Pipeline(batch_norm_stages(4),
                              replay_modules=replay_modules)
  frames = util.static_clip(batch=3, frames=10, shape=(6, 6, 2))
  assert_per_frame_bp_gradients(pipe, frames, util.labels_for(3))


def test_replay_updates_the_moving_statistics_once_per_frame():
  """The replayed forwards leave the moving averages alone: after a clip
  they are what plain Sideways (one update per tick with a real frame)
  leaves, which differs from the initial values."""
  stages = batch_norm_stages(3)
  plain_stages = copy_of(stages)
  before = moving_statistics(stages)
  frames = util.moving_clip(batch=3, frames=8, shape=(6, 6, 2))
  labels = util.labels_for(3)
  sideways_tf.Pipeline(stages, replay_modules=2).compute_gradients(
      frames, labels)
  sideways_tf.Pipeline(plain_stages).compute_gradients(frames, labels)
  after, plain = moving_statistics(stages), moving_statistics(plain_stages)
  for got, want, old in zip(after, plain, before):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.abs(got - old).max() > 1e-3  # they did move


def test_replay_refuses_other_state_and_names_it():
  stages = util.conv_stages(3)
  stages[0] = keras.Sequential([keras.layers.Conv2D(4, 3, padding="same"),
                                keras.layers.Dropout(0.5)])
  pipe = sideways_tf.Pipeline(stages, replay_modules=1)
  with pytest.raises(ValueError, match="seed_generator_state"):
    pipe.compute_gradients(util.moving_clip(2, 8, (6, 6, 2)),
                           util.labels_for(2))
