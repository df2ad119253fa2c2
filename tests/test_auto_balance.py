"""config.model.balance: the model re-cut at start-up, the split saved."""

import json

import ml_collections
import numpy as np
import pytest

from sideways_tf import models
from sideways_tf.training import auto_balance
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
