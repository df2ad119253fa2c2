"""Time to accuracy: the pre-registered statistics, on made-up runs."""

import json
import os
import re
import subprocess
import sys

import pytest

from sideways_tf.paper_experiments import gap_map
from sideways_tf.paper_experiments import gap_stats
from sideways_tf.paper_experiments import time_to_accuracy as tta
from tests import util


def _write(outdir, cell, seed, final, curve, steps=100,
           regime=tta.CLIPS, **changes):
  """A finished run as gap_map.run_one leaves it: result.json, eval.json
  and the config.json bin/train writes (the run's overrides, `changes`
  applied)."""
  workdir = tta.run_dir(outdir, cell, seed, regime)
  algorithm = cell.algorithms[0]
  overrides = gap_map.run_overrides(cell, algorithm, seed, workdir, steps)
  util.write_finished_run(workdir, dict(
      cell=cell.name, algorithm=algorithm, seed=seed, steps=steps,
      test_accuracy=final, curve=curve, command="bin/train ..."),
      dict(overrides, **changes))


def test_steps_to_target_is_the_first_evaluated_step_at_or_above_it():
  curve = [[250, 0.5], [500, 0.79], [750, 0.8], [1000, 0.7]]
  assert tta.steps_to_target(curve, 0.8) == 750
  assert tta.steps_to_target(curve, 0.81) is None


def test_target_is_bp_mean_minus_three_points_and_bad_runs_do_not_count(
    tmp_path):
  bp, sideways = tta.CELLS[0], tta.CELLS[1]
  _write(tmp_path, bp, 0, 0.80, [[250, 0.78], [500, 0.80]])
  _write(tmp_path, bp, 1, 0.90, [[250, 0.70], [500, 0.90]])
  _write(tmp_path, sideways, 0, 0.50, [[250, 0.5], [500, 0.5]])
  _write(tmp_path, sideways, 1, 0.99, [[250, 0.99]], steps=50)  # cut short
  results, problems = tta.load(tmp_path, steps=100)
  target, by_cell = tta.cell_rows(results)
  assert target == pytest.approx(0.85 - 0.03)
  assert by_cell[bp.name] == {0: (0.80, None), 1: (0.90, 500)}
  assert by_cell[sideways.name] == {0: (0.50, None)}
  assert any("Sideways seed 1: ran 50 steps" in p for p in problems)
  assert sum("missing" in p for p in problems) == (
      len(tta.CELLS) * tta.SEEDS - 4)


def test_a_run_with_another_eval_interval_does_not_count(tmp_path):
  _write(tmp_path, tta.CELLS[0], 0, 0.8, [[1000, 0.8]],
         **{"train.eval_every": "1000"})
  results, problems = tta.load(tmp_path, steps=100)
  assert not results
  assert ("config.json has train.eval_every=1000, the cell runs 250"
          in problems[0])


def _benchmark(seconds_per_step):
  return {"command": "bin/benchmark --simulate_devices=2", "date": "d",
          "config": {"num_devices": 2, "batch_size": 8, "num_frames": 16,
                     "image_size": 32, "model": "frame_cnn",
                     "num_modules": 4},
          "rows": {name: {"parallel": {"median_s": s},
                          "exact": not name.startswith(("sideways", "pipe")),
                          "memory": {"16": {"step_mib": 10.0}}}
                   for name, s in seconds_per_step.items()}}


