"""Video models that see time, on digit x direction: the map over seeds.

configs/moving_digits_direction.py labels each video with its digit and the
direction it moves in, so a per-frame model is at chance (1/4) on the
direction part. Each model (per-frame, Skip-Sideways, causal temporal conv,
temporal shift) runs with BP, plain Sideways and the replay its config
ships; every run is `bin/train` in its own process (`gap_map.run_one`: one
core, cached in OUTDIR/temporal/<steps>steps/<cell>/<algorithm>-seed<s>/).

  bin/experiments --only=temporal --steps=4000 --temporal_seeds=5 --jobs=2

Long streams (group "long", run only when asked for: --temporal_groups=long):
the temporal model on clips of T = 64 and 256 frames with BP through time,
BP truncated at chunks of TRUNCATION frames (the trainer's online updates:
state carried, gradient stopped, an update per chunk), GPipe
re-materialised and Sideways on the whole stream; the memory each needs is
bin/benchmark --figures=temporal_memory (docs/benchmarks_temporal.md).

The report gives per cell the test clip accuracy of the whole label, of its
direction part and of its digit part (mean and 95% t-interval over seeds),
Sideways - BP paired by seed, and the two headline comparisons: BP with
temporal layers against per-frame BP on the direction part, and Sideways
against BP with the same temporal model.
"""

from __future__ import annotations

import json
import pathlib
from typing import Dict, List, Sequence


from sideways_tf.configs import moving_digits_direction
from sideways_tf.run.files import write_marked_section
from sideways_tf.paper_experiments import gap_map
from sideways_tf.paper_experiments import gap_report
from sideways_tf.paper_experiments.gap_stats import format_interval

CONFIG = "configs/moving_digits_direction.py"
SHIPPED_REPLAY = str(moving_digits_direction.get_config().replay_modules)
PARTS = ("direction", "digit")


def _model(group, name, overrides, replay):
  """A model's BP + plain Sideways cell (named after the model) and its
  shipped-replay cell."""
  plain = gap_map.Cell(group, name,
                       dict(overrides, replay_modules="0"), config=CONFIG)
  replayed = gap_map.Cell(group, f"{name}, replay_modules={replay}",
                          dict(overrides, replay_modules=replay),
                          ("sideways",), bp_from=plain.name, config=CONFIG)
  return plain, replayed


TRUNCATION = 16  # frames per chunk of truncated BP (the memory budget's T)
LONG_FRAMES = (64, 256)


def _long(num_frames: int):
  """The long-stream cells at T = num_frames: the algorithms a memory budget
  chooses between, on the temporal conv model."""
  base = {"model.temporal": "conv:3", "data.num_frames": str(num_frames),
          "replay_modules": "0"}
  exact = gap_map.Cell("long", f"T={num_frames}: BP through time", base,
                       ("bp",), config=CONFIG)
  return (
      exact,
      gap_map.Cell("long", f"T={num_frames}: BP truncated at {TRUNCATION}",
                   dict(base, **{"train.update_every_ticks": str(TRUNCATION)}),
                   ("bp",), config=CONFIG),
      gap_map.Cell("long", f"T={num_frames}: GPipe re-materialised",
                   dict(base, **{"gpipe.rematerialize": "True"}), ("gpipe",),
                   config=CONFIG),
      gap_map.Cell("long", f"T={num_frames}: Sideways, replay_modules="
                   f"{SHIPPED_REPLAY}", dict(base, replay_modules=SHIPPED_REPLAY),
                   ("sideways",), bp_from=exact.name, config=CONFIG),
  )


# In priority order: a partial map has the headline cells first.
CELLS = (
    *_model("conv", "temporal conv:3", {"model.temporal": "conv:3"},
            SHIPPED_REPLAY),
    *_model("frame", "per-frame", {"model.temporal": ""}, SHIPPED_REPLAY),
    # Skip-Sideways ships replay of every module below the top (3 of 4).
    *_model("skip", "Skip-Sideways 2:0", {"model.temporal": "",
                                          "skips": "2:0"}, "3"),
    *_model("shift", "temporal shift 1/8", {"model.temporal": "shift"},
            SHIPPED_REPLAY),
    *[cell for num_frames in LONG_FRAMES for cell in _long(num_frames)],
)


