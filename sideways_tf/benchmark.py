"""Sideways vs BP benchmark: the figures of docs/benchmarks.md from one run.

Everything timed here goes through the engine the trainer uses:
:meth:`sideways_tf.trainer.Trainer.train_step` (Sideways and BP, on the same
:class:`sideways_tf.Pipeline`), :meth:`Pipeline.stage_tick_seconds` and
:attr:`Pipeline.trace_count`. Nothing re-implements the tick.

Figures (each a ratio from the same run):

1. throughput: Sideways train-step frames/s / BP train-step frames/s, the two
   alternating in one process, median over repetitions;
2. memory: peak resident memory of a train step per (algorithm, T), each in
   its own child process;
3. stages: per-module tick time, balance and ideal depth-parallel speedup,
   next to the GPipe bubble for the same K stages and M = T micro-batches;
   and stage balancing (by parameters vs by measured time) on the model zoo;
4. placement: Sideways step time with one logical CPU device per stage /
   on one device (child process: TF fixes its devices at start-up);
5. input pipeline frames/s / training frames/s (child process);
6. tracing: traces of the train step over N clips of one shape.

:func:`run` is the entry point (``bin/benchmark`` is its command line).
Child processes run ``python -m sideways_tf.benchmark <kind> <json>`` and
print one JSON line.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent

GOALS = {
    "throughput_ratio": 1.0,          # Sideways fps / BP fps >=
    "memory_flat_ratio": 1.1,         # Sideways T=max / T=min <=
    "memory_vs_bp_ratio": 0.45,       # Sideways / BP at T=64 <=
    "placement_ratio": 1.1,           # L devices / 1 device <=
    "input_pipeline_ratio": 3.0,      # data fps / train fps >=
    "traces_per_shape": 1,            # train-step traces over the clips ==
}


@dataclasses.dataclass
class BenchmarkConfig:
  """What to benchmark. Defaults: the issue's default config."""
  model: str = "frame_cnn"
  image_size: int = 64
  channels: int = 3
  batch_size: int = 8
  num_frames: int = 64
  num_modules: int = 4
  num_classes: int = 10
  num_devices: int = 0          # placement figure: 0 = one per module
  threads: int = 2              # intra- and inter-op threads
  repeats: int = 7              # timed repetitions per algorithm
  warmup: int = 2               # untimed steps per algorithm first
  memory_frames: Sequence[int] = (16, 32, 64, 128)
  memory_steps: int = 3
  trace_clips: int = 20
  stage_repeats: int = 5
  zoo: Sequence[str] = ("frame_cnn", "vgg8", "resnet18")
  zoo_width: int = 16           # width of vgg8 / resnet18 in the zoo report
  data_batches: int = 20        # input-pipeline figure: batches timed
  mixed_precision: bool = False  # keras "mixed_bfloat16" on every stage
  profile_dir: str = ""         # "" = no profiler trace
  profile_steps: int = 2
  figures: Sequence[str] = ("throughput", "stages", "tracing", "memory",
                            "placement", "balancing", "input_pipeline")

  def frame_shape(self):
    return (self.image_size, self.image_size, self.channels)