def test_wall_clock_is_the_curves_steps_times_the_rows_seconds_per_step():
  bp, sideways, replay2, replay3 = (c.name for c in tta.CELLS)
  by_cell = {bp: {0: (0.8, 1000), 1: (0.8, 2000)},
             sideways: {0: (0.5, None), 1: (0.7, 3000)},
             replay2: {0: (0.8, 1000), 1: (0.8, 1000)},
             replay3: {0: (0.8, 1000), 1: (0.8, 2000)}}
  timing = tta.seconds_per_step(_benchmark(
      {"bp": 0.02, "gpipe_remat": 0.01, "sideways": 0.001,
       "sideways_replay2": 0.004, "pipelined_bp": 0.1}))
  rows = {r["row"]: r for r in tta.wall_clock(by_cell, timing)}
  assert set(rows) == {"bp", "gpipe_remat", "sideways", "sideways_replay2",
                       "pipelined_bp"}  # only rows the benchmark has
  assert rows["gpipe_remat"]["seconds"] == {0: 10.0, 1: 20.0}
  assert rows["sideways"]["seconds"] == {0: None, 1: 3.0}
  assert rows["bp"]["mib"] == 10.0 and rows["bp"]["exact"] is True
  # Plain Sideways is fastest per step but missed the target in seed 0, so
  # the best of the family is replay 2 (4 s, 4 s); the best exact row is
  # GPipe re-materialised (10 s, 20 s): ratios 0.4 and 0.2, mean 0.3.
  assert tta.best(list(rows.values()), True)["row"] == "sideways_replay2"
  assert tta.best(list(rows.values()), False)["row"] == "gpipe_remat"
  sentence, (mean, half) = tta.verdict(list(rows.values()))
  assert mean == pytest.approx(0.3)
  # t(1 dof) = 12.706; sd of (0.4, 0.2) = 0.1414; / sqrt(2) = 0.1
  assert half == pytest.approx(12.706 * 0.1, rel=1e-3)
  assert "not a win" in sentence  # the interval's top is above 1


def test_no_family_row_reaching_the_target_in_every_seed_is_no_win():
  bp, sideways = tta.CELLS[0].name, tta.CELLS[1].name
  by_cell = {bp: {0: (0.8, 1000)}, sideways: {0: (0.5, None)}}
  rows = tta.wall_clock(by_cell, tta.seconds_per_step(_benchmark(
      {"bp": 0.02, "sideways": 0.001})))
  sentence, ratio = tta.verdict(rows)
  assert ratio is None and "none wins" in sentence


def test_a_win_needs_the_mean_at_most_0_7_and_the_interval_below_1():
  bp, replay2 = tta.CELLS[0].name, tta.CELLS[2].name
  by_cell = {bp: {0: (0.8, 1000), 1: (0.8, 1000)},
             replay2: {0: (0.8, 1000), 1: (0.8, 1100)}}
  timing = tta.seconds_per_step(_benchmark({"bp": 0.01,
                                             "sideways_replay2": 0.003}))
  sentence, (mean, half) = tta.verdict(tta.wall_clock(by_cell, timing))
  assert mean == pytest.approx(0.315)  # (0.3 + 0.33) / 2
  assert mean + half < 1 and "a win" in sentence and "not" not in sentence
  timing = tta.seconds_per_step(_benchmark({"bp": 0.01,
                                             "sideways_replay2": 0.008}))
  sentence, (mean, _) = tta.verdict(tta.wall_clock(by_cell, timing))
  assert mean == pytest.approx(0.84) and "not a win" in sentence


# --------------------------------------------------------------- one stream

ONE = tta.ONE_STREAM


def test_one_stream_plan_is_four_online_cells_by_five_seeds(tmp_path):
  runs = tta.plan(tmp_path, regime=ONE)
  assert [(cell.name, seed) for cell, seed, _ in runs[:4]] == [
      (cell.name, 0) for cell in ONE.cells]
  assert sorted({seed for _, seed, _ in runs}) == [0, 1, 2, 3, 4]
  assert len(runs) == 4 * 5 == len({str(w) for *_, w in runs})
  clip_dirs = {str(w) for *_, w in tta.plan(tmp_path)}
  for cell, seed, workdir in runs:
    assert workdir.parent.parent == tmp_path / "time_to_accuracy" / (
        "one_stream") and str(workdir) not in clip_dirs
    command = gap_map.train_command(cell, cell.algorithms[0], seed, workdir,
                                    4000)
    for flag in ("--config.train.batch_size=1",
                 "--config.train.update_every_ticks=4",
                 "--config.train.eval_every=250",
                 "--config.train.fidelity_every=0",
                 "--config.train.num_steps=4000", f"--config.seed={seed}",
                 "--config=" + str(gap_map.PROJECT_ROOT / gap_map.CONFIG)):
      assert flag in command, (cell.name, flag)
  # BP, plain Sideways, replay 2 and replay 3 (= pipelined BP, with the
  # Trainer's weight stashing); the config's optimizer and learning rate.
  assert [(c.algorithms, c.overrides["replay_modules"]) for c in ONE.cells
          ] == [(("bp",), "0"), (("sideways",), "0"), (("sideways",), "2"),
                (("sideways",), "3")]
  assert not any(k.startswith("train.optimizer") or "learning_rate" in k
                 for c in ONE.cells for k in c.overrides)


