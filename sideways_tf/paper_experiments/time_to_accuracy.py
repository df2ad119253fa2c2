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

Two regimes (:class:`Regime`), each with its cells, its benchmark rows per
accuracy curve and its own section of docs/choosing.md:

* ``time_to_accuracy``: clips in batches, configs/moving_digits.py as
  shipped (B = 8, one optimizer step per clip);
* ``one_stream``: one stream trained online, B = 1 and an optimizer step
  every 4 ticks (``train.update_every_ticks=4``), where data parallelism has
  nothing to split; if BP does not learn it at this budget (mean final
  accuracy below ``gap_stats.BP_LEARNS``) there is no target and no verdict.

  bin/experiments --only=time_to_accuracy --steps=4000 --jobs=2
  bin/experiments --only=one_stream --steps=4000 --jobs=2
  bin/experiments --only=one_stream_shapes --steps=4000 --jobs=2

* ``one_stream_shapes``: the same online stream on the moving shapes of
  configs/default.py, which BP learns online where it does not learn the
  digits.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Dict, List, Optional, Tuple

from sideways_tf.paper_experiments import gap_map
from sideways_tf.paper_experiments import gap_stats
from sideways_tf.paper_experiments.gap_stats import format_interval
from sideways_tf.run.files import PROJECT_ROOT
from sideways_tf.run.files import atomic_write_text

SEEDS = 5
EVAL_EVERY = 250
TARGET_BELOW_BP = 0.03


def _cell(name: str, algorithm: str, replay: int, group: str = "time",
          more: Optional[Dict[str, str]] = None) -> gap_map.Cell:
  overrides = {"replay_modules": str(replay),
               "train.eval_every": str(EVAL_EVERY),
               "train.fidelity_every": "0", **(more or {})}
  return gap_map.Cell(group, name, overrides, (algorithm,))


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
MARKERS = ("<!-- time-to-accuracy: begin -->", "<!-- time-to-accuracy: end -->")


# One stream trained online (B = 1, an optimizer step every 4 ticks = 4 per
# 16-frame clip): the same four curves. For this per-frame model BP over a
# 4-frame chunk is exact SGD on those 4 frames of the stream; replay with
# updates inside the clip gets weight stashing from the Trainer.
ONLINE = {"train.batch_size": "1", "train.update_every_ticks": "4"}
ONE_STREAM_CELLS = (
    _cell("BP (exact SGD over 4-frame chunks)", "bp", 0, "one stream",
          ONLINE),
    _cell("Sideways", "sideways", 0, "one stream", ONLINE),
    _cell("Sideways, replay_modules=2", "sideways", 2, "one stream", ONLINE),
    _cell("pipelined BP (replay_modules=3, weight stashing)", "sideways", 3,
          "one stream", ONLINE),
)
# No data-parallel rows: one clip per step has nothing to split.
ONE_STREAM_ROWS = {
    ONE_STREAM_CELLS[0].name: ("bp", "chunked_bp", "mp_bp", "gpipe",
                               "gpipe_remat"),
    ONE_STREAM_CELLS[1].name: ("sideways",),
    ONE_STREAM_CELLS[2].name: ("sideways_replay2",),
    ONE_STREAM_CELLS[3].name: ("pipelined_bp",),
}

# One stream on moving shapes (configs/default.py as shipped: 4 shape
# classes moving 1 px/frame): chosen because BP learns it online, where it
# does not learn the digits (one BP pilot on seed 100, not counted; fixed in
# docs/choosing.md before the counted runs). The same four curves, online
# as above; the test set every 100 steps, since BP's pilot went from chance
# to 0.996 between steps 1000 and 1500.
SHAPES = "configs/default.py"
ONE_STREAM_SHAPES_CELLS = tuple(
    dataclasses.replace(cell, group="one stream, shapes", config=SHAPES,
                        overrides=dict(cell.overrides,
                                       **{"train.eval_every": "100"}))
    for cell in ONE_STREAM_CELLS)


