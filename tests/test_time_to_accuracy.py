"""Time to accuracy: the pre-registered statistics, on made-up runs."""

import json

import pytest

from sideways_tf.paper_experiments import time_to_accuracy as tta


def _write(outdir, cell, seed, final, curve, steps=100, eval_every=None):
  workdir = tta.run_dir(outdir, cell, seed)
  workdir.mkdir(parents=True)
  command = (f"bin/train --config.algorithm={cell.algorithms[0]} "
             f"--config.replay_modules={cell.overrides['replay_modules']} "
             f"--config.train.eval_every={eval_every or tta.EVAL_EVERY}")
  (workdir / "result.json").write_text(json.dumps(dict(
      cell=cell.name, seed=seed, steps=steps, test_accuracy=final,
      curve=curve, command=command)))


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
  _write(tmp_path, tta.CELLS[0], 0, 0.8, [[1000, 0.8]], eval_every=1000)
  results, problems = tta.load(tmp_path, steps=100)
  assert not results
  assert "--config.train.eval_every=250" in problems[0]
