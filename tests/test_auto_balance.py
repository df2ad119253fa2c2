"""config.model.balance and num_modules="auto": the model re-cut at
start-up, the split saved."""

import json
import re

from absl import flags
import ml_collections
from ml_collections import config_flags
import numpy as np
import pytest

from sideways_tf import models
from sideways_tf.engine import balance
from sideways_tf.run import cli
from sideways_tf.training import auto_balance
from sideways_tf.training import builder
from sideways_tf.training import train_lib
from tests.test_train_lib import tiny_config


def model_config(balance=""):
  return ml_collections.ConfigDict(dict(
      name="frame_cnn", num_modules=3, widths=(4, 8, 8), balance=balance))


def test_no_balance_keeps_the_model_split():
  config = model_config()
  stages = models.build_stages(config, 3)
  kept, info = auto_balance.apply(config, stages, (16, 16, 3), 2)
  assert kept == stages and info == {}


@pytest.mark.parametrize("mode", ["time", "params"])
def test_balance_recuts_the_same_layers(mode):
  config = model_config(balance=mode)
  stages = models.build_stages(config, 3)
  layers = [l for s in stages for l in s.layers]
  recut, info = auto_balance.apply(config, stages, (16, 16, 3), 2)
  assert len(recut) == 3 and info["balance"] == mode
  assert sum(info["stage_sizes"]) == len(layers) == 7
  assert [l for s in recut for l in s.layers] == layers  # order kept
  assert [len(s.layers) for s in recut] == info["stage_sizes"]
  assert info["stage_layers"] == [[l.name for l in s.layers] for s in recut]
  if mode == "params":
    # Parameters per layer: conv 112, pool 0, conv 296, pool 0, conv 584,
    # pool 0, dense 27. The last conv bounds the largest module (584), so it
    # may not share one with another weight layer: [conv pool conv] [pool
    # conv] [pool dense] (ties go to the most even split).
    assert info["stage_sizes"] == [3, 2, 2]


def test_saved_sizes_are_reused_and_checked():
  config = model_config(balance="time")
  stages = models.build_stages(config, 3)
  recut, info = auto_balance.apply(config, stages, (16, 16, 3), 2,
                                   stage_sizes=[1, 2, 4])
  assert info["stage_sizes"] == [1, 2, 4]
  with pytest.raises(ValueError, match=r"stage_sizes \[1, 2\] do not cut"):
    auto_balance.apply(config, models.build_stages(config, 3), (16, 16, 3), 2,
                       stage_sizes=[1, 2])


def test_rejects_unknown_mode():
  with pytest.raises(ValueError, match=r"balance must be one of .* 'speed'"):
    auto_balance.apply(model_config(balance="speed"),
                       models.build_stages(model_config(), 3), (16, 16, 3), 2)


def test_training_run_saves_and_reuses_the_split(tmp_path):
  config = tiny_config(tmp_path / "data", num_steps=2, eval_every=0,
                       fidelity_every=0, stage_time_every=0)
  config.model.balance = "time"
  train_lib.train(config, tmp_path / "run")
  info = json.loads((tmp_path / "run" / "model_info.json").read_text())
  assert info["balance"] == "time" and sum(info["stage_sizes"]) == 7
  assert len(info["stage_sizes"]) == config.model.num_modules
  # Resume and inference rebuild the saved split (not a new timing).
  config.train.num_steps = 3
  assert train_lib.train(config, tmp_path / "run")["step"] == 3
  restored = train_lib.restore_for_inference(tmp_path / "run")
  assert [len(s.layers) for s in restored.pipeline.stages] == \
      info["stage_sizes"]
  assert all(np.all(np.isfinite(np.asarray(v)))
             for v in restored.pipeline.trainable_variables)


def auto_model_config(num_modules="auto", balance=""):
  return ml_collections.ConfigDict(dict(
      name="frame_cnn", num_modules=num_modules, widths=(4, 8, 8),
      balance=balance))