@dataclasses.dataclass(frozen=True)
class Regime:
  """One regime of the study: its accuracy runs, the benchmark rows that
  follow each of their curves, and where its runs and report go."""
  name: str  # bin/experiments --only=<name>; OUTDIR/<name>.json
  cells: Tuple[gap_map.Cell, ...]  # the first is BP's: the target's
  rows_of_curve: Dict[str, Tuple[str, ...]]
  markers: Tuple[str, str]  # its section of docs/choosing.md
  plot: str  # its PNG, beside choosing.md
  subdir: str = ""  # its runs: OUTDIR/time_to_accuracy/<subdir>/<cell>/
  # BP's mean final accuracy below this: "not learned at this budget", no
  # target and no verdict (None: no such rule).
  learned_floor: Optional[float] = None
  # What the `bin/benchmark --simulate_devices` JSON must have measured
  # (its config's keys; update_every_ticks absent = 0).
  benchmark: Dict[str, object] = dataclasses.field(default_factory=dict)


_MODEL = {"model": "frame_cnn", "num_modules": 4, "image_size": 32,
          "num_frames": 16}
CLIPS = Regime("time_to_accuracy", CELLS, ROWS_OF_CURVE, MARKERS,
               "choosing_time_to_accuracy.png",
               benchmark=dict(_MODEL, batch_size=8, update_every_ticks=0))
ONE_STREAM = Regime(
    "one_stream", ONE_STREAM_CELLS, ONE_STREAM_ROWS,
    ("<!-- one-stream time-to-accuracy: begin -->",
     "<!-- one-stream time-to-accuracy: end -->"),
    "choosing_one_stream.png", subdir="one_stream",
    learned_floor=gap_stats.BP_LEARNS,
    benchmark=dict(_MODEL, batch_size=1, update_every_ticks=4,
                   optimizer="adam"))
# Same model, batch, clip, updates and optimizer as the digits' stream: the
# same benchmark rows time it (the head's 4 classes instead of 10 aside).
ONE_STREAM_SHAPES = Regime(
    "one_stream_shapes", ONE_STREAM_SHAPES_CELLS, ONE_STREAM_ROWS,
    ("<!-- one-stream shapes time-to-accuracy: begin -->",
     "<!-- one-stream shapes time-to-accuracy: end -->"),
    "choosing_one_stream_shapes.png", subdir="one_stream_shapes",
    learned_floor=gap_stats.BP_LEARNS, benchmark=ONE_STREAM.benchmark)
REGIMES = {regime.name: regime
           for regime in (CLIPS, ONE_STREAM, ONE_STREAM_SHAPES)}


def run_dir(outdir, cell: gap_map.Cell, seed: int,
            regime: Regime = CLIPS) -> pathlib.Path:
  slug = "".join(c if c.isalnum() or c in "-.=" else "_" for c in cell.name)
  return (pathlib.Path(outdir) / "time_to_accuracy" / regime.subdir / slug
          / f"seed{seed}")


def plan(outdir, seeds: int = SEEDS, regime: Regime = CLIPS) -> List[tuple]:
  """(cell, seed, workdir) of every run, seed-major so that a partial set of
  runs has every cell of the first seeds."""
  return [(cell, seed, run_dir(outdir, cell, seed, regime))
          for seed in range(seeds) for cell in regime.cells]


def run(outdir, steps: int, seeds: int = SEEDS, jobs: int = 1,
        regime: Regime = CLIPS) -> List[Dict]:
  """Runs (or loads) every run of `regime`; writes OUTDIR/<its name>.json."""
  outdir = pathlib.Path(outdir)
  todo = [(cell, cell.algorithms[0], seed, workdir)
          for cell, seed, workdir in plan(outdir, seeds, regime)]
  return gap_map.run_plan(
      regime.name, todo, steps, jobs,
      after=lambda results: atomic_write_text(
          outdir / f"{regime.name}.json", json.dumps(results, indent=2)))


# ------------------------------------------------------------------- report


def project_path(path) -> str:
  """`path` relative to the project root when under it (the default
  outdir, workdir/experiments): the report goes into docs/, which must not
  name one machine's directories."""
  path = pathlib.Path(path).resolve()
  try:
    return path.relative_to(PROJECT_ROOT.resolve()).as_posix()
  except ValueError:
    return str(path)


def load(outdir, steps: int, regime: Regime = CLIPS) -> tuple:
  """(results that count, problems): a run counts only if it finished the
  requested steps with every override of its cell (`gap_stats.check_run`:
  result.json, eval.json and config.json); every other planned run is
  listed with what is wrong with it."""
  results, problems = [], []
  for cell, seed, workdir in plan(outdir, regime=regime):
    reason, result = gap_stats.check_run(cell, cell.algorithms[0], seed,
                                         workdir, steps)
    if reason:
      problems.append(f"{cell.name} seed {seed}: {reason} "
                      f"({project_path(workdir)})")
    else:
      results.append(result)
  return results, problems


