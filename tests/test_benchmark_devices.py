"""bin/benchmark --simulate_devices: the report's structure at tiny sizes.

No timing is asserted (CI machines are noisy); only what the run must
produce and that the exact algorithms' gradients are BP's.
"""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import pytest

from sideways_tf.benchmark import devices as benchmark_devices
from sideways_tf.benchmark import devices_report

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_bubble_from_intervals():
  # Stage 0 busy 0-4 and 6-10 (overlapping ops counted once), stage 1 busy
  # 2-8, over the span 0-10.
  idle = benchmark_devices.bubble_from_intervals(
      {0: [(0, 3), (1, 4), (6, 10)], 1: [(2, 8)]}, 2)["idle_fraction"]
  assert idle == pytest.approx([0.2, 0.4])
  assert not benchmark_devices.bubble_from_intervals({}, 2)["available"]


NAN = float("nan")


def test_bubble_from_stage_times_equal_stages_is_the_schedules():
  # K = 2 stages, M = 3 micro-batches, unit clocks: stage 0 works at clocks
  # 0-2, stage 1 at clocks 1-3; each idles 1 of the 4 clock units.
  times = [[(0, 1), (NAN, NAN)], [(1, 2), (1, 2)], [(2, 3), (2, 3)],
           [(NAN, NAN), (3, 4)]]
  result = benchmark_devices.bubble_from_stage_times(times)
  expected = (2 - 1) / (3 + 2 - 1)
  assert result["bubble"] == pytest.approx([expected, expected])
  assert result["idle"] == pytest.approx([expected, expected])
  assert result["idle_clocks"] == pytest.approx([expected, expected])
  assert result["clocks"] == 4 and result["span_s"] == pytest.approx(4.0)


def test_bubble_from_stage_times_separates_waits_from_fill_and_drain():
  # Stage 1 is twice as slow: stage 0 drains early (bubble 4/7), stage 1
  # only fills (1/7); neither waits in between.
  slow = [[(0, 1), (NAN, NAN)], [(1, 2), (1, 3)], [(2, 3), (3, 5)],
          [(NAN, NAN), (5, 7)]]
  result = benchmark_devices.bubble_from_stage_times(slow)
  assert result["bubble"] == pytest.approx([4 / 7, 1 / 7])
  assert result["idle"] == pytest.approx([4 / 7, 1 / 7])
  # The loop leaves 0.5 between one stage's micro-batches: waits count as
  # idle, not as bubble. Span 5.2; stage 0 fills 0, drains 1.2; stage 1
  # fills 1.2, drains 0; each works 3.
  gaps = [[(0, 1), (NAN, NAN)], [(1.5, 2.5), (1.2, 2.2)],
          [(3, 4), (2.7, 3.7)], [(NAN, NAN), (4.2, 5.2)]]
  result = benchmark_devices.bubble_from_stage_times(gaps)
  assert result["bubble"] == pytest.approx([1.2 / 5.2, 1.2 / 5.2])
  assert result["idle"] == pytest.approx([2.2 / 5.2, 2.2 / 5.2])
  assert result["first_work_s"] == pytest.approx([1.0, 1.0])
  assert result["median_work_s"] == pytest.approx([1.0, 1.0])
  assert result["median_period_s"] == pytest.approx([1.5, 1.5])
  # A stage without work in the phase (the top, in a rematerialised
  # forward pass) has no figures; no work at all is not available.
  top_idle = [[(0, 1), (NAN, NAN)], [(1, 2), (NAN, NAN)]]
  assert benchmark_devices.bubble_from_stage_times(top_idle)["bubble"] == [
      0.0, None]
  assert not benchmark_devices.bubble_from_stage_times(
      [[(NAN, NAN)]])["available"]


def test_summary_uses_float64_exactness_and_the_timeline_bubble():
  expected = (2 - 1) / (8 + 2 - 1)
  parallel = {
      "frames_per_s": 1.0, "max_relative_difference": 3e-4,
      "max_relative_difference_f64": 7e-6,
      "bp32_max_relative_difference_f64": 2e-4,
      "bubble": {"available": True, "idle_fraction": [0.5, 0.4]},
      "timeline": {"measured_phase": "backward", "phases": {
          "forward": {"available": True, "bubble": [0.5, None]},
          "backward": {"available": True,
                       "bubble": [expected * 1.1, expected * 0.9]}}}}
  results = {"config": {"num_modules": 2, "num_devices": 2, "num_frames": 8,
                        "micro_batch_frames": 1, "memory_frames": []},
             "rows": {"gpipe_remat": {"parallel": parallel}}}
  goals = devices_report.summarise(results)["goals"]
  assert goals["gpipe_remat_exact"] == {"measured": 7e-6, "met": True}
  assert goals["gpipe_remat_within_float32_bp_rounding"]["met"]
  assert goals["gpipe_remat_bubble"]["measured"] == pytest.approx(
      expected * 1.1)  # the larger device's, not the profiler's 0.5
  assert goals["gpipe_remat_bubble"]["met"]


