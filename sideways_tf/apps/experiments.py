"""Runs the paper's experiments at reduced scale and writes OUTDIR/report/results.md.

  bin/experiments                          # all four, ~25 min on a 2-core CPU
  bin/experiments --only=skip --steps=500
  bin/experiments --base_config=configs/ucf101_vgg8.py --steps=30000  # GPUs
  bin/experiments --only=gap --steps=4000 --jobs=2   # where Sideways is safe
  bin/experiments --only=skip_variants --skip_seeds=5 --jobs=2  # motion label
  bin/experiments --only=temporal --steps=4000 --temporal_seeds=5 --jobs=2
  bin/experiments --only=one_stream --steps=4000 --jobs=2  # B = 1, online
  bin/experiments --only=one_stream_shapes --steps=4000 --jobs=2  # BP learns

Outputs: OUTDIR/<experiment>.json, OUTDIR/runs/... (every run's workdir), and
the tables and PNG plots of results.md in OUTDIR/report (--report_dir=docs
updates the checkout's docs/results.md).
"""

import pathlib
import sys

from sideways_tf.run import quiet

quiet.quiet_start(sys.argv)  # TensorFlow imported without its C++ start-up lines

from absl import flags

from sideways_tf.paper_experiments import gap_map  # the groups (no TF)
from sideways_tf.run import cli

_ONLY = flags.DEFINE_list(
    "only", "convergence,smoothness,depth,skip",
    "Which experiments to run (comma-separated).")
_STEPS = flags.DEFINE_integer("steps", 1000, "Training steps per run.",
                              lower_bound=1)
_OUTDIR = flags.DEFINE_string(
    "outdir", str(cli.PROJECT_ROOT / "workdir" / "experiments"),
    "Where the runs and JSON results go.")
_BASE_CONFIG = flags.DEFINE_string(
    "base_config", "", "Config file every run starts from ('' = "
    "configs/default.py, the reduced scale); e.g. configs/ucf101_vgg8.py with "
    "more --steps for the paper's scale on GPUs.")
_JOBS = flags.DEFINE_integer(
    "jobs", 1, "gap: runs at once, one core each.", lower_bound=1)
_GAP_SEEDS = flags.DEFINE_integer(
    "gap_seeds", 5, "gap: seeds per cell (cells may ask for more); >= 5 so "
    "that every cell a sentence of the docs relies on has >= 5.",
    lower_bound=1)
_GAP_GROUPS = flags.DEFINE_list(
    "gap_groups", [], "gap: only these groups of cells "
    f"({', '.join(gap_map.groups())}); [] = all, in priority order.")
_GAP_PILOT = flags.DEFINE_bool(
    "gap_pilot", False, "gap: run only the gate of the --gap_cell cells: "
    "BP on the pilot seed (gap_map.PILOT_SEED, never counted), which must "
    "reach gap_stats.BP_LEARNS before the counted runs mean anything.")
_GAP_CELLS = flags.DEFINE_multi_string(
    "gap_cell", [], "gap: only this cell (its name as in the report's "
    "table, e.g. --gap_cell='VGG-8 batch norm L=8'); repeat for more. With "
    "--gap_groups, the cells of those groups and these.")
_SKIP_SEEDS = flags.DEFINE_integer(
    "skip_seeds", 5, "skip_variants: seeds per cell (>= 3 for intervals).",
    lower_bound=1)
_SKIP_GROUPS = flags.DEFINE_list(
    "skip_groups", [], "skip_variants: only these groups of cells (default, "
    "replay, depth, align, plain, combine, speed, longer); [] = all but "
    "longer, in priority order.")
_TEMPORAL_SEEDS = flags.DEFINE_integer(
    "temporal_seeds", 5, "temporal: seeds per cell (>= 3 for intervals).",
    lower_bound=1)
_TEMPORAL_GROUPS = flags.DEFINE_list(
    "temporal_groups", [], "temporal: only these models (conv, frame, skip, "
    "shift), 'long' (long streams, only when named), 'headline' (the "
    "three runs per seed of the goal comparisons) or 'budget' (T = 64: "
    "truncated BP and Sideways, the two within BP's memory at T = 16); [] = "
    "all but long, in priority order.")
_TEMPORAL_FIRST_SEED = flags.DEFINE_integer(
    "temporal_first_seed", 0, "temporal: the first seed (seeds are "
    "first .. first + temporal_seeds - 1); e.g. 1 to keep the runs apart "
    "from a pilot on seed 0.", lower_bound=0)
_TTA_BENCHMARK = flags.DEFINE_string(
    "time_to_accuracy_benchmark", "", "time_to_accuracy: the "
    "simulated_devices.json of `bin/benchmark --simulate_devices=2 "
    "--num_modules=4 --balance=model --image_size=32 --num_frames=16` (the "
    "accuracy runs' model, batch and clip): the report then gives every "
    "row's wall-clock to target and the verdict.")
_ONE_STREAM_BENCHMARK = flags.DEFINE_string(
    "one_stream_benchmark", "", "one_stream: the simulated_devices.json of "
    "`bin/benchmark --simulate_devices=2 --batch_size=1 "
    "--update_every_ticks=4 --optimizer=adam --num_modules=4 --balance=model "
    "--image_size=32 --num_frames=16` (the one-stream runs' model, batch, "
    "clip and updates; checked): the report then gives every row's "
    "wall-clock to target and the verdict.")
_ONE_STREAM_SHAPES_BENCHMARK = flags.DEFINE_string(
    "one_stream_shapes_benchmark", "", "one_stream_shapes: the same "
    "benchmark JSON as --one_stream_benchmark (the same model, batch, clip, "
    "updates and optimizer; checked).")
