"""The digit x direction map's plumbing: commands, pairing, the report."""

import json

import numpy as np
import pytest

from sideways_tf.configs import moving_digits_direction
from sideways_tf.paper_experiments import gap_map
from sideways_tf.paper_experiments import temporal_map
from sideways_tf.paper_experiments import time_to_accuracy as tta


def test_every_cell_is_bin_train_on_the_direction_config(tmp_path):
  config = moving_digits_direction.get_config()
  for cell in temporal_map.CELLS:
    command = gap_map.train_command(cell, "sideways", 1, tmp_path, 100)
    assert command[2].endswith("configs/moving_digits_direction.py")
    for key in cell.overrides:  # every key exists
      *parents, name = key.split(".")
      target = config
      for part in parents:
        target = target[part]
      assert name in target, key
    # Replay as the cell says (the map forces plain Sideways otherwise).
    assert f"--config.replay_modules={cell.overrides['replay_modules']}" in (
        command)
  names = [c.name for c in temporal_map.CELLS]
  assert names[:3] == ["temporal conv:3",
                       f"temporal conv:3, replay_modules="
                       f"{config.replay_modules}", "per-frame"]


def test_long_streams_run_only_when_asked_for(tmp_path):
  assert "long" not in {c.group for c, *_ in temporal_map.plan(
      tmp_path, steps=100, seeds=1)}
  runs = temporal_map.plan(tmp_path, steps=100, seeds=1,
                           only_groups=["long"])
  assert [(c.name, a) for c, a, *_ in runs][:4] == [
      ("T=64: BP through time", "bp"),
      ("T=64: BP truncated at 16", "bp"),
      ("T=64: GPipe re-materialised", "gpipe"),
      (f"T=64: Sideways, replay_modules={temporal_map.SHIPPED_REPLAY}",
       "sideways")]
  truncated = gap_map.train_command(runs[1][0], "bp", 0, tmp_path, 100)
  assert "--config.train.update_every_ticks=16" in truncated
  assert "--config.data.num_frames=64" in truncated
  gpipe = gap_map.train_command(runs[2][0], "gpipe", 0, tmp_path, 100)
  assert "--config.gpipe.rematerialize=True" in gpipe


def test_plan_is_seed_major_and_shares_bp(tmp_path):
  runs = temporal_map.plan(tmp_path, steps=100, seeds=2,
                           only_groups=["conv", "frame"])
  # Per model and seed: BP and plain Sideways, then the replay cell's
  # Sideways (its BP is the plain cell's).
  assert len(runs) == 2 * 2 * 3
  assert [s for _, _, s, _ in runs] == [0] * 6 + [1] * 6
  assert len({str(d) for *_, d in runs}) == len(runs)


def _write(outdir, cell, algorithm, seed, label, direction, steps=100):
  workdir = temporal_map.run_dir(outdir, cell, algorithm, seed, steps)
  workdir.mkdir(parents=True)
  (workdir / "result.json").write_text(json.dumps({
      "cell": cell.name, "algorithm": algorithm, "seed": seed,
      "steps": steps, "test_accuracy": label,
      "test_accuracy/direction": direction, "test_accuracy/digit": 0.5}))


def test_rows_and_headline_pair_by_seed(tmp_path):
  conv, conv_replay, frame = temporal_map.CELLS[:3]
  for s in range(3):
    _write(tmp_path, conv, "bp", s, 0.5, 0.9)
    _write(tmp_path, conv, "sideways", s, 0.4, 0.8 - 0.1 * s)
    _write(tmp_path, conv_replay, "sideways", s, 0.45, 0.85)
    _write(tmp_path, frame, "bp", s, 0.1, 0.25)
  rows = {(r["cell"], r["algorithm"]): r
          for r in temporal_map.rows(temporal_map.load(tmp_path))}
  np.testing.assert_allclose(rows[(conv.name, "sideways")]["gap_direction"][0],
                             -0.2)
  np.testing.assert_allclose(rows[(conv_replay.name, "sideways")]["gap_label"],
                             (-0.05, 0.0), atol=1e-12)
  heads = {what: (n, mean) for what, _, n, mean, _ in temporal_map.headline(
      temporal_map.load(tmp_path))}
  assert heads["BP conv:3 - BP per-frame, direction"] == (3, pytest.approx(
      0.65))
  lines = temporal_map.section(tmp_path, "bin/experiments --only=temporal")
  assert any("| 100 | per-frame | bp | 3 | 0.100 ± 0.000 | "
             "0.250 ± 0.000 |" in line for line in lines)


