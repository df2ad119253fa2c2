"""The experiments driver and its report, on two tiny runs."""

import json

import pytest

from sideways_tf.paper_experiments import runs as research
from sideways_tf.paper_experiments import report as results_report

TINY_CONFIG = '''
from sideways_tf.configs import default


def get_config():
  config = default.get_config()
  config.data.image_size = 16
  config.data.num_frames = 8
  config.data.num_train = 16
  config.data.num_test = 8
  config.data.data_dir = {data_dir!r}
  config.model.widths = (4, 8, 8)
  config.train.batch_size = 4
  config.eval.batch_size = 8
  return config
'''


def test_every_experiment_makes_valid_configs():
  for name in research.EXPERIMENTS:
    for run in research.runs_for(name, steps=8):
      config = research.make_config(run)
      assert config.algorithm == run["algorithm"]
      assert config.train.num_steps == 8
  depth = research.make_config(research.runs_for("depth", 8)[-1])
  assert (depth.model.name, depth.model.num_modules) == ("vgg8", 8)
  gpu = research.make_config(research.runs_for("depth", 8)[0],
                             "configs/ucf101_vgg8.py")
  assert (gpu.model.width, gpu.model.num_modules) == (64, 2)
  assert gpu.devices == ("auto",)
  with pytest.raises(ValueError, match="unknown experiment"):
    research.runs_for("nope", 8)


def test_runs_and_report(tmp_path, monkeypatch):
  config_path = tmp_path / "tiny.py"
  config_path.write_text(TINY_CONFIG.format(data_dir=str(tmp_path / "data")))
  runs = [r for r in research.runs_for("convergence", steps=4)
          if r["label"].endswith("seed0")]
  monkeypatch.setattr(research, "runs_for", lambda name, steps: runs)
  results = research.run_experiment("convergence", tmp_path, 4,
                                    str(config_path))
  assert [r["label"] for r in results] == ["sideways/seed0", "bp/seed0"]
  for r in results:
    assert 0 <= r["test_accuracy"] <= 1 and 0 <= r["train_accuracy"] <= 1
    assert r["gap"] == pytest.approx(r["train_accuracy"] - r["test_accuracy"])
    assert [step for step, _ in r["curve"]] == [1, 2, 3, 4]
  assert set(results[0]["cosine"]) == {1, 2, 3, 4}
  # The top's per-tick gradients are exact, but its clip gradient sums frames
  # 1..T-L+1 where BP sums all T: close to 1, not equal.
  assert 0.95 < results[0]["cosine"][4] <= 1.0 + 1e-6
  saved = json.loads((tmp_path / "convergence.json").read_text())
  assert len(saved) == 2
  report = results_report.write(tmp_path, tmp_path / "docs", "bin/experiments")
  text = report.read_text()
  assert "| sideways |" in text and "| bp |" in text
  assert (tmp_path / "docs" / "results_convergence.png").stat().st_size > 1000


@pytest.mark.parametrize("signum, code", [(2, 130), (15, 143)])
def test_a_run_stopped_by_a_signal_stops_the_experiments(tmp_path,
                                                         monkeypatch, signum,
                                                         code):
  """The loop saved a checkpoint and returned: bin/experiments exits as
  bin/train does (130 / 143), instead of reading a result the run lacks."""
  monkeypatch.setattr(research.train_lib, "train", lambda *args, **kw: {
      "step": 2, "interrupted": True, "signal": signum})
  run = research.runs_for("convergence", steps=4)[0]
  with pytest.raises(SystemExit) as stopped:
    research.run_one(run, tmp_path)
  assert stopped.value.code == code
