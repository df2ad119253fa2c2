"""The gap map's section of docs/results.md: tables, plots, correlations.

Every number comes from the runs (`gap_map.run_map` writes one result.json
per run), through `gap_stats.py`: only runs that pass the audit (the map's
step count, the cell's config) enter a table, and the runs left out are
listed with the reason. Per cell: Sideways - BP test clip accuracy, mean
over seeds with a 95% t-interval (paired by seed with the BP run of the same
data); the paired differences the docs quote; how well each early
diagnostic predicts the gap; and the pre-registered test of the risk
warning on the held-out cells (docs/fidelity.md).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import pathlib
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sideways_tf.paper_experiments import gap_map  # noqa: E402
from sideways_tf.paper_experiments import gap_stats  # noqa: E402

# `risk` is the per-run risk statistic (the warning's); the others are the
# means of the values logged at steps <= 1000.
PREDICTORS = ("risk", "lag_change/module_1", "cosine/module_1",
              "update_cosine/module_1")
FEW_SEEDS = 5  # cells with fewer seeds are marked in the table
interval = gap_stats.interval


def load(outdir) -> List[Dict]:
  """Every finished run under OUTDIR/gap, unchecked (see gap_stats.audit)."""
  return [json.loads(p.read_text())
          for p in sorted((pathlib.Path(outdir) / "gap").glob("*/*/result.json"))]


def _early(run: Dict, name: str) -> float:
  if name == "risk":
    value = run.get("risk_statistic")
  else:
    value = run.get("early", {}).get(name)
  return np.nan if value is None else float(value)


def cells(results: List[Dict]) -> List[Dict]:
  """Per cell: accuracies, paired gaps and early diagnostics, in map order."""
  by_key = gap_stats.by_key(results)
  rows = []
  for cell in gap_map.CELLS:
    bp_cell = gap_stats.bp_cell(cell)
    seeds = sorted({s for (c, a, s) in by_key if c == cell.name
                    and a == "sideways"} & {s for (c, a, s) in by_key
                                            if c == bp_cell and a == "bp"})
    if not seeds:
      continue
    sideways = [by_key[(cell.name, "sideways", s)] for s in seeds]
    bp = [by_key[(bp_cell, "bp", s)] for s in seeds]
    gaps = [a["test_accuracy"] - b["test_accuracy"]
            for a, b in zip(sideways, bp)]
    row = dict(cell=cell.name, group=cell.group, seeds=seeds,
               sideways=interval([r["test_accuracy"] for r in sideways]),
               bp=interval([r["test_accuracy"] for r in bp]),
               gap=interval(gaps),
               early={k: float(np.nanmean([_early(r, k) for r in sideways]))
                      if any(np.isfinite(_early(r, k)) for r in sideways)
                      else np.nan for k in PREDICTORS},
               seconds=float(np.mean([r["seconds"] for r in sideways])))
    if cell.group == "train set":
      row["train_minus_test"] = {
          a: interval([r["train_accuracy_last"][0] - r["test_frame_accuracy"]
                       for r in runs if r["train_accuracy_last"]])
          for a, runs in (("sideways", sideways), ("bp", bp))}
    rows.append(row)
  return rows


def correlations(rows: List[Dict]) -> Dict[str, Dict[str, float]]:
  """Pearson and Spearman correlation of each early diagnostic with the gap,
  across cells (cell means)."""
  out = {}
  for name in PREDICTORS:
    pairs = [(r["early"][name], r["gap"][0]) for r in rows
             if np.isfinite(r["early"][name])]
    if len(pairs) < 3:
      continue
    x, y = (np.asarray(v) for v in zip(*pairs))
    if x.std() == 0 or y.std() == 0:
      continue
    out[name] = dict(pearson=float(np.corrcoef(x, y)[0, 1]),
                     spearman=float(np.corrcoef(_ranks(x), _ranks(y))[0, 1]),
                     cells=len(pairs))
  return out


def _ranks(values):
  order = np.argsort(values)
  ranks = np.empty(len(values))
  ranks[order] = np.arange(len(values))
  return ranks


def _fmt(pair, digits=3):
  return gap_stats.format_interval(pair, digits, sign=True)


def _value(x):
  return f"{x:.2f}" if np.isfinite(x) else "–"  # e.g. no risk: all replayed


def _acc(pair):
  return gap_stats.format_interval(pair)


INTRO = (
    "Real handwriting (UCI digits via scikit-learn) moving over real photos, "
    "test videos of unseen digit images (`configs/moving_digits.py`, "
    "docs/data.md). Each run is `bin/train` for the same number of steps; "
    "gap = Sideways − BP test clip accuracy, paired by seed, mean ± 95% "
    "t-interval over the seeds listed (cells with fewer than 5 seeds are "
    "marked *). Only runs that ran the map's number of steps with the "
    "cell's config count; the others are listed below the tables. `risk` "
    "is the risk statistic of docs/fidelity.md (per Sideways run, the "
    "largest `fidelity/risk` logged at a step ≤ 1000), averaged over the "
    "cell's runs; the other early diagnostics are the means of the "
    "TensorBoard `fidelity/*` values logged at steps ≤ 1000 of the Sideways "
    "runs. The map runs plain Sideways (`replay_modules=0`) unless a cell "
    "says otherwise; the *user path* cells instead write the videos as mp4 "
    "files (`bin/make_digit_videos`, at the default 1–2 px/frame or at "
    "0.25–0.5 px/frame), prepare them with `bin/prepare_videos` (short side "
    "32 px) and train `configs/video_folder.py` with the defaults it "
    "shipped then (replay_modules=2; it ships 3 since the third family's "
    "replay cells), overriding only the data path, 32 px, T = 16, no crop "
    "and no flip.")
OUT_OF_SAMPLE_INTRO = (
    "The cells run after the risk threshold and the replay advice were set "
    "on the map above, each fixed before its first run (docs/fidelity.md, "
    "4b), measured as the map is (same table columns; cells with fewer than "
    "5 seeds are marked *). *held-out*: the pre-registered test of the risk "
    "warning (other object sizes, photo objects, VGG-8 at T = 64, ResNet-18 "
    "with group norm, batch-norm VGG-8 with replay); its detection line "
    "counts these cells only. *held-out defaults*: "
    "`configs/video_folder.py` as shipped then (replay_modules=2) on a "
    "second family of mp4 videos the defaults "
    "were not chosen on (its 3 BP runs stayed at chance, so it judges "
    "nothing); *held-out defaults 3*: a third family, gated by a BP pilot; "
    "*held-out defaults 3 replay*: the same videos with "
    "`replay_modules=\"auto\"` and `=3` instead of the shipped 2. *auto*: "
    "`replay_modules=\"auto\"`. *online*: an "
    "optimizer step every 4 ticks, plain and with replay and its weight "
    "stashing. A cell compared with one of the map's lists those runs "
    "among its own (they are run with it).")


@dataclasses.dataclass(frozen=True)
class Part:
  """A section of results.md, written from the runs of its groups only, so
  that a report of one part leaves the other as it is."""
  title: str
  intro: str
  groups: tuple
  begin: str
  end: str
  plot_stem: str  # its PNGs: <stem>.png (gaps), <stem>_risk.png
  held_out_only: bool  # the detection line: held-out cells only


MAP = Part("## Where Sideways is safe: the gap map (moving digits)", INTRO,
           tuple(g for g in gap_map.groups()
                 if g not in gap_map.OUT_OF_SAMPLE_GROUPS),
           "<!-- gap map: begin -->", "<!-- gap map: end -->",
           "results_gap_map", held_out_only=False)
OUT_OF_SAMPLE = Part(
    "## Out of sample: held-out cells, a second video family, auto replay, "
    "online updates", OUT_OF_SAMPLE_INTRO, gap_map.OUT_OF_SAMPLE_GROUPS,
    "<!-- gap out of sample: begin -->", "<!-- gap out of sample: end -->",
    "results_gap_out_of_sample", held_out_only=True)
PARTS = (MAP, OUT_OF_SAMPLE)
BEGIN, END = MAP.begin, MAP.end  # the map's markers (kept names)


def _table(rows) -> List[str]:
  lines = ["| group | cell | seeds | Sideways | BP | gap | risk | cos module 1 "
           "| update cos module 1 | s/run |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    e = r["early"]
    few = "*" if len(r["seeds"]) < FEW_SEEDS else ""
    lines.append(
        f"| {r['group']} | {r['cell']} | {len(r['seeds'])}{few} | "
        f"{_acc(r['sideways'])} | {_acc(r['bp'])} | {_fmt(r['gap'])} | "
        f"{_value(e['risk'])} | {_value(e['cosine/module_1'])} | "
        f"{_value(e['update_cosine/module_1'])} | {r['seconds']:.0f} |")
  lines.append("")
  for r in rows:
    if "train_minus_test" in r:
      lines += [
          f"Train − test (per-frame accuracy on the training clips over the "
          f"last log window − per-frame test accuracy), "
          f"{r['cell']}: Sideways {_fmt(r['train_minus_test']['sideways'])}, "
          f"BP {_fmt(r['train_minus_test']['bp'])}.", ""]
  return lines


def _comparison_lines(results) -> List[str]:
  rows = gap_stats.comparisons(results)
  if not rows:
    return []
  lines = ["Paired differences between Sideways cells (test clip accuracy of "
           "the first minus the second, paired by seed):", "",
           "| cell | minus cell | seeds | difference |", "|---|---|---|---|"]
  for r in rows:
    few = "*" if len(r["seeds"]) < FEW_SEEDS else ""
    lines.append(f"| {r['a']} | {r['b']} | {len(r['seeds'])}{few} | "
                 f"{_fmt(r['difference'])} |")
  return lines + [""]


def _correlation_lines(rows) -> List[str]:
  found = correlations(rows)
  learnt = correlations([r for r in rows
                         if r["bp"][0] >= gap_stats.BP_LEARNS])
  if not found:
    return []
  lines = ["Does an early diagnostic predict the gap? Correlation across "
           "cells of the early value with the cell's mean gap, over all "
           "cells and over the cells where BP learns (mean test accuracy "
           "≥ 0.5; where BP stays near chance no gap can show):", "",
           "| diagnostic | cells | Pearson r | Spearman ρ |",
           "|---|---|---|---|"]
  for name, c in found.items():
    lines.append(f"| `{name}` | all {c['cells']} | {c['pearson']:+.2f} | "
                 f"{c['spearman']:+.2f} |")
    if name in learnt:
      c = learnt[name]
      lines.append(f"| `{name}` | BP learns, {c['cells']} | "
                   f"{c['pearson']:+.2f} | {c['spearman']:+.2f} |")
  return lines + [""]


def _detection_lines(results, held_out_only: bool) -> List[str]:
  """The risk warning's detection line: over the map's cells (in sample) or
  over the held-out cells only (the pre-registered test)."""
  from sideways_tf.training import diagnostics  # noqa: PLC0415
  threshold = diagnostics.RISK_THRESHOLD
  which = ("the held-out cells only (out of sample, pre-registered)"
           if held_out_only else "every cell of the map (in sample: the "
           "threshold was set on these cells)")
  found = gap_stats.detection(results, threshold, held_out_only=held_out_only)
  (hit, big), (alarm, small) = found["big_gap"], found["small_gap"]
  if not big + small:
    return []
  auc = found["auc"]
  return [
      f"The risk warning (risk statistic > {threshold}) on {which}: per "
      f"Sideways run against the BP run of the same data and seed, over "
      f"the runs whose BP run learnt (test accuracy ≥ "
      f"{gap_stats.BP_LEARNS}) and that have a risk (not every module "
      f"below the top replayed; {found['skipped']} runs left out): "
      f"flagged {hit} of {big} runs more than "
      f"{gap_stats.BIG_GAP * 100:.0f} points behind and {alarm} of {small} "
      f"runs within {gap_stats.BIG_GAP * 100:.0f} points (false alarms); "
      f"ROC AUC of the statistic for a big gap "
      f"{'–' if auc is None else f'{auc:.2f}'}.", ""]


def _left_out_lines(left_out) -> List[str]:
  """The planned runs that are not in the tables, one row per cell,
  algorithm and reason (with the seeds it applies to)."""
  if not left_out:
    return ["Every planned run finished and passed the checks.", ""]
  grouped = collections.OrderedDict()
  for r in left_out:
    grouped.setdefault((r["cell"], r["algorithm"], r["reason"]),
                       []).append(r["seed"])
  lines = [f"Runs left out of the tables ({len(left_out)}):", "",
           "| cell | algorithm | seeds | why |", "|---|---|---|---|"]
  for (cell, algorithm, reason), seeds in grouped.items():
    lines.append(f"| {cell} | {algorithm} | "
                 f"{', '.join(str(s) for s in seeds)} | {reason} |")
  return lines + [""]


def _steps_of(outdir) -> int:
  """The step count most runs ran (for a report without --steps)."""
  counts = collections.Counter(r.get("steps") for r in load(outdir))
  return counts.most_common(1)[0][0] if counts else 0


def section(outdir, report_dir, command: str, seeds: Optional[int] = None,
            steps: Optional[int] = None, part: Part = MAP) -> List[str]:
  """Markdown lines of one part of the gap map (and its plots in
  report_dir), from the runs of its groups (and the runs they pair with).

  `seeds`, `steps`: the map's (bin/experiments --gap_seeds, --steps); runs
  that differ, and planned runs that are missing, are listed, not counted.
  """
  steps = steps or _steps_of(outdir)
  results, left_out = gap_stats.audit(
      outdir, steps, gap_map.DEFAULT_SEEDS if seeds is None else seeds,
      part.groups)
  rows = [r for r in cells(results) if r["group"] in part.groups]
  if not rows:
    return []
  report_dir = pathlib.Path(report_dir)
  report_dir.mkdir(parents=True, exist_ok=True)
  lines = [part.title, "", part.intro, ""]
  lines += _table(rows) + _comparison_lines(results)
  lines += _correlation_lines(rows)
  lines += _detection_lines(results, part.held_out_only)
  lines += _left_out_lines(left_out)
  lines += _plots(outdir, rows, results, report_dir, part)
  return lines + [f"*Command: `{command}`*", ""]


def _plots(outdir, rows, results, report_dir, part: Part) -> List[str]:
  gaps, risk = f"{part.plot_stem}.png", f"{part.plot_stem}_risk.png"
  if part is MAP:
    risk = "results_gap_risk.png"  # its name before the parts
  _plot_gaps(rows, report_dir / gaps)
  lines = [f"![gap map]({gaps})", ""]
  if part.held_out_only:  # the test is per run: show the runs
    if _plot_detection(results, report_dir / risk):
      lines += [f"![risk statistic vs gap, per run]({risk})", "",
                "*Each held-out Sideways run the test counts: its risk "
                "statistic against its gap to the BP run of the same data "
                "and seed. Right of the dotted line: flagged; below the "
                "dashed line: more than 10 points behind.*", ""]
    return lines
  _plot_risk(rows, report_dir / risk)
  lines += [f"![risk vs gap]({risk})", ""]
  if part is MAP and _plot_diagnostics(outdir, rows,
                                       report_dir / "results_gap_signals.png"):
    lines += ["![diagnostics during training](results_gap_signals.png)", "",
              "*The default cell's Sideways runs (mean over seeds): test "
              "accuracy of both algorithms, the per-module gradient cosine, "
              "and `fidelity/risk`. The cosines of modules 2..L sit near 1 "
              "throughout; only module 1's moves, and noisily.*", ""]
  return lines


def _series(logdir, tag):
  from sideways_tf.paper_experiments.runs import scalars  # noqa: PLC0415
  return dict(scalars(logdir, tag)) if pathlib.Path(logdir).is_dir() else {}


def _mean_curve(dirs, tag):
  curves = [c for c in (_series(d, tag) for d in dirs) if c]
  steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
  return steps, [float(np.mean([c[s] for c in curves])) for s in steps]


def _plot_diagnostics(outdir, rows, path) -> bool:
  """Accuracy and fidelity signals over training in the first (default) cell."""
  default = gap_map.CELLS[0]
  row = next((r for r in rows if r["cell"] == default.name), None)
  if row is None:
    return False
  dirs = {a: [gap_map.run_dir(outdir, default, a, s) for s in row["seeds"]]
          for a in ("sideways", "bp")}
  if not all((d / "eval").is_dir() for runs in dirs.values() for d in runs):
    return False
  fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 5.5), sharex=True)
  for algorithm, runs in dirs.items():
    steps, values = _mean_curve([d / "eval" for d in runs], "eval/accuracy")
    top.plot(steps, values, marker="o", label=f"{algorithm} test clip acc.")
  top.set(ylabel="accuracy", ylim=(0, 1))
  top.legend(fontsize=8)
  train_dirs = [d / "train" for d in dirs["sideways"]]
  for k in range(1, 5):
    steps, values = _mean_curve(train_dirs, f"fidelity/cosine/module_{k}")
    if steps:
      bottom.plot(steps, values, label=f"cosine module {k}")
  steps, values = _mean_curve(train_dirs, "fidelity/risk")
  if steps:
    bottom.plot(steps, values, "k--", label="fidelity/risk")
  bottom.set(xlabel="step", ylabel="Sideways run signals")
  bottom.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def _plot_gaps(rows, path):
  fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
  labels = [f"{r['group']}: {r['cell']}" for r in rows][::-1]
  means = [r["gap"][0] for r in rows][::-1]
  halves = [r["gap"][1] if np.isfinite(r["gap"][1]) else 0 for r in rows][::-1]
  ax.barh(labels, means, xerr=halves, color=[
      "tab:red" if m < -0.10 else "tab:orange" if m < -0.05 else "tab:green"
      for m in means])
  ax.axvline(0, color="k", lw=0.8)
  ax.axvline(-0.05, color="gray", ls="--", lw=0.8)
  ax.set_xlabel("Sideways − BP test clip accuracy (mean, 95% interval)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _plot_detection(results, path) -> bool:
  """Per held-out Sideways run: risk statistic against its own gap, with
  the frozen threshold and the big-gap line (False if no run counts)."""
  from sideways_tf.training import diagnostics  # noqa: PLC0415
  counted, _ = gap_stats.detection_runs(results, held_out_only=True)
  if not counted:
    return False
  fig, ax = plt.subplots(figsize=(6, 4))
  by_cell = collections.OrderedDict()
  for run in counted:
    by_cell.setdefault(run["cell"], []).append(run)
  for cell, members in by_cell.items():
    ax.plot([m["statistic"] for m in members], [m["gap"] for m in members],
            "o", label=cell)
  ax.axvline(diagnostics.RISK_THRESHOLD, color="gray", ls=":", lw=1)
  ax.axhline(-gap_stats.BIG_GAP, color="gray", ls="--", lw=0.8)
  ax.set(xlabel="risk statistic (largest fidelity/risk at a step ≤ 1000)",
         ylabel="Sideways − BP test clip acc. (same seed)")
  ax.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def _plot_risk(rows, path):
  fig, ax = plt.subplots(figsize=(5, 3.5))
  groups = collections.OrderedDict()
  for r in rows:
    groups.setdefault(r["group"], []).append(r)
  for group, members in groups.items():
    ax.errorbar([m["early"]["risk"] for m in members],
                [m["gap"][0] for m in members],
                yerr=[m["gap"][1] if np.isfinite(m["gap"][1]) else 0
                      for m in members], fmt="o", label=group)
  ax.axhline(-0.10, color="gray", ls="--", lw=0.8)
  ax.set(xlabel="risk statistic (largest fidelity/risk at a step ≤ 1000; "
                "mean over seeds)",
         ylabel="Sideways − BP test clip acc.")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def parts_for(groups: Sequence[str] = (),
              cells_named: Sequence[str] = ()) -> List[Part]:
  """The parts a report of these groups and cells rewrites (all if none)."""
  if not groups and not cells_named:
    return list(PARTS)
  wanted = set(groups) | {gap_map.cell_by_name(c).group for c in cells_named}
  return [part for part in PARTS if wanted & set(part.groups)]


def update(outdir, report_dir, command: str, seeds: Optional[int] = None,
           steps: Optional[int] = None, groups: Sequence[str] = (),
           cells_named: Sequence[str] = ()) -> pathlib.Path:
  """Writes the parts of the gap map that cover `groups` / `cells_named`
  (all parts by default) into report_dir/results.md, each between its
  markers, keeping the rest of the file (a part is appended the first
  time)."""
  from sideways_tf.run.files import write_marked_section  # noqa: PLC0415
  report_dir = pathlib.Path(report_dir)
  report_dir.mkdir(parents=True, exist_ok=True)
  path = report_dir / "results.md"
  for part in parts_for(groups, cells_named):
    lines = section(outdir, report_dir, command, seeds, steps, part)
    if not lines:  # say so rather than blank a section the runs once wrote
      print(f"[gap] no finished runs of {part.title[3:]!r} under {outdir}: "
            f"its section of {path} is left as it is", flush=True)
      continue
    write_marked_section(path, part.begin, part.end, lines)
  return path