_TEMPORAL_BENCHMARK = flags.DEFINE_string(
    "temporal_benchmark", "", "temporal: the simulated_devices.json of "
    "`bin/benchmark --simulate_devices=2 --model_temporal=conv:3 "
    "--num_modules=4 --balance=model --image_size=32 --num_frames=16` (the "
    "map's model, batch and clip): the report then gives the temporal "
    "model's wall-clock to target per row and the verdict.")
_REPORT_ONLY = flags.DEFINE_bool(
    "report_only", False, "Run nothing: write the report from the runs "
    "already under --outdir (a map stopped early reports what it has).")
_REPORT_DIR = flags.DEFINE_string(
    "report_dir", None, "Where results.md and its PNG plots go (default: "
    "--outdir/report; --report_dir=docs updates the checkout's docs; '' = "
    "no report).")


# The time-to-accuracy regimes' flag: the benchmark JSON of their rows.
BENCHMARK_FLAGS = {"time_to_accuracy": _TTA_BENCHMARK,
                   "one_stream": _ONE_STREAM_BENCHMARK,
                   "one_stream_shapes": _ONE_STREAM_SHAPES_BENCHMARK}
# Experiments that update only their own section of an existing results.md.
SECTIONS = ("gap", "skip_variants", "time_to_accuracy", "one_stream",
            "one_stream_shapes", "temporal")


def _check_flags(experiments, gap_map, time_to_accuracy) -> None:
  """Bad names and files in the flags, before hours of runs."""
  for name in _ONLY.value:
    if name not in experiments + SECTIONS:
      raise ValueError(f"unknown experiment {name!r}; expected some of "
                       f"{experiments + SECTIONS}")
  if "gap" in _ONLY.value:  # a typo in a cell's name
    gap_map.check_selection(_GAP_GROUPS.value, _GAP_CELLS.value)
  if _GAP_PILOT.value and (_ONLY.value != ["gap"] or not _GAP_CELLS.value
                           or _GAP_GROUPS.value):
    raise ValueError("--gap_pilot runs the pilots of the cells named by "
                     "--gap_cell, with --only=gap and no --gap_groups")
  for name in _ONLY.value:  # a wrong benchmark JSON
    if name in BENCHMARK_FLAGS and BENCHMARK_FLAGS[name].value:
      time_to_accuracy.load_benchmark(BENCHMARK_FLAGS[name].value,
                                      time_to_accuracy.REGIMES[name])


def main(argv):
  cli.start(argv)
  from sideways_tf.paper_experiments import report  # noqa: PLC0415
  from sideways_tf.paper_experiments import runs  # noqa: PLC0415
  from sideways_tf.paper_experiments import gap_report  # noqa: PLC0415
  from sideways_tf.paper_experiments import skip_variants  # noqa: PLC0415
  from sideways_tf.paper_experiments import time_to_accuracy  # noqa: PLC0415
  from sideways_tf.paper_experiments import temporal_map  # noqa: PLC0415
  outdir = pathlib.Path(_OUTDIR.value)
  _check_flags(runs.EXPERIMENTS, gap_map, time_to_accuracy)
  for name in [] if _REPORT_ONLY.value else _ONLY.value:
    if name == "gap" and _GAP_PILOT.value:
      gap_map.run_pilots(outdir, _STEPS.value, _GAP_CELLS.value, _JOBS.value)
    elif name == "gap":
      gap_map.run_map(outdir, _STEPS.value, _GAP_SEEDS.value, _JOBS.value,
                      _GAP_GROUPS.value, only_cells=_GAP_CELLS.value)
    elif name == "skip_variants":
      skip_variants.run(outdir, _STEPS.value, _SKIP_SEEDS.value, _JOBS.value,
                        _SKIP_GROUPS.value)
    elif name in time_to_accuracy.REGIMES:
      time_to_accuracy.run(outdir, _STEPS.value, jobs=_JOBS.value,
                           regime=time_to_accuracy.REGIMES[name])
    elif name == "temporal":
      temporal_map.run(outdir, _STEPS.value, _TEMPORAL_SEEDS.value,
                       _JOBS.value, _TEMPORAL_GROUPS.value,
                       _TEMPORAL_FIRST_SEED.value)
    else:
      runs.run_experiment(name, outdir, _STEPS.value, _BASE_CONFIG.value)
  if _GAP_PILOT.value:  # a gate, not a result: nothing to report
    return
  report_dir = (str(outdir / "report") if _REPORT_DIR.value is None
                else _REPORT_DIR.value)
  if report_dir:
    command = ("bin/experiments " + " ".join(argv[1:] or sys.argv[1:])).strip()
    if set(_ONLY.value) <= set(SECTIONS):  # keep the rest of results.md
      for name in _ONLY.value:
        if name in time_to_accuracy.REGIMES:  # their page is choosing.md
          path = time_to_accuracy.update(
              outdir, pathlib.Path(report_dir), _STEPS.value, command,
              BENCHMARK_FLAGS[name].value, time_to_accuracy.REGIMES[name])
          continue
        if name == "gap":
          path = gap_report.update(outdir, pathlib.Path(report_dir), command,
                                   seeds=_GAP_SEEDS.value, steps=_STEPS.value,
                                   groups=_GAP_GROUPS.value,
                                   cells_named=_GAP_CELLS.value)
        elif name == "temporal":
          path = temporal_map.update(outdir, pathlib.Path(report_dir),
                                     command, _TEMPORAL_BENCHMARK.value)
        else:
          path = skip_variants.update(outdir, pathlib.Path(report_dir),
                                      command)
    else:
      path = report.write(outdir, pathlib.Path(report_dir), command)
    print(f"Report written to {path}")


def run():
  """Console-script entry point: parses the flags and runs main."""
  cli.run_app(main, __name__, __doc__)


if __name__ == "__main__":
  run()
