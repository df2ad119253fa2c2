"""Working memory of a model that sees time, against the clip length T.

Once frames depend on each other (causal temporal layers, `model.temporal`),
exact BP through time must keep every activation of the clip, so its memory
grows with T; truncating it at chunk edges (state carried, gradient
stopped) caps the memory at one chunk's; GPipe with re-materialisation
keeps each stage's input for every micro-batch; Sideways keeps one input,
one gradient and the temporal states per module whatever T. This figure
measures each of them training the same temporal model on clips of T = 16,
64, 256 frames: the peak resident memory of its train steps above the
process's memory just before them, each (variant, T) in a fresh process
(`children.run_module_child`), as the memory figure does.

  bin/benchmark --figures=temporal_memory --image_size=32 --doc=

The budget line: the memory of exact BP at T = `truncation` frames. Under
that budget exact BP through time must truncate to chunks of `truncation`
frames; the table shows which variants fit it at every T.
"""

from __future__ import annotations

import sys
from typing import Dict

from sideways_tf.benchmark import children
from sideways_tf.benchmark.common import BenchmarkConfig
from sideways_tf.benchmark.common import configure
from sideways_tf.benchmark.common import log
from sideways_tf.benchmark.common import make_clip

# name -> (algorithm, Trainer/Pipeline options). "bp_truncated" streams the
# clip in chunks of `truncation` frames with an update after each (the
# trainer's update_every_ticks), so BP carries the temporal states across
# the chunk edges and stops the gradient there.
VARIANTS = {
    "sideways": ("sideways", {}),
    "bp": ("bp", {}),
    "bp_truncated": ("bp", {"update_every_ticks": "truncation"}),
    "gpipe_remat": ("gpipe", {"gpipe_rematerialize": True}),
}
# The variants that carry a stream from one call to the next.
STREAMING = ("sideways", "bp_truncated")
LABELS = {
    "sideways": "Sideways (whole stream)",
    "bp": "BP through time (whole clip)",
    "bp_truncated": "BP truncated at chunk edges",
    "gpipe_remat": "GPipe, re-materialised",
}


def memory_child(config: BenchmarkConfig, variant: str,
                 num_frames: int) -> Dict[str, float]:
  """In a fresh process: peak RSS of train steps of one (variant, T)."""
  configure(config)
  return measure(config, variant, num_frames)


def measure(config: BenchmarkConfig, variant: str,
            num_frames: int) -> Dict[str, float]:
  """Peak RSS of `config.memory_steps` train steps of one (variant, T) in
  this process, above its RSS just before them (meaningful in a fresh
  process: see memory_child)."""
  import keras  # pylint: disable=g-import-not-at-top
  import psutil  # pylint: disable=g-import-not-at-top
  import sideways_tf  # pylint: disable=g-import-not-at-top
  from sideways_tf import models  # pylint: disable=g-import-not-at-top
  algorithm, options = VARIANTS[variant]
  every = (config.truncation if options.get("update_every_ticks")
           else 0)
  keras.utils.set_random_seed(0)
  stages = models.MODELS[config.model](
      num_classes=config.num_classes, num_modules=config.num_modules,
      temporal=config.temporal)
  pipeline = sideways_tf.Pipeline(stages, gpipe_rematerialize=bool(
      options.get("gpipe_rematerialize", False)))
  trainer = sideways_tf.Trainer(pipeline, keras.optimizers.SGD(1e-3),
                                algorithm, update_every_ticks=every)
  frames, labels = make_clip(config, num_frames=num_frames)
  float(frames[0, 0, 0, 0, 0])  # materialise the clip before the baseline
  baseline = psutil.Process().memory_info().rss
  for _ in range(config.memory_steps):
    trainer.train_step(frames, labels)
  peak = children.peak_rss_bytes()
  mib = 1024.0 * 1024.0
  state = sum(v.numpy().nbytes for v in pipeline.state_variables)
  return {"variant": variant, "num_frames": num_frames,
          "step_mib": (peak - baseline) / mib, "peak_mib": peak / mib,
          "state_mib": state / mib, "clip_mib": frames.numpy().nbytes / mib}