def log(message: str) -> None:
  print(f"[benchmark {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ----------------------------------------------------------- process set-up

def configure(config: BenchmarkConfig, num_logical_devices: int = 1):
  """Threads, logical devices and precision; call before TF runs anything."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.threading.set_intra_op_parallelism_threads(config.threads)
  tf.config.threading.set_inter_op_parallelism_threads(config.threads)
  if num_logical_devices > 1:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * num_logical_devices)
  import keras  # pylint: disable=g-import-not-at-top
  if config.mixed_precision:
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
  return tf


def build_stages(config: BenchmarkConfig, model: Optional[str] = None,
                 seed: int = 0):
  import keras  # pylint: disable=g-import-not-at-top
  from sideways_tf import models  # pylint: disable=g-import-not-at-top
  model = model or config.model
  keras.utils.set_random_seed(seed)
  kwargs = {"num_modules": config.num_modules}
  if model != "frame_cnn" and model != config.model:
    kwargs["width"] = config.zoo_width
  return models.MODELS[model](num_classes=config.num_classes, **kwargs)


def make_clip(config: BenchmarkConfig, num_frames: Optional[int] = None,
              seed: int = 0):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  num_frames = num_frames or config.num_frames
  rng = tf.random.Generator.from_seed(seed)
  frames = rng.uniform((config.batch_size, num_frames) + config.frame_shape())
  labels = rng.uniform((config.batch_size,), 0, config.num_classes, tf.int32)
  return frames, labels


def make_trainers(pipeline):
  import keras  # pylint: disable=g-import-not-at-top
  from sideways_tf.trainer import Trainer  # pylint: disable=g-import-not-at-top
  # SGD: the cheapest update, so the step time is the gradient's.
  return {a: Trainer(pipeline, keras.optimizers.SGD(1e-3), a)
          for a in ("sideways", "bp")}


def _summary(seconds: List[float]) -> Dict[str, float]:
  import numpy as np  # pylint: disable=g-import-not-at-top
  s = np.asarray(seconds, dtype=float)
  return {"median_s": float(np.median(s)), "min_s": float(s.min()),
          "max_s": float(s.max()), "p25_s": float(np.percentile(s, 25)),
          "p75_s": float(np.percentile(s, 75)),
          "spread": float((np.percentile(s, 75) - np.percentile(s, 25)) /
                          np.median(s)),
          "samples_s": [float(x) for x in s]}


def time_alternating(step_fns: Dict[str, callable], repeats: int,
                     warmup: int) -> Dict[str, List[float]]:
  """Runs the step functions in turn, `repeats` rounds; seconds per call.

  The order inside a round alternates so neither side always follows the
  other.
  """
  names = list(step_fns)
  for _ in range(warmup):
    for name in names:
      step_fns[name]()
  seconds = {name: [] for name in names}
  for r in range(repeats):
    for name in (names if r % 2 == 0 else names[::-1]):
      start = time.perf_counter()
      step_fns[name]()
      seconds[name].append(time.perf_counter() - start)
  return seconds


# ------------------------------------------------------------------ figures

def throughput_and_stages(config: BenchmarkConfig) -> Dict[str, dict]:
  """Figures 1, 3 (per-stage times) and 6 (tracing), in this process."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import sideways_tf  # pylint: disable=g-import-not-at-top
  from sideways_tf import balance  # pylint: disable=g-import-not-at-top
  results = {}
  pipeline = sideways_tf.Pipeline(build_stages(config))
  trainers = make_trainers(pipeline)
  frames, labels = make_clip(config)
  frames_per_step = config.batch_size * config.num_frames

  if "throughput" in config.figures:
    log(f"throughput: Sideways vs BP train steps, {config.repeats} "
        f"alternating repetitions, B={config.batch_size} T={config.num_frames}"
        f" {config.image_size}x{config.image_size}x{config.channels}")
    seconds = time_alternating(
        {a: (lambda t=t: t.train_step(frames, labels))
         for a, t in trainers.items()}, config.repeats, config.warmup)
    fig = {a: dict(_summary(s), frames_per_s=frames_per_step /
                   float(np.median(s))) for a, s in seconds.items()}
    ratio = fig["sideways"]["frames_per_s"] / fig["bp"]["frames_per_s"]
    # Spread of the ratio: per-round ratios (each round has one of each).
    rounds = [b / s for s, b in zip(seconds["sideways"], seconds["bp"])]
    fig.update(ratio=ratio, ratio_per_round=rounds,
               ratio_p25=float(np.percentile(rounds, 25)),
               ratio_p75=float(np.percentile(rounds, 75)),
               frames_per_step=frames_per_step,
               goal=GOALS["throughput_ratio"],
               met=bool(ratio >= GOALS["throughput_ratio"]))
    results["throughput"] = fig
    log(f"  Sideways {fig['sideways']['frames_per_s']:.0f} frames/s, BP "
        f"{fig['bp']['frames_per_s']:.0f} frames/s, ratio {ratio:.3f} "
        f"(goal >= {GOALS['throughput_ratio']})")

  if "stages" in config.figures:
    log("stages: per-module tick time (Pipeline.stage_tick_seconds)")
    stage_s = pipeline.stage_tick_seconds(frames, labels,
                                          repeats=config.stage_repeats)
    total, worst = sum(stage_s), max(stage_s)
    k, m = pipeline.num_modules, config.num_frames
    fig = {"stage_tick_s": stage_s, "sum_s": total, "max_s": worst,
           "balance": balance.balance(stage_s),
           "ideal_speedup": total / worst,
           "gpipe_bubble": (k - 1) / (m + k - 1),
           "gpipe_k": k, "gpipe_m": m}
    if "throughput" in results:
      fig["engine_tick_s"] = (results["throughput"]["sideways"]["median_s"] /
                              config.num_frames)
    results["stages"] = fig
    log(f"  stage ms {[round(s * 1e3, 3) for s in stage_s]}, balance "
        f"{fig['balance']:.2f}, ideal speedup {fig['ideal_speedup']:.2f}, "
        f"GPipe bubble {fig['gpipe_bubble']:.3f}")

  if "tracing" in config.figures:
    log(f"tracing: {config.trace_clips} new clips per algorithm")
    fig = {}
    for algorithm in ("sideways", "bp"):
      fresh = sideways_tf.Pipeline(pipeline.stages)
      trainer = make_trainers(fresh)[algorithm]
      for i in range(config.trace_clips):
        clip_frames, clip_labels = make_clip(config, seed=100 + i)
        trainer.train_step(clip_frames, clip_labels)
      fig[algorithm] = {"clips": config.trace_clips,
                        "trace_count": fresh.trace_count}
    fig["goal"] = GOALS["traces_per_shape"]
    fig["met"] = all(fig[a]["trace_count"] == 1 for a in ("sideways", "bp"))
    results["tracing"] = fig
    log(f"  traces: Sideways {fig['sideways']['trace_count']}, BP "
        f"{fig['bp']['trace_count']} over {config.trace_clips} clips")

  if config.profile_dir:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    log(f"profiling {config.profile_steps} steps per algorithm into "
        f"{config.profile_dir}")
    tf.profiler.experimental.start(config.profile_dir)
    for algorithm, trainer in trainers.items():
      for step in range(config.profile_steps):
        with tf.profiler.experimental.Trace(f"{algorithm}_train_step",
                                            step_num=step, _r=1):
          trainer.train_step(frames, labels)
    tf.profiler.experimental.stop()
    results["profile_dir"] = config.profile_dir
  return results


def balancing(config: BenchmarkConfig) -> Dict[str, dict]:
  """Stage balancing on the zoo: the model's own split vs balance_by_time.

  Items are the layers of the model's own stages (so a cut may fall between
  any two layers); both splits are then timed with
  Pipeline.stage_tick_seconds.
  """
  import sideways_tf  # pylint: disable=g-import-not-at-top
  from sideways_tf import balance  # pylint: disable=g-import-not-at-top
  frames, labels = make_clip(config, num_frames=max(config.num_modules, 4))
  out = {}
  for model in config.zoo:
    log(f"balancing: {model}, {config.num_modules} modules")
    before = build_stages(config, model)
    pipe_before = sideways_tf.Pipeline(before)
    layers = [layer for stage in before for layer in stage.layers]
    sizes_before = [len(stage.layers) for stage in before]
    sample = frames[:, 0]
    item_s = balance.time_costs(layers, sample)
    sizes_after = balance.balanced_split(
        [max(1, int(c * 1e9)) for c in item_s], config.num_modules)
    sizes_params = balance.balance_by_params(layers, config.num_modules)
    stage_before = pipe_before.stage_tick_seconds(frames, labels, repeats=3,
                                                  ticks_per_call=4)
    if sizes_after == sizes_before:
      stage_after = stage_before
    else:
      pipe_after = sideways_tf.Pipeline(balance.to_stages(layers, sizes_after))
      stage_after = pipe_after.stage_tick_seconds(frames, labels, repeats=3,
                                                  ticks_per_call=4)
    out[model] = {
        "layers": [l.name for l in layers],
        "layer_seconds": item_s,
        "sizes_before": sizes_before, "sizes_by_time": sizes_after,
        "sizes_by_params": sizes_params,
        "stage_s_before": stage_before, "stage_s_after": stage_after,
        "balance_before": balance.balance(stage_before),
        "balance_after": balance.balance(stage_after),
    }
    log(f"  sizes {sizes_before} -> {sizes_after}: balance "
        f"{out[model]['balance_before']:.2f} -> "
        f"{out[model]['balance_after']:.2f}")
  return out


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
  return {"devices": placement, "one_device": _summary(seconds["one_device"]),
          "placed": _summary(seconds["placed"]),
          "tick_s_one_device": one_s / config.num_frames,
          "tick_s_placed": placed_s / config.num_frames,
          "ratio": placed_s / one_s}


def input_pipeline_child(config: BenchmarkConfig):
  """In a fresh process: frames/s of sideways_tf.data's train split."""
  configure(config)
  import importlib  # pylint: disable=g-import-not-at-top
  data = importlib.import_module("sideways_tf.data")
  if not hasattr(data, "get_datasets"):
    return {"available": False,
            "reason": "sideways_tf.data has no get_datasets"}
  sys.path.insert(0, str(PROJECT_ROOT))
  default = importlib.import_module("configs.default").get_config()
  data_config = default.data
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
          "data_name": str(data_config.get("name", "")),
          "video_shape": shape, "build_s": build_s,
          "batches": config.data_batches, "seconds": seconds,
          "frames_per_s": frames / seconds}


