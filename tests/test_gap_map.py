"""The gap map's plumbing: commands, caching, pairing by seed, intervals."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from sideways_tf.training import diagnostics
from sideways_tf.paper_experiments import gap_map
from sideways_tf.paper_experiments import gap_report
from sideways_tf.paper_experiments import gap_stats
from tests import util


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


def test_a_selected_cell_plans_the_runs_it_is_reported_against(tmp_path):
  auto = "1-2 px/frame + replay_modules=auto"
  runs = gap_map.plan(tmp_path, seeds=5, only_cells=[auto])
  planned = {(cell.name, algorithm, seed) for cell, algorithm, seed, _ in runs}
  # Its own Sideways runs, the BP runs it shares and the Sideways runs of
  # the cell COMPARISONS subtracts from it, for each of its 5 seeds.
  assert planned == {(name, algorithm, seed) for seed in range(5)
                     for name, algorithm in (
                         (auto, "sideways"), ("1-2 px/frame (default)", "bp"),
                         ("replay_modules=2", "sideways"))}
  # A group and a cell select their union, each run once, in map order.
  both = gap_map.plan(tmp_path, seeds=5, only_groups=["held-out"],
                      only_cells=[auto])
  assert len({str(d) for *_, d in both}) == len(both)
  names = list(dict.fromkeys(cell.name for cell, *_ in both))
  assert names.index("8 px digit, 1-2 px/frame") < names.index(auto)


def test_an_unknown_group_or_cell_is_named_before_anything_runs(tmp_path):
  with pytest.raises(ValueError, match="'held out'"):
    gap_map.plan(tmp_path, seeds=5, only_groups=["held out"])
  with pytest.raises(ValueError, match="'VGG-8 BN L=8'"):
    gap_map.check_selection(only_cells=["VGG-8 BN L=8"])


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


def _result(cell, algorithm, seed, accuracy, risk=0.0, steps=50):
  return {"cell": cell, "algorithm": algorithm, "seed": seed,
          "test_accuracy": accuracy, "test_frame_accuracy": accuracy,
          "seconds": 1.0, "steps": steps, "risk_statistic": risk,
          "train_accuracy_last": [accuracy],
          "early": {"risk": risk, "cosine/module_1": 0.9,
                    "update_cosine/module_1": 0.8,
                    "lag_change/module_1": risk}}


def _write_run(outdir, cell, algorithm, seed, accuracy, steps=50,
               risk=None, **changes):
  """A finished run as run_one leaves it: result.json (with the risk
  statistic read_run keeps, if given), eval.json and the config.json
  bin/train writes (the cell's overrides, `changes` applied)."""
  workdir = gap_map.run_dir(outdir, cell, algorithm, seed)
  overrides = gap_map.run_overrides(cell, algorithm, seed, workdir, steps)
  result = _result(cell.name, algorithm, seed, accuracy, steps=steps)
  if risk is not None:
    result["early"]["risk_statistic"] = risk
  util.write_finished_run(workdir, result, dict(overrides, **changes))
  return workdir


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
  default = gap_map.cell_by_name("1-2 px/frame (default)")
  for s in range(3):
    for algorithm, accuracy in (("bp", 0.8), ("sideways", 0.7)):
      _write_run(outdir, default, algorithm, s, accuracy + 0.01 * s)
  path = gap_report.update(outdir, tmp_path, "bin/experiments --only=gap",
                           seeds=3, steps=50)
  text = path.read_text()
  assert text.startswith("# Results\n\nEarlier sections.")
  assert "| speed | 1-2 px/frame (default) | 3* |" in text  # < 5 seeds
  assert ("| replay_modules=2 | sideways | 0, 1, 2, 3, 4 | missing (never "
          "run) |") in text  # the cell plans 5 seeds
  assert (tmp_path / "results_gap_map.png").stat().st_size > 0
  gap_report.update(outdir, tmp_path, "bin/experiments --only=gap",
                    seeds=3, steps=50)
  assert path.read_text().count(gap_report.BEGIN) == 1  # replaced, not added


def test_a_report_of_the_held_out_cells_leaves_the_maps_section_as_it_is(
    tmp_path):
  outdir = tmp_path / "out"
  default = gap_map.cell_by_name("1-2 px/frame (default)")
  held = gap_map.cell_by_name("8 px digit, 1-2 px/frame")
  for s in range(5):
    for algorithm, accuracy in (("bp", 0.8), ("sideways", 0.5)):
      _write_run(outdir, default, algorithm, s, accuracy + 0.01 * s)
  gap_report.update(outdir, tmp_path, "bin/experiments --only=gap",
                    seeds=5, steps=50)
  text = (tmp_path / "results.md").read_text()
  start, end = gap_report.MAP.begin, gap_report.MAP.end
  map_part = text[text.index(start):text.index(end)]
  assert gap_report.OUT_OF_SAMPLE.begin not in text  # no held-out run yet
  # The held-out runs arrive; the map's runs are gone (a new machine): a
  # report of the held-out group rewrites its own part only.
  for s in range(5):  # gaps 0, -0.1 (not more than 10 points), -0.2 ..
    _write_run(outdir, held, "bp", s, 0.9)
    _write_run(outdir, held, "sideways", s, 0.9 - 0.1 * s,
               risk=0.1 + 0.2 * s)
  for run in (outdir / "gap" / "1-2_px_frame__default_").iterdir():
    (run / "result.json").unlink()
  path = gap_report.update(outdir, tmp_path, "bin/experiments --only=gap "
                           "--gap_groups=held-out", seeds=5, steps=50,
                           groups=["held-out"])
  text = path.read_text()
  assert text[text.index(start):text.index(end)] == map_part
  part = text[text.index(gap_report.OUT_OF_SAMPLE.begin):]
  assert "| held-out | 8 px digit, 1-2 px/frame | 5 |" in part
  assert "| speed |" not in part
  assert "every cell of the map" not in part
  assert ("held-out cells only (out of sample, pre-registered)" in part
          and "flagged 3 of 3 runs more than 10 points behind and 0 of 2 "
          "runs within 10 points (false alarms); ROC AUC of the statistic "
          "for a big gap 1.00." in part)
  for png in ("results_gap_out_of_sample.png",
              "results_gap_out_of_sample_risk.png"):  # the runs, per run
    assert (tmp_path / png).stat().st_size > 0


def test_the_user_path_cell_trains_on_the_prepared_mp4s_with_its_replay(
    tmp_path):
  """The user path: configs/video_folder.py with the replay it shipped when
  the cell was measured (2), pinned so that a rerun measures what the cached
  runs hold whatever the config ships now."""
  cell = gap_map.cell_by_name("mp4 files, shipped video_folder defaults")
  workdir = gap_map.run_dir(tmp_path, cell, "sideways", 0)
  command = gap_map.train_command(cell, "sideways", 0, workdir, 300)
  assert command[2].endswith("configs/video_folder.py")
  assert f"--config.data.path={tmp_path / 'videos_prepared'}" in command
  assert [c for c in command if c.startswith("--config.replay_modules")] == [
      "--config.replay_modules=2"]
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


def test_detection_counts_warnings_against_each_runs_own_gap():
  default = "1-2 px/frame (default)"
  held = "8 px digit, 1-2 px/frame"
  # (cell, seed, Sideways acc., BP acc., risk statistic)
  runs = [(default, 0, 0.5, 0.8, 0.9),   # big gap, flagged
          (default, 1, 0.6, 0.8, 0.3),   # big gap, missed
          ("static", 0, 0.8, 0.8, 0.5),  # small gap, false alarm
          ("static", 1, 0.8, 0.8, 0.1),  # small gap, quiet
          ("static", 2, 0.1, 0.2, 0.9),  # BP at chance: left out
          (held, 0, 0.3, 0.9, 0.7),      # held out: big gap, flagged
          (held, 1, 0.9, 0.9, 0.2)]      # held out: small gap, quiet
  results = []
  for cell, seed, sideways, bp, risk in runs:
    results += [_result(cell, "sideways", seed, sideways, risk=risk),
                _result(cell, "bp", seed, bp)]
  found = gap_stats.detection(results, threshold=0.4)
  assert found["big_gap"] == [2, 3] and found["small_gap"] == [1, 3]
  assert found["skipped"] == 1
  # AUC: big-gap scores (0.9, 0.3, 0.7) against small (0.5, 0.1, 0.2).
  assert math.isclose(found["auc"], 8 / 9)
  held_out = gap_stats.detection(results, threshold=0.4, held_out_only=True)
  assert held_out["big_gap"] == [1, 1] and held_out["small_gap"] == [0, 1]
  assert held_out["auc"] == 1.0


def test_roc_auc_is_the_mann_whitney_probability():
  assert gap_stats.roc_auc([0.9, 0.8], [0.1, 0.2]) == 1.0
  assert gap_stats.roc_auc([0.1], [0.9]) == 0.0
  assert gap_stats.roc_auc([0.5, 0.7], [0.5, 0.2]) == 0.875  # a tie: half
  assert gap_stats.roc_auc([], [0.3]) is None


def test_risk_statistic_is_the_largest_value_within_the_window():
  logged = [(250, 0.3), (500, 0.6), (1000, 0.5), (1250, 0.9)]
  assert diagnostics.risk_statistic(logged) == 0.6  # step 1250 is late
  assert diagnostics.risk_statistic([(1500, 0.9)]) is None
  assert gap_map.EARLY_STEP == diagnostics.RISK_WINDOW


def test_audit_counts_only_complete_runs_of_the_cells_config(tmp_path):
  cell = gap_map.cell_by_name("static")
  _write_run(tmp_path, cell, "bp", 0, 0.8)
  _write_run(tmp_path, cell, "sideways", 0, 0.7)
  _write_run(tmp_path, cell, "bp", 1, 0.8, steps=40)  # stopped early
  _write_run(tmp_path, cell, "sideways", 1, 0.7,
             **{"data.speed_range": "(1.0, 2.0)"})  # another cell's data
  failed = gap_map.run_dir(tmp_path, cell, "bp", 2)
  failed.mkdir(parents=True)
  (failed / "train.log").write_text("Traceback ...")
  counted, left_out = gap_stats.audit(tmp_path, steps=50, seeds=3)
  assert {(r["cell"], r["algorithm"], r["seed"]) for r in counted} == {
      ("static", "bp", 0), ("static", "sideways", 0)}
  reasons = {(r["cell"], r["algorithm"], r["seed"]): r["reason"]
             for r in left_out}
  assert reasons[("static", "bp", 1)] == "ran 40 steps, the map 50"
  assert reasons[("static", "sideways", 1)].startswith(
      "config.json has data.speed_range=[1.0, 2.0]")
  assert reasons[("static", "bp", 2)].startswith("failed or unfinished")
  assert reasons[("static", "sideways", 2)] == "missing (never run)"
  assert ("1-2 px/frame (default)", "bp", 4) in reasons  # 5 seeds planned


def test_comparisons_pair_two_sideways_cells_by_seed():
  exact, replay = "replay_modules=3 (exact)", "replay_modules=2"
  results = [_result(exact, "sideways", s, 0.83 + 0.01 * s) for s in range(5)]
  results += [_result(replay, "sideways", s, 0.80 + 0.02 * s)
              for s in range(4)]  # seed 4 missing: 4 pairs
  row = next(r for r in gap_stats.comparisons(results)
             if (r["a"], r["b"]) == (exact, replay))
  assert row["seeds"] == [0, 1, 2, 3]
  differences = [0.03 - 0.01 * s for s in range(4)]
  np.testing.assert_allclose(row["difference"],
                             gap_stats.interval(differences))


def test_every_cell_parses_against_its_config_file():
  """The overrides of every cell (held-out ones included) are keys of its
  config that bin/train accepts, with values of the right type."""
  from absl import flags  # noqa: PLC0415
  from ml_collections import config_flags  # noqa: PLC0415
  from sideways_tf.run.files import PROJECT_ROOT  # noqa: PLC0415
  for cell in gap_map.CELLS:
    overrides = gap_map.run_overrides(cell, "sideways", 0,
                                      "/tmp/out/gap/cell/run", 10)
    overrides.pop("data.path", None)
    argv = ["train"] + [f"--config.{k}={v}" for k, v in overrides.items()]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", str(PROJECT_ROOT / cell.config), flag_values=flag_values,
        lock_config=True, sys_argv=argv)
    flag_values(argv)
    config = flag_values.config
    for key, text in overrides.items():
      value = config
      for part in key.split("."):
        value = value[part]
      assert gap_stats._same(
          value.tolist() if hasattr(value, "tolist") else value, text), (
              cell.name, key, value, text)
  held_out = [c for c in gap_map.CELLS if c.held_out]
  assert len(held_out) == 12 and all(c.min_seeds >= 5 for c in held_out)
  # The video sets' overrides are bin/make_digit_videos' (moving digits).
  for name, overrides in gap_map.VIDEO_SETS.items():
    argv = ["make"] + [f"--config.{k}={v}" for k, v in overrides.items()]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", str(PROJECT_ROOT / gap_map.CONFIG), flag_values=flag_values,
        lock_config=True, sys_argv=argv)
    flag_values(argv)
    for key, text in overrides.items():
      value = flag_values.config[key.split(".")[0]][key.split(".")[1]]
      assert gap_stats._same(_lists(value), text), (name, key)