def test_summary_checks_that_chunked_and_pipelined_bp_memory_is_flat():
  def row(mib_16, mib_512):
    return {"parallel": {"frames_per_s": 1.0},
            "memory": {"16": {"step_mib": mib_16},
                       "512": {"step_mib": mib_512}}}
  results = {"config": {"num_modules": 2, "num_devices": 2, "num_frames": 16,
                        "micro_batch_frames": 1, "memory_frames": [16, 512]},
             "rows": {"chunked_bp": row(50.0, 55.0),
                      "pipelined_bp": row(20.0, 30.0), "bp": row(50, 900)}}
  summary = devices_report.summarise(results)
  assert summary["goals"]["chunked_bp_memory_flat"] == {"measured": 1.1,
                                                        "met": True}
  assert summary["goals"]["pipelined_bp_memory_flat"] == {"measured": 1.5,
                                                          "met": False}
  assert "bp_memory_flat" not in summary["goals"]


def test_data_parallel_rows_are_every_split_of_the_devices():
  assert benchmark_devices.data_parallel_variants(1) == []
  rows = benchmark_devices.DATA_PARALLEL_ROWS
  assert benchmark_devices.data_parallel_variants(2) == [
      f"dp2x1_{row}" for row in rows]
  four = benchmark_devices.data_parallel_variants(4)
  # The plain BP row at each split (chunked_bp and pipelined_bp rows also
  # end in "_bp").
  assert [v for v in four if v.split("_", 1)[1] == "bp"] == [
      "dp2x2_bp", "dp4x1_bp"]
  assert {v.split("_", 1)[0] for v in four} == {"dp2x2", "dp4x1"}
  config = benchmark_devices.DevicesConfig(num_devices=2)
  assert config.rows[-len(rows):] == [f"dp2x1_{row}" for row in rows]
  assert benchmark_devices.variant_spec("dp2x1_chunked_bp") == (
      "chunked_bp", 2)
  assert benchmark_devices.variant_spec("gpipe") == ("gpipe", 1)
  assert devices_report.title("dp4x1_bp") == (
      "data-parallel BP, 4 replicas x 1 device(s)")
  with pytest.raises(ValueError, match="unknown variants"):
    benchmark_devices.validate(benchmark_devices.DevicesConfig(
        num_devices=2, variants=("dp4x1_bp",)))


def test_data_parallel_bp_goal_is_against_bp_on_one_core():
  rows = {"bp": {"parallel": {"frames_per_s": 100.0},
                 "serialised": {"frames_per_s": 80.0}},
          "dp2x1_bp": {"parallel": {"frames_per_s": 140.0}}}
  results = {"config": {"num_modules": 2, "num_devices": 2, "num_frames": 8,
                        "micro_batch_frames": 1, "memory_frames": []},
             "rows": rows}
  goal = devices_report.summarise(results)["goals"][
      "data_parallel_bp_vs_one_core"]
  assert goal == {"measured": 1.75, "met": True}  # 140 / 80 >= 0.85 x 2
  rows["dp2x1_bp"]["parallel"]["frames_per_s"] = 120.0
  assert not devices_report.summarise(results)["goals"][
      "data_parallel_bp_vs_one_core"]["met"]


def test_replay_rows_are_sideways_with_its_bottom_modules_replayed():
  import tensorflow as tf  # noqa: PLC0415
  config = benchmark_devices.DevicesConfig(
      num_devices=1, num_modules=4, image_size=8, batch_size=2, num_frames=8,
      balance="", variants=("sideways_replay2",))
  benchmark_devices.validate(config)
  trainer = benchmark_devices._trainer(config, "sideways_replay2", tf)
  assert trainer.algorithm == "sideways"
  assert trainer.pipeline.replayed_modules == 2
  plain = benchmark_devices._trainer(config, "sideways", tf)
  assert plain.pipeline.replayed_modules == 0
  assert "sideways_replay2" not in benchmark_devices.DevicesConfig().rows
  assert devices_report.title("sideways_replay2") == (
      "Sideways, replay_modules=2")
  temporal = benchmark_devices._trainer(
      dataclasses.replace(config, temporal="conv:3"), "sideways_replay3", tf)
  assert temporal.pipeline.has_temporal_layers
  assert temporal.pipeline.replayed_modules == 3
  assert not plain.pipeline.has_temporal_layers
  with pytest.raises(ValueError, match="needs more than 2 modules"):
    benchmark_devices.validate(benchmark_devices.DevicesConfig(
        num_modules=2, variants=("sideways_replay2",)))


