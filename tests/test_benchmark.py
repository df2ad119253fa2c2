"""Smoke test of bin/benchmark on tiny shapes: the JSON schema and that both
algorithms ran. No timing assertions (timings belong to docs/benchmarks.md)."""

import json
import os
import pathlib
import subprocess
import sys

from sideways_tf.benchmark import replay_cost

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_benchmark_tool_writes_json_and_markdown(tmp_path):
  doc = tmp_path / "benchmarks.md"
  args = ["--image_size=16", "--batch_size=2", "--num_frames=4",
          "--num_modules=2", "--memory_frames=4", "--repeats=2",
          "--warmup=1", "--trace_clips=3", "--zoo=frame_cnn",
          "--data_batches=1",
          "--figures=throughput,stages,tracing,memory,placement,balancing,"
          "input_pipeline,replay_cost",
          f"--bench_dir={tmp_path}", f"--doc={doc}"]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run([sys.executable, str(ROOT / "bin" / "benchmark")] +
                          args, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr[-4000:]
  assert "[benchmark" in result.stdout  # progress output

  data = json.loads((tmp_path / "benchmark.json").read_text())
  assert data["command"].startswith("bin/benchmark ")
  assert data["config"]["num_frames"] == 4
  throughput = data["throughput"]
  for algorithm in ("sideways", "bp"):
    assert len(throughput[algorithm]["samples_s"]) == 2
    assert throughput[algorithm]["frames_per_s"] > 0
  assert throughput["frames_per_step"] == 8
  assert {"ratio", "goal", "met"} <= set(throughput)

  stages = data["stages"]
  assert len(stages["stage_tick_s"]) == 2
  assert 0 < stages["balance"] <= 1
  assert stages["gpipe_bubble"] == (2 - 1) / (4 + 2 - 1)

  assert data["tracing"]["sideways"]["trace_count"] == 1
  assert data["tracing"]["bp"]["trace_count"] == 1

  rows = data["memory"]["rows"]
  assert {(r["algorithm"], r["num_frames"]) for r in rows} == {
      ("sideways", 4), ("bp", 4)}
  assert all(r["peak_mib"] > 0 for r in rows)
  assert {"flat", "vs_bp"} <= set(data["memory"]["goals"])

  assert len(data["placement"]["devices"]) == 2
  assert data["placement"]["ratio"] > 0
  assert sum(data["balancing"]["frame_cnn"]["sizes_by_time"]) == sum(
      data["balancing"]["frame_cnn"]["sizes_before"])
  assert "available" in data["input_pipeline"]
  replay = data["replay_cost"]["variants"]
  assert set(replay) == {"bp", "replay_0", "replay_1"}  # L = 2
  assert replay["replay_0"]["vs_plain_sideways"] == 1.0
  assert [(r["algorithm"], r["replay_modules"], r["skips"])
          for r in replay.values()] == [
              ("bp", 0, ""), ("sideways", 0, ""), ("sideways", 1, "")]
  assert replay["bp"]["vs_bp"] == 1.0
  assert all(len(r["samples_s"]) == 2 for r in replay.values())
  stash = data["replay_cost"]["stash"]  # the one module below the top
  assert stash["lags"] == [2]
  assert all(len(stash[key]) == 1 and stash[key][0] > 0 for key in (
      "plain_ms", "replay_ms", "stash_ms", "replay_floats", "stash_floats"))
  # A per-layer stash keeps every layer's input, the stage input among them.
  assert stash["stash_floats"][0] > stash["replay_floats"][0] == 16 * 16 * 3

  text = doc.read_text()
  assert data["command"] in text
  for heading in ("## Summary", "## 1. Throughput", "## 2. Memory",
                  "## 3. Per-stage", "## 4. Placement", "## 6. Tracing",
                  "## 7. What replay costs", "Recompute or stash",
                  "| Sideways, replay_modules=1 (= pipelined_bp) |"):
    assert heading in text


def test_replay_cost_adds_the_skip_model_from_three_modules():
  table = replay_cost.variants(4)
  assert list(table)[:5] == ["bp", "replay_0", "replay_1", "replay_2",
                             "replay_3"]
  assert table["skip_replay_3"] == ("sideways", 3, "2:0")
  assert table["skip_bp"] == ("bp", 0, "2:0")
  assert not any(name.startswith("skip") for name in replay_cost.variants(2))
  rows = {name: dict(algorithm=a, replay_modules=n, skips=s,
                     frames_per_s=100.0, vs_plain_sideways=1.0, vs_bp=1.0)
          for name, (a, n, s) in table.items()}
  text = "\n".join(replay_cost.markdown({"variants": rows,
                                         "num_modules": 4}))
  assert ("| skips 2:0: Sideways, replay_modules=3 (= pipelined_bp) | 100 |"
          in text)
  assert "| Sideways, replay_modules=2 | 100 |" in text


def test_balancing_figure_warns_about_no_clip_length_it_chose(caplog):
  """The figure times stages on a clip of its own choosing: a too-short one
  warned once per pipeline (six times by default) about modules starving."""
  from sideways_tf.benchmark import common, figures  # noqa: PLC0415
  config = common.BenchmarkConfig(image_size=8, batch_size=1, num_modules=4,
                                  zoo=("frame_cnn",), zoo_width=4)
  with caplog.at_level("WARNING"):
    result = figures.balancing(config)
  assert set(result) == {"frame_cnn"}
  assert not [r for r in caplog.records if "get no gradient" in
              r.getMessage()], [r.getMessage() for r in caplog.records]
