"""Training settings that would fail late or silently do nothing are
refused before a run writes anything, naming the --config flag."""

import pytest

from sideways_tf import configs
from sideways_tf.configs import default
from sideways_tf.training import config_check
from sideways_tf.training import train_lib


def config_with(key, value):
  config = configs.with_defaults(default.get_config())
  section, field = key.split(".")
  with config.unlocked():
    config[section][field] = value
  return config


@pytest.mark.parametrize("key, value, expected", [
    ("train.num_steps", -5, "--config.train.num_steps must be a positive "
     "integer"),
    ("train.num_steps", 0, "train.num_steps must be a positive integer"),
    ("train.checkpoint_every", 0, "a checkpoint at the end only"),
    ("train.keep_checkpoints", 0, "--config.train.keep_checkpoints must be"),
    ("train.batch_size", 0, "--config.train.batch_size must be"),
    ("eval.batch_size", -1, "--config.eval.batch_size must be"),
    ("train.log_every", -1, "--config.train.log_every must be an integer "
     ">= 0"),
    ("train.eval_every", -100, "train.eval_every must be an integer >= 0"),
    ("train.learning_rate", 0.0, "learning_rate must be a positive number"),
    ("train.learning_rate", float("nan"), "learning_rate must be a positive"),
    ("model.widths", ("abc",), "--config.model.widths must be positive "
     "integers such as \"(16, 32, 64)\", got ('abc',)"),
    ("model.widths", (16, 0), "got (16, 0)"),
])
def test_bad_values_name_their_flag(key, value, expected):
  with pytest.raises(ValueError) as error:
    config_check.check(config_with(key, value))
  assert expected in str(error.value)


def test_every_shipped_config_passes():
  import pathlib  # noqa: PLC0415
  import importlib  # noqa: PLC0415
  folder = pathlib.Path(configs.__file__).parent
  checked = 0
  for path in sorted(folder.glob("*.py")):
    module = importlib.import_module(f"sideways_tf.configs.{path.stem}")
    if hasattr(module, "get_config"):
      config_check.check(configs.with_defaults(module.get_config()))
      checked += 1
  assert checked >= 8


def test_train_refuses_before_touching_the_workdir(tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match="keep_checkpoints"):
    train_lib.train(config_with("train.keep_checkpoints", 0), workdir)
  assert not workdir.exists()
