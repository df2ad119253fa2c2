"""Every config file builds, and its keys are the default config's keys."""

import importlib.util
import pathlib

import ml_collections
import pytest

from sideways_tf import configs
from sideways_tf.configs import default

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGED = sorted(p for p in (ROOT / "sideways_tf" / "configs").glob("*.py")
                  if p.stem not in ("__init__", "common"))
AT_ROOT = sorted((ROOT / "configs").glob("*.py"))


MOVING_SHAPES_ONLY = {"data.speed", "data.num_shapes", "data.num_directions"}
MOVING_DIGITS_ONLY = {
    "data.object_size", "data.speed_range", "data.speed_per_object",
    "data.clutter", "data.num_train_instances",
    "data.test_instance_fraction"}


def load(path):
  """get_config() of a config file, loaded by path as --config=PATH does."""
  spec = importlib.util.spec_from_file_location(f"_cfg_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def flat_keys(config, prefix=""):
  keys = set()
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      keys |= flat_keys(value, f"{prefix}{key}.")
    else:
      keys.add(f"{prefix}{key}")
  return keys


def test_every_packaged_config_has_a_root_file_and_back():
  assert [p.name for p in PACKAGED] == [p.name for p in AT_ROOT]
  assert "default.py" in [p.name for p in PACKAGED]


@pytest.mark.parametrize("path", PACKAGED, ids=lambda p: p.stem)
def test_config_builds_with_exactly_the_default_keys(path):
  config = load(path)
  assert isinstance(config, ml_collections.ConfigDict)
  # The model's keys depend on config.model.name (see docs/models.md).
  keys = {k for k in flat_keys(config) if not k.startswith("model.")}
  expected = {k for k in flat_keys(default.get_config())
              if not k.startswith("model.")}
  if config.data.name == "moving_digits":
    # Its own generator controls replace the moving-shapes ones.
    expected = (expected - MOVING_SHAPES_ONLY) | MOVING_DIGITS_ONLY
  assert keys == expected, (keys ^ expected)
  assert config.model.name and config.model.num_modules >= 0
  assert config.algorithm in ("sideways", "bp")


@pytest.mark.parametrize("path", AT_ROOT, ids=lambda p: p.stem)
def test_root_config_file_is_the_packaged_one(path):
  packaged = load(ROOT / "sideways_tf" / "configs" / path.name)
  assert load(path).to_dict() == packaged.to_dict()


def test_with_defaults_fills_missing_keys_and_keeps_the_given_ones():
  partial = ml_collections.ConfigDict({
      "algorithm": "bp",
      "train": {"num_steps": 7},
      "model": {"name": "vgg8", "width": 8}})
  full = configs.with_defaults(partial)
  assert full.algorithm == "bp"
  assert full.train.num_steps == 7
  assert full.train.log_every == default.get_config().train.log_every
  assert full.mixed_precision == ""
  # A model's keys depend on its name: the given model replaces the default.
  assert full.model.to_dict() == {"name": "vgg8", "width": 8}
  assert flat_keys(full) - {"model.name", "model.width"} == {
      k for k in flat_keys(default.get_config()) if not k.startswith("model.")}