def steps_to_target(curve, target: float):
  """The first evaluated step with accuracy >= target (None: never)."""
  for step, accuracy in curve:
    if accuracy >= target:
      return int(step)
  return None


def cell_rows(results: List[Dict], key=lambda result: result["cell"],
              bp: str = CELLS[0].name,
              learned_floor: Optional[float] = None) -> tuple:
  """(target, {curve: {seed: (final accuracy, steps to target)}}): runs
  grouped into curves by `key` (default: their cell), the target from the
  curve `bp` (default: this study's BP cell). If BP's mean final accuracy
  is below `learned_floor`, BP did not learn the task at this budget: the
  target and every steps to target are None."""
  by_cell: Dict[str, Dict[int, tuple]] = {}
  bp_final = [r["test_accuracy"] for r in results if key(r) == bp]
  if not bp_final:
    raise ValueError("no finished BP run: the target is BP's mean - 0.03")
  target = sum(bp_final) / len(bp_final) - TARGET_BELOW_BP
  if learned_floor is not None and (
      sum(bp_final) / len(bp_final) < learned_floor):
    target = None
  for r in results:
    by_cell.setdefault(key(r), {})[r["seed"]] = (
        r["test_accuracy"],
        None if target is None else steps_to_target(r["curve"], target))
  return target, by_cell


def _rows(outdir, steps: int, regime: Regime) -> tuple:
  """(target, by_cell, problems) of a regime's runs that count."""
  results, problems = load(outdir, steps, regime)
  target, by_cell = cell_rows(results, bp=regime.cells[0].name,
                              learned_floor=regime.learned_floor)
  return target, by_cell, problems


def _not_learned(by_cell: Dict, regime: Regime) -> str:
  """The sentence that replaces the target and the verdict."""
  finals = [a for a, _ in by_cell.get(regime.cells[0].name, {}).values()]
  return (f"not learned at this budget: BP's mean final test clip accuracy "
          f"over its {len(finals)} seeds is {sum(finals) / len(finals):.3f}, "
          f"below {regime.learned_floor}, so there is no target and no "
          f"verdict (the rule fixed before the runs)")