def _lists(value):
  return [_lists(v) for v in value] if isinstance(value, tuple) else value


def test_run_plan_reports_each_run_and_skips_a_failed_one(monkeypatch,
                                                          capsys):
  cells = gap_map.CELLS[:2]
  def fake_run_one(cell, algorithm, seed, workdir, steps, data_dir):
    assert data_dir == "videos"
    if cell is cells[1]:
      raise RuntimeError("exit 1")
    return {"cell": cell.name, "test_accuracy": 0.5, "steps": steps}
  monkeypatch.setattr(gap_map, "run_one", fake_run_one)
  seen = []
  results = gap_map.run_plan(
      "label", [(cells[0], "bp", 0, "w0"), (cells[1], "bp", 0, "w1")], 7,
      jobs=1, describe=lambda r: ", more", after=lambda rs: seen.append(
          len(rs)), data_dir="videos")
  assert results == [{"cell": cells[0].name, "test_accuracy": 0.5,
                      "steps": 7}]
  assert seen == [1]  # after each finished run, not after a failure
  out = capsys.readouterr().out
  assert f"{cells[0].name} bp seed 0: test clip acc. 0.500, more; ETA" in out
  assert f"{cells[1].name} bp seed 0: FAILED: exit 1" in out


# ------------------------------------------------------ the pilot gate

