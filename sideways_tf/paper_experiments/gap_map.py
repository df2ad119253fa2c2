"""Where does Sideways trail BP? The map on the moving-digits benchmark.

Every cell of the map is a setting of configs/moving_digits.py (motion speed,
depth, temporal stride, optimizer, training-set size, replay); every run is
`bin/train` itself, in its own process, so the map measures exactly what a
user gets. Runs are cached (OUTDIR/gap/<cell>/<algorithm>-seed<s>/result.json),
so an interrupted map resumes where it stopped, and `--jobs` runs several at
once with one core each.

  bin/experiments --only=gap --jobs=2 --gap_seeds=3 --steps=4000

The report (paper_experiments/gap_report.py) gives Sideways - BP test clip
accuracy per cell, mean and 95% interval over seeds, and how well the
diagnostics logged in the first 1000 steps predict that gap.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time
from typing import Dict, List, Sequence

from sideways_tf.paper_experiments import train_processes
from sideways_tf.run.files import PROJECT_ROOT
from sideways_tf.run.files import atomic_write_text

CONFIG = "configs/moving_digits.py"
EARLY_STEP = 1000  # diagnostics up to here count as "early" (= RISK_WINDOW)
DEFAULT_SEEDS = 5  # bin/experiments --gap_seeds: >= 5 for every cell
# The bin/train children of run_plan's runs (so that a stop reaches them).
_PROCESSES = train_processes.TrainProcesses()


@dataclasses.dataclass(frozen=True)
class Cell:
  """One setting of the map: config overrides, run with both algorithms."""
  group: str
  name: str
  overrides: Dict[str, str]
  algorithms: Sequence[str] = ("sideways", "bp")
  bp_from: str = ""  # share the BP runs of another cell (same BP model)
  config: str = CONFIG
  # The user path: mp4 files -> bin/prepare_videos -> configs/video_folder.py
  # with the replay setting it ships (the map forces plain Sideways otherwise).
  # Names the video set (VIDEO_SETS) the cell trains on; "" = not the user path.
  videos: str = ""
  # At least this many seeds (the headline cells get more than the map's).
  min_seeds: int = 0
  # Pre-registered out-of-sample test of the risk warning (docs/fidelity.md,
  # "Pre-registration"): a cell that played no part in setting the
  # threshold; the report's AUC and detection counts use only these.
  held_out: bool = False


def _vgg(modules: int, **more: str) -> Dict[str, str]:
  return dict({"model.granularity": str(modules),
               "model.num_modules": str(modules)}, **more)


def _resnet_gn(modules: int) -> Dict[str, str]:
  """ResNet-18 (width 8, group norm) through the VGG config's model keys."""
  return _vgg(modules, **{"model.name": "resnet18", "model.norm": "group"})


SLOW = {"data.speed_range": "(0.25, 0.5)"}


VGG = "configs/moving_digits_vgg8.py"
VIDEO_FOLDER = "configs/video_folder.py"
# configs/video_folder.py on the prepared mp4s, set like the digits themselves,
# with the replay it shipped when these cells were measured (2; it ships 3
# since the third family's replay cells), so a rerun measures what the cached
# runs hold.
VIDEO_OVERRIDES = {"data.image_size": "32", "data.num_frames": "16",
                   "data.crop_fraction": "1.0", "data.random_flip": "False",
                   "replay_modules": "2"}
# The mp4 sets bin/make_digit_videos writes for the user-path cells: name ->
# overrides of its config (the moving_digits data settings).
VIDEO_SETS = {"moving": {}, "slow": {"data.speed_range": "(0.25, 0.5)"}}
# A second family of videos the shipped defaults were not chosen on, fixed
# before any run (docs/fidelity.md, 4b): other clutter (scikit-image's
# textures, at higher contrast, and a static distractor digit) and more
# pixel noise; the 16 px digit at both speed ranges of the goals.
FAMILY2 = {"data.backgrounds": "skimage", "data.clutter": "0.8",
           "data.noise": "0.15", "data.num_distractors": "1"}
VIDEO_SETS.update(family2=FAMILY2,
                  family2_slow=dict(FAMILY2,
                                    **{"data.speed_range": "(0.25, 0.5)"}))