def run_dir(outdir, cell, algorithm: str, seed: int,
            steps: int) -> pathlib.Path:
  slug = "".join(c if c.isalnum() or c in "-.=" else "_" for c in cell.name)
  return (pathlib.Path(outdir) / "temporal" / f"{steps}steps" / slug
          / f"{algorithm}-seed{seed}")


# The three runs per seed the two goal comparisons need, and nothing else:
# BP with the temporal conv, Sideways with the shipped replay on the same
# model, per-frame BP ("--temporal_groups=headline"; their run directories are
# the full map's, so a later full map reuses them).
HEADLINE = ((CELLS[0], "bp"), (CELLS[1], "sideways"), (CELLS[2], "bp"))
# "--temporal_groups=budget": at T = 64, the two long-stream cells that fit
# the memory budget of BP through time at T = TRUNCATION (working memory:
# docs/benchmarks_temporal.md): BP truncated at TRUNCATION frames and
# Sideways with the shipped replay on the whole stream.
_LONG = {cell.name: cell for cell in CELLS if cell.group == "long"}
BUDGET = ((_LONG[f"T=64: BP truncated at {TRUNCATION}"], "bp"),
          (_LONG[f"T=64: Sideways, replay_modules={SHIPPED_REPLAY}"],
           "sideways"))
NAMED_GROUPS = {"headline": HEADLINE, "budget": BUDGET}


def plan(outdir, steps: int, seeds: int,
         only_groups: Sequence[str] = (), first_seed: int = 0) -> List[tuple]:
  """(cell, algorithm, seed, run_dir) of every run, in priority order
  (seed-major, so a partial map has every cell at its first seeds), seeds
  first_seed .. first_seed + seeds - 1. The long streams run only when asked
  for (`only_groups` names "long"); "headline" and "budget" name the runs of
  HEADLINE and BUDGET (NAMED_GROUPS)."""
  seed_range = range(first_seed, first_seed + seeds)
  named = [run for group in only_groups for run in NAMED_GROUPS.get(group, ())]
  if named:
    return [(cell, algorithm, seed, run_dir(outdir, cell, algorithm, seed,
                                            steps))
            for seed in seed_range for cell, algorithm in named]
  return [(cell, algorithm, seed, run_dir(outdir, cell, algorithm, seed,
                                          steps))
          for seed in seed_range for cell in CELLS
          if (cell.group in only_groups if only_groups
              else cell.group != "long")
          for algorithm in cell.algorithms]


def run(outdir, steps: int, seeds: int = 5, jobs: int = 1,
        only_groups: Sequence[str] = (), first_seed: int = 0) -> List[Dict]:
  """Runs (or loads) every run; returns their results."""
  return gap_map.run_plan(
      "temporal", plan(outdir, steps, seeds, only_groups, first_seed), steps,
      jobs, describe=lambda result: ", direction "
      f"{result.get('test_accuracy/direction', float('nan')):.3f}")


# ------------------------------------------------------------------- report


def load(outdir) -> List[Dict]:
  """Every finished run under OUTDIR/temporal."""
  return [json.loads(p.read_text()) for p in sorted(
      (pathlib.Path(outdir) / "temporal").glob("*/*/*/result.json"))]


def _measure(result, part: str) -> float:
  return result["test_accuracy" + (f"/{part}" if part else "")]