FAMILY3 = ("family 3 mp4, 1-2 px/frame, shipped defaults",
           "family 3 mp4, 0.25-0.5 px/frame, shipped defaults")


def test_family3_cells_are_the_shipped_video_config_on_their_own_videos(
    tmp_path):
  fast, slow = (gap_map.cell_by_name(name) for name in FAMILY3)
  assert (fast.videos, slow.videos) == ("family3", "family3_slow")
  assert fast.config == slow.config == gap_map.VIDEO_FOLDER
  # The replay the config shipped when they ran, pinned (it ships 3 now).
  assert fast.overrides["replay_modules"] == slow.overrides[
      "replay_modules"] == "2"
  assert gap_map.VIDEO_SETS["family3_slow"] == dict(
      gap_map.VIDEO_SETS["family3"], **{"data.speed_range": "(0.25, 0.5)"})
  # Not the second family, and not the digits' own clutter and noise.
  assert gap_map.VIDEO_SETS["family3"] != gap_map.VIDEO_SETS["family2"]
  assert gap_map.VIDEO_SETS["family3"]["data.backgrounds"] == "skimage"
  assert gap_map.FAMILY3_GROUP in gap_map.OUT_OF_SAMPLE_GROUPS
  assert fast.min_seeds == slow.min_seeds == 5
  assert gap_map.PILOT_SEED not in {
      seed for *_, seed, _ in gap_map.plan(tmp_path, seeds=5,
                                           only_groups=[gap_map.FAMILY3_GROUP])}


