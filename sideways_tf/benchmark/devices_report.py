"""The report of ``bin/benchmark --simulate_devices``: goals, table, plot.

Split from devices.py (which measures); the marked block it writes into
docs/benchmarks.md is kept when the main benchmark rewrites that file
(:func:`preserved_section`, called by runner.py). With ``--rounds=K`` the
rows hold their median round and the throughput-ratio goals are taken per
round; the rule for "met" is :func:`summarise`'s.
"""

from __future__ import annotations

import os
import pathlib
import re

from sideways_tf.run import files
from sideways_tf.run import intervals

TITLES = {"sideways": "Sideways", "gpipe": "GPipe",
          "gpipe_remat": "GPipe + re-materialisation",
          "mp_bp": "model-parallel BP", "bp": "single-device BP",
          "chunked_bp": "single-device chunked BP",
          "pipelined_bp": "pipelined BP",
          "sideways_replay1": "Sideways, replay_modules=1",
          "sideways_replay2": "Sideways, replay_modules=2",
          "sideways_replay3": "Sideways, replay_modules=3"}
# Data parallel rows (devices.data_parallel_variants): R replicas x G devices.
DATA_PARALLEL = re.compile(r"dp(\d+)x(\d+)_(\w+)")
GOALS = {
    "sideways_speedup": 1.8,          # vs its serialised run >=
    "sideways_vs_bp": 1.3,            # vs single-device BP, equal cores >=
    "gpipe_speedup": 1.6,             # vs its serialised run >=
    "gpipe_bubble_tolerance": 0.2,    # |measured / (K-1)/(M+K-1) - 1| <=
    "sideways_vs_gpipe_memory": 0.1,  # at the largest T <=
    "gpipe_max_relative_difference": 1e-5,
    "memory_flat": 1.2,               # largest T / smallest T <=
    # data-parallel BP on N devices (N x 1) vs BP on one core (the bp row
    # serialised) >= this x N
    "data_parallel_bp_per_device": 0.85,
}
FLAT_MEMORY = ("chunked_bp", "pipelined_bp")  # rows whose memory_flat is a goal
MARK_BEGIN = "<!-- simulated-devices: begin (bin/benchmark --simulate_devices) -->"
MARK_END = "<!-- simulated-devices: end -->"


def title(variant: str) -> str:
  """A row's name in the tables."""
  match = DATA_PARALLEL.fullmatch(variant)
  if not match:
    return TITLES[variant]
  replicas, devices, row = match.groups()
  name = {"bp": "BP", "chunked_bp": "chunked BP"}.get(row, TITLES.get(row,
                                                                    row))
  return f"data-parallel {name}, {replicas} replicas x {devices} device(s)"


def summarise(results: dict) -> dict:
  """The goals of the rows that were run: {name: {"measured", "met"}}.

  Goals that are throughput ratios (every :func:`_ratio_goal`) are taken
  in every round, numerator and denominator from the same round; with one
  round that is the one ratio, with several (``--rounds``) the rule is
  :func:`_ratio_goal`'s: met if the mean over rounds reaches the target,
  the 95% interval and each round's value beside it. The other goals are
  of the rows' median round (exactness, bubble) or measured once (memory).
  The goals come in the report's order: Sideways's throughput, each GPipe
  row's, data parallel, memory.
  """
  c = results["config"]
  k = c["num_modules"] or c["num_devices"]
  m = c["num_frames"] // c["micro_batch_frames"]
  expected_bubble = (k - 1) / (m + k - 1)
  rows = results["rows"]
  goals = _sideways_goals(rows)
  for v in ("gpipe", "gpipe_remat"):
    if v in rows:
      goals.update(_gpipe_goals(v, rows, expected_bubble))
  goals.update(_data_parallel_goal(rows, c))
  goals.update(_memory_goals(rows, c))
  return {"gpipe_expected_bubble": expected_bubble, "K": k, "M": m,
          "goals": goals}


def _goal(measured, met) -> dict:
  return {"measured": measured, "met": bool(met)}