def rows(results: List[Dict]) -> List[Dict]:
  """Per (steps, cell, algorithm): accuracies per part, and for Sideways
  the gap to the BP runs of the same model, paired by seed."""
  by_key = {(r["cell"], r["algorithm"], r["seed"], r["steps"]): r
            for r in results}
  out = []
  for steps in sorted({r["steps"] for r in results}):
    for cell in CELLS:
      bp_cell = cell.bp_from or cell.name
      for algorithm in cell.algorithms:
        seeds = sorted(s for (c, a, s, n) in by_key
                       if (c, a, n) == (cell.name, algorithm, steps))
        if not seeds:
          continue
        runs = [by_key[(cell.name, algorithm, s, steps)] for s in seeds]
        row = dict(cell=cell.name, group=cell.group, algorithm=algorithm,
                   steps=steps, seeds=seeds)
        for part in ("",) + PARTS:
          row[part or "label"] = gap_report.interval(
              [_measure(r, part) for r in runs])
        paired = [s for s in seeds if (bp_cell, "bp", s, steps) in by_key]
        if algorithm == "sideways" and paired:
          for part in ("",) + PARTS:
            row[f"gap_{part or 'label'}"] = gap_report.interval(
                [_measure(by_key[(cell.name, "sideways", s, steps)], part)
                 - _measure(by_key[(bp_cell, "bp", s, steps)], part)
                 for s in paired])
          row["paired"] = len(paired)
        out.append(row)
  return out


def headline(results: List[Dict]) -> List[tuple]:
  """(what, steps, seeds, mean, half-width) of the goal comparisons, paired
  by seed: BP conv - BP per-frame on the direction part, and Sideways
  (shipped replay; plain) - BP on the temporal conv model, whole label and
  direction part."""
  by_key = {(r["cell"], r["algorithm"], r["seed"], r["steps"]): r
            for r in results}
  conv_plain, conv_replay, frame_plain = (CELLS[0].name, CELLS[1].name,
                                          CELLS[2].name)
  comparisons = [
      ("BP conv:3 - BP per-frame, direction", (conv_plain, "bp"),
       (frame_plain, "bp"), "direction"),
      (f"Sideways replay_modules={SHIPPED_REPLAY} - BP, conv:3, label",
       (conv_replay, "sideways"), (conv_plain, "bp"), ""),
      (f"Sideways replay_modules={SHIPPED_REPLAY} - BP, conv:3, direction",
       (conv_replay, "sideways"), (conv_plain, "bp"), "direction"),
      ("plain Sideways - BP, conv:3, label", (conv_plain, "sideways"),
       (conv_plain, "bp"), ""),
  ] + [(f"T={t}: Sideways (whole stream) - BP truncated at {TRUNCATION}, "
        "label",
        (f"T={t}: Sideways, replay_modules={SHIPPED_REPLAY}", "sideways"),
        (f"T={t}: BP truncated at {TRUNCATION}", "bp"), "")
       for t in LONG_FRAMES
       if f"T={t}: BP truncated at {TRUNCATION}" in _LONG]
  out = []
  for steps in sorted({r["steps"] for r in results}):
    for what, a, b, part in comparisons:
      seeds = sorted(s for s in range(1000)
                     if a + (s, steps) in by_key and b + (s, steps) in by_key)
      if seeds:
        mean, half = gap_report.interval(
            [_measure(by_key[a + (s, steps)], part)
             - _measure(by_key[b + (s, steps)], part) for s in seeds])
        out.append((what, steps, len(seeds), mean, half))
  return out


# Time to accuracy on the temporal model (the method of docs/choosing.md):
# the benchmark rows (`bin/benchmark --simulate_devices=2 --model_temporal=
# conv:3 ...`) that follow each curve of the map. Chunked BP and pipelined BP
# refuse temporal layers, so they have no row.
TTA_ROWS = {
    CELLS[0].name + " / bp": ("bp", "mp_bp", "gpipe", "gpipe_remat",
                              "dp2x1_bp", "dp2x1_gpipe"),
    CELLS[0].name + " / sideways": ("sideways", "dp2x1_sideways"),
    CELLS[1].name + " / sideways": (f"sideways_replay{SHIPPED_REPLAY}",),
}