def test_family3_other_replays_change_only_the_replay(tmp_path):
  """The pre-registered auto / replay 3 cells: the family's own videos,
  config and overrides, one setting changed, paired with the family's BP
  and shipped-defaults Sideways runs (no new BP runs)."""
  cells = [c for c in gap_map.CELLS if c.group == gap_map.FAMILY3_REPLAY_GROUP]
  assert len(cells) == 4 and gap_map.FAMILY3_REPLAY_GROUP in (
      gap_map.OUT_OF_SAMPLE_GROUPS)
  for cell in cells:
    shipped = gap_map.cell_by_name(cell.bp_from)
    assert shipped.group == gap_map.FAMILY3_GROUP
    assert (cell.videos, cell.config) == (shipped.videos, shipped.config)
    assert cell.overrides == dict(shipped.overrides,
                                  replay_modules=cell.overrides[
                                      "replay_modules"])
    assert cell.algorithms == ("sideways",) and cell.min_seeds == 5
    assert gap_map.references(cell) == [(shipped, "bp"),
                                        (shipped, "sideways")]
  assert sorted(c.overrides["replay_modules"] for c in cells) == [
      "3", "3", "auto", "auto"]
  runs = gap_map.plan(tmp_path, seeds=5,
                      only_groups=[gap_map.FAMILY3_REPLAY_GROUP])
  new = {(cell.name, algorithm) for cell, algorithm, *_ in runs
         if cell.group == gap_map.FAMILY3_REPLAY_GROUP}
  assert new == {(cell.name, "sideways") for cell in cells}
  assert {seed for *_, seed, _ in runs} == set(range(5))


