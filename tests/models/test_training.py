"""The zoo models in the Sideways engine: BP equivalence across cuts, norms."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import sideways_tf
from sideways_tf.models import resnet
from sideways_tf.models import vgg
from sideways_tf.training.trainer import Trainer

BUILDERS = {"vgg8": vgg.vgg8_stages, "resnet18": resnet.resnet18_stages}
SIZE = 16  # frames are SIZE x SIZE x 3


def clip(batch=2, frames=4, seed=0, static=False):
  rng = np.random.RandomState(seed)
  if static:
    frame = rng.rand(batch, 1, SIZE, SIZE, 3)
    return np.repeat(frame, frames, axis=1).astype("float32")
  start = rng.rand(batch, 1, SIZE, SIZE, 3)
  steps = 0.05 * rng.randn(batch, frames, SIZE, SIZE, 3)
  return (start + np.cumsum(steps, axis=1)).astype("float32")


def built(stages):
  x = tf.zeros((1, SIZE, SIZE, 3))
  for stage in stages:
    x = stage(x, training=False)
  return stages


def by_path(variables, values=None):
  """{path without the stage prefix: value}: the same for any cut."""
  values = variables if values is None else values
  return {v.path.split("/", 1)[1]: np.asarray(x)
          for v, x in zip(variables, values)}


def copy_weights(source, target):
  """Copies every weight (trainable or not) between two cuts of a model."""
  weights = by_path([w for s in source for w in s.weights])
  targets = [w for s in target for w in s.weights]
  assert len(weights) == len(targets)
  for w in targets:
    w.assign(weights[w.path.split("/", 1)[1]])


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_bp_gradient_is_the_same_for_every_granularity(name):
  """Same weights -> same BP gradient however the model is cut, and equal to
  a GradientTape through the uncut model (BN in training mode: statistics
  over the B*T frames)."""
  build = BUILDERS[name]
  frames, labels = clip(), np.array([0, 2])
  reference = built(build(3, granularity="layer", width=2, norm="batch"))
  cuts = [reference] + [built(build(3, granularity=g, width=2, norm="batch"))
                        for g in ("block", 3, 1)]
  for stages in cuts[1:]:
    copy_weights(reference, stages)
  gradients = []
  for stages in cuts:
    pipe = sideways_tf.Pipeline(stages)
    gradients.append(by_path(pipe.trainable_variables,
                             pipe.compute_gradients(frames, labels, "bp")))
  # The uncut model: every stage in one keras.Sequential, by hand.
  model = keras.Sequential(cuts[0])
  with tf.GradientTape() as tape:
    logits = model(tf.reshape(frames, (-1, SIZE, SIZE, 3)), training=True)
    loss = tf.reduce_mean(sideways_tf.sparse_softmax_cross_entropy(
        np.repeat(labels, frames.shape[1]), logits))
  gradients.append(by_path(model.trainable_variables,
                           tape.gradient(loss, model.trainable_variables)))
  for other in gradients[1:]:
    assert sorted(other) == sorted(gradients[0])
    for path, value in gradients[0].items():
      # float32 through batch norm: compare to the tensor's own scale.
      scale = max(np.abs(value).max(), 1e-3)
      np.testing.assert_allclose(other[path], value, rtol=1e-4,
                                 atol=1e-4 * scale, err_msg=path)
  assert any(np.abs(v).max() > 0 for v in gradients[0].values())


def batch_norms(stages):
  return [layer for stage in stages for layer in stage._flatten_layers()
          if isinstance(layer, keras.layers.BatchNormalization)]


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_warm_up_ticks_do_not_reach_the_moving_statistics(name):
  """One Sideways clip updates module k's BN moving statistics once per tick
  that module holds a real frame: T - k times (k = 0..L-1), never with the
  warm-up zeros.

  Static clip, BN momentum m = 0.5, every moving mean and variance set to 1
  first, weights fixed during the clip (compute_gradients applies nothing).
  Module k then sees the same batch (statistics mu, var) at each of its
  T - k real ticks, so each of its moving means must be
      m^(T-k) * 1 + (1 - m^(T-k)) * mu
  (L = 3, T = 5: 1/32, 1/16, 1/8 of the old value for modules 0, 1, 2), which
  is what feeding module k only its T - k real inputs gives. Had the warm-up
  ticks run in training mode, module k's first BN would have seen zeros k
  times first (mean 0, variance 0) and kept m^T = 1/32 of the old value.
  """
  momentum, num_frames, num_modules = 0.5, 5, 3
  build = lambda: built(BUILDERS[name](
      3, num_modules=num_modules, width=2, norm="batch", bn_momentum=momentum))
  stages, reference = build(), build()
  copy_weights(stages, reference)
  for bn in batch_norms(stages) + batch_norms(reference):
    bn.moving_mean.assign(tf.ones_like(bn.moving_mean))
    bn.moving_variance.assign(tf.ones_like(bn.moving_variance))
  frames = clip(frames=num_frames, static=True)
  pipe = sideways_tf.Pipeline(stages)
  pipe.compute_gradients(frames, np.array([0, 1]), "sideways")

  # Reference: module k sees only its T - k real inputs, in training mode.
  x = frames[:, 0]
  for k, stage in enumerate(reference):
    for _ in range(num_frames - k):
      y = stage(x, training=True)
    x = y
  got = by_path([w for s in stages for w in s.non_trainable_weights])
  want = by_path([w for s in reference for w in s.non_trainable_weights])
  for path, value in want.items():
    # float32 noise grows with depth (graph vs eager kernels): ~1e-5 here,
    # against a warm-up effect of >= 1/32 of the old value.
    np.testing.assert_allclose(got[path], value, rtol=1e-3, atol=1e-4,
                               err_msg=path)

  # The closed form for the first BN of each module, from its input batch.
  x, checked = frames[:, 0], []
  for k, stage in enumerate(reference):
    first_bn, before = _first_batch_norm(stage)
    inputs, x = x, stage(x, training=True)  # x: the next module's input
    if first_bn is None:  # e.g. VGG's dense head
      continue
    checked.append(k)
    for layer in before:
      inputs = layer(inputs, training=True)
    mu = np.mean(np.asarray(inputs), axis=(0, 1, 2))
    kept = momentum ** (num_frames - k)
    path = first_bn.moving_mean.path.split("/", 1)[1]
    np.testing.assert_allclose(got[path], kept + (1 - kept) * mu,
                               rtol=1e-3, atol=1e-4)
    if k > 0:  # warm-up zeros would have left m^T of the old value instead
      polluted = momentum ** num_frames + (1 - kept) * mu
      assert np.abs(got[path] - polluted).max() > 1e-3
  assert checked[:2] == [0, 1]


def _first_batch_norm(stage):
  """A stage's first BN and the layers that compute its input."""
  before = []
  for layer in stage.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      return layer, before
    if isinstance(layer, resnet.BasicBlock):
      return layer.norm1, before + [layer.conv1]
    before.append(layer)
  return None, before


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_bp_updates_the_moving_statistics_once_over_all_frames(name):
  """BP folds time into the batch: one BN update per clip, with statistics
  over the B*T frames (here the mean of a static clip's B distinct frames)."""
  momentum = 0.5
  stages = built(BUILDERS[name](3, granularity="layer", width=2,
                                norm="batch", bn_momentum=momentum))
  first_bn = batch_norms(stages)[0]
  frames = clip(frames=4, static=True)
  sideways_tf.Pipeline(stages).compute_gradients(frames, np.array([0, 1]),
                                                 "bp")
  conv = stages[0].layers[0]
  mu = np.mean(np.asarray(conv(frames[:, 0])), axis=(0, 1, 2))
  np.testing.assert_allclose(first_bn.moving_mean, (1 - momentum) * mu,
                             rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_inference_uses_the_moving_statistics_after_sideways_training(name):
  stages = BUILDERS[name](3, granularity="block", width=2, norm="batch",
                          bn_momentum=0.5)
  pipe = sideways_tf.Pipeline(stages)
  trainer = Trainer(pipe, keras.optimizers.SGD(0.1), "sideways")
  bns = batch_norms(stages)
  for step in range(2):
    metrics = trainer.train_step(clip(frames=len(stages), seed=step),
                                 np.array([0, 1]))
    assert np.isfinite(metrics["loss"])
  for bn in bns:  # every BN, including the top modules', has moved
    assert np.abs(np.asarray(bn.moving_mean)).max() > 1e-4, bn.path
    assert np.abs(np.asarray(bn.moving_variance) - 1).max() > 1e-4, bn.path

  frames = clip(batch=3, frames=2, seed=5)
  together = np.asarray(pipe.predict_frames(frames))
  alone = np.asarray(pipe.predict_frames(frames[1:2]))
  np.testing.assert_allclose(alone[0], together[1], rtol=1e-4, atol=1e-5)
  # With batch statistics the same frame would depend on its batch-mates.
  train_together = np.asarray(pipe.frame_logits(frames, training=True))
  train_alone = np.asarray(pipe.frame_logits(frames[1:2], training=True))
  assert np.abs(train_alone[0] - train_together[1]).max() > 1e-4


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("norm", ["group", "none"])
def test_group_norm_and_no_norm_variants_train(name, norm):
  stages = BUILDERS[name](3, num_modules=3, width=4, norm=norm)
  pipe = sideways_tf.Pipeline(stages)
  trainer = Trainer(pipe, keras.optimizers.SGD(0.1), "sideways")
  frames = clip(frames=4)
  before = [np.asarray(v) for v in pipe.trainable_variables]
  metrics = trainer.train_step(frames, np.array([0, 1]))
  assert np.isfinite(metrics["loss"])
  # No moving statistics: the engine takes the plain (no tf.cond) path.
  assert all(not s.non_trainable_variables for s in stages)
  changed = [np.abs(np.asarray(v) - b).max() > 0
             for v, b in zip(pipe.trainable_variables, before)]
  assert all(changed)
  if norm == "group":
    assert any(isinstance(l, keras.layers.GroupNormalization)
               for s in stages for l in s._flatten_layers())
  assert pipe.predict_frames(frames).shape == (2, 4, 3)
