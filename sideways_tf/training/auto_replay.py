"""``config.replay_modules = "auto"``: choose the replay from the data.

At start-up, before the first step, the model at its initial weights runs
forward (no gradient) over the first few training batches and
:func:`sideways_tf.diagnostics.lag_change` measures how much each module's
input changes over its gradient lag. The bottom modules whose lag change
exceeds the risk threshold are replayed (:func:`diagnostics.replay_for`:
up to the highest such module, at least two, every module below the top
with skips), so the run starts with its `fidelity/risk` below the
threshold; on slow data nothing is replayed and plain Sideways' speed is
kept.

The measurement uses a fresh copy of the training pipeline with the run's
seed, so its batches are the run's first batches and the training order is
untouched: the choice is deterministic given the data and the seed. It is
logged and saved in the run's ``model_info.json``; a resumed run, an
evaluation or an export reuse the saved value (the checkpoint holds the
replay buffers it implies). The measurement needs the model's cut, so a
`model.balance="time"` cut is made first and does not count the chosen
replay's extra forwards (a resumed run's saved split is reused as is).
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional, Tuple

import numpy as np
from absl import logging

from sideways_tf.training import diagnostics
from sideways_tf.engine import algorithms
from sideways_tf.engine import state

AUTO = "auto"
MEASURE_BATCHES = 4


def check(value):
  """config.replay_modules: an int >= 0, a string of digits, or "auto"."""
  if isinstance(value, str) and value.strip().isdigit():
    return int(value)
  if value == AUTO or (isinstance(value, int) and not isinstance(value, bool)
                       and value >= 0):
    return value
  raise ValueError(
      f"config.replay_modules must be a number of bottom modules to replay "
      f"(an int >= 0) or 'auto' (chosen from the data at start-up), got "
      f"{value!r}")


def known(config, saved: Optional[int] = None) -> int:
  """The replay count before any measurement: the config's int, or the
  saved choice of an "auto" run, else 0 (an "auto" run of an algorithm
  without the tick loop, BP or GPipe, never replays, so it measures
  nothing)."""
  value = check(config.replay_modules)
  if value == AUTO:
    return int(saved) if saved is not None else 0
  return value


def resolve(config, make_pipeline: Callable, training_batches,
            saved: Optional[int] = None) -> Tuple[int, Dict[str, object]]:
  """(replay count, model_info entries) for `config`.

  `make_pipeline(replay_modules)` builds the run's Pipeline;
  `training_batches()` returns a fresh training dataset (the run's first
  batches) or None when there is no data (export, evaluation: then a saved
  choice is required). The info is {} unless replay_modules is "auto".
  """
  value = check(config.replay_modules)
  if value != AUTO or not algorithms.get(config.algorithm).streams:
    return known(config, saved), {}
  if saved is not None:
    return int(saved), {"replay_modules": int(saved),
                        "replay_modules_from": "the saved choice"}
  dataset = training_batches() if training_batches is not None else None
  if dataset is None:
    raise ValueError(
        "config.replay_modules='auto' is chosen from training data when a "
        "run starts, and this workdir's model_info.json holds no choice; "
        "train first, or set config.replay_modules to a number")
  return choose(make_pipeline(0),
                (batch["video"] for batch in dataset.take(MEASURE_BATCHES)))


def choose(probe, clips) -> Tuple[int, Dict[str, object]]:
  """(replay count, model_info entries) measured with `probe` (a Pipeline
  over the run's stages, without replay) on `clips` ([B, T, ...] batches);
  logged."""
  changes = measure(probe, clips)
  count = diagnostics.replay_for(changes, probe.num_modules,
                                 diagnostics.RISK_THRESHOLD,
                                 has_skips=any(probe.skip_sources),
                                 has_batch_norm=state.has_batch_norm(
                                     probe.stages))
  moved = [m for m, v in changes.items() if v > diagnostics.RISK_THRESHOLD]
  message = (f"Replay (replay_modules=auto): lag_change per module "
             f"{ {m: round(v, 3) for m, v in changes.items()} } over "
             f"the first training batches at the initial weights; above "
             f"{diagnostics.RISK_THRESHOLD}: {moved or 'none'} -> "
             f"replay_modules={count}")
  logging.info("%s", message)
  print(message, flush=True)
  return count, {"replay_modules": count, "replay_modules_from": "auto",
                 "replay_lag_change": changes,
                 "replay_threshold": diagnostics.RISK_THRESHOLD}


def measure(pipeline, clips: Iterable) -> Dict[str, float]:
  """Each module's lag_change, averaged over the batches `clips`."""
  values = []
  for frames in clips:
    batch_size, num_frames = int(frames.shape[0]), int(frames.shape[1])
    needed = 2 * (pipeline.num_modules - 1)
    if batch_size < 2 or num_frames <= needed:
      raise ValueError(
          f"config.replay_modules='auto' measures each module's input change "
          f"over its gradient lag, which needs batches of >= 2 clips of "
          f"T > 2(L-1) = {needed} frames; got {batch_size} clips of "
          f"{num_frames} frames. Set config.replay_modules to a number.")
    values.append(diagnostics.lag_change(pipeline, frames))
  if not values:
    raise ValueError("config.replay_modules='auto': the training data "
                     "yielded no batch to measure on")
  return {m: float(np.mean([v[m] for v in values])) for m in values[0]}