def _parsed_config(cell, steps=10):
  """The config bin/train would build from the cell's overrides."""
  from absl import flags  # noqa: PLC0415
  from ml_collections import config_flags  # noqa: PLC0415
  overrides = gap_map.run_overrides(cell, cell.algorithms[0], 0, "/tmp/w",
                                    steps)
  argv = ["train"] + [f"--config.{k}={v}" for k, v in overrides.items()]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file(
      "config", str(gap_map.PROJECT_ROOT / cell.config),
      flag_values=flag_values, lock_config=True, sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def test_one_stream_overrides_parse_against_the_config():
  for cell in ONE.cells:
    train = _parsed_config(cell).train
    assert (train.batch_size, train.update_every_ticks, train.eval_every,
            train.num_steps) == (1, 4, 250, 10)


def _one_stream_runs(outdir, bp_finals, steps=100):
  """Runs of every cell, seeds 0..len(bp_finals)-1: BP ends at bp_finals
  and reaches its final accuracy at step 50 (even seeds) or 100 (odd);
  Sideways stays at 0.3; replay 2 ends 0.01 below BP, at step 100;
  pipelined BP matches BP."""
  bp, plain, replay2, pipelined = ONE.cells
  for seed, final in enumerate(bp_finals):
    at = (50, 100)[seed % 2]
    _write(outdir, bp, seed, final, [[at, final], [steps, final]], steps,
           ONE)
    _write(outdir, plain, seed, 0.3, [[50, 0.3], [steps, 0.3]], steps, ONE)
    _write(outdir, replay2, seed, final - 0.01,
           [[at, 0.0], [steps, final - 0.01]], steps, ONE)
    _write(outdir, pipelined, seed, final, [[at, final], [steps, final]],
           steps, ONE)


def _stream_benchmark(**config):
  benchmark = _benchmark({"bp": 0.010, "gpipe": 0.030, "sideways": 0.004,
                          "sideways_replay2": 0.006, "pipelined_bp": 0.008,
                          "dp2x1_bp": 0.001})
  benchmark["config"].update(dict(dict(
      batch_size=1, update_every_ticks=4, optimizer="adam"), **config))
  return benchmark


def test_one_stream_report_target_rows_and_verdict(tmp_path):
  _one_stream_runs(tmp_path, [0.8, 0.9])
  bp, plain, replay2, pipelined = (c.name for c in ONE.cells)
  target, by_cell, problems = tta._rows(tmp_path, 100, ONE)
  assert target == pytest.approx(0.85 - 0.03)
  # BP reaches 0.82 in seed 1 only at 100 (its 0.8 in seed 0 never does).
  assert by_cell[bp] == {0: (0.8, None), 1: (0.9, 100)}
  assert by_cell[plain] == {0: (0.3, None), 1: (0.3, None)}
  assert by_cell[pipelined] == by_cell[bp]
  assert len(problems) == 4 * 3  # seeds 2-4 missing, each listed
  assert all("missing (never run)" in p for p in problems)
  rows = {r["row"]: r for r in tta.wall_clock(
      by_cell, tta.seconds_per_step(_stream_benchmark()), ONE.rows_of_curve)}
  assert set(rows) == {"bp", "gpipe", "sideways", "sideways_replay2",
                       "pipelined_bp"}  # no data-parallel row at B = 1
  assert rows["pipelined_bp"]["seconds"] == {0: None, 1: 0.8}
  benchmark_path = tmp_path / "bench.json"
  benchmark_path.write_text(json.dumps(_stream_benchmark()))
  doc = tmp_path / "docs" / "choosing.md"
  path = tta.update(tmp_path, doc.parent, 100, "bin/experiments X",
                    str(benchmark_path), ONE)
  text = path.read_text()
  assert text.count(ONE.markers[0]) == 1 and text.count(ONE.markers[1]) == 1
  assert tta.MARKERS[0] not in text  # the clip regime's section untouched
  assert "Target: 0.820 test clip accuracy" in text
  assert f"| {bp} | 2 (0, 1) | 0.850 ± " in text
  assert "B = 1, T = 16, an optimizer step every 4 ticks, optimizer adam" in (
      text)
  # Pipelined BP reached the target in 1 of 2 seeds (like BP): no row did
  # in every seed, so nothing is compared.
  assert ("Verdict (docs/choosing.md's method): no exact row reached the "
          "target in every seed.") in text
  assert (doc.parent / ONE.plot).stat().st_size > 0


def test_one_stream_not_learned_has_no_target_and_no_verdict(tmp_path):
  _one_stream_runs(tmp_path, [0.45, 0.53])  # mean 0.49 < BP_LEARNS
  target, by_cell, _ = tta._rows(tmp_path, 100, ONE)
  assert target is None
  assert all(steps is None for runs in by_cell.values()
             for _, steps in runs.values())
  lines = tta.table(tmp_path, 100, ONE)
  assert lines[0].startswith(
      "Not learned at this budget: BP's mean final test clip accuracy over "
      "its 2 seeds is 0.490, below 0.5, so there is no target and no "
      "verdict")
  bp_row = next(line for line in lines if line.startswith(
      f"| {ONE.cells[0].name} |"))
  assert bp_row.split(" | ")[3:5] == ["–", "–"]  # reached, steps to target
  benchmark_path = tmp_path / "bench.json"
  benchmark_path.write_text(json.dumps(_stream_benchmark()))
  text = tta.update(tmp_path, tmp_path / "docs", 100, "c",
                    str(benchmark_path), ONE).read_text()
  assert "Verdict (docs/choosing.md's method): not learned at this budget" in (
      text)
  assert "a win" not in text and "Target:" not in text
  # At BP_LEARNS exactly it is learned: the target is its mean - 0.03.
  other = tmp_path / "at_floor"
  _one_stream_runs(other, [0.45, 0.55])
  assert tta._rows(other, 100, ONE)[0] == pytest.approx(0.5 - 0.03)
  assert ONE.learned_floor == gap_stats.BP_LEARNS == 0.5
  assert tta.CLIPS.learned_floor is None  # the clip regime has no such rule


def test_one_stream_verdict_uses_the_clip_regimes_rule(tmp_path):
  _one_stream_runs(tmp_path, [0.9, 0.9, 0.9])  # target 0.87, all reach it
  target, by_cell, _ = tta._rows(tmp_path, 100, ONE)
  rows = tta.wall_clock(by_cell, tta.seconds_per_step(_stream_benchmark()),
                        ONE.rows_of_curve)
  # Steps to target: BP and pipelined BP 50, 100, 50; replay 2 100 in
  # each; Sideways never. Best exact: bp (0.5, 1, 0.5 s; gpipe 3x that);
  # best family: pipelined_bp (0.4, 0.8, 0.4 s; replay 2 0.6 s each):
  # 0.8 in every seed, above WIN_RATIO.
  assert tta.best(rows, True)["row"] == "pipelined_bp"
  assert tta.best(rows, False)["row"] == "bp"
  sentence, (mean, half) = tta.verdict(rows)
  assert (mean, half) == pytest.approx((0.8, 0.0))
  assert "not a win (a win is <= 0.7)" in sentence
  # Twice as fast per step is a win by the same rule.
  faster = _stream_benchmark()
  faster["rows"]["pipelined_bp"]["parallel"]["median_s"] = 0.004
  sentence, (mean, _) = tta.verdict(tta.wall_clock(
      by_cell, tta.seconds_per_step(faster), ONE.rows_of_curve))
  assert mean == pytest.approx(0.4) and sentence.endswith("a win")


def test_a_run_of_the_clip_setting_does_not_count_for_one_stream(tmp_path):
  bp = ONE.cells[0]
  _write(tmp_path, bp, 0, 0.8, [[100, 0.8]], 100, ONE,
         **{"train.batch_size": "8"})
  _write(tmp_path, bp, 1, 0.8, [[100, 0.8]], 100, ONE,
         **{"train.update_every_ticks": "0"})
  results, problems = tta.load(tmp_path, 100, ONE)
  assert not results
  assert any("config.json has train.batch_size=8, the cell runs 1" in p
             for p in problems)
  assert any("train.update_every_ticks=0, the cell runs 4" in p
             for p in problems)


@pytest.mark.parametrize("config, message", [
    (dict(batch_size=8), "batch_size=8 (needs 1)"),
    (dict(update_every_ticks=0), "update_every_ticks=0 (needs 4)"),
    (dict(optimizer="sgd"), "optimizer='sgd' (needs 'adam')"),
    (dict(num_frames=32), "num_frames=32 (needs 16)"),
])
def test_a_benchmark_of_another_setting_is_refused_before_writing(
    tmp_path, config, message):
  _one_stream_runs(tmp_path, [0.9])
  path = tmp_path / "bench.json"
  path.write_text(json.dumps(_stream_benchmark(**config)))
  with pytest.raises(ValueError, match=re.escape(message)):
    tta.update(tmp_path, tmp_path / "docs", 100, "c", str(path), ONE)
  assert not (tmp_path / "docs").exists()


def test_old_benchmark_json_is_the_clip_regimes_one_update_per_clip(tmp_path):
  benchmark = _benchmark({"bp": 0.01})  # no update_every_ticks, optimizer
  path = tmp_path / "bench.json"
  path.write_text(json.dumps(benchmark))
  assert tta.load_benchmark(path, tta.CLIPS) == benchmark
  with pytest.raises(ValueError, match="batch_size=8 \\(needs 1\\)"):
    tta.load_benchmark(path, ONE)


def _experiments(*args):
  return subprocess.run(
      [sys.executable, str(gap_map.PROJECT_ROOT / "bin" / "experiments"),
       *args], capture_output=True, text=True, timeout=600,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))


