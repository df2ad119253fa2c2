"""One function per figure of docs/benchmarks.md; each returns its JSON.

Throughput, stages, tracing and balancing run in this process on one
pipeline; memory, placement and the input pipeline each run children (see
`children.py`) and compare their results with the goals.
"""

from __future__ import annotations

import pathlib
from typing import Dict

from sideways_tf.benchmark.common import ALGORITHMS
from sideways_tf.benchmark.common import alternating_rates
from sideways_tf.benchmark.common import GOALS
from sideways_tf.benchmark.common import BenchmarkConfig
from sideways_tf.benchmark.common import build_stages
from sideways_tf.benchmark.common import log
from sideways_tf.benchmark.common import make_clip
from sideways_tf.benchmark.common import make_trainers
from sideways_tf.benchmark.children import run_child


def in_process(config: BenchmarkConfig) -> Dict[str, dict]:
  """Figures 1, 3 (per-stage times) and 6 (tracing) on one pipeline."""
  import sideways_tf  # pylint: disable=g-import-not-at-top
  results = {}
  pipeline = sideways_tf.Pipeline(build_stages(config))
  trainers = make_trainers(pipeline)
  frames, labels = make_clip(config)
  if "throughput" in config.figures:
    results["throughput"] = throughput(config, trainers, frames, labels)
  if "stages" in config.figures:
    results["stages"] = stages(config, pipeline, frames, labels,
                               results.get("throughput"))
  if "tracing" in config.figures:
    results["tracing"] = tracing(config, pipeline)
  if config.profile_dir:
    profile(config, trainers, frames, labels)
    results["profile_dir"] = config.profile_dir
  return results


def throughput(config: BenchmarkConfig, trainers, frames, labels) -> dict:
  """Figure 1: Sideways and BP train steps alternating; frames/s ratio."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  frames_per_step = config.batch_size * config.num_frames
  log(f"throughput: Sideways vs BP train steps, {config.repeats} "
      f"alternating repetitions, B={config.batch_size} T={config.num_frames}"
      f" {config.image_size}x{config.image_size}x{config.channels}")
  seconds, fig = alternating_rates(
      {a: (lambda t=t: t.train_step(frames, labels))
       for a, t in trainers.items()}, config)
  ratio = fig["sideways"]["frames_per_s"] / fig["bp"]["frames_per_s"]
  # Spread of the ratio: per-round ratios (each round has one of each).
  rounds = [b / s for s, b in zip(seconds["sideways"], seconds["bp"])]
  fig.update(ratio=ratio, ratio_per_round=rounds,
             ratio_p25=float(np.percentile(rounds, 25)),
             ratio_p75=float(np.percentile(rounds, 75)),
             frames_per_step=frames_per_step,
             goal=GOALS["throughput_ratio"],
             met=bool(ratio >= GOALS["throughput_ratio"]))
  log(f"  Sideways {fig['sideways']['frames_per_s']:.0f} frames/s, BP "
      f"{fig['bp']['frames_per_s']:.0f} frames/s, ratio {ratio:.3f} "
      f"(goal >= {GOALS['throughput_ratio']})")
  return fig


def stages(config: BenchmarkConfig, pipeline, frames, labels,
           throughput_fig=None) -> dict:
  """Figure 3: per-module tick time, balance, ideal speedup, GPipe bubble."""
  from sideways_tf.engine import balance  # pylint: disable=g-import-not-at-top
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
  if throughput_fig:
    fig["engine_tick_s"] = (throughput_fig["sideways"]["median_s"] /
                            config.num_frames)
  log(f"  stage ms {[round(s * 1e3, 3) for s in stage_s]}, balance "
      f"{fig['balance']:.2f}, ideal speedup {fig['ideal_speedup']:.2f}, "
      f"GPipe bubble {fig['gpipe_bubble']:.3f}")
  return fig


def tracing(config: BenchmarkConfig, pipeline) -> dict:
  """Figure 6: traces of a fresh pipeline's train step over new clips."""
  import sideways_tf  # pylint: disable=g-import-not-at-top
  log(f"tracing: {config.trace_clips} new clips per algorithm")
  fig = {}
  for algorithm in ALGORITHMS:
    fresh = sideways_tf.Pipeline(pipeline.stages)
    trainer = make_trainers(fresh)[algorithm]
    for i in range(config.trace_clips):
      clip_frames, clip_labels = make_clip(config, seed=100 + i)
      trainer.train_step(clip_frames, clip_labels)
    fig[algorithm] = {"clips": config.trace_clips,
                      "trace_count": fresh.trace_count}
  fig["goal"] = GOALS["traces_per_shape"]
  fig["met"] = all(fig[a]["trace_count"] == 1 for a in ALGORITHMS)
  log(f"  traces: Sideways {fig['sideways']['trace_count']}, BP "
      f"{fig['bp']['trace_count']} over {config.trace_clips} clips")
  return fig


def profile(config: BenchmarkConfig, trainers, frames, labels) -> None:
  """A TensorBoard profiler trace of a few steps per algorithm."""
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