# BP did not learn the second family (docs/fidelity.md, 4b). The third,
# fixed before any of its runs, with a gate: a BP pilot on seed 100 (not
# counted) must reach BP_LEARNS first. Other clutter (scikit-image's
# textures at the digits' contrast), less pixel noise, no distractor, its
# own generation seed (other writers in test); the 16 px digit of the goals.
FAMILY3 = {"data.backgrounds": "skimage", "data.clutter": "0.5",
           "data.noise": "0.05", "data.num_distractors": "0",
           "data.seed": "3"}
VIDEO_SETS.update(family3=FAMILY3,
                  family3_slow=dict(FAMILY3,
                                    **{"data.speed_range": "(0.25, 0.5)"}))
PILOT_SEED = 100  # the gate's seed: never one of the counted seeds


FAMILY3_GROUP = "held-out defaults 3"
FAMILY3_REPLAY_GROUP = "held-out defaults 3 replay"

# In priority order: the map runs top to bottom, so a partial map has the
# most useful cells.
CELLS = (
    Cell("speed", "1-2 px/frame (default)", {}, min_seeds=5),
    Cell("improvement", "replay_modules=2", {"replay_modules": "2"},
         ("sideways",), bp_from="1-2 px/frame (default)", min_seeds=5),
    Cell("depth", "L=2", {"model.num_modules": "2"}, ("sideways",),
         bp_from="1-2 px/frame (default)"),
    Cell("speed", "static", {"data.speed_range": "(0.0, 0.0)"}),
    Cell("speed", "0.25-0.5 px/frame", {"data.speed_range": "(0.25, 0.5)"},
       min_seeds=8),
    Cell("speed", "2-4 px/frame", {"data.speed_range": "(2.0, 4.0)"}),
    Cell("train set", "100 training videos", {"data.num_train": "100"}),
    Cell("improvement", "replay_modules=1", {"replay_modules": "1"},
         ("sideways",), bp_from="1-2 px/frame (default)"),
    Cell("improvement", "replay_modules=3 (exact)", {"replay_modules": "3"},
         ("sideways",), bp_from="1-2 px/frame (default)", min_seeds=5),
    Cell("improvement", "0.25-0.5 px/frame + replay_modules=2",
         {"data.speed_range": "(0.25, 0.5)", "replay_modules": "2"},
         ("sideways",), bp_from="0.25-0.5 px/frame", min_seeds=8),
    Cell("user path", "mp4 files, shipped video_folder defaults",
         VIDEO_OVERRIDES, config=VIDEO_FOLDER, videos="moving", min_seeds=5),
  Cell("user path", "mp4 files, 0.25-0.5 px/frame, shipped defaults",
       VIDEO_OVERRIDES, config=VIDEO_FOLDER, videos="slow", min_seeds=8),
    Cell("stride", "stride 2", {"data.temporal_stride": "2"}),
    Cell("optimizer", "SGD lr 0.05",
         {"train.optimizer": "sgd", "train.learning_rate": "0.05"}),
    Cell("optimizer", "Adam lr 3e-4", {"train.learning_rate": "0.0003"}),
    Cell("improvement", "2-4 px/frame + replay_modules=2",
         {"data.speed_range": "(2.0, 4.0)", "replay_modules": "2"},
         ("sideways",), bp_from="2-4 px/frame"),
    Cell("depth", "VGG-8 L=8", _vgg(8), config=VGG),
    Cell("depth", "VGG-8 L=4", _vgg(4), ("sideways",), bp_from="VGG-8 L=8",
         config=VGG),
    Cell("depth", "VGG-8 L=2", _vgg(2), ("sideways",), bp_from="VGG-8 L=8",
         config=VGG),
    Cell("stride", "stride 4", {"data.temporal_stride": "4"}),
    Cell("improvement", "VGG-8 L=8 + replay_modules=7",
         dict(_vgg(8), replay_modules="7"), ("sideways",),
         bp_from="VGG-8 L=8", config=VGG),
    Cell("improvement", "VGG-8 L=8 + replay_modules=4",
         dict(_vgg(8), replay_modules="4"), ("sideways",),
         bp_from="VGG-8 L=8", config=VGG),
)