def test_bin_experiments_reports_the_one_stream_regime(tmp_path):
  _one_stream_runs(tmp_path, [0.9, 0.8])
  good, wrong = tmp_path / "good.json", tmp_path / "wrong.json"
  good.write_text(json.dumps(_stream_benchmark()))
  wrong.write_text(json.dumps(_benchmark({"bp": 0.01})))  # the B = 8 one
  common = ["--only=one_stream", "--report_only", "--steps=100",
            f"--outdir={tmp_path}", f"--report_dir={tmp_path / 'docs'}"]
  refused = _experiments(*common, f"--one_stream_benchmark={wrong}")
  lines = [l for l in (refused.stdout + refused.stderr).splitlines()
           if l.strip()]
  assert refused.returncode == 2 and len(lines) <= 3, lines
  assert "did not time the one_stream runs' setting: batch_size=8" in lines[0]
  assert not (tmp_path / "docs").exists()
  done = _experiments(*common, f"--one_stream_benchmark={good}")
  assert done.returncode == 0, done.stdout + done.stderr[-3000:]
  text = (tmp_path / "docs" / "choosing.md").read_text()
  assert text.count(ONE.markers[0]) == 1
  assert "Target: 0.820 test clip accuracy" in text
  assert "| `pipelined_bp` | " in text
  assert (f"*Command: `bin/experiments {' '.join(common)} "
          f"--one_stream_benchmark={good}`*") in text


