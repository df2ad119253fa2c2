"""Time to accuracy at equal devices: the figure users decide on.

Every run is `bin/train` on configs/moving_digits.py (a 16 px handwritten
digit moving 1-2 px/frame over photos, the 4-module frame CNN) in its own
process with one core (`gap_map.run_one`, cached, `--jobs` at once), with the
test set evaluated every EVAL_EVERY steps so that the step at which a run
first reaches the target is known to within EVAL_EVERY steps.

What is fixed before any run (docs/choosing.md, "Method"):

* target = the mean over seeds of BP's final test clip accuracy - 0.03;
* steps to target = the first evaluated step whose test clip accuracy is
  >= target; a run that never reaches it is counted as not reached;
* wall-clock to target = steps to target x seconds per training step of that
  algorithm on 2 simulated devices, measured side by side in one run by
  `bin/benchmark --simulate_devices=2` (the accuracy runs themselves share a
  busy machine, so their own wall-clock is not a measurement);
* SEEDS seeds per cell, paired by seed (the same data order and initial
  weights for every algorithm of a seed).

The algorithms that compute BP's exact gradient (GPipe, chunked BP,
data-parallel BP at the same global batch) follow BP's accuracy curve up to
float rounding, so they share BP's runs; only their seconds per step differ.

  bin/experiments --only=time_to_accuracy --steps=4000 --jobs=2
"""

from __future__ import annotations

import json
import pathlib
from typing import Dict, List

from sideways_tf.paper_experiments import gap_map
from sideways_tf.paper_experiments.gap_stats import format_interval
from sideways_tf.run.files import atomic_write_text

SEEDS = 5
EVAL_EVERY = 250
TARGET_BELOW_BP = 0.03


def _cell(name: str, algorithm: str, replay: int) -> gap_map.Cell:
  overrides = {"replay_modules": str(replay),
               "train.eval_every": str(EVAL_EVERY),
               "train.fidelity_every": "0"}
  return gap_map.Cell("time", name, overrides, (algorithm,))


# The accuracy curves: BP's gradient, and the Sideways family (plain, the
# shipped replay of two modules, every module below the top replayed = the
# exact streaming pipeline).
CELLS = (
    _cell("BP (exact gradient)", "bp", 0),
    _cell("Sideways", "sideways", 0),
    _cell("Sideways, replay_modules=2", "sideways", 2),
    _cell("exact streaming pipeline (replay_modules=3)", "sideways", 3),
)


# The rows of `bin/benchmark --simulate_devices=2` (benchmark/devices.py)
# that follow each accuracy curve: the exact algorithms compute BP's gradient
# on the same batch (data parallel: the mean over replicas of their halves),
# the Sideways family its own. pipelined_bp is the tick engine with every
# module below the top replayed, i.e. the replay_modules=3 curve of 4 modules.
ROWS_OF_CURVE = {
    CELLS[0].name: ("bp", "chunked_bp", "mp_bp", "gpipe", "gpipe_remat",
                    "dp2x1_bp", "dp2x1_chunked_bp", "dp2x1_gpipe"),
    CELLS[1].name: ("sideways", "dp2x1_sideways"),
    CELLS[2].name: ("sideways_replay2",),
    CELLS[3].name: ("pipelined_bp", "dp2x1_pipelined_bp"),
}
# The Sideways family (the tick engine); every other row is an exact
# alternative a user would run instead.
SIDEWAYS_FAMILY = ("sideways", "dp2x1_sideways", "pipelined_bp",
                   "dp2x1_pipelined_bp")  # prefixes: sideways_replay2 too
WIN_RATIO = 0.7  # a Sideways variant wins at <= 0.7x the best exact one's


def run_dir(outdir, cell: gap_map.Cell, seed: int) -> pathlib.Path:
  slug = "".join(c if c.isalnum() or c in "-.=" else "_" for c in cell.name)
  return pathlib.Path(outdir) / "time_to_accuracy" / slug / f"seed{seed}"


def plan(outdir, seeds: int = SEEDS) -> List[tuple]:
  """(cell, seed, workdir) of every run, seed-major so that a partial set of
  runs has every cell of the first seeds."""
  return [(cell, seed, run_dir(outdir, cell, seed))
          for seed in range(seeds) for cell in CELLS]


def run(outdir, steps: int, seeds: int = SEEDS, jobs: int = 1) -> List[Dict]:
  """Runs (or loads) every run; writes OUTDIR/time_to_accuracy.json."""
  outdir = pathlib.Path(outdir)
  todo = [(cell, cell.algorithms[0], seed, workdir)
          for cell, seed, workdir in plan(outdir, seeds)]
  return gap_map.run_plan(
      "time_to_accuracy", todo, steps, jobs,
      after=lambda results: atomic_write_text(
          outdir / "time_to_accuracy.json", json.dumps(results, indent=2)))


# ------------------------------------------------------------------- report


