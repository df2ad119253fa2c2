"""The gap map's plumbing: commands, caching, pairing by seed, intervals."""

import json
import math

import numpy as np
import pytest

from sideways_tf.paper_experiments import gap_map
from sideways_tf.paper_experiments import gap_report


def test_train_command_is_bin_train_with_the_cell_overrides(tmp_path):
  cell = gap_map.cell_by_name("replay_modules=2")
  command = gap_map.train_command(cell, "sideways", 2, tmp_path, 300)
  assert command[1].endswith("bin/train")
  assert command[2].endswith("configs/moving_digits.py")
  for flag in ("--config.algorithm=sideways", "--config.seed=2",
               "--config.train.num_steps=300", "--config.replay_modules=2",
               f"--workdir={tmp_path}"):
    assert flag in command


def test_plan_lists_both_algorithms_per_seed_in_priority_order(tmp_path):
  runs = gap_map.plan(tmp_path, seeds=2, only_groups=["speed"])
  cells = [cell.name for cell, _, _, _ in runs]
  assert cells[0] == "1-2 px/frame (default)"
  # 4 speeds, 2 seeds, Sideways and BP; the default cell has 5 seeds and
  # the 0.25-0.5 px/frame cell 8.
  assert len(runs) == 2 * 2 * 2 + 5 * 2 + 8 * 2
  assert len({str(d) for *_, d in runs}) == len(runs)


def test_a_cached_result_is_not_run_again(tmp_path):
  cell = gap_map.CELLS[0]
  workdir = gap_map.run_dir(tmp_path, cell, "bp", 0)
  workdir.mkdir(parents=True)
  cached = {"steps": 50, "test_accuracy": 0.5}
  (workdir / "result.json").write_text(json.dumps(cached))
  assert gap_map.run_one(cell, "bp", 0, workdir, 50) == cached


def test_interval_is_the_student_t_interval():
  mean, half = gap_report.interval([0.1, 0.2, 0.3])
  assert math.isclose(mean, 0.2)
  assert math.isclose(half, 4.303 * 0.1 / math.sqrt(3))
  assert math.isnan(gap_report.interval([0.4])[1])


def _result(cell, algorithm, seed, accuracy, risk=0.0):
  return {"cell": cell, "algorithm": algorithm, "seed": seed,
          "test_accuracy": accuracy, "test_frame_accuracy": accuracy,
          "seconds": 1.0,
          "train_accuracy_last": [accuracy],
          "early": {"risk": risk, "cosine/module_1": 0.9,
                    "update_cosine/module_1": 0.8,
                    "lag_change/module_1": risk}}


def test_gaps_pair_sideways_with_the_bp_run_of_the_same_seed(tmp_path):
  default, replay = "1-2 px/frame (default)", "replay_modules=2"
  results = [_result(default, "bp", s, 0.8 + 0.01 * s) for s in range(3)]
  results += [_result(default, "sideways", s, 0.6 + 0.01 * s, risk=0.5)
              for s in range(3)]
  results += [_result(replay, "sideways", s, 0.79 + 0.01 * s, risk=0.1)
              for s in range(3)]
  results += [_result("static", "bp", s, 0.8) for s in range(3)]
  results += [_result("static", "sideways", s, 0.8, risk=0.05)
              for s in range(2)]  # seed 2 of Sideways missing: 2 pairs
  rows = {r["cell"]: r for r in gap_report.cells(results)}
  np.testing.assert_allclose(rows[default]["gap"], (-0.2, 0.0), atol=1e-12)
  np.testing.assert_allclose(rows[replay]["gap"][0], -0.01)  # BP shared
  assert rows["static"]["seeds"] == [0, 1]
  found = gap_report.correlations(list(rows.values()))
  assert found["risk"]["pearson"] < -0.9  # more risk, larger gap