def test_missing_runs_are_named_relative_to_the_project_root(monkeypatch,
                                                              tmp_path):
  """The report goes into docs/: a run under the project (the default
  outdir, workdir/experiments) is named by its path from the project root,
  not by one machine's absolute path; a run elsewhere keeps its own path."""
  monkeypatch.setattr(tta, "PROJECT_ROOT", tmp_path)
  _, problems = tta.load(tmp_path / "workdir" / "experiments", 10,
                         tta.ONE_STREAM)
  assert problems and all(
      "(workdir/experiments/time_to_accuracy/one_stream/" in p
      and str(tmp_path) not in p for p in problems)
  elsewhere = tmp_path.parent / "elsewhere"
  _, problems = tta.load(elsewhere, 10, tta.ONE_STREAM)
  assert all(f"({elsewhere.resolve()}/" in p for p in problems)


# ------------------------------------------------- one stream, moving shapes

SHAPES = tta.ONE_STREAM_SHAPES


def test_shapes_stream_is_the_digit_stream_on_configs_default(tmp_path):
  """The same four online curves and benchmark rows, on configs/default.py,
  the test set every 100 steps, in runs of their own."""
  assert [c.name for c in SHAPES.cells] == [c.name for c in ONE.cells]
  assert SHAPES.rows_of_curve == ONE.rows_of_curve
  assert SHAPES.benchmark == ONE.benchmark
  assert SHAPES.learned_floor == gap_stats.BP_LEARNS
  assert set(SHAPES.markers).isdisjoint(ONE.markers + tta.CLIPS.markers)
  digit_dirs = {str(w) for *_, w in tta.plan(tmp_path, regime=ONE)}
  for (cell, seed, workdir), digits in zip(
      tta.plan(tmp_path, regime=SHAPES), ONE.cells * 5):
    assert str(workdir) not in digit_dirs
    assert workdir.parent.parent.name == "one_stream_shapes"
    command = gap_map.train_command(cell, cell.algorithms[0], seed, workdir,
                                    4000)
    assert "--config=" + str(gap_map.PROJECT_ROOT / "configs/default.py") in (
        command)
    for flag in ("--config.train.batch_size=1",
                 "--config.train.update_every_ticks=4",
                 "--config.train.eval_every=100",
                 f"--config.replay_modules="
                 f"{digits.overrides['replay_modules']}"):
      assert flag in command, (cell.name, flag)


