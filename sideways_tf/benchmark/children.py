"""The figures that need a fresh Python process, and how to run one.

Memory (a process's peak RSS), placement (TF fixes its logical devices at
start-up) and the input pipelines (synthetic; prepared folders) each run as
``python -m sideways_tf.benchmark.children <kind> <json>`` and print one
JSON line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict

from sideways_tf.benchmark.common import BenchmarkConfig
from sideways_tf.benchmark.common import build_stages
from sideways_tf.benchmark.common import configure
from sideways_tf.benchmark.common import make_clip
from sideways_tf.benchmark.common import make_trainers
from sideways_tf.benchmark.common import summarise
from sideways_tf.benchmark.common import time_alternating
from sideways_tf.run.files import PACKAGE_PARENT

def peak_rss_bytes() -> int:
  """This process's peak resident set size.

  Linux's VmHWM (per address space, so it starts afresh at exec). Not
  ``ru_maxrss``: Linux carries it across fork + exec, so a child would report
  its parent's peak.
  """
  try:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) * 1024  # kB
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_child(config: BenchmarkConfig, algorithm: str,
                 num_frames: int) -> Dict[str, float]:
  """In a fresh process: peak RSS of train steps of one (algorithm, T)."""
  configure(config)
  import psutil  # pylint: disable=g-import-not-at-top
  import sideways_tf  # pylint: disable=g-import-not-at-top
  pipeline = sideways_tf.Pipeline(build_stages(config))
  trainer = make_trainers(pipeline)[algorithm]
  frames, labels = make_clip(config, num_frames=num_frames)
  float(frames[0, 0, 0, 0, 0])  # materialise the clip before the baseline
  baseline = psutil.Process().memory_info().rss
  for _ in range(config.memory_steps):
    trainer.train_step(frames, labels)
  peak = peak_rss_bytes()
  mib = 1024.0 * 1024.0
  return {"algorithm": algorithm, "num_frames": num_frames,
          "baseline_mib": baseline / mib, "peak_mib": peak / mib,
          "step_mib": (peak - baseline) / mib,
          "clip_mib": frames.numpy().nbytes / mib}


def placement_child(config: BenchmarkConfig, num_devices: int):
  """In a process with `num_devices` logical CPUs: placed / one device."""
  tf = configure(config, num_logical_devices=num_devices)
  import keras  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import sideways_tf  # pylint: disable=g-import-not-at-top
  devices = [d.name for d in tf.config.list_logical_devices("CPU")]
  placement = [devices[k % len(devices)] for k in range(config.num_modules)]
  one = sideways_tf.Pipeline(build_stages(config))
  placed_stages = [keras.models.clone_model(s) for s in one.stages]
  placed = sideways_tf.Pipeline(placed_stages, devices=placement)
  frames, labels = make_clip(config)
  for pipe in (one, placed):
    pipe.prepare_inputs(frames, labels)  # builds the placed stages
  for source, target in zip(one.stages, placed_stages):
    target.set_weights(source.get_weights())
  steps = {"one_device": make_trainers(one)["sideways"],
           "placed": make_trainers(placed)["sideways"]}
  seconds = time_alternating(
      {n: (lambda t=t: t.train_step(frames, labels)) for n, t in steps.items()},
      config.repeats, config.warmup)
  one_s = float(np.median(seconds["one_device"]))
  placed_s = float(np.median(seconds["placed"]))
  return {"devices": placement, "one_device": summarise(seconds["one_device"]),
          "placed": summarise(seconds["placed"]),
          "tick_s_one_device": one_s / config.num_frames,
          "tick_s_placed": placed_s / config.num_frames,
          "ratio": placed_s / one_s}


def input_pipeline_child(config: BenchmarkConfig):
  """In a fresh process: frames/s of sideways_tf.data's train split."""
  configure(config)
  from sideways_tf import data  # pylint: disable=g-import-not-at-top
  from sideways_tf.configs import default  # pylint: disable=g-import-not-at-top
  data_config = default.get_config().data
  overrides = {"image_size": config.image_size,
               "num_frames": config.num_frames,
               "num_train": 4 * config.batch_size,
               "num_test": config.batch_size,
               # Generated clips go to a scratch cache, not the project's.
               "data_dir": tempfile.mkdtemp(prefix="sideways_bench_data_")}
  applied = {}
  with data_config.unlocked():
    for key, value in overrides.items():
      if key in data_config:
        data_config[key] = value
        applied[key] = value
  try:
    build_start = time.perf_counter()
    datasets = data.get_datasets(data_config, batch_size=config.batch_size,
                                 eval_batch_size=config.batch_size, seed=0)
    build_s = time.perf_counter() - build_start
    iterator = iter(datasets.train)
    batch = next(iterator)  # warm up (and any one-off generation)
    shape = list(batch["video"].shape)
    start = time.perf_counter()
    for _ in range(config.data_batches):
      batch = next(iterator)
      float(batch["video"][0, 0, 0, 0, 0])
    seconds = time.perf_counter() - start
  finally:
    shutil.rmtree(overrides["data_dir"], ignore_errors=True)
  frames = config.data_batches * shape[0] * shape[1]
  return {"available": True, "overrides": applied,
          "data_name": str(data_config.name),
          "video_shape": shape, "build_s": build_s,
          "batches": config.data_batches, "seconds": seconds,
          "frames_per_s": frames / seconds}


def input_folder_child(config: BenchmarkConfig, root: str):
  """In a fresh process: frames/s of prepared folders, JPEG vs raw."""
  configure(config)
  from sideways_tf.benchmark import input_folder  # noqa: PLC0415
  return input_folder.measure(config, root)


CHILDREN = {"memory": memory_child, "placement": placement_child,
            "input_pipeline": input_pipeline_child,
            "input_folder": input_folder_child}


def run_child(kind: str, config: BenchmarkConfig, **kwargs) -> dict:
  """Runs one child figure in a fresh Python process; returns its JSON."""
  return run_module_child("sideways_tf.benchmark.children", kind, config,
                          **kwargs)


def run_module_child(module: str, kind: str, config, **kwargs) -> dict:
  """`python -m MODULE KIND PAYLOAD` in a fresh process; its last JSON line.

  The child rebuilds `config` (a dataclass) and calls its CHILDREN[kind].
  """
  payload = json.dumps({"config": dataclasses.asdict(config),
                        "kwargs": kwargs})
  env = dict(os.environ, PYTHONPATH=str(PACKAGE_PARENT) + os.pathsep +
             os.environ.get("PYTHONPATH", ""), TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run(
      [sys.executable, "-m", module, kind, payload],
      cwd=str(PACKAGE_PARENT), env=env, capture_output=True, text=True,
      timeout=3600)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode != 0 or not lines:
    raise RuntimeError(
        f"{module} child {kind} {kwargs} failed (exit {proc.returncode}):\n"
        f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
  return json.loads(lines[-1])


def child_main(argv, config_class, children) -> None:
  """The child side of :func:`run_module_child`: rebuilds the config, runs
  `children[kind]` and prints its result as one JSON line."""
  kind, payload = argv[1], json.loads(argv[2])
  config = config_class(**payload["config"])
  result = children[kind](config, **payload["kwargs"])
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  child_main(sys.argv, BenchmarkConfig, CHILDREN)