def test_rejects_bad_settings():
  with pytest.raises(ValueError, match="unknown variants"):
    benchmark_devices.validate(benchmark_devices.DevicesConfig(
        variants=("gpipe", "pipedream")))
  with pytest.raises(ValueError, match="micro_batch_frames = 3"):
    benchmark_devices.validate(benchmark_devices.DevicesConfig(
        micro_batch_frames=3))


def test_simulated_devices_report(tmp_path):
  doc = tmp_path / "benchmarks.md"
  doc.write_text("# Benchmarks\n\nkept text\n")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  args = ["bin/benchmark", "--simulate_devices=2",
          "--variants=sideways,gpipe_remat,bp,chunked_bp,pipelined_bp,"
          "dp2x1_bp",
          "--bp_chunk_frames=3", "--image_size=8",
          "--batch_size=2", "--num_frames=4", "--memory_frames=4",
          "--repeats=1", "--warmup=0", "--noserialised",
          f"--bench_dir={tmp_path}", f"--doc={doc}"]
  result = subprocess.run([sys.executable] + args, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout + result.stderr[-4000:]
  report = json.loads((tmp_path / "simulated_devices.json").read_text())
  assert report["command"].startswith("bin/benchmark --simulate_devices=2")
  assert list(report["rows"]) == ["sideways", "gpipe_remat", "bp",
                                   "chunked_bp", "pipelined_bp", "dp2x1_bp"]
  assert report["config"]["bp_chunk_frames"] == 3
  for name, row in report["rows"].items():
    parallel = row["parallel"]
    assert parallel["inter_op"] == 2 and parallel["frames_per_s"] > 0
    # One optimizer step per clip by default (the replicas' one shared step).
    assert parallel["update_every_ticks"] == 0
    assert parallel["optimizer_steps_per_step"] == 1
    assert row["memory"]["4"]["step_mib"] >= 0
    assert "serialised" not in row
    if row["replicas"] > 1:  # no profiler figures for the replicas
      assert "bubble" not in parallel
    else:
      bubble = parallel["bubble"]
      assert bubble["available"] and len(bubble["idle_fraction"]) == 2
      assert all(0 <= x <= 1 for x in bubble["idle_fraction"])
    if row["exact"] is True:  # not pipelined_bp's "per frame"
      assert parallel["cosine_to_bp"] == pytest.approx(1.0, abs=1e-6)
      assert parallel["max_relative_difference"] <= 1e-5
      assert parallel["max_relative_difference_f64"] <= 1e-5
    assert parallel["bp32_max_relative_difference_f64"] <= 1e-5
  timeline = report["rows"]["gpipe_remat"]["parallel"]["timeline"]
  assert timeline["measured_phase"] == "backward"
  backward = timeline["phases"]["backward"]
  # M = 4 micro-batches on K = 2 stages: 5 clocks, each stage idle in 1.
  assert backward["clocks"] == 5
  assert backward["idle_clocks"] == pytest.approx([0.2, 0.2])
  assert all(0 <= b <= i <= 1 for b, i in zip(backward["bubble"],
                                              backward["idle"]))
  assert timeline["phases"]["forward"]["bubble"][1] is None  # top: no work
  placed = report["rows"]["gpipe_remat"]["parallel"]["devices"]
  assert len(set(placed)) == 2  # one stage per simulated device
  assert report["rows"]["bp"]["parallel"]["devices"] == ["None", "None"]
  # Two replicas, each with both stages on its own simulated device; the
  # mean of their gradients is BP's (checked above with the exact rows).
  replicas = report["rows"]["dp2x1_bp"]["parallel"]["devices"]
  assert [len(set(r)) for r in replicas] == [1, 1]
  assert replicas[0][0] != replicas[1][0]
  assert "gpipe_remat_exact" in report["summary"]["goals"]
  assert "gpipe_remat_bubble" in report["summary"]["goals"]
  assert "bubble per device" in (tmp_path / "simulated_devices.md").read_text()
  table = (tmp_path / "simulated_devices.md").read_text()
  assert "| Sideways | no |" in table
  assert "| GPipe + re-materialisation | yes |" in table
  assert "--simulate_devices=2" in table
  assert (tmp_path / "simulated_devices.png").stat().st_size > 0
  text = doc.read_text()
  assert text.startswith("# Benchmarks\n\nkept text\n")
  assert text.count(devices_report.MARK_BEGIN) == 1
  assert "| single-device BP | yes |" in text
  assert "| data-parallel BP, 2 replicas x 1 device(s) | yes |" in text
  assert "| single-device chunked BP | yes |" in text
  assert "| pipelined BP | per frame |" in text
  # Placed like Sideways; its gradient is BP's of fewer frames per module.
  assert len(set(report["rows"]["pipelined_bp"]["parallel"]["devices"])) == 2
  assert report["rows"]["pipelined_bp"]["parallel"]["cosine_to_bp"] < 1


def _one_stream(**more):
  """A B = 1 config with online updates, tiny."""
  return benchmark_devices.DevicesConfig(**dict(dict(
      num_devices=2, num_modules=2, image_size=8, batch_size=1,
      num_frames=8, memory_frames=(8,), update_every_ticks=4, balance="",
      variants=("sideways", "bp", "gpipe", "chunked_bp", "pipelined_bp"),
      bp_chunk_frames=2), **more))


def test_online_rows_get_the_trainers_update_every_ticks():
  import tensorflow as tf  # noqa: PLC0415
  config = _one_stream(num_devices=1)
  benchmark_devices.validate(config)
  for variant in ("sideways", "bp", "gpipe"):
    trainer = benchmark_devices._trainer(config, variant, tf)
    assert trainer.update_every_ticks == 4
  replay = benchmark_devices._trainer(
      dataclasses.replace(config, num_modules=4, variants=(
          "sideways_replay2",)), "sideways_replay2", tf)
  assert replay.pipeline.replay_weight_stash  # the Trainer stashes weights
  default = benchmark_devices._trainer(
      dataclasses.replace(config, update_every_ticks=0), "bp", tf)
  assert default.update_every_ticks == 0
  assert type(default.optimizer).__name__ == "SGD"
  adam = benchmark_devices._trainer(
      dataclasses.replace(config, optimizer="adam"), "bp", tf)
  assert type(adam.optimizer).__name__ == "Adam"


def test_one_stream_has_no_data_parallel_split():
  config = _one_stream(variants=("sideways", "dp"))
  assert config.rows == ["sideways"]  # "dp": no split of one clip
  benchmark_devices.validate(config)
  assert dataclasses.replace(config, batch_size=2).rows == [
      "sideways"] + benchmark_devices.data_parallel_variants(2)
  with pytest.raises(ValueError, match=r"dp2x1_bp splits every batch over 2 "
                     r"replicas, but B = 1"):
    benchmark_devices.validate(_one_stream(variants=("dp2x1_bp",)))


@pytest.mark.parametrize("more, message", [
    (dict(update_every_ticks=-1), "--update_every_ticks must be >= 0"),
    (dict(update_every_ticks=9), r"--update_every_ticks=9 is longer than the "
     r"clip of T = 8"),
    (dict(memory_frames=(16, 2)), "clip of T = 2"),
    (dict(update_every_ticks=4, micro_batch_frames=8, num_frames=8),
     "micro-batches of --micro_batch_frames=8"),
    (dict(bp_chunk_frames=4), r"--bp_chunk_frames=4 >= --update_every_ticks"
     r"=4 .* would be the bp row"),
    (dict(optimizer="adamm"), "--optimizer='adamm' is not a Keras"),
])
def test_online_settings_that_mean_nothing_are_refused(more, message):
  with pytest.raises(ValueError, match=message):
    benchmark_devices.validate(_one_stream(**more))


def test_online_refusals_name_only_the_rows_they_concern():
  # micro_batch_frames and bp_chunk_frames matter only to their rows.
  benchmark_devices.validate(_one_stream(
      variants=("sideways", "bp"), micro_batch_frames=8, bp_chunk_frames=8,
      memory_frames=(8,)))
  benchmark_devices.validate(_one_stream(update_every_ticks=0,
                                         bp_chunk_frames=8))


def test_online_benchmark_times_the_online_step(tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  args = ["bin/benchmark", "--simulate_devices=2", "--num_modules=2",
          "--variants=bp,gpipe,sideways", "--image_size=8", "--batch_size=1",
          "--num_frames=8", "--update_every_ticks=2", "--optimizer=adam",
          "--memory_frames=", "--repeats=2", "--warmup=0", "--noserialised",
          "--balance=model", f"--bench_dir={tmp_path}", "--doc="]
  result = subprocess.run([sys.executable] + args, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout + result.stderr[-4000:]
  report = json.loads((tmp_path / "simulated_devices.json").read_text())
  assert report["config"]["update_every_ticks"] == 2
  assert report["config"]["optimizer"] == "adam"
  rows = report["rows"]
  for name in ("bp", "gpipe", "sideways"):
    assert rows[name]["parallel"]["update_every_ticks"] == 2
    assert rows[name]["parallel"]["optimizer"] == "Adam"
  # T = 8 in 2-frame chunks: an optimizer step after each of the 4 chunks
  # (Sideways on L = 2 modules has its first loss term at tick 2, inside
  # the first chunk).
  for name in ("bp", "gpipe", "sideways"):
    assert rows[name]["parallel"]["optimizer_steps_per_step"] == 4
  # The gradient columns stay the whole clip's: GPipe's is BP's.
  assert rows["gpipe"]["parallel"]["cosine_to_bp"] == pytest.approx(
      1.0, abs=1e-6)
  text = (tmp_path / "simulated_devices.md").read_text()
  assert "Median of 2 Adam train steps" in text
  assert ("Online training (`--update_every_ticks=2`): a train step feeds "
          "the clip as 2-frame chunks with an optimizer step after each "
          "(4 per clip; GPipe pipelines the 2 micro-batches") in text


@pytest.mark.parametrize("args, message", [
    (["--simulate_devices=2", "--num_frames=8", "--update_every_ticks=9"],
     "--update_every_ticks=9 is longer than the clip of T = 8"),
    (["--update_every_ticks=4"], "--update_every_ticks is a "
     "--simulate_devices flag"),
    (["--simulate_devices=2", "--update_every_ticks=-1"],
     "-1 is not a non-negative integer"),
    (["--simulate_devices=2", "--rounds=0"], "0 is not a positive integer"),
    (["--rounds=3"], "--rounds is a --simulate_devices flag"),
])
def test_bad_online_flags_exit_2_before_writing(tmp_path, args, message):
  bench_dir = tmp_path / "bench"
  result = subprocess.run(
      [sys.executable, "bin/benchmark", *args, f"--bench_dir={bench_dir}",
       "--doc="], cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  lines = [l for l in (result.stdout + result.stderr).splitlines()
           if l.strip()]
  assert result.returncode == 2, result.stdout + result.stderr
  assert "Traceback" not in result.stderr and len(lines) <= 3, lines
  assert message in "\n".join(lines)
  assert not bench_dir.exists()


def test_rounds_repeat_the_throughput_children(tmp_path):
  """--rounds=2 at tiny sizes (4 throughput children, no memory ones): every
  row lists both rounds and keeps the lower one (the median of two), and
  Sideways / BP is taken per round."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  args = ["bin/benchmark", "--simulate_devices=2", "--variants=sideways,bp",
          "--image_size=8", "--batch_size=2", "--num_frames=4",
          "--memory_frames=", "--repeats=1", "--warmup=0", "--noserialised",
          "--balance=model", "--rounds=2", f"--bench_dir={tmp_path}",
          "--doc="]
  result = subprocess.run([sys.executable] + args, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout + result.stderr[-4000:]
  report = json.loads((tmp_path / "simulated_devices.json").read_text())
  assert report["config"]["rounds"] == 2
  rounds = {}
  for name, row in report["rows"].items():
    rounds[name] = [r["parallel"] for r in row["rounds"]]
    assert [list(r) for r in row["rounds"]] == [["parallel"], ["parallel"]]
    assert row["parallel"]["frames_per_s"] == min(rounds[name])
    assert row["median_round"] == {"parallel": rounds[name].index(
        min(rounds[name]))}
    # The chosen round is a whole child's figures: gradient and idle time.
    assert {"cosine_to_bp", "bubble", "step_s"} <= set(row["parallel"])
  assert report["rows"]["bp"]["parallel"]["cosine_to_bp"] == pytest.approx(
      1.0, abs=1e-6)
  goal = report["summary"]["goals"]["sideways_vs_bp"]
  per_round = [s / b for s, b in zip(rounds["sideways"], rounds["bp"])]
  assert goal["rounds"] == pytest.approx(per_round)
  assert goal["measured"] == pytest.approx(sum(per_round) / 2)
  assert goal["met"] == (goal["measured"] >= devices_report.GOALS[
      "sideways_vs_bp"])
  text = (tmp_path / "simulated_devices.md").read_text()
  assert "--rounds=2" in text and "(median of 2 rounds)" in text
  assert result.stdout.count("round 2 of 2: rows in reverse order") == 1