def test_shapes_stream_overrides_parse_against_configs_default():
  for cell in SHAPES.cells:
    config = _parsed_config(cell)
    assert (config.experiment, config.data.name, config.train.batch_size,
            config.train.update_every_ticks, config.train.eval_every) == (
                "default", "synthetic", 1, 4, 100)


def test_a_digit_stream_run_does_not_count_for_the_shapes_stream(tmp_path):
  """A digit-stream run copied into the shapes regime's directory is
  refused by the audit: it evaluated every 250 steps, not 100."""
  bp = ONE.cells[0]
  _write(tmp_path, bp, 0, 0.9, [[250, 0.9]], 100, ONE)
  source = tta.run_dir(tmp_path, bp, 0, ONE)
  target = tta.run_dir(tmp_path, SHAPES.cells[0], 0, SHAPES)
  target.parent.mkdir(parents=True)
  source.rename(target)
  results, problems = tta.load(tmp_path, 100, SHAPES)
  assert not results
  assert any("train.eval_every" in p and "seed 0" in p for p in problems)


def test_bin_experiments_reports_the_shapes_stream_in_its_own_section(
    tmp_path):
  for seed, final in enumerate((1.0, 0.98)):
    for cell in SHAPES.cells:
      _write(tmp_path, cell, seed, final, [[100, 0.25], [200, final]], 200,
             SHAPES)
  benchmark = tmp_path / "stream.json"
  benchmark.write_text(json.dumps(_stream_benchmark()))
  done = _experiments("--only=one_stream_shapes", "--report_only",
                      "--steps=200", f"--outdir={tmp_path}",
                      f"--report_dir={tmp_path / 'docs'}",
                      f"--one_stream_shapes_benchmark={benchmark}")
  assert done.returncode == 0, done.stdout + done.stderr[-3000:]
  text = (tmp_path / "docs" / "choosing.md").read_text()
  assert text.count(SHAPES.markers[0]) == 1 and ONE.markers[0] not in text
  assert "Target: 0.960 test clip accuracy" in text
  assert "test set evaluated every 100 steps" in text  # its own interval
  assert (tmp_path / "docs" / SHAPES.plot).exists()