def _ratio_goal(per_round, target: float) -> dict:
  """A throughput-ratio goal (higher is better) from its value in each
  round. The one rule for rounds: met if the mean over rounds reaches
  `target`; "interval_95" is the half-width of the mean's 95% t-interval
  and "rounds" every round's value. One round: that round's value."""
  if len(per_round) == 1:
    return _goal(per_round[0], per_round[0] >= target)
  mean, half = intervals.interval(per_round)
  return dict(_goal(mean, mean >= target), interval_95=half,
              rounds=list(per_round))


def throughput_rounds(row: dict) -> list:
  """Each round's frames/s of a row, [{"parallel": x, "serialised": y}]
  (no "serialised" without those runs): its `rounds`, or the one round of
  its own children when it was measured once."""
  if "rounds" in row:
    return row["rounds"]
  one = {"parallel": row["parallel"]["frames_per_s"]}
  if "serialised" in row:
    one["serialised"] = row["serialised"]["frames_per_s"]
  return [one]


def per_round_ratio(rows: dict, numerator: tuple, denominator: tuple) -> list:
  """(row, "parallel" or "serialised") over (row, ...) in every round."""
  top = throughput_rounds(rows[numerator[0]])
  bottom = throughput_rounds(rows[denominator[0]])
  if len(top) != len(bottom):
    raise ValueError(f"rows {numerator[0]} and {denominator[0]} have "
                     f"{len(top)} and {len(bottom)} rounds")
  return [a[numerator[1]] / b[denominator[1]] for a, b in zip(top, bottom)]


def _sideways_goals(rows: dict) -> dict:
  """Sideways's speed-up over its serialised run and over single-device
  BP, each per round."""
  goals = {}
  if "serialised" in rows.get("sideways", {}):
    goals["sideways_speedup"] = _ratio_goal(per_round_ratio(
        rows, ("sideways", "parallel"), ("sideways", "serialised")),
        GOALS["sideways_speedup"])
  if "sideways" in rows and "bp" in rows:
    goals["sideways_vs_bp"] = _ratio_goal(per_round_ratio(
        rows, ("sideways", "parallel"), ("bp", "parallel")),
        GOALS["sideways_vs_bp"])
  return goals


def _gpipe_goals(v: str, rows: dict, expected_bubble: float) -> dict:
  """A GPipe row's speed-up (per round), exactness and bubble (of its
  parallel child's median round)."""
  goals = {}
  if "serialised" in rows[v]:
    goals[f"{v}_speedup"] = _ratio_goal(per_round_ratio(
        rows, (v, "parallel"), (v, "serialised")), GOALS["gpipe_speedup"])
  p = rows[v]["parallel"]
  # Exact against BP in float64 (float32 BP itself is off by rounding).
  d = p.get("max_relative_difference_f64", p["max_relative_difference"])
  goals[f"{v}_exact"] = _goal(d, d <= GOALS["gpipe_max_relative_difference"])
  if "bp32_max_relative_difference_f64" in p:
    goals[f"{v}_within_float32_bp_rounding"] = _goal(
        d, d <= p["bp32_max_relative_difference_f64"])
  measured = timeline_bubble(p)
  if measured is None and p.get("bubble", {}).get("available"):
    measured = max(p["bubble"]["idle_fraction"])  # profiler ops (older)
  if measured is not None:
    ratio = measured / expected_bubble if expected_bubble else float("nan")
    goals[f"{v}_bubble"] = _goal(measured, abs(ratio - 1) <=
                                 GOALS["gpipe_bubble_tolerance"])
  return goals


def _data_parallel_goal(rows: dict, c: dict) -> dict:
  """N x 1 data-parallel BP over BP on one core (the bp row serialised),
  per round."""
  pure_data_parallel = f"dp{c['num_devices']}x1_bp"
  if pure_data_parallel not in rows or "serialised" not in rows.get("bp", {}):
    return {}
  return {"data_parallel_bp_vs_one_core": _ratio_goal(per_round_ratio(
      rows, (pure_data_parallel, "parallel"), ("bp", "serialised")),
      GOALS["data_parallel_bp_per_device"] * c["num_devices"])}


