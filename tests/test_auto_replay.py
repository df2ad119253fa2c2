"""config.replay_modules = "auto": the replay chosen from the data at
start-up, saved with the run and reused (sideways_tf/training/auto_replay.py).
"""

import json

from absl import flags
from ml_collections import config_flags
import pytest

from sideways_tf.run import cli
from sideways_tf.training import diagnostics
from sideways_tf.training import auto_replay
from sideways_tf.training import builder
from sideways_tf.training import train_lib
from tests.test_train_lib import tiny_config


def auto_config(data_dir, speed, **train):
  config = tiny_config(data_dir, **train)
  config.data.speed = speed  # px per frame of the moving shapes
  config.replay_modules = "auto"
  return config


def test_static_data_replays_nothing_and_fast_data_replays(tmp_path, capsys):
  static = builder.build(auto_config(tmp_path / "data", speed=0.0))
  assert static.pipeline.replay_modules == 0
  assert static.replay["replay_modules"] == 0
  assert max(static.replay["replay_lag_change"].values()) <= (
      diagnostics.RISK_THRESHOLD)
  fast = builder.build(auto_config(tmp_path / "data", speed=3.0))
  changes = fast.replay["replay_lag_change"]
  assert fast.pipeline.replay_modules == diagnostics.replay_for(
      changes, 4, diagnostics.RISK_THRESHOLD) > 0
  assert changes["module_1"] > diagnostics.RISK_THRESHOLD
  assert "replay_modules=auto" in capsys.readouterr().out


def test_the_choice_is_deterministic_given_data_and_seed(tmp_path):
  first = builder.build(auto_config(tmp_path / "data", speed=1.0))
  again = builder.build(auto_config(tmp_path / "data", speed=1.0))
  assert first.replay == again.replay  # the same measured values, exactly
  # The measurement does not move the run's own data: its first batch is
  # the first batch a run without "auto" sees.
  plain_config = auto_config(tmp_path / "data", speed=1.0)
  plain_config.replay_modules = 0
  plain = builder.build(plain_config)
  got = next(iter(first.datasets.train))["video"].numpy()
  want = next(iter(plain.datasets.train))["video"].numpy()
  assert (got == want).all()


def test_run_saves_the_choice_and_resume_evaluate_export_reuse_it(
    tmp_path, monkeypatch):
  config = auto_config(tmp_path / "data", speed=3.0, num_steps=2,
                       eval_every=0, fidelity_every=0, stage_time_every=0)
  run = tmp_path / "run"
  train_lib.train(config, run)
  info = json.loads((run / "model_info.json").read_text())
  chosen = info["replay_modules"]
  assert chosen > 0 and info["replay_modules_from"] == "auto"

  def no_measuring(*args, **kwargs):
    raise AssertionError("the saved choice must be reused, not re-measured")
  monkeypatch.setattr(auto_replay, "measure", no_measuring)
  config.train.num_steps = 3
  assert train_lib.train(config, run)["step"] == 3
  assert json.loads((run / "model_info.json").read_text())[
      "replay_modules"] == chosen
  assert train_lib.restore_for_inference(run).pipeline.replay_modules == (
      chosen)
  assert "clip_accuracy" in train_lib.evaluate(run, num_batches=1)


def test_too_short_clips_are_a_value_error_naming_the_need(tmp_path):
  config = auto_config(tmp_path / "data", speed=1.0)
  config.data.num_frames = 6  # L = 4 needs T > 2(L-1) = 6
  with pytest.raises(ValueError, match=r"T > 2\(L-1\) = 6"):
    builder.build(config)


def test_bp_runs_measure_nothing(tmp_path, monkeypatch):
  monkeypatch.setattr(auto_replay, "measure", None)  # would fail if called
  config = auto_config(tmp_path / "data", speed=3.0)
  config.algorithm = "bp"
  setup = builder.build(config)
  assert setup.pipeline.replay_modules == 0 and not setup.replay


@pytest.mark.parametrize("value,parsed", [("auto", "auto"), ("2", 2)])
def test_replay_modules_parses_from_the_command_line(value, parsed):
  argv = ["train", f"--config.replay_modules={value}"]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", cli.default_config_path(),
                                  flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  flag_values(argv)
  assert auto_replay.check(flag_values.config.replay_modules) == parsed


@pytest.mark.parametrize("value", ["some", -1, True, 1.5])
def test_bad_replay_modules_is_a_value_error_naming_it(value):
  with pytest.raises(ValueError, match="replay_modules"):
    auto_replay.check(value)


def test_keras_model_chooses_at_the_first_fit_and_checkpoints_it(tmp_path):
  import keras  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  import sideways_tf  # noqa: PLC0415
  from tests import test_keras_model as k  # noqa: PLC0415
  from tests import util  # noqa: PLC0415
  labels = util.labels_for(4).astype("int32")
  static = np.repeat(k.clips()[0][:, :1], k.NUM_FRAMES, axis=1)
  # Each clip drifts fast from a start near the others': over module 1's
  # lag of 4 frames it changes about as much as two clips differ.
  rng = np.random.RandomState(0)
  steps = np.arange(k.NUM_FRAMES).reshape(1, -1, 1, 1, 1)
  moving = (0.1 * rng.randn(4, 1, *k.SHAPE) + rng.randn(4, 1, *k.SHAPE)
            * steps).astype("float32")
  chosen = {}
  for name, video in (("static", static), ("moving", moving)):
    model = k.new_model(replay_modules="auto")
    assert model.replay_modules == "auto"
    model.fit(k.dataset(video, labels), epochs=1, verbose=0)
    chosen[name] = model.replay_modules
    assert model.pipeline.replay_modules == chosen[name]
    assert model.sideways_modules == list(model.pipeline.modules)
  assert chosen["static"] == 0 and chosen["moving"] > 0
  # The number rebuilds the same model: its checkpoint loads.
  model.save_weights(tmp_path / "w.weights.h5")
  again = sideways_tf.SidewaysModel(util.conv_stages(3),
                                    replay_modules=chosen["moving"])
  again.compile(optimizer=keras.optimizers.SGD(0.1))
  again.build((2, k.NUM_FRAMES) + k.SHAPE)
  again.load_weights(tmp_path / "w.weights.h5")
  for a, b in zip(again.pipeline.state_variables,
                  model.pipeline.state_variables):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))



def test_with_batch_norm_auto_replays_every_module_below_the_top_or_none(
    monkeypatch):
  """Partial replay with batch norm collapsed on the map (docs/fidelity.md,
  4b), so where any module moves, "auto" replays all of them below the
  top. The lag changes are given (module 1 alone moves); the model's
  normalisation decides."""
  import sideways_tf  # noqa: PLC0415
  from tests import util  # noqa: PLC0415
  from tests.engine.test_replay_batch_norm import batch_norm_stages  # noqa: PLC0415
  changes = {"module_1": 0.6, "module_2": 0.1, "module_3": 0.1}
  monkeypatch.setattr(auto_replay, "measure", lambda probe, clips: changes)
  plain = auto_replay.choose(sideways_tf.Pipeline(util.dense_stages(4)), [])
  assert plain[0] == diagnostics.MIN_PARTIAL_REPLAY == 2
  normalised = auto_replay.choose(
      sideways_tf.Pipeline(batch_norm_stages(4)), [])
  assert normalised[0] == 3
  changes.update(module_1=0.3)  # nothing moves: nothing replayed
  assert auto_replay.choose(sideways_tf.Pipeline(batch_norm_stages(4)),
                            [])[0] == 0
