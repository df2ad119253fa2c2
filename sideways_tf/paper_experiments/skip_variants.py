"""Skip-Sideways vs BP with the same skip, on the motion label, over seeds.

Is Skip-Sideways' shortfall on the synthetic set's motion label (which way a
shape moves) the Sideways approximation or a defect, and which skip variant
trains best? Every run is `bin/train --config=configs/motion_skip.py` with a
cell's overrides, in its own process (`gap_map.run_one`: one core, cached in
OUTDIR/skip_variants/<steps>steps/<cell>/<algorithm>-seed<s>/result.json).

  bin/experiments --only=skip_variants --steps=1000 --skip_seeds=5 --jobs=2

The report gives, per cell, test clip accuracy of both algorithms (mean and
95% t-interval over seeds), the Sideways - BP gap paired by seed, and the
Sideways runs' mean gradient cosine to BP per module.
"""

from __future__ import annotations

import json
import pathlib
from typing import Dict, List, Sequence

import numpy as np

from sideways_tf.paper_experiments import gap_map
from sideways_tf.paper_experiments import gap_report
from sideways_tf.paper_experiments.gap_stats import format_interval
from sideways_tf.run.files import write_marked_section

CONFIG = "configs/motion_skip.py"
DEFAULT = "offset skip 2:0, concat (configs/motion_skip.py)"
NARROW = {"model.widths": "(16, 16, 64)"}  # equal channels for "add"


def _cell(group, name, overrides, algorithms=("sideways", "bp"), bp_from=""):
  return gap_map.Cell(group, name, overrides, algorithms, bp_from,
                      config=CONFIG)


# In priority order.
CELLS = (
    _cell("default", DEFAULT, {}),
    # Replay with one gradient per path lag (docs/skip_sideways.md): 3 =
    # every module below the top, BP's pairing along every path.
    _cell("replay", "offset skip + replay_modules=3 (every path exact)",
          {"replay_modules": "3"}, ("sideways",), bp_from=DEFAULT),
    _cell("replay", "offset skip + replay_modules=2",
          {"replay_modules": "2"}, ("sideways",), bp_from=DEFAULT),
    _cell("replay", "offset skip + replay_modules=1",
          {"replay_modules": "1"}, ("sideways",), bp_from=DEFAULT),
    # The same model (same layers, same skip) cut into 3 modules instead of
    # 4: BP's gradient does not depend on the cut, Sideways' lags shrink.
    _cell("depth", "offset skip 2:0, 3 modules (same model)",
          {"model.num_modules": "3"}, ("sideways",), bp_from=DEFAULT),
    _cell("align", "aligned skip 2:0 (skip_align=True)",
          {"skip_align": "True"}),
    _cell("plain", "no skip", {"skips": ""}),
    _cell("combine", "offset skip, concat, widths 16-16-64", NARROW),
    _cell("combine", "offset skip, add, widths 16-16-64",
          dict(NARROW, skip_combine="add")),
    _cell("speed", "offset skip, 1 px/frame", {"data.speed": "1.0"}),
    # Run with a larger --steps: does Sideways get there later?
    _cell("longer", "offset skip 2:0, Sideways only", {}, ("sideways",),
          bp_from=DEFAULT),
)


def cell_by_name(name: str) -> gap_map.Cell:
  for cell in CELLS:
    if cell.name == name:
      return cell
  raise ValueError(f"unknown cell {name!r}")


def run_dir(outdir, cell, algorithm: str, seed: int,
            steps: int) -> pathlib.Path:
  slug = "".join(c if c.isalnum() or c in "-.=" else "_" for c in cell.name)
  return (pathlib.Path(outdir) / "skip_variants" / f"{steps}steps" / slug
          / f"{algorithm}-seed{seed}")


def plan(outdir, steps: int, seeds: int,
         only_groups: Sequence[str] = ()) -> List[tuple]:
  """(cell, algorithm, seed, run_dir) of every run, in priority order.

  The "longer" group runs only when asked for (with a larger --steps).
  """
  return [(cell, algorithm, seed, run_dir(outdir, cell, algorithm, seed,
                                          steps))
          for cell in CELLS if (cell.group in only_groups if only_groups
                                else cell.group != "longer")
          for seed in range(seeds) for algorithm in cell.algorithms]


def run(outdir, steps: int, seeds: int = 5, jobs: int = 1,
        only_groups: Sequence[str] = ()) -> List[Dict]:
  """Runs (or loads) every run; returns their results."""
  return gap_map.run_plan("skip_variants",
                          plan(outdir, steps, seeds, only_groups), steps, jobs)


# ------------------------------------------------------------------- report


def load(outdir) -> List[Dict]:
  """Every finished run under OUTDIR/skip_variants."""
  return [json.loads(p.read_text()) for p in sorted(
      (pathlib.Path(outdir) / "skip_variants").glob("*/*/*/result.json"))]