def balancing(config: BenchmarkConfig) -> Dict[str, dict]:
  """Stage balancing on the zoo: the model's own split vs balance_by_time.

  Items are the layers of the model's own stages (so a cut may fall between
  any two layers); both splits are then timed with
  Pipeline.stage_tick_seconds.
  """
  import sideways_tf  # pylint: disable=g-import-not-at-top
  from sideways_tf.engine import balance  # pylint: disable=g-import-not-at-top
  # Its own clip length: the fewest frames whose gradient reaches every
  # module (T = 2L-1; fewer would warn about a T the user never chose).
  frames, labels = make_clip(config, num_frames=2 * config.num_modules - 1)
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


def memory(config: BenchmarkConfig) -> dict:
  """Figure 2: one child process per (algorithm, T)."""
  rows = []
  for num_frames in config.memory_frames:
    for algorithm in ALGORITHMS:
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
  out["goals"] = _memory_goals(config, out["step_mib_ratios"])
  return out


def _memory_goals(config: BenchmarkConfig, ratios) -> dict:
  t_min, t_max = min(config.memory_frames), max(config.memory_frames)
  vs_t = 64 if 64 in ratios["sideways_vs_bp"] else config.num_frames
  by_t = [ratios["sideways_vs_bp"][t] for t in sorted(config.memory_frames)]
  return {
      "flat": {"t_min": t_min, "t_max": t_max,
               "ratio": ratios.get("sideways_flat"),
               "goal": GOALS["memory_flat_ratio"],
               "met": bool(ratios.get("sideways_flat", 99) <=
                           GOALS["memory_flat_ratio"])},
      "vs_bp": {"t": vs_t, "ratio": ratios["sideways_vs_bp"].get(vs_t),
                "goal": GOALS["memory_vs_bp_ratio"],
                "met": bool((ratios["sideways_vs_bp"].get(vs_t) or 99) <=
                            GOALS["memory_vs_bp_ratio"])},
      "shrinks_with_t": bool(all(a >= b for a, b in zip(by_t[:-1],
                                                        by_t[1:]))),
  }


def placement(config: BenchmarkConfig) -> dict:
  """Figure 4: one logical CPU device per stage vs one device (a child)."""
  num_devices = config.num_devices or config.num_modules
  log(f"placement: {config.num_modules} stages on {num_devices} logical "
      f"CPU devices vs one device (own process)")
  fig = run_child("placement", config, num_devices=num_devices)
  fig.update(goal=GOALS["placement_ratio"],
             met=bool(fig["ratio"] <= GOALS["placement_ratio"]))
  log(f"  placed / one device = {fig['ratio']:.3f}")
  return fig


def input_pipeline(config: BenchmarkConfig, throughput_fig=None,
                   bench_dir=None) -> dict:
  """Figure 5: input pipeline frames/s (a child) / training frames/s; with
  a `bench_dir`, also prepared folders of JPEG and raw frames (5b, made in
  bench_dir/input_folder)."""
  log("input pipeline: sideways_tf.data train split (own process)")
  try:
    fig = run_child("input_pipeline", config)
  except RuntimeError as error:
    fig = {"available": False, "reason": str(error)[-1500:]}
  if fig.get("available") and throughput_fig:
    fig["train_frames_per_s"] = throughput_fig["sideways"]["frames_per_s"]
    fig["ratio"] = fig["frames_per_s"] / fig["train_frames_per_s"]
    fig.update(goal=GOALS["input_pipeline_ratio"],
               met=bool(fig["ratio"] >= GOALS["input_pipeline_ratio"]))
    log(f"  {fig['frames_per_s']:.0f} frames/s, ratio {fig['ratio']:.2f}")
  else:
    log(f"  not measured: {fig.get('reason', '')[:200]}")
  if bench_dir is not None:
    fig["folder"] = input_folder_figure(config, throughput_fig, bench_dir)
  return fig


def input_folder_figure(config: BenchmarkConfig, throughput_fig,
                        bench_dir) -> dict:
  """Figure 5b: prepared-folder frames/s, JPEG and raw (one child)."""
  from sideways_tf.benchmark import input_folder  # noqa: PLC0415
  root = str(pathlib.Path(bench_dir).resolve() / "input_folder")
  log(f"input pipeline: prepared folders in {root}, JPEG vs raw frames "
      "(own process)")
  try:
    fig = run_child("input_folder", config, root=root)
  except RuntimeError as error:
    return {"available": False, "reason": str(error)[-1500:]}
  fig["available"] = True
  if throughput_fig:
    input_folder.with_training_rate(
        fig, throughput_fig["sideways"]["frames_per_s"],
        GOALS["input_pipeline_ratio"])
  log("  " + ", ".join(
      f"{s} {fig[s]['frames_per_s']:.0f} frames/s" +
      (f" (ratio {fig[s]['ratio']:.2f})" if "ratio" in fig[s] else "")
      for s in input_folder.STORAGES))
  return fig