def test_read_run_keeps_every_part_of_the_label(tmp_path):
  import tensorflow as tf
  for name, tag in (("train", "train/accuracy"), ("eval", "eval/accuracy")):
    with tf.summary.create_file_writer(str(tmp_path / name)).as_default():
      tf.summary.scalar(tag, 0.5, step=1)
  (tmp_path / "eval.json").write_text(json.dumps({
      "clip_accuracy": 0.5, "frame_accuracy": 0.4,
      "clip_accuracy/direction": 0.75, "clip_accuracy/digit": 0.6}))
  result = gap_map.read_run(tmp_path)
  assert result["test_accuracy/direction"] == 0.75
  assert result["test_accuracy/digit"] == 0.6


def test_headline_plan_is_the_goal_comparisons_runs_from_first_seed(tmp_path):
  runs = temporal_map.plan(tmp_path, steps=100, seeds=2,
                           only_groups=["headline"], first_seed=1)
  conv, conv_replay, frame = (c.name for c in temporal_map.CELLS[:3])
  assert [(c.name, a, s) for c, a, s, _ in runs] == [
      (conv, "bp", 1), (conv_replay, "sideways", 1), (frame, "bp", 1),
      (conv, "bp", 2), (conv_replay, "sideways", 2), (frame, "bp", 2)]
  # The same run directories as the full map's, so it reuses them.
  full = {str(d) for *_, d in temporal_map.plan(
      tmp_path, steps=100, seeds=3, only_groups=["conv", "frame"])}
  assert {str(d) for *_, d in runs} <= full


def test_time_to_accuracy_of_the_temporal_model_uses_its_curves():
  conv, conv_replay = (c.name for c in temporal_map.CELLS[:2])
  def run(cell, algorithm, seed, final, curve):
    return dict(cell=cell, algorithm=algorithm, seed=seed, steps=3000,
                test_accuracy=final, curve=curve)
  results = [
      run(conv, "bp", 1, 0.98, [[500, 0.5], [1000, 0.96], [3000, 0.98]]),
      run(conv, "bp", 2, 0.98, [[500, 0.5], [1500, 0.96], [3000, 0.98]]),
      run(conv_replay, "sideways", 1, 0.98, [[500, 0.96], [3000, 0.98]]),
      run(conv_replay, "sideways", 2, 0.98, [[1000, 0.96], [3000, 0.98]]),
  ]
  benchmark = {"command": "bin/benchmark", "date": "d",
               "config": {"num_devices": 2, "batch_size": 8,
                          "num_frames": 16, "image_size": 32,
                          "model": "frame_cnn", "num_modules": 4},
               "rows": {name: {"parallel": {"median_s": s}, "exact": exact,
                               "memory": {}}
                        for name, s, exact in (
                            ("gpipe_remat", 0.01, True),
                            ("sideways_replay3", 0.02, False))}}
  lines = "\n".join(temporal_map.time_to_accuracy(results, 3000, benchmark))
  # Target 0.98 - 0.03 = 0.95: BP reaches it at 1000 and 1500 steps,
  # Sideways at 500 and 1000; wall-clock 10 s, 15 s vs 10 s, 20 s.
  assert "target 0.950" in lines
  assert f"| {conv} / bp | 2 | 2 of 2 | 1250 ± " in lines
  assert "`gpipe_remat` / best exact" not in lines
  sentence, (mean, _) = tta.verdict(tta.wall_clock(
      {f"{conv} / bp": {1: (0.98, 1000), 2: (0.98, 1500)},
       f"{conv_replay} / sideways": {1: (0.98, 500), 2: (0.98, 1000)}},
      tta.seconds_per_step(benchmark), temporal_map.TTA_ROWS))
  assert mean == pytest.approx((10 / 10 + 20 / 15) / 2)
  assert "`sideways_replay3` / best exact row `gpipe_remat`" in lines
  assert "not a win" in sentence and "not a win" in lines


def test_budget_plan_is_truncated_bp_and_sideways_at_t64(tmp_path):
  runs = temporal_map.plan(tmp_path, steps=100, seeds=1,
                           only_groups=["budget"], first_seed=1)
  assert [(c.name, a, s) for c, a, s, _ in runs] == [
      ("T=64: BP truncated at 16", "bp", 1),
      (f"T=64: Sideways, replay_modules={temporal_map.SHIPPED_REPLAY}",
       "sideways", 1)]
  sideways = gap_map.train_command(runs[1][0], "sideways", 1, tmp_path, 100)
  assert "--config.data.num_frames=64" in sideways
  assert "--config.train.update_every_ticks=16" not in sideways