def rows(results: List[Dict]) -> List[Dict]:
  """Per (cell, steps): accuracies, paired gap and mean cosines."""
  by_key = {(r["cell"], r["algorithm"], r["seed"], r["steps"]): r
            for r in results}
  out = []
  for steps in sorted({r["steps"] for r in results}):
    for cell in CELLS:
      bp_cell = cell.bp_from or cell.name
      side = {s for (c, a, s, n) in by_key
              if (c, a, n) == (cell.name, "sideways", steps)}
      bp = {s for (c, a, s, n) in by_key if (c, a, n) == (bp_cell, "bp",
                                                          steps)}
      if not side and (cell.bp_from or not bp):
        continue
      row = dict(cell=cell.name, steps=steps, seeds=sorted(side & bp),
                 own_bp=not cell.bp_from)
      row["sideways"] = gap_report.interval(
          [by_key[(cell.name, "sideways", s, steps)]["test_accuracy"]
           for s in sorted(side)]) if side else None
      row["n_sideways"], row["n_bp"] = len(side), len(bp)
      row["bp"] = gap_report.interval(
          [by_key[(bp_cell, "bp", s, steps)]["test_accuracy"]
           for s in sorted(bp)]) if bp else None
      row["gap"] = gap_report.interval(
          [by_key[(cell.name, "sideways", s, steps)]["test_accuracy"]
           - by_key[(bp_cell, "bp", s, steps)]["test_accuracy"]
           for s in row["seeds"]]) if row["seeds"] else None
      row["cosine"] = _cosines(by_key, cell.name, "sideways", side, steps)
      row["bp_cosine"] = _cosines(by_key, bp_cell, "bp", bp, steps)
      out.append(row)
  return out


def _cosines(by_key, cell, algorithm, seeds, steps) -> Dict[int, float]:
  """Mean over seeds of fidelity/cosine/module_k (steps <= 1000) of the
  runs of one algorithm: along a BP run, how well Sideways would have
  followed BP's gradient there."""
  return {k: float(np.mean([by_key[(cell, algorithm, s, steps)]["early"].get(
      f"cosine/module_{k}", np.nan) for s in sorted(seeds)])) if seeds
          else float("nan") for k in range(1, 5)}


def section(outdir, command: str) -> List[str]:
  found = rows(load(outdir))
  if not found:
    return []
  lines = [
      "## 5b. Skip-Sideways vs BP with the same skip: motion label, over "
      "seeds", "",
      "`configs/motion_skip.py` (frame CNN, 4 modules, skip from stage 0 into "
      "stage 2, synthetic moving shapes at 2 px/frame, label = direction of "
      "motion, chance 0.25), each cell's overrides (plain Sideways, "
      "`replay_modules=0`, unless the cell sets it), `bin/train` per run. "
      "Test clip accuracy, mean ± 95% t-interval over the seeds (the gap "
      "over the seeds both algorithms ran, paired; a cell without its own "
      "BP runs shares the default cell's). `cos k`: the cosine between the Sideways "
      "and the BP clip gradient of module k on the same batch "
      "(TensorBoard `fidelity/cosine`, mean of steps 250–1000 and seeds), "
      "measured along the Sideways runs and, `BP run`, along the BP runs.",
      "", "| steps | cell | seeds (Sideways/BP) | Sideways | BP | "
      "Sideways − BP | cos 1 | cos 2 | cos 3 | cos 4 | BP run: cos 1 | "
      "cos 2 |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for row in found:
    cos = " | ".join("–" if np.isnan(c) else f"{c:.2f}" for c in (
        [row["cosine"][k] for k in range(1, 5)]
        + [row["bp_cosine"][k] if row["own_bp"] else float("nan")
           for k in (1, 2)]))
    bp = format_interval(row["bp"]) + ("" if row["own_bp"] else " (shared)")
    lines.append(
        f"| {row['steps']} | {row['cell']} | {row['n_sideways']}/"
        f"{row['n_bp']} | "
        f"{format_interval(row['sideways'])} | {bp} | {format_interval(row['gap'])} | {cos} |")
  lines += ["", "*Runs: `bin/experiments --only=skip_variants --steps=1000 "
            "--skip_seeds=5 --jobs=2` (every group but `longer`) and "
            "`bin/experiments --only=skip_variants --steps=3000 --skip_seeds=3 "
            "--skip_groups=longer --jobs=2`, both with the same `--outdir`; "
            f"this table: `{command}`*", ""]
  return lines


BEGIN = "<!-- skip variants: begin -->"
END = "<!-- skip variants: end -->"


def update(outdir, report_dir, command: str) -> pathlib.Path:
  """Writes the section into report_dir/results.md between its markers,
  keeping the rest of the file (appends it the first time)."""
  report_dir = pathlib.Path(report_dir)
  report_dir.mkdir(parents=True, exist_ok=True)
  path = report_dir / "results.md"
  write_marked_section(path, BEGIN, END, section(outdir, command))
  return path
