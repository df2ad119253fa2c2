"""Depth parallelism, measured: every algorithm on N simulated devices.

``bin/benchmark --simulate_devices=N``. A simulated device is one CPU core:
each measurement runs in its own process with N logical CPU devices,
intra-op threads 1 (one core per op) and inter-op threads N (N ops at once),
the stages placed one per device. The same algorithm is also run serialised
(inter-op threads 1) so its speed-up is its own; every other figure is a
ratio between runs of this one command.

Rows (all through ``Trainer.train_step`` / ``Pipeline.compute_gradients``):

* ``sideways``: the tick engine, stages on the N devices;
* ``gpipe`` / ``gpipe_remat``: ``algorithm="gpipe"`` (exact) with M = T /
  micro_batch_frames micro-batches, without / with re-materialisation;
* ``mp_bp``: BP with the stages on the N devices, no pipelining
  (model-parallel BP);
* ``bp``: BP with default placement (single-device BP, same cores);
* ``chunked_bp``: the same with ``bp_chunk_frames`` (BP's gradient over
  chunks of frames, memory flat in T);
* ``pipelined_bp``: ``algorithm="pipelined_bp"`` (the tick engine with every
  module below the top replayed; exact per frame), stages on the N devices;
* ``dp<R>x<G>_<row>`` (``--variants=dp`` or the default: every split of the
  N devices into R > 1 replicas of G = N/R devices, for the rows sideways,
  bp, gpipe, chunked_bp and pipelined_bp): data parallel
  (training/data_parallel.py), replica r on devices rG..rG+G-1 with the
  model's stages spread over them, each on B/R clips of the batch; the
  row's gradient is the replicas' mean.

With ``update_every_ticks = U`` (``bin/benchmark --update_every_ticks=U``)
every row's train step is the online one of ``bin/train
--config.train.update_every_ticks=U``: ``Trainer(..., update_every_ticks=U)``
feeds each clip as U-frame chunks with an optimizer step after each (GPipe
then pipelines the U/micro_batch_frames micro-batches of a chunk; BP and
chunked BP take the exact gradient of each chunk's frames; the tick engine
carries its buffers across the steps, with weight stashing for replay).
The gradient columns and GPipe's bubble stay those of one whole-clip
gradient.

Per row: frames/s (parallel and serialised) and speed-up; peak working memory
(VmHWM minus the RSS before the first step, own process per T); gradient
cosine and max relative difference to single-device BP on the same clip and
weights, and their max relative difference to BP run in float64 on the same
weights and clip (``exactness.py``; float32 BP's own difference to it is
reported too); per-device idle fraction of the step observed in a profiler
trace (ops are attributed to device k by their ``stage_k`` name scope; idle
= 1 - union of stage k's op intervals / step span: executor gaps between
ops count as idle). For the GPipe rows also the bubble from the schedule's
own clock timestamps (``gpipe.stage_timeline``: the start and end of every
stage's work at every clock): each device's fill and drain time as a share
of the phase, next to (K-1)/(M+K-1) (:func:`bubble_from_stage_times`).

With ``rounds = K`` (``bin/benchmark --rounds=K``) the throughput children
(parallel and serialised) of every row run K times, in rounds: rows in order
in even rounds, reversed in odd ones, so that a drift in the machine's load
over the run reaches every row alike. Each row keeps the round of median
frames/s as its ``parallel`` / ``serialised`` and lists every round's
frames/s in ``rounds``; the goals that are throughput ratios are taken per
round (devices_report.summarise). The memory children run once.

Writes ``simulated_devices.json``, ``.md`` and ``.png`` to the report
directory (atomically), and the table into docs/benchmarks.md between markers
(the report: devices_report.py).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import glob
import json
import os
import pathlib
import platform
import re
import sys
import tempfile
import time
import types
from typing import Dict, List, Optional, Sequence

from sideways_tf.benchmark import devices_report
from sideways_tf.run import files


# name: (Pipeline algorithm, stages on the simulated devices, rematerialize)
VARIANTS = {
    "sideways": ("sideways", True, False),
    "gpipe": ("gpipe", True, False),
    "gpipe_remat": ("gpipe", True, True),
    "mp_bp": ("bp", True, False),
    "bp": ("bp", False, False),
    "chunked_bp": ("bp", False, False),
    "pipelined_bp": ("pipelined_bp", True, False),
}
CHUNKED = ("chunked_bp",)  # run with bp_chunk_frames = config.bp_chunk_frames
# Sideways with its bottom n modules replayed (Pipeline(replay_modules=n)),
# e.g. the shipped configs' replay_modules=2; asked for by name only (it needs
# L > n modules: --num_modules).
REPLAYED = {"sideways_replay1": 1, "sideways_replay2": 2,
            "sideways_replay3": 3}
VARIANTS.update({name: ("sideways", True, False) for name in REPLAYED})
# pipelined_bp: module k gets BP's gradient of frames 1..T-2L+k+1 only, so
# its cosine to BP's whole-clip gradient is below 1 (docs/algorithm.md).
EXACT = {"sideways": False, "gpipe": True, "gpipe_remat": True, "mp_bp": True,
         "bp": True, "chunked_bp": True, "pipelined_bp": "per frame",
         **{name: False for name in REPLAYED}}
# Data parallel rows: "dp<R>x<G>_<row>", R replicas of G devices each.
DATA_PARALLEL_ROWS = ("sideways", "bp", "gpipe", "chunked_bp", "pipelined_bp")
DATA_PARALLEL = devices_report.DATA_PARALLEL


def data_parallel_variants(num_devices: int) -> List[str]:
  """Every split of N devices into R > 1 replicas, for each row."""
  return [f"dp{r}x{num_devices // r}_{row}"
          for r in range(2, num_devices + 1) if num_devices % r == 0
          for row in DATA_PARALLEL_ROWS]


def variant_spec(variant: str) -> tuple:
  """(the row it runs, replicas): ("bp", 2) for "dp2x1_bp"."""
  match = DATA_PARALLEL.fullmatch(variant)
  return (match.group(3), int(match.group(1))) if match else (variant, 1)


@dataclasses.dataclass
class DevicesConfig:
  """What to measure. Defaults finish in a few minutes on 2 idle cores."""
  num_devices: int = 2
  num_modules: int = 0          # 0 = one module per device
  model: str = "frame_cnn"
  temporal: str = ""            # the model's temporal layers ("conv:3")
  image_size: int = 64
  channels: int = 3
  batch_size: int = 8
  num_frames: int = 32
  num_classes: int = 10
  micro_batch_frames: int = 1   # GPipe: frames per micro-batch (M = T / this)
  bp_chunk_frames: int = 8      # chunked_bp: frames per chunk
  # Online training: an optimizer step every this many ticks (U-frame chunks
  # of each clip, Trainer(update_every_ticks=U)); 0 = one step per clip.
  update_every_ticks: int = 0
  # The rows' Keras optimizer by name (config.train.optimizer's names,
  # learning rate 1e-4): its update is part of every timed step, U times
  # per clip when online.
  optimizer: str = "sgd"
  repeats: int = 5
  warmup: int = 1
  memory_frames: Sequence[int] = (16, 128)
  memory_steps: int = 1
  # "dp" = every data-parallel split (data_parallel_variants).
  variants: Sequence[str] = tuple(v for v in VARIANTS if v not in REPLAYED
                                 ) + ("dp",)
  # "time": cut the model's layers into stages of equal measured time
  # (balance_by_time, once, in its own process; every row uses that split)
  # so that idle time is the schedule's, not the model's imbalance.
  balance: str = "time"
  stage_sizes: Sequence[int] = ()  # set by the parent from the balancing
  serialised: bool = True       # also run each variant with inter-op 1
  # Rounds of every row's throughput children (parallel and serialised),
  # rows in order in even rounds and reversed in odd ones; the report
  # gives each row's median round and every throughput ratio per round.
  rounds: int = 1
  profile: bool = True          # bubble from a profiler trace

  @property
  def modules(self) -> int:
    return self.num_modules or self.num_devices

  @property
  def rows(self) -> List[str]:
    """The variants to run, "dp" expanded into every data-parallel split
    whose replicas the batch divides evenly (none at B = 1: one clip has
    nothing to split)."""
    return [name for v in self.variants for name in (
        [d for d in data_parallel_variants(self.num_devices)
         if self.batch_size % variant_spec(d)[1] == 0]
        if v == "dp" else [v])]


def log(message: str) -> None:
  print(f"[benchmark --simulate_devices {time.strftime('%H:%M:%S')}] "
        f"{message}", flush=True)


# ------------------------------------------------------------- child side

def _setup(config: DevicesConfig, inter_op: int):
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(int(inter_op))
  if config.num_devices > 1:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * config.num_devices)
  return tf


def _model_layers(config: DevicesConfig):
  """The model's stages and their layers, with the same weights in every
  process (seed 0)."""
  import keras  # pylint: disable=g-import-not-at-top
  from sideways_tf import models  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(0)
  stages = models.MODELS[config.model](
      num_classes=config.num_classes, num_modules=config.modules,
      **({"temporal": config.temporal} if config.temporal else {}))
  return stages, [layer for stage in stages for layer in stage.layers]


def _trainer(config: DevicesConfig, variant: str, tf):
  """The variant's Trainer: its pipeline, and with replicas its
  DataParallel (replica r on the r-th group of devices), stages built."""
  import sideways_tf  # pylint: disable=g-import-not-at-top
  from sideways_tf.engine import balance  # pylint: disable=g-import-not-at-top
  row, replicas = variant_spec(variant)
  algorithm, placed, remat = VARIANTS[row]
  stages, layers = _model_layers(config)
  if config.stage_sizes:
    stages = balance.to_stages(layers, list(config.stage_sizes))
  devices = [d.name for d in tf.config.list_logical_devices("CPU")]
  share = len(devices) // replicas  # each replica's devices
  rows = [[devices[r * share + k * share // config.modules]
           for k in range(config.modules)] for r in range(replicas)]
  pipeline = sideways_tf.Pipeline(
      stages, devices=rows[0] if placed or replicas > 1 else None,
      gpipe_micro_batch_frames=config.micro_batch_frames,
      gpipe_rematerialize=remat,
      bp_chunk_frames=config.bp_chunk_frames if row in CHUNKED else 0,
      replay_modules=REPLAYED.get(row, 0))
  parallel = sideways_tf.DataParallel(pipeline,
                                      rows if replicas > 1 else None)
  parallel.build((config.image_size, config.image_size, config.channels))
  with parallel.scope():
    optimizer = _optimizer(config)
  return sideways_tf.Trainer(pipeline, optimizer, algorithm,
                             update_every_ticks=config.update_every_ticks,
                             data_parallel=parallel)


def _clip(config: DevicesConfig, num_frames: int, tf):
  rng = tf.random.Generator.from_seed(1)
  frames = rng.uniform((config.batch_size, num_frames, config.image_size,
                        config.image_size, config.channels))
  labels = rng.uniform((config.batch_size,), 0, config.num_classes, tf.int32)
  return frames, labels


def throughput_child(config: DevicesConfig, variant: str, inter_op: int,
                     fidelity: bool, profile: bool) -> dict:
  """Frames/s of train steps; optionally gradient vs BP and the bubble."""
  tf = _setup(config, inter_op)
  import numpy as np  # pylint: disable=g-import-not-at-top
  from sideways_tf.benchmark.children import peak_rss_bytes  # pylint: disable=g-import-not-at-top
  trainer = _trainer(config, variant, tf)
  pipeline = trainer.pipeline
  frames, labels = _clip(config, config.num_frames, tf)
  out = {"variant": variant, "inter_op": inter_op,
         "devices": [[str(d) for d in replica.devices]
                     for replica in trainer.data_parallel.replicas]
         if trainer.data_parallel.num_replicas > 1 else
         [str(d) for d in pipeline.devices]}
  if fidelity:  # before any update: the same weights as the BP reference
    out.update(_against_bp(trainer, frames, labels))
  for _ in range(config.warmup):
    trainer.train_step(frames, labels)
  # .numpy(): with replicas the counter is a MirroredVariable (no int()).
  applied = int(trainer.optimizer.iterations.numpy())
  seconds = []
  for _ in range(config.repeats):
    start = time.perf_counter()
    trainer.train_step(frames, labels)
    seconds.append(time.perf_counter() - start)
  median = float(np.median(seconds))
  # What each timed step did: the online chunks reached the Trainer, and
  # how many optimizer steps a train step took (a Sideways chunk without
  # any valid loss term, the pipeline's warm-up, takes none).
  out.update(update_every_ticks=trainer.update_every_ticks,
             optimizer=type(trainer.optimizer).__name__,
             optimizer_steps_per_step=(
                 int(trainer.optimizer.iterations.numpy()) - applied)
             / config.repeats)
  out.update(step_s=seconds, median_s=median,
             frames_per_s=config.batch_size * config.num_frames / median,
             peak_rss_mib=peak_rss_bytes() / 2 ** 20)
  if profile:
    out["bubble"] = _profiled_bubble(trainer, frames, labels,
                                     pipeline.num_modules, tf)
    if trainer.algorithm == "gpipe":
      out["timeline"] = _timeline_bubble(pipeline, frames, labels)
  return out


def _against_bp(trainer, frames, labels) -> dict:
  """The variant's clip gradient (with replicas: the mean they apply)
  against single-device BP's (float32) and against BP in float64 on the
  same weights and clip (exactness.py)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import sideways_tf  # pylint: disable=g-import-not-at-top
  from sideways_tf.benchmark import exactness  # pylint: disable=g-import-not-at-top
  pipeline = trainer.pipeline
  mine = trainer.data_parallel.compute_gradients(frames, labels,
                                                 trainer.algorithm)
  reference = sideways_tf.Pipeline(pipeline.stages).compute_gradients(
      frames, labels, "bp")
  reference64 = exactness.float64_bp_gradients(pipeline.stages, frames,
                                               labels)
  a = np.concatenate([np.ravel(g) for g in mine]).astype(np.float64)
  b = np.concatenate([np.ravel(g) for g in reference]).astype(np.float64)
  return {
      "cosine_to_bp": float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))),
      "max_relative_difference": exactness.max_relative_difference(
          mine, reference),
      "max_relative_difference_f64": exactness.max_relative_difference(
          mine, reference64),
      "bp32_max_relative_difference_f64": exactness.max_relative_difference(
          reference, reference64)}


