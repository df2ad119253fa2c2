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
    "data.test_instance_fraction", "data.objects", "data.backgrounds"}


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
    if config.data.label_key == "digit_direction":
      expected.add("data.num_directions")
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


PAPER_SCALE = ("ucf101_vgg8", "hmdb51_vgg8", "kinetics400_vgg8")


@pytest.mark.parametrize("name", PAPER_SCALE)
def test_paper_scale_config_trains_with_replay_and_batch_norm(name, tmp_path):
  """The real config with replay_modules=2, on tiny synthetic frames (its
  data set swapped, width 4, batch 2, default placement): the two bottom
  modules hold batch norm and are replayed, which changes their gradient
  and only theirs, and two train steps update every weight."""
  import numpy as np  # noqa: PLC0415
  from sideways_tf import Pipeline  # noqa: PLC0415
  from sideways_tf.training import builder  # noqa: PLC0415
  config = load(ROOT / "configs" / f"{name}.py")
  assert config.model.norm == "batch"
  config.data = default.get_config().data
  config.data.update(dict(image_size=16, num_frames=16, num_train=4,
                          num_test=2, data_dir=str(tmp_path)))
  config.model.width = 4
  config.devices = ()
  config.train.batch_size = 2
  config.replay_modules = 2
  setup = builder.build(config)
  pipe = setup.pipeline
  assert pipe.replay_modules == 2
  for module in pipe.modules[:2]:
    assert module.stage.non_trainable_variables  # moving statistics
  batch = next(iter(setup.datasets.train))
  frames, labels = batch["video"], batch["label"]
  replayed = pipe.compute_gradients(frames, labels)
  plain = Pipeline(pipe.stages).compute_gradients(frames, labels)
  sizes = [len(s.trainable_variables) for s in pipe.stages]
  bottom = sum(sizes[:2])
  assert any(not np.allclose(a, b, rtol=1e-3, atol=1e-6)
             for a, b in zip(replayed[:bottom], plain[:bottom]))
  for a, b in zip(replayed[bottom:], plain[bottom:]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  before = [np.asarray(v) for v in pipe.trainable_variables]
  for _ in range(2):
    assert np.isfinite(setup.trainer.train_step(frames, labels)["loss"])
  assert all(np.abs(np.asarray(v) - b).max() > 0
             for v, b in zip(pipe.trainable_variables, before))