def load(outdir, steps: int) -> tuple:
  """(results that count, problems): a run counts only if it finished the
  requested steps with its cell's algorithm and replay setting; every other
  planned run is listed with what is wrong with it."""
  results, problems = [], []
  for cell, seed, workdir in plan(outdir):
    path = workdir / "result.json"
    if not path.exists():
      problems.append(f"{cell.name} seed {seed}: missing (not run or failed; "
                      f"see {workdir / 'train.log'})")
      continue
    result = json.loads(path.read_text())
    expected = (f"--config.algorithm={cell.algorithms[0]}",
                f"--config.replay_modules={cell.overrides['replay_modules']}",
                f"--config.train.eval_every={EVAL_EVERY}")
    wrong = [e for e in expected if e not in result["command"].split()]
    if result.get("steps") != steps or wrong:
      problems.append(f"{cell.name} seed {seed}: ran {result.get('steps')} "
                      f"steps {' '.join(wrong)} (expected {steps})")
      continue
    results.append(result)
  return results, problems


def steps_to_target(curve, target: float):
  """The first evaluated step with accuracy >= target (None: never)."""
  for step, accuracy in curve:
    if accuracy >= target:
      return int(step)
  return None


def cell_rows(results: List[Dict], key=lambda result: result["cell"],
              bp: str = CELLS[0].name) -> tuple:
  """(target, {curve: {seed: (final accuracy, steps to target)}}): runs
  grouped into curves by `key` (default: their cell), the target from the
  curve `bp` (default: this study's BP cell)."""
  by_cell: Dict[str, Dict[int, tuple]] = {}
  bp_final = [r["test_accuracy"] for r in results if key(r) == bp]
  if not bp_final:
    raise ValueError("no finished BP run: the target is BP's mean - 0.03")
  target = sum(bp_final) / len(bp_final) - TARGET_BELOW_BP
  for r in results:
    by_cell.setdefault(key(r), {})[r["seed"]] = (
        r["test_accuracy"], steps_to_target(r["curve"], target))
  return target, by_cell


MARKERS = ("<!-- time-to-accuracy: begin -->", "<!-- time-to-accuracy: end -->")


def table(outdir, steps: int) -> List[str]:
  """The markdown rows: per cell, the seeds that count, final accuracy,
  runs that reached the target, steps to target, and the paired difference
  of the final accuracy to BP's (same seeds)."""
  from sideways_tf.paper_experiments.gap_stats import interval  # noqa: PLC0415
  results, problems = load(outdir, steps)
  target, by_cell = cell_rows(results)
  bp = by_cell.get(CELLS[0].name, {})
  lines = [f"Target: {target:.3f} test clip accuracy (BP's mean final "
           f"accuracy over its {len(bp)} seeds − {TARGET_BELOW_BP}); "
           f"{steps} steps, test set evaluated every {EVAL_EVERY} steps.", "",
           "| algorithm (accuracy curve) | seeds | final test clip acc. | "
           "reached target | steps to target (runs that reached it) | "
           "final − BP, paired by seed |",
           "|---|---|---|---|---|---|"]
  for cell in CELLS:
    runs = by_cell.get(cell.name, {})
    if not runs:
      lines.append(f"| {cell.name} | 0 | – | – | – | – |")
      continue
    finals = [a for a, _ in runs.values()]
    reached = [s for _, s in runs.values() if s is not None]
    paired = [runs[s][0] - bp[s][0] for s in runs if s in bp]
    lines.append(
        f"| {cell.name} | {len(runs)} ({', '.join(map(str, sorted(runs)))}) "
        f"| {format_interval(interval(finals))} | {len(reached)} of {len(runs)} | "
        f"{format_interval(interval(reached), 0) if reached else '–'} | "
        f"{format_interval(interval(paired)) if paired and cell is not CELLS[0] else '–'}"
        f" |")
  if problems:
    lines += ["", "Runs that do not count yet:", ""]
    lines += [f"* {p}" for p in problems]
  return lines


def seconds_per_step(benchmark: Dict) -> Dict[str, Dict]:
  """{row: {"s": median seconds per train step, "exact": ..., "mib": working
  memory at the clip length of the accuracy runs (None if not measured)}}
  from a `bin/benchmark --simulate_devices` JSON."""
  frames = str(benchmark["config"]["num_frames"])
  return {name: {"s": row["parallel"]["median_s"], "exact": row["exact"],
                 "mib": row.get("memory", {}).get(frames, {}).get("step_mib")}
          for name, row in benchmark["rows"].items()}


def wall_clock(by_cell: Dict, timing: Dict[str, Dict],
               rows_of_curve: Dict = None) -> List[Dict]:
  """Per benchmark row: its curve's steps to target per seed x its seconds
  per step (`rows_of_curve`: {curve: its benchmark rows}, default this
  study's). Rows not in the benchmark are left out."""
  out = []
  for curve, names in (rows_of_curve or ROWS_OF_CURVE).items():
    runs = by_cell.get(curve, {})
    for name in names:
      if name not in timing or not runs:
        continue
      seconds = {seed: None if steps is None else steps * timing[name]["s"]
                 for seed, (_, steps) in runs.items()}
      out.append(dict(row=name, curve=curve, seconds=seconds,
                      family=name.startswith(SIDEWAYS_FAMILY),
                      **timing[name]))
  return out