# The held-out cells (docs/fidelity.md, "Pre-registration"): settings that
# played no part in choosing the risk threshold, decided before any of them
# ran. Plain Sideways unless a cell says otherwise; 5 seeds each.
HELD_OUT = "held-out"
BN = {"model.norm": "batch"}
CELLS += (
    Cell(HELD_OUT, "8 px digit, 1-2 px/frame", {"data.object_size": "8"},
         held_out=True, min_seeds=5),
    Cell(HELD_OUT, "8 px digit, 0.25-0.5 px/frame",
         dict(SLOW, **{"data.object_size": "8"}), held_out=True,
         min_seeds=5),
    Cell(HELD_OUT, "24 px digit, 1-2 px/frame", {"data.object_size": "24"},
         held_out=True, min_seeds=5),
    Cell(HELD_OUT, "24 px digit, 0.25-0.5 px/frame",
         dict(SLOW, **{"data.object_size": "24"}), held_out=True,
         min_seeds=5),
    Cell(HELD_OUT, "photo objects, 1-2 px/frame", {"data.objects": "photos"},
         held_out=True, min_seeds=5),
    Cell(HELD_OUT, "photo objects, 0.25-0.5 px/frame",
         dict(SLOW, **{"data.objects": "photos"}), held_out=True,
         min_seeds=5),
    Cell(HELD_OUT, "VGG-8 L=8, T=64", _vgg(8, **{"data.num_frames": "64"}),
         config=VGG, held_out=True, min_seeds=5),
    Cell(HELD_OUT, "ResNet-18 group norm L=4", _resnet_gn(4), config=VGG,
         held_out=True, min_seeds=5),
    Cell(HELD_OUT, "ResNet-18 group norm L=8", _resnet_gn(8), ("sideways",),
         bp_from="ResNet-18 group norm L=4", config=VGG, held_out=True,
         min_seeds=5),
    Cell(HELD_OUT, "VGG-8 batch norm L=8", _vgg(8, **BN), config=VGG,
         held_out=True, min_seeds=5),
    Cell(HELD_OUT, "VGG-8 batch norm L=8 + replay_modules=4",
         dict(_vgg(8, **BN), replay_modules="4"), ("sideways",),
         bp_from="VGG-8 batch norm L=8", config=VGG, held_out=True,
         min_seeds=5),
    Cell(HELD_OUT, "VGG-8 batch norm L=8 + replay_modules=7",
         dict(_vgg(8, **BN), replay_modules="7"), ("sideways",),
         bp_from="VGG-8 batch norm L=8", config=VGG, held_out=True,
         min_seeds=5),
    # replay_modules="auto" (goal cells, not part of the held-out test).
    Cell("auto", "1-2 px/frame + replay_modules=auto",
         {"replay_modules": "auto"}, ("sideways",),
         bp_from="1-2 px/frame (default)", min_seeds=5),
    Cell("auto", "0.25-0.5 px/frame + replay_modules=auto",
         dict(SLOW, replay_modules="auto"), ("sideways",),
         bp_from="0.25-0.5 px/frame", min_seeds=8),
    # The shipped real-video defaults on the second family (the user path).
    Cell("held-out defaults", "family 2 mp4, 1-2 px/frame, shipped defaults",
         VIDEO_OVERRIDES, config=VIDEO_FOLDER, videos="family2", min_seeds=5),
    Cell("held-out defaults",
         "family 2 mp4, 0.25-0.5 px/frame, shipped defaults",
         VIDEO_OVERRIDES, config=VIDEO_FOLDER, videos="family2_slow",
         min_seeds=5),
    Cell(FAMILY3_GROUP, "family 3 mp4, 1-2 px/frame, shipped defaults",
         VIDEO_OVERRIDES, config=VIDEO_FOLDER, videos="family3", min_seeds=5),
    Cell(FAMILY3_GROUP, "family 3 mp4, 0.25-0.5 px/frame, shipped defaults",
         VIDEO_OVERRIDES, config=VIDEO_FOLDER, videos="family3_slow",
         min_seeds=5),
    # The third family with other replays, fixed before any of their runs
    # (docs/fidelity.md, 4b): does "auto" close the fast gap and replay
    # nothing on slow data, and does replaying every module below the top
    # bring slow motion within 2 points? Paired with the family's BP runs.
    *(Cell(FAMILY3_REPLAY_GROUP, f"family 3 mp4, {speed}, {replay}",
           dict(VIDEO_OVERRIDES, replay_modules=value), ("sideways",),
           bp_from=f"family 3 mp4, {speed}, shipped defaults",
           config=VIDEO_FOLDER, videos=videos, min_seeds=5)
      for replay, value in (("replay_modules=auto", "auto"),
                            ("replay_modules=3", "3"))
      for speed, videos in (("1-2 px/frame", "family3"),
                            ("0.25-0.5 px/frame", "family3_slow"))),
    # Online updates (an optimizer step every 4 ticks): does replay, with
    # the weight stashing the Trainer then turns on, still close the gap?
    Cell("online", "1-2 px/frame, update every 4 ticks",
         {"train.update_every_ticks": "4"}, min_seeds=5),
    Cell("online", "1-2 px/frame, update every 4 ticks + replay_modules=3",
         {"train.update_every_ticks": "4", "replay_modules": "3"},
         ("sideways",), bp_from="1-2 px/frame, update every 4 ticks",
         min_seeds=5),
)