def test_pilots_run_bp_of_the_named_cells_on_the_pilot_seed(monkeypatch,
                                                            tmp_path):
  prepared, ran = [], []
  monkeypatch.setattr(gap_map, "prepare_videos",
                      lambda outdir, data_dir, video_set: prepared.append(
                          video_set))
  def fake_run_one(cell, algorithm, seed, workdir, steps, data_dir):
    ran.append((cell.name, algorithm, seed, workdir))
    return {"cell": cell.name, "steps": steps,
            "test_accuracy": 0.6 if "1-2" in cell.name else 0.1}
  monkeypatch.setattr(gap_map, "run_one", fake_run_one)
  results = gap_map.run_pilots(tmp_path, 40, FAMILY3)
  assert sorted(prepared) == ["family3", "family3_slow"]
  assert sorted(ran) == sorted(
      (name, "bp", gap_map.PILOT_SEED, gap_map.run_dir(
          tmp_path, gap_map.cell_by_name(name), "bp", gap_map.PILOT_SEED))
      for name in FAMILY3)
  learned = {r["cell"]: r["learned"] for r in results}
  assert learned == {FAMILY3[0]: True, FAMILY3[1]: False}


def test_pilots_need_a_known_cell(tmp_path):
  with pytest.raises(ValueError, match="--gap_cell"):
    gap_map.run_pilots(tmp_path, 40, ())
  with pytest.raises(ValueError, match="'family 4'"):
    gap_map.run_pilots(tmp_path, 40, ["family 4"])


def test_bin_experiments_refuses_a_pilot_without_a_cell(tmp_path):
  outdir = tmp_path / "out"
  done = subprocess.run(
      [sys.executable, str(gap_map.PROJECT_ROOT / "bin" / "experiments"),
       "--only=gap", "--gap_pilot", f"--outdir={outdir}", "--steps=10"],
      capture_output=True, text=True, timeout=600,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  lines = [l for l in (done.stdout + done.stderr).splitlines() if l.strip()]
  assert done.returncode == 2 and len(lines) <= 3, lines
  assert "--gap_pilot" in lines[0] and "--gap_cell" in lines[0]
  assert not outdir.exists()