def _memory_goals(rows: dict, c: dict) -> dict:
  """Sideways against GPipe at the largest T; flat memory of FLAT_MEMORY."""
  goals = {}
  t_max = str(max(c["memory_frames"])) if c["memory_frames"] else None
  if t_max and "sideways" in rows and "gpipe" in rows:
    r = (rows["sideways"]["memory"][t_max]["step_mib"] /
         rows["gpipe"]["memory"][t_max]["step_mib"])
    goals["sideways_vs_gpipe_memory"] = _goal(
        r, r <= GOALS["sideways_vs_gpipe_memory"])
  t_min = str(min(c["memory_frames"])) if c["memory_frames"] else None
  for v in FLAT_MEMORY:
    if v in rows and t_max != t_min:
      r = (rows[v]["memory"][t_max]["step_mib"] /
           rows[v]["memory"][t_min]["step_mib"])
      goals[f"{v}_memory_flat"] = _goal(r, r <= GOALS["memory_flat"])
  return goals


def timeline_bubble(parallel: dict):
  """The largest per-device bubble of the clock timestamps' measured phase
  (devices.bubble_from_stage_times), or None if not measured."""
  timeline = parallel.get("timeline")
  if not timeline:
    return None
  phase = timeline["phases"].get(timeline["measured_phase"], {})
  values = [b for b in phase.get("bubble") or [] if b is not None]
  return max(values) if phase.get("available") and values else None


def _fractions(values) -> str:
  return ", ".join("-" if v is None else f"{v:.3f}" for v in values)


# ---------------------------------------------------------------- report

def markdown(results: dict) -> str:
  """The section of docs/benchmarks.md: how it was run, the results table,
  how to read it, GPipe's measured bubble, the goals; one function each."""
  parts = [_setup(results), _results_table(results), _notes(results),
           _bubble_table(results), _goals_table(results)]
  return "\n".join(line for part in parts for line in part) + "\n"


def _setup(results: dict) -> list:
  """The title, the command and what was run."""
  c, summary = results["config"], results["summary"]
  machine = results["machine"]
  return [
      f"### Depth parallelism on {c['num_devices']} simulated devices",
      "",
      "Command (writes `simulated_devices.{json,md,png}` to its "
      "`--bench_dir`):",
      "", "```", results.get("command") or _default_command(c),
      "```", "",
      f"Run {results['date']}, {machine['cpus']} CPUs, load "
      f"average at start / end {machine['load_average_start'][0]:.2f}"
      f" / {machine['load_average_end'][0]:.2f}. Model "
      f"`{c['model']}`"
      + (f" with temporal layers `{c['temporal']}`" if c.get("temporal")
         else "")
      + f" cut into K = {summary['K']} stages on {c['num_devices']} simulated "
      f"devices, stage k on device floor(kN/K) (a process with "
      f"{c['num_devices']} logical CPU devices, "
      f"intra-op threads 1, inter-op threads {c['num_devices']}; serialised "
      f"= inter-op 1); {c['image_size']}x{c['image_size']}x{c['channels']} "
      f"frames, B = {c['batch_size']}, T = {c['num_frames']}; GPipe "
      f"micro-batches of {c['micro_batch_frames']} frame(s), M = "
      f"{summary['M']}. Median of {c['repeats']} "
      f"{OPTIMIZER_TITLES.get(c.get('optimizer', 'sgd'), c.get('optimizer'))}"
      f" train steps after {c['warmup']} warm-up. " + _online(c)
      + (f"Stages cut by measured time (balance_by_time): layers per stage "
         f"{list(c['stage_sizes'])}, forward + backward ms per stage "
         f"{[round(t * 1e3, 2) for t in results['split']['stage_s']]}."
         if results.get("split") else "Stages: the model's own split.")
      + _rounds_sentence(c),
      ""]


def _rounds(c: dict) -> int:
  """Rounds of throughput children (1 in reports from before --rounds)."""
  return c.get("rounds", 1)


