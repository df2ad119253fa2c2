"""Temporal variants of the zoo (model.temporal): where the layers go, their
parameters, and stream == clip for whole models cut at any granularity."""

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from sideways_tf import models
from sideways_tf.layers import temporal
from sideways_tf.models import frame_cnn
from sideways_tf.models import resnet
from sideways_tf.models import vgg
from sideways_tf.models import zoo

SPECS = ("conv:3", "shift", "shift:0.25", "conv:2")


def build(name, spec, granularity="layer"):
  if name == "frame_cnn":
    return frame_cnn.frame_cnn_stages(5, num_modules=4, widths=(4, 8, 8),
                                      temporal=spec)
  builder = {"vgg8": vgg.vgg8_stages, "resnet18": resnet.resnet18_stages}[
      name]
  return builder(5, granularity=granularity, width=4, norm="none",
                 temporal=spec)


def test_parse_temporal():
  assert zoo.parse_temporal("") == ("", 0)
  assert zoo.parse_temporal("conv:3") == ("conv", 3)
  assert zoo.parse_temporal("shift") == ("shift", 0.125)
  assert zoo.parse_temporal("shift:0.25") == ("shift", 0.25)
  for bad in ("conv", "conv:x", "tsm", "shift:a"):
    with pytest.raises(ValueError, match="model.temporal"):
      zoo.parse_temporal(bad)
  with pytest.raises(ValueError, match="model.temporal"):
    vgg.vgg8_stages(3, temporal="gru")


@pytest.mark.parametrize("name, count", [("frame_cnn", 3), ("vgg8", 6),
                                         ("resnet18", 8)])
@pytest.mark.parametrize("spec", ["conv:3", "shift"])
def test_one_temporal_layer_per_conv_or_block(name, count, spec):
  stages = build(name, spec)
  layers = [l for s in stages for l in temporal.temporal_layers(s)]
  assert len(layers) == count
  kind = (temporal.CausalTemporalConv if spec.startswith("conv")
          else temporal.TemporalShift)
  assert all(isinstance(l, kind) for l in layers)
  assert not [l for s in build(name, "") for l in temporal.temporal_layers(s)]


@pytest.mark.parametrize("name, units", [("vgg8", vgg.vgg8_units),
                                         ("resnet18", resnet.resnet18_units)])
@pytest.mark.parametrize("spec", ["conv:3", "shift"])
def test_analytic_parameter_counts_include_the_temporal_layers(name, units,
                                                               spec):
  groups = zoo.group_units(units(5, width=4, norm="group", temporal=spec),
                           "layer")
  stages = zoo.to_stages(groups)
  x = tf.zeros((1, 32, 32, 3))
  with temporal.clip_scope(1):
    for stage in stages:
      x = stage(x)
  counts = [sum(int(np.prod(v.shape)) for v in s.trainable_variables)
            for s in stages]
  assert counts == zoo.module_param_counts(groups)


def _run(stages, frames, stream):
  """Logits [B, T, C] of the stages chained, as a clip or frame by frame."""
  batch, num_frames = frames.shape[:2]
  layers = [l for s in stages for l in temporal.temporal_layers(s)]
  if not stream:
    x = tf.reshape(frames, (-1,) + tuple(frames.shape[2:]))
    with temporal.clip_scope(num_frames):
      for stage in stages:
        x = stage(x, training=False)
    return tf.reshape(x, (batch, num_frames, -1))
  states, outputs = None, []
  for t in range(num_frames):
    with temporal.stream_scope(states) as scope:
      x = frames[:, t]
      for stage in stages:
        x = stage(x, training=False)
    states = dict(zip(layers, scope.new_states(layers)))
    outputs.append(x)
  return tf.stack(outputs, 1)


@pytest.mark.parametrize("name", ["frame_cnn", "vgg8", "resnet18"])
@pytest.mark.parametrize("spec", ["conv:3", "shift:0.25"])
def test_the_model_streams_as_its_clip(name, spec):
  stages = build(name, spec, granularity="block")
  frames = tf.random.uniform((2, 5, 16, 16, 3))
  _run(stages, frames[:, :1], stream=False)  # builds
  for layer in [l for s in stages for l in temporal.temporal_layers(s)]:
    if layer.weights:  # past taps non-zero, so the past matters
      layer.kernel.assign(tf.random.normal(layer.kernel.shape, stddev=0.5))
  clip = _run(stages, frames, stream=False)
  stream = _run(stages, frames, stream=True)
  np.testing.assert_allclose(stream, clip, atol=1e-5, rtol=1e-5)
  # Time matters: reversing the clip changes the last frame's logits.
  reversed_clip = _run(stages, frames[:, ::-1], stream=False)
  assert np.abs(np.asarray(reversed_clip[:, 0]) - clip[:, -1]).max() > 1e-4


@pytest.mark.parametrize("name", ["vgg8", "resnet18"])
def test_the_cut_does_not_change_the_model(name):
  """The same layers at every granularity: the same clip outputs."""
  frames = tf.random.uniform((1, 4, 16, 16, 3))
  outputs = []
  for granularity in ("layer", "block", 2):
    tf.keras.utils.set_random_seed(7)
    outputs.append(_run(build(name, "conv:3", granularity), frames,
                        stream=False))
  for other in outputs[1:]:
    np.testing.assert_allclose(other, outputs[0], atol=1e-5, rtol=1e-5)


def test_config_key_builds_the_variant():
  config = ml_collections.ConfigDict(dict(
      name="frame_cnn", num_modules=2, widths=(4, 8), temporal="shift"))
  stages = models.build_stages(config, 3)
  assert sum(len(temporal.temporal_layers(s)) for s in stages) == 2


def test_residual_block_with_a_temporal_layer_round_trips_its_config():
  block = resnet.BasicBlock(4, temporal="conv:3", norm="none")
  copy = resnet.BasicBlock.from_config(block.get_config())
  assert copy.temporal == "conv:3"
  assert isinstance(copy.temporal_layer, temporal.CausalTemporalConv)
