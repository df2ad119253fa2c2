"""The gap map's statistics, computed from the runs themselves.

* :func:`audit`: which runs count. Every run the map plans is looked up; a
  run enters a table only if its result.json exists, it ran the map's
  number of steps (result.json and eval.json) and its config.json holds
  every override the cell runs with. The others are listed with the reason,
  so a failed or missing run never silently shrinks a cell.
* :func:`comparisons`: the paired differences the docs quote
  (`gap_map.COMPARISONS`): Sideways runs of one cell minus those of another,
  paired by seed.
* :func:`detection`: the pre-registered test of the risk warning
  (docs/fidelity.md, "Pre-registration"): per Sideways run, its risk
  statistic (:func:`sideways_tf.diagnostics.risk_statistic`, the one the
  warning uses) against whether it ended more than `big_gap` behind the BP
  run of the same data and seed; detection and false-alarm counts and the
  ROC AUC, over all cells or over the held-out cells only.
"""

from __future__ import annotations

import ast
import json
import pathlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from sideways_tf.paper_experiments import gap_map
# The mean ± 95% t-interval helpers, shared with bin/benchmark's rounds;
# imported here under their old names (gap_stats.interval, ...).
from sideways_tf.run.intervals import format_interval  # noqa: F401
from sideways_tf.run.intervals import interval

BIG_GAP = 0.10  # a run "trails" if it ends more than 10 points behind BP
BP_LEARNS = 0.5  # runs whose BP run stays below this are left out
# Overrides that depend on where the map runs, not on what it runs.
_LOCATION_KEYS = ("data.path", "data.data_dir")


def bp_cell(cell) -> str:
  """The cell whose BP runs a cell's Sideways runs are paired with."""
  return cell.bp_from or cell.name


# ------------------------------------------------------------------ audit


def audit(outdir, steps: int, seeds: int,
          groups: Sequence[str] = ()) -> Tuple[List[Dict], List[Dict]]:
  """(runs that count, runs left out with the reason), over the map's plan
  (of `groups` and the runs they pair with, if given).

  A counted run gains `risk_statistic` (Sideways runs, from its logs)."""
  counted, left_out = [], []
  for cell, algorithm, seed, workdir in gap_map.plan(outdir, seeds, groups):
    reason, result = check_run(cell, algorithm, seed, workdir, steps)
    if reason:
      left_out.append(dict(cell=cell.name, algorithm=algorithm, seed=seed,
                           reason=reason))
      continue
    if algorithm == "sideways":
      result = dict(result, risk_statistic=_risk_statistic(workdir, result))
    counted.append(result)
  return counted, left_out


def check_run(cell, algorithm, seed, workdir: pathlib.Path,
              steps: int) -> Tuple[Optional[str], Optional[Dict]]:
  """(None, result) if the run of `gap_map.run_one` in `workdir` counts,
  else (why not, None): its result.json and eval.json are at `steps` and
  its config.json holds every override it was started with
  (`gap_map.run_overrides`). The time-to-accuracy study audits with it
  too."""
  result_path = workdir / "result.json"
  if not result_path.exists():
    failed = (workdir / "train.log").exists()
    return ("failed or unfinished (train.log, no result.json)" if failed
            else "missing (never run)"), None
  result = json.loads(result_path.read_text())
  if result.get("steps") != steps:
    return f"ran {result.get('steps')} steps, the map {steps}", None
  evaluation = _read_json(workdir / "eval.json")
  if evaluation is None or evaluation.get("step") != steps:
    return (f"eval.json is at step "
            f"{None if evaluation is None else evaluation.get('step')}, "
            f"not {steps}"), None
  config = _read_json(workdir / "config.json")
  if config is None:
    return "no config.json", None
  expected = gap_map.run_overrides(cell, algorithm, seed, workdir, steps)
  for key, text in expected.items():
    if key in _LOCATION_KEYS:
      continue
    value = _lookup(config, key)
    if not _same(value, text):
      return f"config.json has {key}={value!r}, the cell runs {text}", None
  return None, result


def _read_json(path: pathlib.Path):
  return json.loads(path.read_text()) if path.exists() else None


def _lookup(tree, dotted: str):
  for part in dotted.split("."):
    if not isinstance(tree, dict) or part not in tree:
      return None
    tree = tree[part]
  return tree


def _lists(value):
  """Tuples as lists, recursively (config.json stores tuples as lists)."""
  if isinstance(value, (tuple, list)):
    return [_lists(v) for v in value]
  return value