def test_update_keeps_the_rest_of_results_md(tmp_path):
  (tmp_path / "results.md").write_text("# Results\n\nEarlier sections.\n")
  outdir = tmp_path / "out"
  default = "1-2 px/frame (default)"
  for s in range(3):
    for algorithm, accuracy in (("bp", 0.8), ("sideways", 0.7)):
      workdir = gap_map.run_dir(outdir, gap_map.cell_by_name(default),
                                algorithm, s)
      workdir.mkdir(parents=True)
      (workdir / "result.json").write_text(json.dumps(
          _result(default, algorithm, s, accuracy + 0.01 * s)))
  path = gap_report.update(outdir, tmp_path, "bin/experiments --only=gap")
  text = path.read_text()
  assert text.startswith("# Results\n\nEarlier sections.")
  assert "| speed | 1-2 px/frame (default) | 3 |" in text
  assert (tmp_path / "results_gap_map.png").stat().st_size > 0
  gap_report.update(outdir, tmp_path, "bin/experiments --only=gap")
  assert path.read_text().count(gap_report.BEGIN) == 1  # replaced, not added


def test_the_user_path_cell_trains_on_the_prepared_mp4s_with_shipped_replay(
    tmp_path):
  cell = gap_map.cell_by_name("mp4 files, shipped video_folder defaults")
  workdir = gap_map.run_dir(tmp_path, cell, "sideways", 0)
  command = gap_map.train_command(cell, "sideways", 0, workdir, 300)
  assert command[2].endswith("configs/video_folder.py")
  assert f"--config.data.path={tmp_path / 'videos_prepared'}" in command
  assert not any(c.startswith("--config.replay_modules") for c in command)
  assert not any(c.startswith("--config.data.data_dir") for c in command)
  plain = gap_map.train_command(gap_map.CELLS[0], "sideways", 0, workdir, 300)
  assert "--config.replay_modules=0" in plain  # the map's plain Sideways
  slow = gap_map.cell_by_name("mp4 files, 0.25-0.5 px/frame, shipped defaults")
  command = gap_map.train_command(slow, "sideways", 0, gap_map.run_dir(
      tmp_path, slow, "sideways", 0), 300)
  assert f"--config.data.path={tmp_path / 'videos_slow_prepared'}" in command
  assert gap_map.VIDEO_SETS[slow.videos] == {
      "data.speed_range": "(0.25, 0.5)"}


def test_an_unknown_video_set_is_named_in_the_error(tmp_path):
  with pytest.raises(ValueError, match="'fast'"):
    gap_map.prepared_videos_dir(tmp_path / "gap" / "cell" / "run", "fast")


def test_detection_counts_early_warnings_against_each_runs_own_gap(tmp_path):
  import tensorflow as tf  # noqa: PLC0415
  default = gap_map.cell_by_name("1-2 px/frame (default)")
  static = gap_map.cell_by_name("static")
  # (cell, seed, Sideways acc., BP acc., risk at steps 250, 500, 1000)
  runs = [(default, 0, 0.5, 0.8, (0.3, 0.6, 0.9)),   # big gap, flagged
          (default, 1, 0.6, 0.8, (0.3, 0.3, 0.9)),   # big gap; only at 1000
          (static, 0, 0.8, 0.8, (0.5, 0.1, 0.1)),    # small gap, false alarm
          (static, 1, 0.8, 0.8, (0.1, 0.1, 0.1)),    # small gap, quiet
          (static, 2, 0.1, 0.2, (0.9, 0.9, 0.9))]    # BP at chance: left out
  results = []
  for cell, seed, sideways, bp, risks in runs:
    results += [_result(cell.name, "sideways", seed, sideways),
                _result(cell.name, "bp", seed, bp)]
    train = gap_map.run_dir(tmp_path, cell, "sideways", seed) / "train"
    writer = tf.summary.create_file_writer(str(train))
    with writer.as_default():
      for step, risk in zip((250, 500, 1000), risks):
        tf.summary.scalar("fidelity/risk", risk, step=step)
    writer.close()
  found = gap_report.detection(tmp_path, results, threshold=0.4)
  assert found == {"big_gap": [1, 2], "small_gap": [1, 2], "skipped": 1}