def _default_command(c: dict) -> str:
  """The command line for results without one (run() called directly)."""
  rounds = _rounds(c)
  return "bin/benchmark --simulate_devices" + (
      f"={c['num_devices']} --rounds={rounds}" if rounds > 1 else "")


def _rounds_sentence(c: dict) -> str:
  """How the rounds were run and read ('' with one round)."""
  rounds = _rounds(c)
  if rounds == 1:
    return ""
  return (
      f" Throughput measured in {rounds} rounds (`--rounds={rounds}`): each "
      "round runs every row's parallel "
      + ("and serialised processes" if c.get("serialised", True)
         else "process") + ", the rows "
      "in order in rounds 1, 3, ... and reversed in rounds 2, 4, ..., so "
      "a drift in the machine's load reaches every row alike. The frames/s "
      "columns are each row's median round (for an even count the lower "
      "middle one), the speed-up columns ratios of those medians; memory is "
      "measured once. Goals that are throughput ratios are taken in each "
      "round (numerator and denominator from the same round): measured is "
      "their mean over the rounds with its 95% t-interval, every round's "
      "value beside it, and a goal is met if the mean reaches the target.")


OPTIMIZER_TITLES = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW",
                    "rmsprop": "RMSprop"}


def _online(c: dict) -> str:
  """The online training step's sentence ('' with one update per clip)."""
  every = c.get("update_every_ticks", 0)
  if not every:
    return ""
  return (f"Online training (`--update_every_ticks={every}`): a train step "
          f"feeds the clip as {every}-frame chunks with an optimizer step "
          f"after each ({-(-c['num_frames'] // every)} per clip; GPipe "
          f"pipelines the {every // c['micro_batch_frames']} micro-batches "
          f"of a chunk); the gradient columns and GPipe's bubble are of one "
          f"whole-clip gradient. ")


def _results_table(results: dict) -> list:
  """One row per algorithm: speed, memory per T, exactness, idle."""
  rows = results["rows"]
  mem_ts = [str(int(t)) for t in results["config"]["memory_frames"]]
  bp_fps = rows["bp"]["parallel"]["frames_per_s"] if "bp" in rows else None
  rounds = _rounds(results["config"])
  median = f" (median of {rounds} rounds)" if rounds > 1 else ""
  lines = [
      "| " + " | ".join(
          ["algorithm", "exact", "frames/s" + median,
           "serialised frames/s" + median,
           "speed-up", "/ single-device BP"] +
          [f"memory T={t} (MiB)" for t in mem_ts] +
          ["cosine to BP", "max rel. diff to float32 BP", "to float64 BP",
           "idle per device (profiler ops)"]) + " |",
      "|---|---|---|---|---|---|" + "---|" * len(mem_ts) + "---|---|---|---|",
  ]
  for variant, row in rows.items():
    p = row["parallel"]
    bubble = p.get("bubble", {})
    idle = (", ".join(f"{x:.2f}" for x in bubble["idle_fraction"])
            if bubble.get("available") else "n/a")
    cells = [
        title(variant), row["exact"] if isinstance(row["exact"], str)
        else "yes" if row["exact"] else "no",
        f"{p['frames_per_s']:.0f}",
        f"{row['serialised']['frames_per_s']:.0f}" if "serialised" in row
        else "-",
        f"{row['speedup']:.2f}x" if "speedup" in row else "-",
        f"{p['frames_per_s'] / bp_fps:.2f}x" if bp_fps else "-"]
    cells += [f"{row['memory'][t]['step_mib']:.0f}" for t in mem_ts]
    f64 = p.get("max_relative_difference_f64")
    cells += [f"{p['cosine_to_bp']:.6f}", f"{p['max_relative_difference']:.1e}",
              "-" if f64 is None else f"{f64:.1e}", idle]
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def _notes(results: dict) -> list:
  """How the table's columns were measured."""
  bp32 = [r["parallel"]["bp32_max_relative_difference_f64"]
          for r in results["rows"].values()
          if "bp32_max_relative_difference_f64" in r["parallel"]]
  return [
      "",
      f"GPipe's ideal idle fraction with equal stages is (K-1)/(M+K-1) = "
      f"{results['summary']['gpipe_expected_bubble']:.3f}. Memory is the "
      "peak RSS over the train steps minus the RSS just before them (own "
      "process per T). Max rel. diff: max over variables of max |g - g_ref| "
      "/ max |g_ref|, on the same weights and clip; the float64 reference is "
      "BP run in float64 on copies of the stages"
      + (f" (float32 BP's own difference to it: {max(bp32):.1e})"
         if bp32 else "") + ". "
      "Idle per device (profiler ops): from a profiler trace of one step, "
      "1 - (union of the device's op intervals) / (span of all stage ops); "
      "executor gaps between ops count as idle."
      + (" Data-parallel rows (`config.replicas`): R replicas of N/R "
         "simulated devices each (the same K stages spread over a replica's "
         "devices), each on B/R clips of the batch, one step with the mean "
         "of their gradients (the gradient columns compare that mean); no "
         "profiler figures (its per-stage idle time would mix the replicas)."
         if any(DATA_PARALLEL.fullmatch(v) for v in results["rows"])
         else "")]