# The cells run after the risk threshold and the replay advice were set on
# the map above: the pre-registered held-out test, the second video family,
# auto replay, online updates. The report gives them their own section.
OUT_OF_SAMPLE_GROUPS = (HELD_OUT, "held-out defaults", FAMILY3_GROUP,
                        FAMILY3_REPLAY_GROUP, "auto", "online")

# Paired differences the docs quote: (cell a, cell b), Sideways runs of a
# minus Sideways runs of b, paired by seed (gap_stats.comparisons).
COMPARISONS = (
    ("replay_modules=3 (exact)", "replay_modules=2"),
    ("replay_modules=2", "1-2 px/frame (default)"),
    ("replay_modules=1", "1-2 px/frame (default)"),
    ("0.25-0.5 px/frame + replay_modules=2", "0.25-0.5 px/frame"),
    ("2-4 px/frame + replay_modules=2", "2-4 px/frame"),
    ("VGG-8 L=8 + replay_modules=7", "VGG-8 L=8 + replay_modules=4"),
    ("VGG-8 batch norm L=8 + replay_modules=7", "VGG-8 batch norm L=8"),
    ("1-2 px/frame + replay_modules=auto", "replay_modules=2"),
    ("0.25-0.5 px/frame + replay_modules=auto", "0.25-0.5 px/frame"),
    ("1-2 px/frame, update every 4 ticks + replay_modules=3",
     "1-2 px/frame, update every 4 ticks"),
    # Each other replay of the third family against the replay it shipped.
    *((cell.name, cell.bp_from) for cell in CELLS
      if cell.group == FAMILY3_REPLAY_GROUP),
)


def cell_by_name(name: str) -> Cell:
  for cell in CELLS:
    if cell.name == name:
      return cell
  raise ValueError(f"unknown cell {name!r}")


def run_dir(outdir, cell: Cell, algorithm: str, seed: int) -> pathlib.Path:
  slug = "".join(c if c.isalnum() or c in "-.=" else "_" for c in cell.name)
  return pathlib.Path(outdir) / "gap" / slug / f"{algorithm}-seed{seed}"


def groups() -> List[str]:
  """The map's groups of cells, in map order."""
  return list(dict.fromkeys(cell.group for cell in CELLS))


def check_selection(only_groups: Sequence[str] = (),
                    only_cells: Sequence[str] = ()) -> None:
  """A ValueError naming any group or cell the map does not have (checked
  before anything runs, so a typo does not cost a map of runs)."""
  known = groups()
  unknown = [g for g in only_groups if g not in known]
  if unknown:
    raise ValueError(f"unknown gap group(s) {unknown}; the map has {known}")
  names = [cell.name for cell in CELLS]
  unknown = [c for c in only_cells if c not in names]
  if unknown:
    raise ValueError(f"unknown gap cell(s) {unknown}; the map has {names}")


