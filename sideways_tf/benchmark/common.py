"""What every benchmark figure shares: the config, the goals, timing."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Dict, List, Optional, Sequence

from sideways_tf.engine import pipeline as _engine

# The algorithms these figures compare (Sideways vs BP). GPipe and
# model-parallel BP are measured by --simulate_devices (devices.py).
ALGORITHMS = ("sideways", "bp")
assert set(ALGORITHMS) <= set(_engine.ALGORITHMS)

GOALS = {
    "throughput_ratio": 1.0,          # Sideways fps / BP fps >=
    "memory_flat_ratio": 1.1,         # Sideways T=max / T=min <=
    "memory_vs_bp_ratio": 0.45,       # Sideways / BP at T=64 <=
    "placement_ratio": 1.1,           # L devices / 1 device <=
    "input_pipeline_ratio": 3.0,      # data fps / train fps >=
    "traces_per_shape": 1,            # train-step traces over the clips ==
}


@dataclasses.dataclass
class BenchmarkConfig:
  """What to benchmark. Defaults: configs/default.py's model, 64 frames."""
  model: str = "frame_cnn"
  image_size: int = 64
  channels: int = 3
  batch_size: int = 8
  num_frames: int = 64
  num_modules: int = 4
  num_classes: int = 10
  num_devices: int = 0          # placement figure: 0 = one per module
  threads: int = 2              # intra- and inter-op threads
  repeats: int = 7              # timed repetitions per algorithm
  warmup: int = 2               # untimed steps per algorithm first
  memory_frames: Sequence[int] = (16, 32, 64, 128)
  memory_steps: int = 3
  trace_clips: int = 20
  stage_repeats: int = 5
  zoo: Sequence[str] = ("frame_cnn", "vgg8", "resnet18")
  zoo_width: int = 16           # width of vgg8 / resnet18 in the zoo report
  data_batches: int = 20        # input-pipeline figure: batches timed
  mixed_precision: bool = False  # keras "mixed_bfloat16" on every stage
  profile_dir: str = ""         # "" = no profiler trace
  profile_steps: int = 2
  figures: Sequence[str] = ("throughput", "stages", "tracing", "memory",
                            "placement", "balancing", "input_pipeline",
                            "replay_cost")
  # The temporal memory figure (temporal_memory.py, only when asked for).
  temporal: str = "conv:3"      # model.temporal of its model
  temporal_memory_frames: Sequence[int] = (16, 64, 256)
  truncation: int = 16          # truncated BP's chunk; the budget's T

  def frame_shape(self):
    return (self.image_size, self.image_size, self.channels)


# Figures run only when --figures names them (they take long).
OPTIONAL_FIGURES = ("temporal_memory",)


def log(message: str) -> None:
  print(f"[benchmark {time.strftime('%H:%M:%S')}] {message}", flush=True)


def configure(config: BenchmarkConfig, num_logical_devices: int = 1):
  """Threads, logical devices and precision; call before TF runs anything."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.threading.set_intra_op_parallelism_threads(config.threads)
  tf.config.threading.set_inter_op_parallelism_threads(config.threads)
  if num_logical_devices > 1:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * num_logical_devices)
  import keras  # pylint: disable=g-import-not-at-top
  if config.mixed_precision:
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
  return tf


def build_stages(config: BenchmarkConfig, model: Optional[str] = None,
                 seed: int = 0):
  import keras  # pylint: disable=g-import-not-at-top
  from sideways_tf import models  # pylint: disable=g-import-not-at-top
  model = model or config.model
  keras.utils.set_random_seed(seed)
  kwargs = {"num_modules": config.num_modules}
  if model != "frame_cnn" and model != config.model:
    kwargs["width"] = config.zoo_width
  return models.MODELS[model](num_classes=config.num_classes, **kwargs)


def make_clip(config: BenchmarkConfig, num_frames: Optional[int] = None,
              seed: int = 0):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  num_frames = num_frames or config.num_frames
  rng = tf.random.Generator.from_seed(seed)
  frames = rng.uniform((config.batch_size, num_frames) + config.frame_shape())
  labels = rng.uniform((config.batch_size,), 0, config.num_classes, tf.int32)
  return frames, labels


def make_trainers(pipeline):
  import keras  # pylint: disable=g-import-not-at-top
  from sideways_tf import Trainer  # pylint: disable=g-import-not-at-top
  # SGD: the cheapest update, so the step time is the gradient's.
  return {a: Trainer(pipeline, keras.optimizers.SGD(1e-3), a)
          for a in ALGORITHMS}


def summarise(seconds: List[float]) -> Dict[str, float]:
  import numpy as np  # pylint: disable=g-import-not-at-top
  s = np.asarray(seconds, dtype=float)
  return {"median_s": float(np.median(s)), "min_s": float(s.min()),
          "max_s": float(s.max()), "p25_s": float(np.percentile(s, 25)),
          "p75_s": float(np.percentile(s, 75)),
          "spread": float((np.percentile(s, 75) - np.percentile(s, 25)) /
                          np.median(s)),
          "samples_s": [float(x) for x in s]}


def alternating_rates(step_fns: Dict[str, callable],
                      config: "BenchmarkConfig"):
  """Times the train steps alternating (`time_alternating`); returns the
  seconds and, per step function, `summarise` plus frames_per_s at the
  config's B x T."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  seconds = time_alternating(step_fns, config.repeats, config.warmup)
  frames_per_step = config.batch_size * config.num_frames
  return seconds, {name: dict(summarise(s), frames_per_s=frames_per_step /
                              float(np.median(s)))
                   for name, s in seconds.items()}


def time_alternating(step_fns: Dict[str, callable], repeats: int,
                     warmup: int) -> Dict[str, List[float]]:
  """Runs the step functions in turn, `repeats` rounds; seconds per call.

  The order inside a round alternates so neither side always follows the
  other.
  """
  names = list(step_fns)
  for _ in range(warmup):
    for name in names:
      step_fns[name]()
  seconds = {name: [] for name in names}
  for r in range(repeats):
    for name in (names if r % 2 == 0 else names[::-1]):
      start = time.perf_counter()
      step_fns[name]()
      seconds[name].append(time.perf_counter() - start)
  return seconds