def _bubble_table(results: dict) -> list:
  """GPipe's bubble per phase from its clock timestamps (if timed)."""
  timelines = [(v, r["parallel"]["timeline"])
               for v, r in results["rows"].items()
               if r["parallel"].get("timeline")]
  if not timelines:
    return []
  expected = results["summary"]["gpipe_expected_bubble"]
  lines = [
      "",
      "GPipe's bubble from its clock timestamps (one timed clip gradient, "
      "`gpipe.stage_timeline`: when each stage's work of each clock "
      "started and ended; the median of "
      f"{timelines[0][1].get('repeats', 1)} timed runs per device). "
      "Bubble: the device's fill and drain, (its "
      "first start - the phase's first start) + (the phase's last end - "
      "its last end), / the phase's span; idle: 1 - the device's work "
      "time / span (the bubble plus every wait in between: for the slower "
      "stage, for the loop itself). Measured "
      "phase: the forward clocks, or with re-materialisation the "
      "written-out backward clocks (the only phase where every stage "
      "works; TensorFlow's own reverse loop is not timed).",
      "",
      "| algorithm | phase | clocks | bubble per device | idle per device |"
      " (K-1)/(M+K-1) | first / median work ms | clock period ms |",
      "|---|---|---|---|---|---|---|---|"]
  for variant, timeline in timelines:
    for phase, b in timeline["phases"].items():
      if b.get("available"):
        lines.append(_bubble_row(variant, timeline, phase, b, expected))
  return lines


def _bubble_row(variant, timeline, phase, b, expected) -> str:
  mark = "**" if phase == timeline["measured_phase"] else ""
  work = ", ".join(
      "-" if f is None else f"{f * 1e3:.1f} / {m * 1e3:.1f}"
      for f, m in zip(b.get("first_work_s", []), b.get("median_work_s", [])))
  period = ", ".join("-" if t is None else f"{t * 1e3:.1f}"
                     for t in b.get("median_period_s", []))
  return (f"| {title(variant)} | {mark}{phase}{mark} | {b['clocks']} | "
          f"{_fractions(b['bubble'])} | {_fractions(b['idle'])} | "
          f"{expected:.3f} | {work or '-'} | {period or '-'} |")


def _goals_table(results: dict) -> list:
  """Each goal of :func:`summarise`: measured, target, met or missed."""
  summary, c = results["summary"], results["config"]
  frames = c["memory_frames"]
  within = (f"within {GOALS['gpipe_bubble_tolerance']:.0%} of "
            f"{summary['gpipe_expected_bubble']:.3f}")
  exact = f"<= {GOALS['gpipe_max_relative_difference']} (vs float64 BP)"
  gpipe_speedup = f">= {GOALS['gpipe_speedup']}x"
  targets = {
      "sideways_speedup": f">= {GOALS['sideways_speedup']}x",
      "sideways_vs_bp": f">= {GOALS['sideways_vs_bp']}x",
      "sideways_vs_gpipe_memory": f"<= {GOALS['sideways_vs_gpipe_memory']}",
      **{f"{v}_memory_flat": f"<= {GOALS['memory_flat']}x from T = "
                             f"{min(frames)} to {max(frames)}"
         for v in FLAT_MEMORY if frames},
      "data_parallel_bp_vs_one_core": (
          f">= {GOALS['data_parallel_bp_per_device'] * c['num_devices']:.3g}"
          f"x (BP on one core)"),
  }
  for variant in ("gpipe", "gpipe_remat"):
    targets.update({
        f"{variant}_speedup": gpipe_speedup, f"{variant}_exact": exact,
        f"{variant}_within_float32_bp_rounding": "<= float32 BP's difference",
        f"{variant}_bubble": within})
  return _goal_lines(summary["goals"], targets, _rounds(c))