def plan(outdir, seeds: int, only_groups: Sequence[str] = (),
         only_cells: Sequence[str] = ()) -> List[tuple]:
  """(cell, algorithm, seed, run_dir) of every run, in priority order;
  with `only_groups` / `only_cells`, the runs of the cells in those groups
  or with those names (either selects; in map order, not the given one)."""
  check_selection(only_groups, only_cells)
  runs, planned = [], set()

  def add(cell, algorithm, seed):
    workdir = run_dir(outdir, cell, algorithm, seed)
    if workdir not in planned:
      planned.add(workdir)
      runs.append((cell, algorithm, seed, workdir))

  for cell in CELLS:
    if (only_groups or only_cells) and not (
        cell.group in only_groups or cell.name in only_cells):
      continue
    for seed in range(max(seeds, cell.min_seeds)):
      # What the cell is reported against (a selection would otherwise
      # leave it out): the BP runs it shares, the Sideways runs of the
      # cells it is compared with.
      for other, algorithm in references(cell):
        add(other, algorithm, seed)
      for algorithm in cell.algorithms:
        add(cell, algorithm, seed)
  return runs


def references(cell: Cell) -> List[tuple]:
  """(cell, algorithm) of the runs a cell's report rows pair it with: the
  BP runs of `bp_from`, and the Sideways runs of the cells COMPARISONS
  subtracts from it."""
  found = []
  if cell.bp_from:
    found.append((cell_by_name(cell.bp_from), "bp"))
  found += [(cell_by_name(b), "sideways") for a, b in COMPARISONS
            if a == cell.name]
  return found


def train_command(cell: Cell, algorithm: str, seed: int, workdir, steps: int,
                  data_dir: str = "") -> List[str]:
  """The bin/train command line of one run (what the map measures)."""
  command = [sys.executable, str(PROJECT_ROOT / "bin" / "train"),
             f"--config={PROJECT_ROOT / cell.config}", f"--workdir={workdir}",
             "--overwrite"]
  for key, value in run_overrides(cell, algorithm, seed, workdir, steps,
                                  data_dir).items():
    command.append(f"--config.{key}={value}")
  return command


def run_overrides(cell: Cell, algorithm: str, seed: int, workdir, steps: int,
                  data_dir: str = "") -> Dict[str, str]:
  """The config overrides of one run (the report checks a run's config.json
  against them)."""
  # Plain Sideways unless the cell says otherwise, whatever the config ships.
  overrides = {"algorithm": algorithm, "seed": str(seed),
               "train.num_steps": str(steps),
               "train.eval_every": str(EARLY_STEP),
               "train.fidelity_every": "250",
               "train.stage_time_every": "0",
               "train.checkpoint_every": str(steps)}
  if cell.videos:
    overrides["data.path"] = str(prepared_videos_dir(workdir, cell.videos))
  else:
    overrides["replay_modules"] = "0"
    if data_dir:
      overrides["data.data_dir"] = data_dir
  overrides.update(cell.overrides)
  return overrides


def _video_dirs(outdir, video_set: str) -> tuple:
  """(mp4 dir, prepared dir) of a video set; the default set keeps the
  original names (OUTDIR/videos, OUTDIR/videos_prepared)."""
  if video_set not in VIDEO_SETS:
    raise ValueError(f"unknown video set {video_set!r}; known: "
                     f"{sorted(VIDEO_SETS)}")
  stem = "videos" if video_set == "moving" else f"videos_{video_set}"
  outdir = pathlib.Path(outdir)
  return outdir / stem, outdir / f"{stem}_prepared"


def prepared_videos_dir(workdir, video_set: str = "moving") -> pathlib.Path:
  """The prepared set, from a run's OUTDIR/gap/<cell>/<run> workdir."""
  return _video_dirs(pathlib.Path(workdir).parents[2], video_set)[1]


def prepare_videos(outdir, data_dir: str = "",
                   video_set: str = "moving") -> pathlib.Path:
  """The user path's data: bin/make_digit_videos, then bin/prepare_videos.

  Both commands resume, and prepare_videos writes metadata.json last, so this
  is cheap once done.
  """
  outdir = pathlib.Path(outdir)
  videos, prepared = _video_dirs(outdir, video_set)
  if (prepared / "metadata.json").exists():
    return prepared
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  make = [sys.executable, str(PROJECT_ROOT / "bin" / "make_digit_videos"),
          f"--output_dir={videos}"]
  make += [f"--config.{k}={v}" for k, v in VIDEO_SETS[video_set].items()]
  if data_dir:
    make.append(f"--config.data.data_dir={data_dir}")
  prepare = [sys.executable, str(PROJECT_ROOT / "bin" / "prepare_videos"),
             f"--input_dir={videos}", f"--output_dir={prepared}",
             "--short_side=32"]
  outdir.mkdir(parents=True, exist_ok=True)
  with open(videos.with_suffix(".log"), "w") as log:
    for command in (make, prepare):
      if subprocess.call(command, stdout=log, stderr=subprocess.STDOUT,
                         env=env):
        raise RuntimeError(f"{' '.join(command)} failed; see "
                           f"{videos.with_suffix('.log')}")
  return prepared