def _timeline_bubble(pipeline, frames, labels, repeats: int = 5) -> dict:
  """Per phase: bubble_from_stage_times of timed GPipe clip gradients, the
  median per device over `repeats` runs (each run's figures kept too)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from sideways_tf.engine import gpipe  # pylint: disable=g-import-not-at-top
  timeline = gpipe.stage_timeline(pipeline)
  timeline(frames, labels)  # trace
  runs = [{phase: bubble_from_stage_times(t)
           for phase, t in timeline(frames, labels).items()}
          for _ in range(repeats)]
  phases = {}
  for phase, first in runs[0].items():
    phases[phase] = dict(first, runs=[run[phase] for run in runs])
    if not first.get("available"):
      continue
    for key in ("bubble", "idle", "first_work_s", "median_work_s",
                "median_period_s"):
      per_run = [run[phase][key] for run in runs]
      phases[phase][key] = [
          None if values[0] is None else float(np.median(values))
          for values in zip(*per_run)]
    phases[phase]["span_s"] = float(np.median(
        [run[phase]["span_s"] for run in runs]))
  # The phase in which every stage works: the forward clocks, or the
  # written-out backward clocks when re-materialising (its forward skips
  # the top stage, which recomputes on the way back).
  measured = "backward" if "backward" in phases else "forward"
  return {"phases": phases, "measured_phase": measured, "repeats": repeats}


def bubble_from_stage_times(times) -> dict:
  """Each device's idle time in one pipelined phase, from clock timestamps.

  `times[c][k]` = (start, end) of stage k's work at clock c, in seconds,
  NaN where the stage has no micro-batch at that clock. Over the phase's
  span (first start of any stage to last end), per device k:

  * ``bubble``: (k's first start - the span's start) + (the span's end -
    k's last end), / span: the fill-and-drain bubble, (K-1)/(M+K-1) with
    equal stages and no other delay. (Clocks are not barriers: a stage may
    run ahead of the one above it, so only the fill and the drain are
    counted, not clock intervals.)
  * ``idle``: 1 - (union of k's work intervals) / span: the bubble plus
    every wait in between (for a slower stage, for the loop itself);
  * ``idle_clocks``: clocks without a micro-batch / all clocks (the
    schedule's count, (K-1)/(M+K-1) for a stage that works in the phase);
  * ``first_work_s``, ``median_work_s``: how long k's first work took, and
    the median over its works; ``median_period_s``: the median time from
    one of k's work starts to the next (its clock period).

  A stage that does no work in the phase gets None.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  times = np.asarray(times, np.float64)
  works = ~np.isnan(times[:, :, 0])
  if not works.any():
    return {"available": False, "reason": "no stage worked"}
  first, last = np.nanmin(times[:, :, 0]), np.nanmax(times[:, :, 1])
  span = max(last - first, 1e-12)
  bubble, idle, idle_clocks = [], [], []
  first_work, median_work, median_period = [], [], []
  for k in range(times.shape[1]):
    if not works[:, k].any():
      for values in (bubble, idle, idle_clocks, first_work, median_work,
                     median_period):
        values.append(None)
      continue
    intervals = sorted(map(tuple, times[works[:, k], k]))
    durations = [stop - start for start, stop in intervals]
    first_work.append(float(durations[0]))
    median_work.append(float(np.median(durations)))
    median_period.append(float(np.median(np.diff([i[0] for i in intervals])))
                         if len(intervals) > 1 else None)
    busy = _covered(intervals, first)
    own_first = intervals[0][0]
    own_last = max(stop for _, stop in intervals)
    bubble.append(float((own_first - first + last - own_last) / span))
    idle.append(float(1.0 - busy / span))
    idle_clocks.append(float(1.0 - works[:, k].mean()))
  return {"available": True, "bubble": bubble, "idle": idle,
          "idle_clocks": idle_clocks, "clocks": int(len(times)),
          "span_s": float(span), "first_work_s": first_work,
          "median_work_s": median_work, "median_period_s": median_period}


def _profiled_bubble(trainer, frames, labels, num_stages, tf) -> dict:
  """Idle fraction per device in one profiled train step."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  logdir = tempfile.mkdtemp(prefix="sideways_bubble_")
  tf.profiler.experimental.start(logdir)
  try:
    trainer.train_step(frames, labels)
  finally:
    tf.profiler.experimental.stop()
  paths = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"),
                           recursive=True))
  if not paths:
    return {"available": False, "reason": f"no trace in {logdir}"}
  space = xplane_pb2.XSpace()
  space.ParseFromString(pathlib.Path(paths[-1]).read_bytes())
  intervals = collections.defaultdict(list)
  pattern = re.compile(r"stage_(\d+)/")
  for plane in space.planes:
    names = plane.event_metadata
    for line in plane.lines:
      for event in line.events:
        match = pattern.search(names[event.metadata_id].name)
        if match:
          start = line.timestamp_ns * 1000 + event.offset_ps
          intervals[int(match.group(1))].append(
              (start, start + event.duration_ps))
  return bubble_from_intervals(intervals, num_stages)


def bubble_from_intervals(intervals: Dict[int, List[tuple]],
                          num_stages: int) -> dict:
  """Idle fraction of each stage over the span of all stages' events.

  `intervals[k]`: (start, end) of the ops of stage k, any unit. Busy time is
  the union of a stage's intervals (its ops may overlap on several threads).
  """
  spans = [iv for k in range(num_stages) for iv in intervals.get(k, [])]
  if not spans:
    return {"available": False, "reason": "no stage_k events in the trace"}
  first = min(s for s, _ in spans)
  last = max(e for _, e in spans)
  total = max(last - first, 1)
  idle = [1.0 - _covered(sorted(intervals.get(k, [])), first) / total
          for k in range(num_stages)]
  return {"available": True, "idle_fraction": idle,
          "span_s": total / 1e12 if total > 1e9 else None,
          "events": {k: len(intervals.get(k, [])) for k in range(num_stages)}}


def _covered(intervals, start):
  """Length of the union of sorted (start, end) `intervals` after `start`:
  a device's busy time when its ops overlap (several threads)."""
  busy, end = 0, start
  for begin, stop in intervals:
    begin = max(begin, end)
    if stop > begin:
      busy += stop - begin
      end = stop
  return busy


def memory_child(config: DevicesConfig, variant: str, num_frames: int) -> dict:
  """Peak working memory of train steps at clip length `num_frames`."""
  tf = _setup(config, config.num_devices)
  import psutil  # pylint: disable=g-import-not-at-top
  from sideways_tf.benchmark.children import peak_rss_bytes  # pylint: disable=g-import-not-at-top
  trainer = _trainer(config, variant, tf)
  frames, labels = _clip(config, num_frames, tf)
  float(frames[0, 0, 0, 0, 0])
  trainer.data_parallel.prepare_inputs(frames, labels, trainer.algorithm)
  baseline = psutil.Process().memory_info().rss
  for _ in range(max(1, config.memory_steps)):
    trainer.train_step(frames, labels)
  peak = peak_rss_bytes()
  return {"variant": variant, "num_frames": num_frames,
          "baseline_mib": baseline / 2 ** 20, "peak_mib": peak / 2 ** 20,
          "step_mib": (peak - baseline) / 2 ** 20}


def split_child(config: DevicesConfig) -> dict:
  """balance_by_time of the model's layers into config.modules stages."""
  tf = _setup(config, 1)
  from sideways_tf.engine import balance  # pylint: disable=g-import-not-at-top
  _, layers = _model_layers(config)
  sample = tf.random.stateless_uniform(
      (config.batch_size, config.image_size, config.image_size,
       config.channels), seed=(0, 0))
  costs = balance.time_costs(layers, sample)
  sizes = balance.balanced_split([max(1, int(c * 1e9)) for c in costs],
                                 config.modules)
  return {"stage_sizes": [int(s) for s in sizes],
          "layers": [layer.name for layer in layers], "layer_s": costs,
          "stage_s": balance.group_costs(costs, sizes)}


CHILDREN = {"throughput": throughput_child, "memory": memory_child,
            "split": split_child}


# ------------------------------------------------------------ parent side

def run_child(kind: str, config: DevicesConfig, **kwargs) -> dict:
  from sideways_tf.benchmark import children  # noqa: PLC0415
  return children.run_module_child("sideways_tf.benchmark.devices", kind,
                                   config, **kwargs)


def validate(config: DevicesConfig) -> None:
  if config.balance not in ("", "time"):
    raise ValueError(f"balance must be '' or 'time', got {config.balance!r}")
  if config.rounds < 1:
    raise ValueError(f"--rounds must be >= 1 (1 = each row's throughput "
                     f"measured once), got {config.rounds}")
  if config.num_devices < 1:
    raise ValueError(f"--simulate_devices must be >= 1, got "
                     f"{config.num_devices}")
  if config.bp_chunk_frames < 1:
    raise ValueError(f"--bp_chunk_frames must be >= 1, got "
                     f"{config.bp_chunk_frames}")
  known = list(VARIANTS) + data_parallel_variants(config.num_devices)
  unknown = set(config.rows) - set(known)
  if unknown:
    raise ValueError(f"unknown variants {sorted(unknown)}; expected some of "
                     f"{known} or 'dp' (every data-parallel split)")
  for t in [config.num_frames] + list(config.memory_frames):
    if t % config.micro_batch_frames:
      raise ValueError(f"micro_batch_frames = {config.micro_batch_frames} "
                       f"must divide every clip length, got T = {t}")
    if t < config.modules:
      raise ValueError(f"clip length T = {t} < {config.modules} modules")
  for row in config.rows:
    name, replicas = variant_spec(row)
    replayed = REPLAYED.get(name, 0)
    if replayed >= config.modules:
      raise ValueError(f"variant {row} replays {replayed} modules: it needs "
                       f"more than {replayed} modules, got {config.modules} "
                       "(--num_modules)")
    if config.batch_size % replicas:
      raise ValueError(
          f"variant {row} splits every batch over {replicas} replicas, but "
          f"B = {config.batch_size} (--batch_size) is not divisible by "
          f"{replicas}; leave it out of --variants ('dp' skips such splits)")
  _validate_optimizer(config)
  _validate_online(config)


def _optimizer(config: DevicesConfig):
  """The rows' optimizer: config.optimizer at learning rate 1e-4 (the
  configs' make_optimizer, so the same names)."""
  from sideways_tf.training.builder import make_optimizer  # noqa: PLC0415
  return make_optimizer(types.SimpleNamespace(optimizer=config.optimizer,
                                              learning_rate=1e-4))


def _validate_optimizer(config: DevicesConfig) -> None:
  """A Keras optimizer name, checked here rather than in every child."""
  try:
    _optimizer(config)
  except ValueError as error:
    raise ValueError(f"--optimizer={config.optimizer!r} is not a Keras "
                     f"optimizer name (e.g. sgd, adam)") from error


def _validate_online(config: DevicesConfig) -> None:
  """update_every_ticks = U: within every clip measured, and each row's
  U-frame update something that row can do differently from the others."""
  every = config.update_every_ticks
  if every < 0:
    raise ValueError(f"--update_every_ticks must be >= 0 (0 = one optimizer "
                     f"step per clip), got {every}")
  if not every:
    return
  for t in [config.num_frames] + list(config.memory_frames):
    if every > t:
      raise ValueError(f"--update_every_ticks={every} is longer than the "
                       f"clip of T = {t} frames it would update within")
  rows = {variant_spec(row)[0] for row in config.rows}
  if rows & {"gpipe", "gpipe_remat"} and every % config.micro_batch_frames:
    raise ValueError(
        f"--update_every_ticks={every}: GPipe pipelines each update's "
        f"{every} frames as micro-batches of --micro_batch_frames="
        f"{config.micro_batch_frames} frames, which must divide it")
  if "chunked_bp" in rows and config.bp_chunk_frames >= every:
    raise ValueError(
        f"chunked_bp with --bp_chunk_frames={config.bp_chunk_frames} >= "
        f"--update_every_ticks={every} takes each update's {every} frames "
        f"as one chunk, so it would be the bp row; give --bp_chunk_frames < "
        f"{every} or leave chunked_bp out of --variants")


def run(config: DevicesConfig, report_dir, command: str = "",
        doc_path: Optional[str] = None) -> dict:
  """Runs every child, writes the report; returns the results dict.

  The throughput children of every row in `config.rounds` rounds
  (:func:`measure_rounds`), then each row's memory children once (memory
  does not drift with the machine's load as time does).
  """
  validate(config)
  report_dir = pathlib.Path(report_dir)
  report_dir.mkdir(parents=True, exist_ok=True)
  started = time.perf_counter()
  results = {
      "command": command,
      "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "config": dataclasses.asdict(config),
      "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                  "load_average_start": list(os.getloadavg())},
      "goals": devices_report.GOALS, "rows": {}}
  if config.balance == "time" and not config.stage_sizes:
    config = _balance(config, results)
  rounds = measure_rounds(config)
  for variant in config.rows:
    results["rows"][variant] = assemble_row(variant, rounds[variant],
                                            _measure_memory(config, variant))
  results["summary"] = devices_report.summarise(results)
  results["machine"]["load_average_end"] = list(os.getloadavg())
  results["seconds"] = time.perf_counter() - started
  _write_report(results, report_dir, doc_path)
  return results


def _balance(config: DevicesConfig, results: dict) -> DevicesConfig:
  """The config with the stage split of balance_by_time (its own child),
  recorded in `results`."""
  log(f"balancing {config.model} into {config.modules} stages by time")
  split = run_child("split", config)
  config = dataclasses.replace(config, stage_sizes=tuple(
      split["stage_sizes"]))
  results["split"] = split
  results["config"] = dataclasses.asdict(config)
  log(f"  layers per stage {split['stage_sizes']}, forward + backward ms "
      f"{[round(t * 1e3, 2) for t in split['stage_s']]}")
  return config


def round_order(rows: Sequence[str], round_index: int) -> List[str]:
  """The rows in the order round `round_index` (from 0) runs them: as given
  in even rounds, reversed in odd ones, so that a drift in the machine's
  load over the run reaches the first and the last rows alike."""
  return list(rows) if round_index % 2 == 0 else list(reversed(rows))


def measure_rounds(config: DevicesConfig) -> Dict[str, List[dict]]:
  """{row: one {"parallel": child, "serialised": child} per round}: each
  round runs every row's throughput children, rows in :func:`round_order`."""
  rounds = {variant: [] for variant in config.rows}
  for r in range(config.rounds):
    order = round_order(config.rows, r)
    if config.rounds > 1:
      log(f"round {r + 1} of {config.rounds}: rows in "
          f"{'reverse ' if r % 2 else ''}order")
    for variant in order:
      rounds[variant].append(_measure_throughput(config, variant))
  return rounds


def _measure_throughput(config: DevicesConfig, variant: str) -> dict:
  """One round of a row: its parallel child (with the gradient against BP
  and, without replicas, the profiled idle time) and serialised child."""
  n, replicas = config.num_devices, variant_spec(variant)[1]
  log(f"{variant}: {config.modules} stages, {n} simulated devices "
      f"(intra-op 1, inter-op {n}), B={config.batch_size} "
      f"T={config.num_frames} {config.image_size}x{config.image_size}"
      + (f", an optimizer step every {config.update_every_ticks} ticks"
         if config.update_every_ticks else ""))
  # The profiler's per-stage idle time would mix the replicas: not taken.
  measured = {"parallel": run_child(
      "throughput", config, variant=variant, inter_op=n, fidelity=True,
      profile=config.profile and replicas == 1)}
  parallel = measured["parallel"]["frames_per_s"]
  log(f"  {parallel:.1f} frames/s, cosine to BP "
      f"{measured['parallel']['cosine_to_bp']:.6f}")
  if config.serialised:
    measured["serialised"] = run_child("throughput", config, variant=variant,
                                       inter_op=1, fidelity=False,
                                       profile=False)
    serialised = measured["serialised"]["frames_per_s"]
    log(f"  serialised {serialised:.1f} frames/s: speed-up "
        f"{parallel / serialised:.2f}x")
  return measured


def _measure_memory(config: DevicesConfig, variant: str) -> dict:
  """{str(T): the memory child's figures} for every T of memory_frames."""
  memory = {}
  for t in config.memory_frames:
    memory[str(int(t))] = run_child("memory", config, variant=variant,
                                    num_frames=int(t))
    log(f"  {variant} memory T={t}: "
        f"{memory[str(int(t))]['step_mib']:.0f} MiB")
  return memory


def median_round(values: Sequence[float]) -> int:
  """The index of the median of `values`; for an even count the lower of
  the two middle ones, so the row shows a round that was measured, not an
  average of two."""
  order = sorted(range(len(values)), key=lambda i: (values[i], i))
  return order[(len(values) - 1) // 2]


def assemble_row(variant: str, rounds: List[dict], memory: dict) -> dict:
  """A row of the JSON from its rounds (:func:`measure_rounds`) and memory.

  `parallel` and `serialised` are each the round whose frames/s is the
  median over rounds (the only round when there is one), `speedup` their
  ratio; with several rounds `rounds` lists every round's frames/s and
  `median_round` which round each of the two is.
  """
  row = {"exact": EXACT[variant_spec(variant)[0]],
         "replicas": variant_spec(variant)[1]}
  frames_per_s = {kind: [measured[kind]["frames_per_s"] for measured in rounds]
                  for kind in rounds[0]}
  chosen = {kind: median_round(values)
            for kind, values in frames_per_s.items()}
  for kind, index in chosen.items():
    row[kind] = rounds[index][kind]
  if "serialised" in row:
    row["speedup"] = (row["parallel"]["frames_per_s"] /
                      row["serialised"]["frames_per_s"])
  row["memory"] = memory
  if len(rounds) > 1:
    row["rounds"] = [{kind: measured[kind]["frames_per_s"]
                      for kind in measured} for measured in rounds]
    row["median_round"] = chosen
  return row


def _write_report(results: dict, report_dir: pathlib.Path,
                  doc_path: Optional[str]) -> None:
  """simulated_devices.{json,md,png} (atomically) and the doc's block."""
  files.atomic_write_text(report_dir / "simulated_devices.json",
                          json.dumps(results, indent=2))
  text = devices_report.markdown(results)
  files.atomic_write_text(report_dir / "simulated_devices.md", text)
  try:
    devices_report.plot(results, report_dir / "simulated_devices.png")
  except Exception as error:  # pylint: disable=broad-except
    log(f"no plot: {error}")
  if doc_path:
    devices_report.update_doc(pathlib.Path(doc_path), text)
  log(f"wrote {report_dir}/simulated_devices.{{json,md,png}} in "
      f"{results['seconds']:.0f} s")


if __name__ == "__main__":
  from sideways_tf.benchmark import children  # noqa: PLC0415
  children.child_main(sys.argv, DevicesConfig, CHILDREN)