def table(outdir, steps: int, regime: Regime = CLIPS) -> List[str]:
  """The markdown rows: per cell, the seeds that count, final accuracy,
  runs that reached the target, steps to target, and the paired difference
  of the final accuracy to BP's (same seeds)."""
  from sideways_tf.paper_experiments.gap_stats import interval  # noqa: PLC0415
  target, by_cell, problems = _rows(outdir, steps, regime)
  bp_cell = regime.cells[0]
  bp = by_cell.get(bp_cell.name, {})
  every = bp_cell.overrides["train.eval_every"]  # the regime's own
  budget = f"{steps} steps, test set evaluated every {every} steps."
  head = (f"Target: {target:.3f} test clip accuracy (BP's mean final "
          f"accuracy over its {len(bp)} seeds − {TARGET_BELOW_BP}); {budget}"
          if target is not None else
          f"N{_not_learned(by_cell, regime)[1:]}; {budget}")
  lines = [head, "",
           "| algorithm (accuracy curve) | seeds | final test clip acc. | "
           "reached target | steps to target (runs that reached it) | "
           "final − BP, paired by seed |",
           "|---|---|---|---|---|---|"]
  for cell in regime.cells:
    runs = by_cell.get(cell.name, {})
    if not runs:
      lines.append(f"| {cell.name} | 0 | – | – | – | – |")
      continue
    finals = [a for a, _ in runs.values()]
    reached = [s for _, s in runs.values() if s is not None]
    paired = [runs[s][0] - bp[s][0] for s in runs if s in bp]
    lines.append(
        f"| {cell.name} | {len(runs)} ({', '.join(map(str, sorted(runs)))}) "
        f"| {format_interval(interval(finals))} | "
        f"{'–' if target is None else f'{len(reached)} of {len(runs)}'} | "
        f"{format_interval(interval(reached), 0) if reached else '–'} | "
        f"{format_interval(interval(paired)) if paired and cell is not bp_cell else '–'}"
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
                     rows_of_curve: Dict = None,
                     no_verdict: str = "") -> List[str]:
  """The wall-clock table and the verdict line, in markdown (`no_verdict`:
  the sentence said instead of a verdict)."""
  from sideways_tf.paper_experiments.gap_stats import interval  # noqa: PLC0415
  rows = wall_clock(by_cell, seconds_per_step(benchmark), rows_of_curve)
  config = benchmark["config"]
  online = (f", an optimizer step every {config['update_every_ticks']} "
            f"ticks" if config.get("update_every_ticks") else "")
  optimizer = (f", optimizer {config['optimizer']}" if "optimizer" in config
               else "")
  lines = [
      "", f"Wall-clock to target on {config['num_devices']} simulated devices "
      f"(seconds per step measured side by side by `{benchmark['command']}`, "
      f"{benchmark['date']}: B = {config['batch_size']}, T = "
      f"{config['num_frames']}{online}{optimizer}, {config['image_size']}x"
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
  sentence = no_verdict or verdict(rows)[0]
  lines += ["", f"Verdict (docs/choosing.md's method): {sentence}."]
  return lines


def load_benchmark(path, regime: Regime) -> Dict:
  """A `bin/benchmark --simulate_devices` JSON; ValueError unless it timed
  the regime's setting (its model, batch, clip, updates and optimizer)."""
  benchmark = json.loads(pathlib.Path(path).read_text())
  config = dict({"update_every_ticks": 0, "optimizer": "sgd"},
                **benchmark["config"])
  wrong = [f"{key}={config.get(key)!r} (needs {value!r})"
           for key, value in regime.benchmark.items()
           if config.get(key) != value]
  if wrong:
    raise ValueError(f"{path} did not time the {regime.name} runs' setting: "
                     f"{', '.join(wrong)}; run the bin/benchmark command of "
                     f"docs/choosing.md")
  return benchmark


def plot(outdir, steps: int, path, regime: Regime = CLIPS) -> None:
  """Mean test clip accuracy against training step, one line per cell."""
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  results, _ = load(outdir, steps, regime)
  target, _ = cell_rows(results, bp=regime.cells[0].name,
                        learned_floor=regime.learned_floor)
  figure, axes = plt.subplots(figsize=(6, 4))
  for cell in regime.cells:
    curves = [dict(r["curve"]) for r in results if r["cell"] == cell.name]
    if not curves:
      continue
    x = sorted(set.intersection(*(set(c) for c in curves)))
    y = [sum(c[s] for c in curves) / len(curves) for s in x]
    axes.plot(x, y, label=f"{cell.name} ({len(curves)} seeds)")
  if target is not None:
    axes.axhline(target, color="gray", linestyle="--", label="target")
  axes.set_xlabel("training step")
  axes.set_ylabel("test clip accuracy (mean over seeds)")
  axes.legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def update(outdir, report_dir, steps: int, command: str,
           benchmark_json: str = "", regime: Regime = CLIPS) -> pathlib.Path:
  """Writes the regime's table and plot into REPORT_DIR/choosing.md (its
  own markers), with the wall-clock table when `benchmark_json` (a
  `bin/benchmark --simulate_devices` result on the regime's model, batch,
  clip and updates: `load_benchmark`) is given."""
  from sideways_tf.run.files import write_marked_section  # noqa: PLC0415
  # Checked before anything is written.
  benchmark = load_benchmark(benchmark_json, regime) if benchmark_json else None
  report_dir = pathlib.Path(report_dir)
  report_dir.mkdir(parents=True, exist_ok=True)
  lines = table(outdir, steps, regime)
  plot(outdir, steps, report_dir / regime.plot, regime)
  if benchmark is not None:
    target, by_cell, _ = _rows(outdir, steps, regime)
    lines += wall_clock_table(
        by_cell, benchmark, regime.rows_of_curve,
        no_verdict="" if target is not None else _not_learned(by_cell,
                                                              regime))
  lines += [
      "", f"![time to accuracy]({regime.plot})", "",
      f"*Command: `{command}`*"]
  path = report_dir / "choosing.md"
  write_marked_section(path, *regime.markers, lines,
                       new_file="# Choosing an algorithm\n\n")
  return path
