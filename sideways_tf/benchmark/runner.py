"""`run`: the selected figures -> benchmark.json (and docs/benchmarks.md)."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import platform

from sideways_tf.benchmark import devices_report
from sideways_tf.benchmark import figures
from sideways_tf.benchmark import replay_cost
from sideways_tf.benchmark import temporal_memory
from sideways_tf.benchmark import report
from sideways_tf.benchmark.common import GOALS
from sideways_tf.benchmark.common import BenchmarkConfig
from sideways_tf.benchmark.common import configure
from sideways_tf.benchmark.common import log
from sideways_tf.run.files import atomic_write_text


def run(config: BenchmarkConfig, bench_dir, doc_path=None,
        command: str = "") -> dict:
  """Runs the selected figures; writes bench_dir/benchmark.json (and the doc)."""
  bench_dir = pathlib.Path(bench_dir)
  bench_dir.mkdir(parents=True, exist_ok=True)
  tf = configure(config)
  results = {
      "command": command,
      "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "config": dataclasses.asdict(config),
      "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                  "processor": _cpu_name(), "python": platform.python_version(),
                  "tensorflow": tf.__version__,
                  "load_average_start": list(os.getloadavg())},
      "goals": GOALS,
  }
  results.update(figures.in_process(config))
  if "memory" in config.figures:
    results["memory"] = figures.memory(config)
  if "placement" in config.figures:
    results["placement"] = figures.placement(config)
  if "balancing" in config.figures:
    results["balancing"] = figures.balancing(config)
  if "input_pipeline" in config.figures:
    results["input_pipeline"] = figures.input_pipeline(
        config, results.get("throughput"), bench_dir=bench_dir)
  if "replay_cost" in config.figures:
    results["replay_cost"] = replay_cost.replay_cost(config)
  if "temporal_memory" in config.figures:
    results["temporal_memory"] = temporal_memory.temporal_memory(config)
  results["machine"]["load_average_end"] = list(os.getloadavg())
  atomic_write_text(bench_dir / "benchmark.json",
                    json.dumps(results, indent=2))
  log(f"wrote {bench_dir / 'benchmark.json'}")
  if doc_path:
    # Keep the --simulate_devices table, which another run writes.
    atomic_write_text(pathlib.Path(doc_path), report.markdown(results) +
                      devices_report.preserved_section(doc_path))
    log(f"wrote {doc_path}")
  return results


def _cpu_name() -> str:
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor()