def _goal_lines(goals: dict, targets: dict, rounds: int) -> list:
  """The goals table; with several rounds the ratio goals' mean ± 95%
  interval and each round's value (the other goals: one value)."""
  if rounds == 1:
    lines = ["", "| goal | measured | target | status |", "|---|---|---|---|"]
  else:
    lines = ["", f"| goal | measured (ratios: mean ± 95% interval over "
             f"{rounds} rounds) | per round | target | status |",
             "|---|---|---|---|---|"]
  for name, goal in goals.items():
    status = "met" if goal["met"] else "**missed**"
    if rounds == 1:
      lines.append(f"| {name} | {goal['measured']:.3g} | {targets[name]} | "
                   f"{status} |")
      continue
    if "rounds" in goal:
      measured = intervals.format_interval(
          (goal["measured"], goal["interval_95"]), 2)
      each = ", ".join(f"{v:.2f}" for v in goal["rounds"])
    else:
      measured, each = f"{goal['measured']:.3g}", "-"
    lines.append(f"| {name} | {measured} | {each} | {targets[name]} | "
                 f"{status} |")
  return lines


def plot(results: dict, path: pathlib.Path) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = results["rows"]
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
  names = list(rows)
  x = range(len(names))
  left.bar([i - 0.2 for i in x],
           [rows[v]["parallel"]["frames_per_s"] for v in names], 0.4,
           label=f"{results['config']['num_devices']} simulated devices")
  left.bar([i + 0.2 for i in x],
           [rows[v].get("serialised", {}).get("frames_per_s", 0)
            for v in names], 0.4, label="serialised")
  left.set_xticks(list(x), [title(v) for v in names], rotation=20,
                  fontsize=8)
  left.set_ylabel("frames/s")
  left.legend(fontsize=8)
  for v in names:
    ts = sorted(int(t) for t in rows[v]["memory"])
    right.plot(ts, [rows[v]["memory"][str(t)]["step_mib"] for t in ts], "o-",
               label=title(v))
  right.set_xlabel("clip length T (frames)")
  right.set_ylabel("peak working memory (MiB)")
  right.legend(fontsize=8)
  fig.tight_layout()
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
  fig.savefig(tmp, dpi=100)
  plt.close(fig)
  os.replace(tmp, path)


def update_doc(path: pathlib.Path, section: str) -> None:
  """Puts `section` between the markers of `path` (appended if absent)."""
  text = path.read_text() if path.exists() else ""
  block = f"{MARK_BEGIN}\n{section}{MARK_END}\n"
  if MARK_BEGIN in text and MARK_END in text:
    head, rest = text.split(MARK_BEGIN, 1)
    tail = rest.split(MARK_END, 1)[1].lstrip("\n")
    text = head + block + tail
  else:
    text = text.rstrip("\n") + "\n\n" + block
  files.atomic_write_text(path, text)


def preserved_section(path) -> str:
  """The marked block of `path` ('' if none): kept when the rest is rewritten."""
  path = pathlib.Path(path)
  if not path.exists():
    return ""
  text = path.read_text()
  if MARK_BEGIN not in text or MARK_END not in text:
    return ""
  body = text.split(MARK_BEGIN, 1)[1].split(MARK_END, 1)[0]
  return f"\n{MARK_BEGIN}{body}{MARK_END}\n"