def best(rows: List[Dict], family: bool):
  """The row of the family (or of the exact alternatives) with the least
  mean wall-clock to target among those that reached it in every seed."""
  done = [r for r in rows if r["family"] == family and r["seconds"]
          and all(v is not None for v in r["seconds"].values())]
  return min(done, key=lambda r: sum(r["seconds"].values()) / len(
      r["seconds"]), default=None)


def verdict(rows: List[Dict]) -> tuple:
  """(sentence, (mean, half) of the paired ratio or None): the best
  Sideways-family row against the best exact row, wall-clock to target
  paired by seed; it wins at <= WIN_RATIO with the interval's top < 1."""
  from sideways_tf.paper_experiments.gap_stats import interval  # noqa: PLC0415
  family, exact = best(rows, True), best(rows, False)
  if exact is None:
    return "no exact row reached the target in every seed", None
  if family is None:
    return ("no Sideways-family row reached the target in every seed: none "
            "wins"), None
  seeds = sorted(set(family["seconds"]) & set(exact["seconds"]))
  ratio = interval([family["seconds"][s] / exact["seconds"][s]
                    for s in seeds])
  mean, half = ratio
  wins = mean <= WIN_RATIO and (half != half or mean + half < 1)
  return (f"best Sideways-family row `{family['row']}` / best exact row "
          f"`{exact['row']}`: {format_interval(ratio, 2)} over {len(seeds)} seeds, "
          + ("a win" if wins else f"not a win (a win is <= {WIN_RATIO})"),
          ratio)


def wall_clock_table(by_cell: Dict, benchmark: Dict,
                     rows_of_curve: Dict = None) -> List[str]:
  """The wall-clock table and the verdict line, in markdown."""
  from sideways_tf.paper_experiments.gap_stats import interval  # noqa: PLC0415
  rows = wall_clock(by_cell, seconds_per_step(benchmark), rows_of_curve)
  config = benchmark["config"]
  lines = [
      "", f"Wall-clock to target on {config['num_devices']} simulated devices "
      f"(seconds per step measured side by side by `{benchmark['command']}`, "
      f"{benchmark['date']}: B = {config['batch_size']}, T = "
      f"{config['num_frames']}, {config['image_size']}x"
      f"{config['image_size']}, {config['model']} in "
      f"{config['num_modules'] or config['num_devices']} modules):", "",
      "| row (benchmark) | accuracy curve | exact | ms per step | working "
      f"memory T={config['num_frames']} (MiB) | reached target | wall-clock "
      "to target, s (runs that reached it) |",
      "|---|---|---|---|---|---|---|"]
  for r in rows:
    reached = [v for v in r["seconds"].values() if v is not None]
    mib = "–" if r["mib"] is None else f"{r['mib']:.0f}"
    lines.append(
        f"| `{r['row']}` | {r['curve']} | {r['exact']} | {r['s'] * 1e3:.1f} "
        f"| {mib} | {len(reached)} of {len(r['seconds'])} | "
        f"{format_interval(interval(reached), 1) if reached else '–'} |")
  sentence, _ = verdict(rows)
  lines += ["", f"Verdict (docs/choosing.md's method): {sentence}."]
  return lines


def plot(outdir, steps: int, path) -> None:
  """Mean test clip accuracy against training step, one line per cell."""
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  results, _ = load(outdir, steps)
  target, _ = cell_rows(results)
  figure, axes = plt.subplots(figsize=(6, 4))
  for cell in CELLS:
    curves = [dict(r["curve"]) for r in results if r["cell"] == cell.name]
    if not curves:
      continue
    x = sorted(set.intersection(*(set(c) for c in curves)))
    y = [sum(c[s] for c in curves) / len(curves) for s in x]
    axes.plot(x, y, label=f"{cell.name} ({len(curves)} seeds)")
  axes.axhline(target, color="gray", linestyle="--", label="target")
  axes.set_xlabel("training step")
  axes.set_ylabel("test clip accuracy (mean over seeds)")
  axes.legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def update(outdir, report_dir, steps: int, command: str,
           benchmark_json: str = "") -> pathlib.Path:
  """Writes the table and the plot into REPORT_DIR/choosing.md, with the
  wall-clock table when `benchmark_json` (a `bin/benchmark
  --simulate_devices` result on the accuracy runs' model, batch and clip)
  is given."""
  from sideways_tf.run.files import write_marked_section  # noqa: PLC0415
  report_dir = pathlib.Path(report_dir)
  report_dir.mkdir(parents=True, exist_ok=True)
  plot(outdir, steps, report_dir / "choosing_time_to_accuracy.png")
  lines = table(outdir, steps)
  if benchmark_json:
    benchmark = json.loads(pathlib.Path(benchmark_json).read_text())
    _, by_cell = cell_rows(load(outdir, steps)[0])
    lines += wall_clock_table(by_cell, benchmark)
  lines += [
      "", "![time to accuracy](choosing_time_to_accuracy.png)", "",
      f"*Command: `{command}`*"]
  path = report_dir / "choosing.md"
  write_marked_section(path, *MARKERS, lines,
                       new_file="# Choosing an algorithm\n\n")
  return path