def run_one(cell: Cell, algorithm: str, seed: int, workdir: pathlib.Path,
            steps: int, data_dir: str = "") -> Dict:
  """Runs bin/train (one core) unless its result is cached; returns it."""
  result_path = workdir / "result.json"
  if result_path.exists():
    cached = json.loads(result_path.read_text())
    if cached.get("steps") == steps:
      return cached
  env = dict(os.environ, TF_NUM_INTRAOP_THREADS="1",
             TF_NUM_INTEROP_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2")
  command = train_command(cell, algorithm, seed, workdir, steps, data_dir)
  started = time.time()
  code = _PROCESSES.wait(_PROCESSES.start(command, workdir, env))
  if code:  # a failure, or a run stopped by a signal: no result.json
    raise RuntimeError(f"{' '.join(command)} failed with exit code {code}; "
                       f"see {workdir / 'train.log'}")
  result = dict(read_run(workdir), cell=cell.name, group=cell.group,
                algorithm=algorithm, seed=seed, steps=steps,
                seconds=time.time() - started, command=" ".join(command[1:]))
  atomic_write_text(result_path, json.dumps(result, indent=2))
  return result


def read_run(workdir: pathlib.Path) -> Dict:
  """Final test accuracy, its curve and the early diagnostics of a run."""
  from sideways_tf.paper_experiments.runs import scalars  # noqa: PLC0415
  evaluation = json.loads((workdir / "eval.json").read_text())
  train_dir = workdir / "train"
  early = {}
  for measure in ("cosine", "update_cosine", "lag_change"):
    for k in range(1, 9):
      values = [v for step, v in scalars(
          train_dir, f"fidelity/{measure}/module_{k}") if step <= EARLY_STEP]
      if values:
        early[f"{measure}/module_{k}"] = sum(values) / len(values)
  from sideways_tf.training import diagnostics  # noqa: PLC0415
  logged = scalars(train_dir, "fidelity/risk")
  risk = [v for step, v in logged if step <= EARLY_STEP]
  if risk:
    early["risk"] = sum(risk) / len(risk)
    early["risk_statistic"] = diagnostics.risk_statistic(logged)
  # Labels made of parts (digit x direction): each part's accuracy too.
  parts = {f"test_accuracy/{key.split('/', 1)[1]}": value
           for key, value in evaluation.items()
           if key.startswith("clip_accuracy/")}
  return dict(test_accuracy=evaluation["clip_accuracy"], **parts,
              test_frame_accuracy=evaluation["frame_accuracy"],
              curve=scalars(workdir / "eval", "eval/accuracy"),
              train_accuracy_last=[v for _, v in scalars(
                  train_dir, "train/accuracy")][-1:],
              early=early)


def run_plan(label: str, todo, steps: int, jobs: int = 1,
             describe=lambda result: "", after=None,
             data_dir: str = "") -> List[Dict]:
  """Runs (or loads) every (cell, algorithm, seed, workdir) of `todo`,
  `jobs` at once, printing one progress line per finished run ("[label
  done/total, minutes] cell algorithm seed: test clip acc. ..." plus
  `describe(result)` and the estimated minutes left); a failed run is
  reported and skipped. `after(results)` is called after each finished run
  (e.g. to write the results so far).

  A stop (SIGINT, SIGTERM, or an error here) starts no queued run,
  forwards the signal to the running ones (bin/train saves a checkpoint;
  without result.json they run again, resumed, next time), waits for them
  (train_processes.TrainProcesses.stop) and goes on up, so bin/experiments
  exits 130 or 143."""
  _PROCESSES.allow_starts()
  progress = _Progress(label, todo)
  with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
    futures = {}
    try:
      for cell, algorithm, seed, workdir in todo:
        futures[pool.submit(run_one, cell, algorithm, seed, workdir, steps,
                            data_dir)] = (cell, algorithm, seed, workdir)
      for future in concurrent.futures.as_completed(futures):
        if progress.report(future, futures[future], describe) and after:
          after(progress.results)
    except BaseException as stop:  # a signal or an error: re-raised
      _PROCESSES.stop(train_processes.signal_of(stop), label, futures)
      raise
  return progress.results


class _Progress:
  """run_plan's progress lines and results. Cached runs return at once, so
  the ETA counts only the runs that train."""

  def __init__(self, label: str, todo):
    self.label, self.total = label, len(todo)
    self.cached = {str(w) for *_, w in todo
                   if (pathlib.Path(w) / "result.json").exists()}
    self.to_train, self.trained, self.done = len(todo) - len(self.cached), 0, 0
    self.results, self.started = [], time.time()

  def report(self, future, run, describe) -> bool:
    """Prints the line of a finished run; whether it succeeded."""
    cell, algorithm, seed, workdir = run
    self.done += 1
    self.trained += str(workdir) not in self.cached
    try:
      result = future.result()
    except RuntimeError as error:  # keep going; say what failed
      print(f"[{self.label} {self.done}/{self.total}] {cell.name} "
            f"{algorithm} seed {seed}: FAILED: {error}", flush=True)
      return False
    self.results.append(result)
    elapsed = time.time() - self.started
    eta = elapsed / max(self.trained, 1) * (self.to_train - self.trained)
    print(f"[{self.label} {self.done}/{self.total}, {elapsed / 60:.0f} min] "
          f"{cell.name} {algorithm} seed {seed}: test clip acc. "
          f"{result['test_accuracy']:.3f}{describe(result)}; ETA "
          f"{eta / 60:.0f} min", flush=True)
    return True


def run_map(outdir, steps: int, seeds: int = 3, jobs: int = 1,
            only_groups: Sequence[str] = (), data_dir: str = "",
            only_cells: Sequence[str] = ()) -> List[Dict]:
  """Runs (or loads) every run of the map (or of the groups and cells
  named); writes OUTDIR/gap.json."""
  outdir = pathlib.Path(outdir)
  todo = plan(outdir, seeds, only_groups, only_cells)
  _prepare_video_sets(outdir, data_dir, {
      cell.videos for cell, *_, w in todo
      if cell.videos and not (w / "result.json").exists()})
  return run_plan("gap", todo, steps, jobs, data_dir=data_dir,
                  after=lambda results: atomic_write_text(
                      outdir / "gap.json", json.dumps(results, indent=2)))


def run_pilots(outdir, steps: int, only_cells: Sequence[str], jobs: int = 1,
               data_dir: str = "") -> List[Dict]:
  """The gate before a new cell's counted runs: BP of each named cell on
  PILOT_SEED (never a counted seed, so the report ignores it). A cell whose
  pilot ends below gap_stats.BP_LEARNS cannot show a gap; each result says
  whether it passed (`learned`)."""
  from sideways_tf.paper_experiments import gap_stats  # noqa: PLC0415
  if not only_cells:
    raise ValueError("--gap_pilot runs the pilots of the cells named by "
                     "--gap_cell; none was named")
  check_selection((), only_cells)
  outdir = pathlib.Path(outdir)
  cells = [cell_by_name(name) for name in only_cells]
  _prepare_video_sets(outdir, data_dir,
                      {cell.videos for cell in cells if cell.videos})
  todo = [(cell, "bp", PILOT_SEED, run_dir(outdir, cell, "bp", PILOT_SEED))
          for cell in cells]

  def learned(result) -> bool:
    return result["test_accuracy"] >= gap_stats.BP_LEARNS
  results = run_plan("gap pilot", todo, steps, jobs, data_dir=data_dir,
                     describe=lambda result: (
                         " (passes the gate)" if learned(result)
                         else " (below the gate: the cell cannot show a gap)"))
  return [dict(result, learned=learned(result)) for result in results]


def _prepare_video_sets(outdir: pathlib.Path, data_dir: str,
                        video_sets) -> None:
  """Writes and prepares each named mp4 set (cheap once done)."""
  for video_set in sorted(video_sets):
    print(f"[gap] writing and preparing the {video_set} mp4 videos of the "
          f"user path in {outdir}", flush=True)
    prepare_videos(outdir, data_dir, video_set)