def time_to_accuracy(results: List[Dict], steps: int, benchmark: Dict):
  """The wall-clock table and verdict of docs/choosing.md's method on the
  temporal conv model's runs of `steps` steps: target = BP's mean final
  label accuracy - 0.03, steps to target from each run's evaluated curve."""
  from sideways_tf.paper_experiments import time_to_accuracy as tta  # noqa: PLC0415
  runs = [r for r in results if r["steps"] == steps]
  curve_of = lambda r: f"{r['cell']} / {r['algorithm']}"  # noqa: E731
  bp_curve = f"{CELLS[0].name} / bp"
  if not any(curve_of(r) == bp_curve for r in runs):
    return []
  target, by_curve = tta.cell_rows(runs, curve_of, bp_curve)
  bp = by_curve[bp_curve]
  evals = sorted({int(step) for r in runs for step, _ in r["curve"]})
  lines = ["", f"Time to accuracy on the temporal conv model "
           f"(docs/choosing.md's method): target {target:.3f} (BP's mean "
           f"final label accuracy over {len(bp)} seeds − "
           f"{tta.TARGET_BELOW_BP}), {steps} steps, test set evaluated at "
           f"steps {', '.join(map(str, evals))}.", "",
           "| curve | seeds | reached target | steps to target |",
           "|---|---|---|---|"]
  for curve, seeds in by_curve.items():
    reached = [s for _, s in seeds.values() if s is not None]
    steps_mean = (format_interval(gap_report.interval(reached), 0) if reached
                  else "–")
    lines.append(f"| {curve} | {len(seeds)} | {len(reached)} of "
                 f"{len(seeds)} | {steps_mean} |")
  return lines + tta.wall_clock_table(by_curve, benchmark, TTA_ROWS)


def section(outdir, command: str, benchmark_json: str = "") -> List[str]:
  """The map's markdown; with `benchmark_json` (simulated_devices.json of
  the temporal model) also its time to accuracy per row."""
  results = load(outdir)
  found = rows(results)
  if not found:
    return []
  lines = [
      "### The map (written by the command)", "",
      "`configs/moving_digits_direction.py`: real handwritten digits 0-3 "
      "moving at 1–2 px/frame in one of 4 directions on a torus over a plain "
      "background, label = digit × direction (16 classes; a single frame "
      "carries no direction, so a per-frame model is at chance, 0.25, on "
      "that part). Frame CNN, 4 modules; `model.temporal=conv:3` puts a "
      "causal temporal conv over 3 frames after every conv "
      "(docs/models.md; its rule under each algorithm: docs/algorithm.md). "
      "Test clip accuracy (mean ± 95% t-interval over seeds) of the whole "
      "label and of each part; Sideways − BP paired by seed with the BP "
      "runs of the same model. Sideways is plain (`replay_modules=0`) "
      "unless the cell names its replay.", "",
      "| steps | model, cell | algorithm | seeds | label | direction | "
      "digit | Sideways − BP (label) | Sideways − BP (direction) |",
      "|---|---|---|---|---|---|---|---|---|"]
  for row in found:
    lines.append(
        f"| {row['steps']} | {row['cell']} | {row['algorithm']} | "
        f"{len(row['seeds'])} | {format_interval(row['label'])} | "
        f"{format_interval(row['direction'])} | {format_interval(row['digit'])} | "
        f"{format_interval(row.get('gap_label'))} | {format_interval(row.get('gap_direction'))} |")
  heads = headline(results)
  if heads:
    lines += ["", "Headline comparisons (paired by seed):", "",
              "| comparison | steps | seeds | difference |", "|---|---|---|---|"]
    lines += [f"| {what} | {steps} | {n} | {format_interval((mean, half))} |"
              for what, steps, n, mean, half in heads]
  if benchmark_json:
    benchmark = json.loads(pathlib.Path(benchmark_json).read_text())
    for steps in sorted({r["steps"] for r in results}):
      lines += time_to_accuracy(results, steps, benchmark)
  lines += ["", f"*Runs and this table: `{command}`*", ""]
  return lines


BEGIN = "<!-- temporal map: begin -->"
END = "<!-- temporal map: end -->"


def update(outdir, report_dir, command: str,
           benchmark_json: str = "") -> pathlib.Path:
  """Writes the section into report_dir/results.md between its markers,
  keeping the rest of the file (appends it the first time)."""
  report_dir = pathlib.Path(report_dir)
  report_dir.mkdir(parents=True, exist_ok=True)
  path = report_dir / "results.md"
  write_marked_section(path, BEGIN, END,
                       section(outdir, command, benchmark_json))
  return path
