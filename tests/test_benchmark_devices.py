"""bin/benchmark --simulate_devices: the report's structure at tiny sizes.

No timing is asserted (CI machines are noisy); only what the run must
produce and that the exact algorithms' gradients are BP's.
"""

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
          "--variants=sideways,gpipe_remat,bp", "--image_size=8",
          "--batch_size=2", "--num_frames=4", "--memory_frames=4",
          "--repeats=1", "--warmup=0", "--noserialised",
          f"--bench_dir={tmp_path}", f"--doc={doc}"]
  result = subprocess.run([sys.executable] + args, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout + result.stderr[-4000:]
  report = json.loads((tmp_path / "simulated_devices.json").read_text())
  assert report["command"].startswith("bin/benchmark --simulate_devices=2")
  assert list(report["rows"]) == ["sideways", "gpipe_remat", "bp"]
  for name, row in report["rows"].items():
    parallel = row["parallel"]
    assert parallel["inter_op"] == 2 and parallel["frames_per_s"] > 0
    assert row["memory"]["4"]["step_mib"] >= 0
    assert "serialised" not in row
    bubble = parallel["bubble"]
    assert bubble["available"] and len(bubble["idle_fraction"]) == 2
    assert all(0 <= x <= 1 for x in bubble["idle_fraction"])
    if row["exact"]:
      assert parallel["cosine_to_bp"] == pytest.approx(1.0, abs=1e-6)
      assert parallel["max_relative_difference"] <= 1e-5
  placed = report["rows"]["gpipe_remat"]["parallel"]["devices"]
  assert len(set(placed)) == 2  # one stage per simulated device
  assert report["rows"]["bp"]["parallel"]["devices"] == ["None", "None"]
  assert "gpipe_remat_exact" in report["summary"]["goals"]
  table = (tmp_path / "simulated_devices.md").read_text()
  assert "| Sideways | no |" in table
  assert "| GPipe + re-materialisation | yes |" in table
  assert "--simulate_devices=2" in table
  assert (tmp_path / "simulated_devices.png").stat().st_size > 0
  text = doc.read_text()
  assert text.startswith("# Benchmarks\n\nkept text\n")
  assert text.count(devices_report.MARK_BEGIN) == 1
  assert "| single-device BP | yes |" in text