def _same(value, text: str) -> bool:
  """Does a config.json value equal a command-line override's text?"""
  if value is None:
    return False
  if str(value) == text:
    return True
  try:
    return _lists(value) == _lists(ast.literal_eval(text))
  except (ValueError, SyntaxError):
    return False


def _risk_statistic(workdir: pathlib.Path, result: Dict):
  """The run's risk statistic from its TensorBoard logs (or result.json)."""
  from sideways_tf.training import diagnostics  # noqa: PLC0415  (TF import)
  from sideways_tf.paper_experiments.runs import scalars  # noqa: PLC0415
  train = workdir / "train"
  if train.is_dir():
    return diagnostics.risk_statistic(scalars(train, "fidelity/risk"))
  return result.get("early", {}).get("risk_statistic")


# ------------------------------------------------------------- comparisons


def by_key(results: List[Dict]) -> Dict[tuple, Dict]:
  return {(r["cell"], r["algorithm"], r["seed"]): r for r in results}


def comparisons(results: List[Dict], pairs: Sequence = ()) -> List[Dict]:
  """Per (cell a, cell b) of `pairs` (default gap_map.COMPARISONS): the
  Sideways test accuracy of a minus b over the seeds both have, with its
  95% t-interval. Pairs without a common seed are left out."""
  runs = by_key(results)
  rows = []
  for a, b in pairs or gap_map.COMPARISONS:
    seeds = sorted(s for (c, alg, s) in runs if c == a and alg == "sideways"
                   and (b, "sideways", s) in runs)
    if not seeds:
      continue
    differences = [runs[(a, "sideways", s)]["test_accuracy"]
                   - runs[(b, "sideways", s)]["test_accuracy"]
                   for s in seeds]
    rows.append(dict(a=a, b=b, seeds=seeds, difference=interval(differences)))
  return rows


# --------------------------------------------------------------- detection


def roc_auc(positives: Sequence[float], negatives: Sequence[float]):
  """P(a positive scores above a negative), ties counting half (the
  Mann-Whitney form of the ROC AUC); None if either side is empty."""
  if not len(positives) or not len(negatives):
    return None
  pos = np.asarray(positives, float)[:, None]
  neg = np.asarray(negatives, float)[None, :]
  return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def detection_runs(results: List[Dict],
                   held_out_only: bool = False) -> Tuple[List[Dict], int]:
  """The Sideways runs the detection test counts, each as {cell, seed,
  statistic, gap} (gap: its test accuracy minus its paired BP run's), and
  how many were left out.

  A Sideways run counts if its cell is on the map (and held out, with
  `held_out_only`), it has a risk statistic (not every module below the top
  replayed) and its paired BP run (same data, seed) reached BP_LEARNS."""
  runs = by_key(results)
  cells = {cell.name: cell for cell in gap_map.CELLS}
  counted, skipped = [], 0
  for run in results:
    cell = cells.get(run["cell"])
    if run["algorithm"] != "sideways" or cell is None or (
        held_out_only and not cell.held_out):
      continue
    bp = runs.get((bp_cell(cell), "bp", run["seed"]))
    statistic = run.get("risk_statistic")
    if bp is None or statistic is None or bp["test_accuracy"] < BP_LEARNS:
      skipped += 1
      continue
    counted.append(dict(cell=cell.name, seed=run["seed"], statistic=statistic,
                        gap=run["test_accuracy"] - bp["test_accuracy"]))
  return counted, skipped


def detection(results: List[Dict], threshold: float,
              held_out_only: bool = False) -> Dict:
  """The risk warning against each Sideways run's own gap (the runs of
  :func:`detection_runs`): a run is flagged if its statistic exceeds
  `threshold` and trails if its gap is below -BIG_GAP.

  Returns {"big_gap": [flagged, runs], "small_gap": [flagged, runs],
  "skipped": runs left out, "auc": ROC AUC of the statistic for big gaps}.
  """
  counted, skipped = detection_runs(results, held_out_only)
  counts = {"big_gap": [0, 0], "small_gap": [0, 0], "skipped": skipped}
  scores = {"big_gap": [], "small_gap": []}
  for run in counted:
    key = "big_gap" if run["gap"] < -BIG_GAP else "small_gap"
    counts[key][0] += run["statistic"] > threshold
    counts[key][1] += 1
    scores[key].append(run["statistic"])
  counts["auc"] = roc_auc(scores["big_gap"], scores["small_gap"])
  return counts
