"""The model zoo: shapes, granularities, balanced splits, parameter counts."""

import importlib.util
import itertools
import pathlib

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from sideways_tf import models
from sideways_tf.models import resnet
from sideways_tf.models import vgg
from sideways_tf.models import zoo

BUILDERS = {"vgg8": vgg.vgg8_stages, "resnet18": resnet.resnet18_stages}
UNITS = {"vgg8": vgg.vgg8_units, "resnet18": resnet.resnet18_units}
NUM_UNITS = {"vgg8": 8, "resnet18": 10}
NUM_BLOCKS = {"vgg8": 5, "resnet18": 6}


def forward(stages, x, training=False):
  for stage in stages:
    x = stage(x, training=training)
  return x


def trainable_count(layer):
  return sum(int(np.prod(v.shape)) for v in layer.trainable_variables)


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("size", [16, 32, 224])
def test_logits_shape_at_any_input_size(name, size):
  stages = BUILDERS[name](7, granularity="block", width=2)
  logits = forward(stages, tf.zeros((1, size, size, 3)))
  assert logits.shape == (1, 7)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_module_counts_per_granularity(name):
  build = BUILDERS[name]
  assert len(build(3, granularity="layer", width=2)) == NUM_UNITS[name]
  assert len(build(3, granularity="block", width=2)) == NUM_BLOCKS[name]
  for n in range(1, NUM_UNITS[name] + 1):
    assert len(build(3, granularity=n, width=2)) == n
  assert len(build(3, granularity="4", width=2)) == 4  # a CLI string
  # num_modules > 0 overrides granularity; 0 leaves it alone.
  assert len(build(3, granularity="layer", num_modules=3, width=2)) == 3
  assert len(build(3, granularity="layer", num_modules=0, width=2)) == (
      NUM_UNITS[name])


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_bad_arguments_are_rejected_clearly(name):
  build = BUILDERS[name]
  with pytest.raises(ValueError, match="between 1 and"):
    build(3, granularity=NUM_UNITS[name] + 1)
  with pytest.raises(ValueError, match="granularity"):
    build(3, granularity="stage")
  with pytest.raises(ValueError, match="norm"):
    build(3, norm="layer")


def test_block_granularity_cuts_between_architecture_blocks():
  names = lambda stages: [[l.name for l in s.layers] for s in stages]
  assert names(vgg.vgg8_stages(3, "block", width=2, norm="none")) == [
      ["conv1", "conv1_relu", "block1_pool"],
      ["conv2", "conv2_relu", "block2_pool"],
      ["conv3", "conv3_relu", "conv4", "conv4_relu", "block3_pool"],
      ["conv5", "conv5_relu", "conv6", "conv6_relu", "global_pool"],
      ["fc1", "fc2"]]
  assert names(resnet.resnet18_stages(3, "block", width=2)) == [
      ["stem_conv", "stem_norm", "stem_relu", "stem_pool"],
      ["conv2_x_1", "conv2_x_2"], ["conv3_x_1", "conv3_x_2"],
      ["conv4_x_1", "conv4_x_2"], ["conv5_x_1", "conv5_x_2", "global_pool"],
      ["fc"]]


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_analytic_parameter_counts_match_the_built_layers(name, norm):
  units = UNITS[name](5, width=4, norm=norm)
  groups = zoo.group_units(units, "layer")
  stages = zoo.to_stages(groups)
  forward(stages, tf.zeros((1, 32, 32, 3)))
  assert [trainable_count(s) for s in stages] == zoo.module_param_counts(
      groups)


def test_balanced_split_is_the_exact_minimax_split():
  rng = np.random.RandomState(0)
  for _ in range(30):
    costs = list(rng.randint(1, 1000, size=rng.randint(1, 9)))
    for parts in range(1, len(costs) + 1):
      sizes = zoo.balanced_split(costs, parts)
      assert len(sizes) == parts and min(sizes) >= 1
      assert sum(sizes) == len(costs)
      bounds = np.cumsum([0] + sizes)
      worst = max(sum(costs[a:b]) for a, b in zip(bounds[:-1], bounds[1:]))
      best = min(
          max(sum(costs[a:b]) for a, b in zip((0,) + c, c + (len(costs),)))
          for c in itertools.combinations(range(1, len(costs)), parts - 1))
      assert worst == best
  assert zoo.balanced_split([1, 1, 1, 1], 2) == [2, 2]
  assert zoo.balanced_split([10, 1, 1, 1, 1, 10], 3) == [1, 4, 1]
  with pytest.raises(ValueError):
    zoo.balanced_split([1, 2], 3)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_int_granularity_balances_parameters(name):
  units = UNITS[name](5, width=64)
  counts = [u.num_params for u in units]
  for n in (2, 4):
    groups = zoo.group_units(units, n)
    sums = zoo.module_param_counts(groups)
    # No consecutive split has a smaller largest module.
    best = min(
        max(sum(counts[a:b]) for a, b in zip((0,) + c, c + (len(counts),)))
        for c in itertools.combinations(range(1, len(counts)), n - 1))
    assert max(sums) == best
    assert sum(sums) == sum(counts)


def test_build_stages_from_a_config():
  config = ml_collections.ConfigDict(dict(
      name="resnet18", granularity="layer", num_modules=0, width=2,
      norm="group"))
  assert len(models.build_stages(config, 4)) == 10
  config.num_modules = 3
  assert len(models.build_stages(config, 4)) == 3
  config = ml_collections.ConfigDict(dict(
      name="vgg8", granularity="block", num_modules=0, width=2, norm="batch"))
  stages = models.build_stages(config, 4)
  assert forward(stages, tf.zeros((2, 16, 16, 3))).shape == (2, 4)


def load_config(name):
  path = pathlib.Path(__file__).resolve().parents[2] / "configs" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(f"_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize("config_name", ["ucf101_vgg8", "hmdb51_vgg8",
                                         "kinetics400_vgg8"])
def test_gpu_configs_give_one_device_per_module(config_name):
  config = load_config(config_name)
  assert config.model.name == "vgg8"
  stages = models.build_stages(config.model, config.data.num_classes)
  assert len(stages) == len(config.devices)
  assert len(set(config.devices)) == len(config.devices)
  # Every field of the default config is there (the experiment reads them).
  default = load_config("default")
  for section in ("data", "model", "train", "eval"):
    missing = set(default[section]) - set(config[section])
    if section == "model":
      missing -= {"widths"}  # frame_cnn only
    assert not missing, (section, missing)
  assert set(default) <= set(config)


def test_residual_block_is_one_serialisable_layer():
  import keras
  stage = resnet.resnet18_stages(3, "layer", width=2)[2]
  forward([stage], tf.zeros((1, 8, 8, 2)))
  clone = keras.models.clone_model(stage)
  clone(tf.zeros((1, 8, 8, 2)))
  clone.set_weights(stage.get_weights())
  x = tf.random.normal((2, 8, 8, 2))
  np.testing.assert_allclose(clone(x), stage(x), rtol=1e-6, atol=1e-6)
  assert [type(l).__name__ for l in stage.layers] == ["BasicBlock"]