CHILDREN = {"temporal_memory": memory_child}


def temporal_memory(config: BenchmarkConfig) -> dict:
  """The figure: one child process per (variant, T)."""
  rows = []
  for num_frames in config.temporal_memory_frames:
    for variant in VARIANTS:
      log(f"temporal memory: {variant} T={num_frames} (own process)")
      row = children.run_module_child(
          "sideways_tf.benchmark.temporal_memory", "temporal_memory", config,
          variant=variant, num_frames=int(num_frames))
      log(f"  step (peak - baseline) {row['step_mib']:.1f} MiB")
      rows.append(row)
  by = {(r["variant"], r["num_frames"]): r["step_mib"] for r in rows}
  t_min = min(config.temporal_memory_frames)
  t_max = max(config.temporal_memory_frames)
  growth = {v: by[(v, t_max)] / by[(v, t_min)] for v in VARIANTS
            if (v, t_max) in by and (v, t_min) in by and by[(v, t_min)] > 0}
  budget = by.get(("bp", config.truncation))
  return {"rows": rows, "t_min": t_min, "t_max": t_max, "growth": growth,
          "budget_mib": budget, "truncation": config.truncation,
          "temporal": config.temporal,
          "goal": {"sideways_flat_ratio": 1.1,
                   "met": bool(growth.get("sideways", 99) <= 1.1)}}


def markdown(fig: dict) -> list:
  """The section of docs/benchmarks.md."""
  if not fig:
    return []
  frames = sorted({r["num_frames"] for r in fig["rows"]})
  by = {(r["variant"], r["num_frames"]): r for r in fig["rows"]}
  lines = ["", "## 8. Working memory of a model that sees time", "",
           f"The frame CNN with `model.temporal=\"{fig['temporal']}\"` "
           "(causal temporal layers: frames depend on each other), trained on "
           "clips of T frames; each (variant, T) in its own process "
           "(`sideways_tf/benchmark/temporal_memory.py`). MiB of peak "
           "resident memory over the train steps above the memory just "
           "before them (model, optimizer and clip already resident); in "
           "brackets, for the variants that carry a stream across calls, "
           "the pipeline state they keep (buffers, temporal states).", "",
           "| variant | " + " | ".join(f"T = {t}" for t in frames)
           + f" | T = {fig['t_max']} / T = {fig['t_min']} |",
           "|---" * (len(frames) + 2) + "|"]
  for variant, label in LABELS.items():
    state = variant in STREAMING
    cells = [f"{by[(variant, t)]['step_mib']:.1f}" + (
        f" ({by[(variant, t)]['state_mib']:.2f})" if state else "")
             if (variant, t) in by else "–" for t in frames]
    growth = fig["growth"].get(variant)
    lines.append(f"| {label} | " + " | ".join(cells) + " | "
                 + (f"{growth:.2f}" if growth else "–") + " |")
  if fig.get("budget_mib"):
    fits = [LABELS[v] for v in VARIANTS
            if all(by[(v, t)]["step_mib"] <= fig["budget_mib"]
                   for t in frames if (v, t) in by)]
    lines += ["", f"Budget: {fig['budget_mib']:.1f} MiB, exact BP through "
              f"time at T = {fig['truncation']}: under it BP must truncate "
              f"to chunks of {fig['truncation']} frames. Within it at every "
              f"T: {', '.join(fits) or 'none'}. Goal: Sideways at T = "
              f"{fig['t_max']} ≤ 1.1 × its memory at T = {fig['t_min']}: "
              f"{'met' if fig['goal']['met'] else '**missed**'}."]
  return lines


if __name__ == "__main__":
  # `python -m sideways_tf.benchmark.temporal_memory KIND PAYLOAD`.
  import json  # pylint: disable=g-import-not-at-top
  payload = json.loads(sys.argv[2])
  print(json.dumps(CHILDREN[sys.argv[1]](
      BenchmarkConfig(**payload["config"]), **payload["kwargs"])),
        flush=True)