CHILDREN = {"memory": memory_child, "placement": placement_child,
            "input_pipeline": input_pipeline_child}


def run_child(kind: str, config: BenchmarkConfig, **kwargs) -> dict:
  """Runs one child figure in a fresh Python process; returns its JSON."""
  payload = json.dumps({"config": dataclasses.asdict(config),
                        "kwargs": kwargs})
  env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT) + os.pathsep +
             os.environ.get("PYTHONPATH", ""), TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run(
      [sys.executable, "-m", "sideways_tf.benchmark", kind, payload],
      cwd=str(PROJECT_ROOT), env=env, capture_output=True, text=True,
      timeout=3600)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode != 0 or not lines:
    raise RuntimeError(
        f"benchmark child {kind} {kwargs} failed (exit {proc.returncode}):\n"
        f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
  return json.loads(lines[-1])


def memory(config: BenchmarkConfig) -> dict:
  """Figure 2: one child process per (algorithm, T)."""
  rows = []
  for num_frames in config.memory_frames:
    for algorithm in ("sideways", "bp"):
      log(f"memory: {algorithm} T={num_frames} (own process)")
      row = run_child("memory", config, algorithm=algorithm,
                      num_frames=int(num_frames))
      log(f"  peak {row['peak_mib']:.0f} MiB, step (peak - baseline) "
          f"{row['step_mib']:.1f} MiB")
      rows.append(row)
  out = {"rows": rows, "measure": "step_mib",
         "note": "step_mib = peak RSS (VmHWM) over the train steps minus "
                 "the RSS just before the first step (TF, model, optimizer "
                 "and the input clip already resident); peak_mib is the raw "
                 "peak."}
  by = {(r["algorithm"], r["num_frames"]): r for r in rows}
  t_min, t_max = min(config.memory_frames), max(config.memory_frames)
  for measure in ("step_mib", "peak_mib"):
    ratios = {}
    if ("sideways", t_min) in by and ("sideways", t_max) in by:
      ratios["sideways_flat"] = (by[("sideways", t_max)][measure] /
                                 by[("sideways", t_min)][measure])
    ratios["sideways_vs_bp"] = {
        int(t): by[("sideways", t)][measure] / by[("bp", t)][measure]
        for t in config.memory_frames}
    out[measure + "_ratios"] = ratios
  ratios = out["step_mib_ratios"]
  vs_t = 64 if 64 in ratios["sideways_vs_bp"] else config.num_frames
  out["goals"] = {
      "flat": {"t_min": t_min, "t_max": t_max,
               "ratio": ratios.get("sideways_flat"),
               "goal": GOALS["memory_flat_ratio"],
               "met": bool(ratios.get("sideways_flat", 99) <=
                           GOALS["memory_flat_ratio"])},
      "vs_bp": {"t": vs_t, "ratio": ratios["sideways_vs_bp"].get(vs_t),
                "goal": GOALS["memory_vs_bp_ratio"],
                "met": bool((ratios["sideways_vs_bp"].get(vs_t) or 99) <=
                            GOALS["memory_vs_bp_ratio"])},
      "shrinks_with_t": bool(all(
          a >= b for a, b in zip(
              [ratios["sideways_vs_bp"][t] for t in sorted(
                  config.memory_frames)][:-1],
              [ratios["sideways_vs_bp"][t] for t in sorted(
                  config.memory_frames)][1:]))),
  }
  return out


# --------------------------------------------------------------------- run

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
  results.update(throughput_and_stages(config))
  if "memory" in config.figures:
    results["memory"] = memory(config)
  if "placement" in config.figures:
    num_devices = config.num_devices or config.num_modules
    log(f"placement: {config.num_modules} stages on {num_devices} logical "
        f"CPU devices vs one device (own process)")
    fig = run_child("placement", config, num_devices=num_devices)
    fig.update(goal=GOALS["placement_ratio"],
               met=bool(fig["ratio"] <= GOALS["placement_ratio"]))
    results["placement"] = fig
    log(f"  placed / one device = {fig['ratio']:.3f}")
  if "balancing" in config.figures:
    results["balancing"] = balancing(config)
  if "input_pipeline" in config.figures:
    log("input pipeline: sideways_tf.data train split (own process)")
    try:
      fig = run_child("input_pipeline", config)
    except RuntimeError as error:
      fig = {"available": False, "reason": str(error)[-1500:]}
    if fig.get("available") and "throughput" in results:
      fig["train_frames_per_s"] = results["throughput"]["sideways"][
          "frames_per_s"]
      fig["ratio"] = fig["frames_per_s"] / fig["train_frames_per_s"]
      fig.update(goal=GOALS["input_pipeline_ratio"],
                 met=bool(fig["ratio"] >= GOALS["input_pipeline_ratio"]))
      log(f"  {fig['frames_per_s']:.0f} frames/s, ratio {fig['ratio']:.2f}")
    else:
      log(f"  not measured: {fig.get('reason', '')[:200]}")
    results["input_pipeline"] = fig
  results["machine"]["load_average_end"] = list(os.getloadavg())
  (bench_dir / "benchmark.json").write_text(json.dumps(results, indent=2))
  log(f"wrote {bench_dir / 'benchmark.json'}")
  if doc_path:
    from sideways_tf import benchmark_devices  # pylint: disable=g-import-not-at-top
    # Keep the --simulate_devices table, which another run writes.
    pathlib.Path(doc_path).write_text(
        markdown(results) + benchmark_devices.preserved_section(doc_path))
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


# ---------------------------------------------------------------- markdown

def _ms(seconds) -> str:
  return f"{seconds * 1e3:.2f}"


def _met(flag) -> str:
  return "met" if flag else "**missed**"


def markdown(results: dict) -> str:
  """The figures as docs/benchmarks.md."""
  c = results["config"]
  lines = [
      "# Benchmarks: Sideways vs BP",
      "",
      "Generated by `bin/benchmark` (`sideways_tf/benchmark.py`) from one run; "
      "every figure times the trainer's own engine (`Trainer.train_step`, "
      "`Pipeline.stage_tick_seconds`, `Pipeline.trace_count`). Raw numbers: "
      "`benchmark.json` in the run's `--bench_dir`.",
      "",
      "Command:",
      "",
      "```",
      results.get("command") or "bin/benchmark",
      "```",
      "",
      f"Run {results['date']} on {results['machine']['processor']} "
      f"({results['machine']['cpus']} CPUs), TensorFlow "
      f"{results['machine']['tensorflow']}; load average at start / end "
      f"{results['machine']['load_average_start'][0]:.2f} / "
      f"{results['machine']['load_average_end'][0]:.2f} (the machine is "
      "shared, so timings are noisy: medians of alternating repetitions).",
      "",
      f"Config: model `{c['model']}` with {c['num_modules']} modules, "
      f"{c['image_size']}x{c['image_size']}x{c['channels']} frames, "
      f"B = {c['batch_size']}, T = {c['num_frames']}, {c['threads']} intra- "
      f"and inter-op threads, {c['repeats']} timed repetitions per algorithm "
      f"after {c['warmup']} warm-up steps, SGD update"
      f"{', mixed_bfloat16' if c['mixed_precision'] else ''}.",
      "",
      "## Summary",
      "",
      "| # | figure | measured | goal | status |",
      "|---|---|---|---|---|",
  ]
  rows = []
  tp = results.get("throughput")
  if tp:
    rows.append(("1", "throughput Sideways / BP (frames/s)",
                 f"{tp['ratio']:.3f}", f">= {tp['goal']}", _met(tp["met"])))
  mem = results.get("memory")
  if mem:
    g = mem["goals"]
    rows.append(("2a", f"memory Sideways T={g['flat']['t_max']} / "
                 f"T={g['flat']['t_min']} (step MiB)",
                 f"{g['flat']['ratio']:.3f}", f"<= {g['flat']['goal']}",
                 _met(g["flat"]["met"])))
    rows.append(("2b", f"memory Sideways / BP at T={g['vs_bp']['t']} "
                 "(step MiB)", f"{g['vs_bp']['ratio']:.3f}",
                 f"<= {g['vs_bp']['goal']}", _met(g["vs_bp"]["met"])))
    rows.append(("2c", "memory Sideways / BP shrinks as T grows",
                 str(g["shrinks_with_t"]).lower(), "true",
                 _met(g["shrinks_with_t"])))
  st = results.get("stages")
  if st:
    rows.append(("3", "stage balance sum / (L max); ideal speedup",
                 f"{st['balance']:.2f}; {st['ideal_speedup']:.2f}x",
                 "report", "-"))
  pl = results.get("placement")
  if pl:
    rows.append(("4", f"placement: tick on {len(set(pl['devices']))} devices "
                 "/ on 1", f"{pl['ratio']:.3f}", f"<= {pl['goal']}",
                 _met(pl["met"])))
  ip = results.get("input_pipeline")
  if ip:
    if ip.get("available") and "ratio" in ip:
      rows.append(("5", "input pipeline / training frames/s",
                   f"{ip['ratio']:.2f}", f">= {ip['goal']}", _met(ip["met"])))
    else:
      rows.append(("5", "input pipeline / training frames/s",
                   "not measured", ">= 3", "n/a"))
  tr = results.get("tracing")
  if tr:
    rows.append(("6", f"traces over {tr['sideways']['clips']} clips "
                 "(Sideways, BP)",
                 f"{tr['sideways']['trace_count']}, {tr['bp']['trace_count']}",
                 "1 each", _met(tr["met"])))
  lines += [f"| {' | '.join(r)} |" for r in rows]

  if tp:
    lines += [
        "", "## 1. Throughput", "",
        f"Train step on the same model, batch and clip ({tp['frames_per_step']}"
        " frames per step), the two algorithms alternating in one process.",
        "",
        "| algorithm | median ms/step | p25-p75 ms | min-max ms | frames/s |",
        "|---|---|---|---|---|",
    ]
    for a, name in (("sideways", "Sideways"), ("bp", "BP (time folded into "
                                                      "the batch)")):
      s = tp[a]
      lines.append(f"| {name} | {_ms(s['median_s'])} | {_ms(s['p25_s'])}-"
                   f"{_ms(s['p75_s'])} | {_ms(s['min_s'])}-{_ms(s['max_s'])} "
                   f"| {s['frames_per_s']:.0f} |")
    lines += ["", f"Ratio of medians: **{tp['ratio']:.3f}** (per-round ratios "
              f"p25-p75 {tp['ratio_p25']:.3f}-{tp['ratio_p75']:.3f})."]
  if mem:
    lines += [
        "", "## 2. Memory", "",
        "Each row is its own process (3 train steps). " + mem["note"], "",
        "| T | Sideways step MiB | BP step MiB | Sideways / BP (step) | "
        "Sideways peak MiB | BP peak MiB | Sideways / BP (peak) | clip MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["algorithm"], r["num_frames"]): r for r in mem["rows"]}
    for t in c["memory_frames"]:
      s, b = by[("sideways", t)], by[("bp", t)]
      lines.append(
          f"| {t} | {s['step_mib']:.1f} | {b['step_mib']:.1f} | "
          f"{s['step_mib'] / b['step_mib']:.3f} | {s['peak_mib']:.0f} | "
          f"{b['peak_mib']:.0f} | {s['peak_mib'] / b['peak_mib']:.3f} | "
          f"{s['clip_mib']:.1f} |")
    pk = mem["peak_mib_ratios"]
    lines += ["", f"Raw peak ratios (everything resident): Sideways "
              f"T={max(c['memory_frames'])} / T={min(c['memory_frames'])} = "
              f"{pk.get('sideways_flat', float('nan')):.3f}."]
  if st:
    lines += [
        "", "## 3. Per-stage time and balance", "",
        "`Pipeline.stage_tick_seconds`: each module's tick (forward and "
        "backward of B frames, as in the engine) run on its own.", "",
        "| module | tick ms |", "|---|---|",
    ]
    lines += [f"| {k + 1} | {_ms(s)} |" for k, s in enumerate(
        st["stage_tick_s"])]
    lines += [
        "",
        f"Sum {_ms(st['sum_s'])} ms, max {_ms(st['max_s'])} ms: balance "
        f"sum / (L x max) = **{st['balance']:.2f}**, ideal depth-parallel "
        f"speedup sum / max = **{st['ideal_speedup']:.2f}x** on "
        f"{st['gpipe_k']} devices.",
    ]
    if "engine_tick_s" in st:
      lines.append(f"Measured engine tick on one device (Sideways step / T): "
                   f"{_ms(st['engine_tick_s'])} ms.")
    lines += [
        "",
        f"GPipe with the same K = {st['gpipe_k']} stages and M = T = "
        f"{st['gpipe_m']} micro-batches idles a bubble fraction (K-1)/(M+K-1) "
        f"= **{st['gpipe_bubble']:.3f}** of its time and must keep all M "
        "micro-batches' activations; Sideways has no bubble beyond the "
        f"{st['gpipe_k'] - 1} warm-up ticks of a clip and keeps one "
        "frame per module.",
    ]
  bal = results.get("balancing")
  if bal:
    lines += [
        "", "### Stage balancing on the model zoo", "",
        "Items are the layers of each model's own split; `balance_by_time` "
        "(`sideways_tf/balance.py`) times each layer's forward and backward on "
        "a batch of frames and cuts them to minimise the slowest module. Both "
        "splits are then timed with `Pipeline.stage_tick_seconds`"
        f" (vgg8/resnet18 at width {c['zoo_width']}).", "",
        "| model | layers per module: own split | by params | by time | "
        "balance before | balance after |",
        "|---|---|---|---|---|---|",
    ]
    for model, b in bal.items():
      lines.append(f"| {model} | {b['sizes_before']} | {b['sizes_by_params']}"
                   f" | {b['sizes_by_time']} | {b['balance_before']:.2f} | "
                   f"{b['balance_after']:.2f} |")
  if pl:
    lines += [
        "", "## 4. Placement cost", "",
        f"Sideways train step with stage k on logical CPU device k "
        f"({', '.join(pl['devices'])}) vs every stage on the default device, "
        "alternating in one child process (logical devices share the same two "
        "cores, so this isolates the cost of placement itself).", "",
        "| placement | median ms/step | tick ms |", "|---|---|---|",
        f"| one device | {_ms(pl['one_device']['median_s'])} | "
        f"{_ms(pl['tick_s_one_device'])} |",
        f"| one device per stage | {_ms(pl['placed']['median_s'])} | "
        f"{_ms(pl['tick_s_placed'])} |",
        "", f"Ratio: **{pl['ratio']:.3f}**.",
    ]
  if ip:
    lines += ["", "## 5. Input pipeline", ""]
    if ip.get("available") and "ratio" in ip:
      lines += [
          f"`sideways_tf.data.get_datasets` (`configs/default.py` data, "
          f"overrides {ip['overrides']}) train split, batches of shape "
          f"{ip['video_shape']}: {ip['frames_per_s']:.0f} frames/s over "
          f"{ip['batches']} batches vs Sideways training "
          f"{ip['train_frames_per_s']:.0f} frames/s: ratio "
          f"**{ip['ratio']:.2f}**.",
      ]
    else:
      lines.append(f"Not measured: {ip.get('reason', '')}")
  if tr:
    lines += [
        "", "## 6. Tracing", "",
        f"{tr['sideways']['clips']} new clips of one shape through a fresh "
        f"pipeline's `Trainer.train_step`: `Pipeline.trace_count` = "
        f"{tr['sideways']['trace_count']} (Sideways), "
        f"{tr['bp']['trace_count']} (BP).",
    ]
  if results.get("profile_dir"):
    lines += ["", f"Profiler trace: `{results['profile_dir']}` (open with "
              "TensorBoard's profile plugin)."]
  return "\n".join(lines) + "\n"


def _child_main(argv):
  kind, payload = argv[1], json.loads(argv[2])
  config = BenchmarkConfig(**payload["config"])
  result = CHILDREN[kind](config, **payload["kwargs"])
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  _child_main(sys.argv)