def test_auto_takes_one_module_per_device():
  config = auto_model_config()
  check = auto_balance.check_num_modules(config)
  stages = models.build_stages(config, 3)  # the model's own split first
  assert check == "auto" and len(stages) == 4  # frame_cnn's default
  recut, info = auto_balance.apply(config, stages, (16, 16, 3), 2,
                                   num_devices=2)
  assert len(recut) == info["num_modules"] == 2
  assert info["balance"] == "time"  # "auto" balances by time
  assert info["num_modules_from"] == "config.devices"
  assert sum(info["stage_sizes"]) == 7


def test_auto_without_devices_keeps_the_models_number_of_modules():
  config = auto_model_config(balance="params")
  recut, info = auto_balance.apply(config, models.build_stages(config, 3),
                                   (16, 16, 3), 2)
  assert len(recut) == info["num_modules"] == 4
  assert info["balance"] == "params"  # an explicit balance is kept
  assert info["num_modules_from"] == "the model's own split (frame_cnn)"


def test_auto_with_more_devices_than_layers_is_an_error():
  config = auto_model_config()
  with pytest.raises(ValueError, match=r"chose 9 modules .* only 7 layers"):
    auto_balance.apply(config, models.build_stages(config, 3), (16, 16, 3),
                       2, num_devices=9)


@pytest.mark.parametrize("value", ["autp", -1, True, 2.5, "", None])
def test_bad_num_modules_is_a_value_error_naming_it(value):
  with pytest.raises(ValueError, match="num_modules must be .* got " +
                     re.escape(repr(value))):
    auto_balance.check_num_modules(auto_model_config(value))


def test_builder_rejects_a_bad_num_modules_before_building(tmp_path):
  config = tiny_config(tmp_path / "data")
  config.model.num_modules = "four"
  with pytest.raises(ValueError, match="got 'four'"):
    builder.build_model(config, 4, (16, 16, 3))


@pytest.mark.parametrize("value", ["auto", "3"])
def test_num_modules_auto_parses_from_the_command_line(value):
  argv = ["train", f"--config.model.num_modules={value}"]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", cli.default_config_path(),
                                  flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  flag_values(argv)
  parsed = flag_values.config.model.num_modules
  assert parsed == ("auto" if value == "auto" else 3)
  assert auto_balance.check_num_modules(flag_values.config.model) == parsed


def test_auto_run_logs_saves_and_reuses_the_split(tmp_path, capsys,
                                                   monkeypatch):
  config = tiny_config(tmp_path / "data", num_steps=2, eval_every=0,
                       fidelity_every=0, stage_time_every=0)
  config.model.num_modules = "auto"
  config.devices = ("/CPU:0", "/CPU:0")  # two devices: two modules
  train_lib.train(config, tmp_path / "run")
  assert "num_modules=auto: 2 from config.devices" in capsys.readouterr().out
  info = json.loads((tmp_path / "run" / "model_info.json").read_text())
  assert info["num_modules"] == 2 and len(info["stage_sizes"]) == 2
  assert info["balance"] == "time" and sum(info["stage_sizes"]) == 7
  saved = json.loads((tmp_path / "run" / "config.json").read_text())
  assert saved["model"]["num_modules"] == "auto"
  # Resume, evaluation and export rebuild the saved split: no new timing.
  def no_timing(*args, **kwargs):
    raise AssertionError("the saved split must be reused, not re-timed")
  monkeypatch.setattr(balance, "balance_by_time", no_timing)
  config.train.num_steps = 3
  assert train_lib.train(config, tmp_path / "run")["step"] == 3
  assert "saved split" in capsys.readouterr().out
  restored = train_lib.restore_for_inference(tmp_path / "run")
  assert [len(s.layers) for s in restored.pipeline.stages] == \
      info["stage_sizes"]
  assert json.loads((tmp_path / "run" / "model_info.json").read_text())[
      "stage_sizes"] == info["stage_sizes"]


def test_time_balance_counts_replay_and_says_so(capsys):
  config = model_config(balance="time")
  stages = models.build_stages(config, 3)
  recut, info = auto_balance.apply(config, stages, (16, 16, 3), 2,
                                   replay_modules=2, skips={2: [0]})
  assert sum(info["stage_sizes"]) == 7 and len(recut) == 3
  assert ("balanced by time, with replay's extra forwards per module "
          "[2, 1, 0]") in capsys.readouterr().out
