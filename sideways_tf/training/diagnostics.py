"""Will Sideways train as well as BP on *this* data? Diagnostics that tell early.

Sideways pairs the input module k holds at tick t (frame t-k+1) with a
gradient that started at frame t-2L+k+1: a lag of 2(L-k) frames
(docs/algorithm.md, "Frame provenance"). The approximation is good exactly
when a module's input barely changes over its lag. :func:`lag_change`
measures that directly, per module, on a batch of training clips:

    lag_change_k = E ||a_k(t) - a_k(t - 2(L-k))||^2 / E ||a_k(t) - a'_k(t)||^2

where a' is the same frame index of *another* clip of the batch. 0 means the
module sees a static input over its lag (Sideways == a rescaled BP, property
2 of the spec); 1 means that over its lag the input changes as much as it
differs between two unrelated videos. It needs no gradient, costs one
forward pass, and is defined from step 0, so it can warn before the
gradient cosines (which are dominated early by components both algorithms
share, see docs/fidelity.md) show anything.

:func:`update_cosine` compares what the optimizer would *apply*: for Adam-like
optimizers each coordinate is divided by sqrt(v), which can amplify the
coordinates where Sideways and BP disagree most.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import tensorflow as tf

from sideways_tf.engine.skips import skip_offset
from sideways_tf.layers import temporal


def module_lags(num_modules: int) -> List[int]:
  """Frames between a module's input and the frame its gradient came from."""
  return [2 * (num_modules - k) for k in range(1, num_modules + 1)]


def module_inputs(pipeline, frames) -> List[np.ndarray]:
  """The input of every module for every frame, [B, T, features], inference.

  Module 1's input is the frame itself. Skip inputs are not included: the
  measure follows each module's main input.
  """
  frames = tf.convert_to_tensor(frames)
  if frames.shape.rank is None or frames.shape.rank < 3:
    raise ValueError(
        f"frames must have shape [B, T, ...frame], got {frames.shape}")
  batch_size, num_frames = int(frames.shape[0]), int(frames.shape[1])
  x = tf.reshape(frames, [batch_size * num_frames] + frames.shape[2:].as_list())
  inputs = []
  outputs = []
  with temporal.clip_scope(num_frames):  # temporal layers: the clip's time
    for k, module in enumerate(pipeline.modules):
      inputs.append(tf.reshape(x, [batch_size, num_frames, -1]).numpy())
      skip_inputs = [_newer(outputs[j],
                            skip_offset(k, j, pipeline.skip_align),
                            batch_size, num_frames)
                     for j in module.skip_sources]
      with tf.device(pipeline.devices[k]):
        x = module.call(x, skip_inputs, training=False)
      outputs.append(x)
  return inputs


def _newer(x, steps, batch_size, num_frames):
  """Frame s gets frame s+steps of the same clip (zeros past the end)."""
  x = tf.reshape(x, [batch_size, num_frames] + x.shape[1:].as_list())
  x = tf.concat([x[:, steps:], tf.zeros_like(x[:, :steps])], axis=1)
  return tf.reshape(x, [batch_size * num_frames] + x.shape[2:].as_list())


def lag_change(pipeline, frames) -> Dict[str, float]:
  """`lag_change` of every module with a lag (all but the top), 1-based keys.

  Needs B >= 2 (another clip is the reference) and T > 2(L-1) (module 1's
  lag must fit in the clip); raises ValueError otherwise.
  """
  frames = tf.convert_to_tensor(frames)
  if frames.shape.rank is None or frames.shape.rank < 3:
    raise ValueError(
        f"frames must have shape [B, T, ...frame], got {frames.shape}")
  batch_size, num_frames = int(frames.shape[0]), int(frames.shape[1])
  lags = module_lags(pipeline.num_modules)
  if batch_size < 2:
    raise ValueError(
        f"lag_change needs at least 2 clips (another clip is the reference), "
        f"got batch size {batch_size}")
  if num_frames <= lags[0]:
    raise ValueError(
        f"lag_change needs T > 2(L-1) = {lags[0]} frames for L = "
        f"{pipeline.num_modules} modules, got T = {num_frames}")
  result = {}
  for k, (inputs, lag) in enumerate(zip(module_inputs(pipeline, frames), lags),
                                    start=1):
    if lag == 0:
      continue
    x = inputs.astype(np.float64)
    over_lag = np.mean(np.sum((x[:, lag:] - x[:, :-lag]) ** 2, axis=-1))
    between_clips = np.mean(np.sum((x - np.roll(x, 1, axis=0)) ** 2, axis=-1))
    result[f"module_{k}"] = (float(over_lag / between_clips)
                             if between_clips > 0 else 0.0)
  return result


def update_cosine(pipeline, optimizer, sideways_gradients: Sequence,
                  bp_gradients: Sequence) -> Dict[str, float]:
  """Per module: cosine of the steps the optimizer would take (1-based keys).

  For optimizers with a second-moment estimate (Adam, AdamW, Adamax,
  RMSprop...) both gradients are divided by sqrt(v) + epsilon of the running
  optimizer; otherwise this is the plain gradient cosine.
  """
  scales = _preconditioners(optimizer, pipeline.trainable_variables)
  result, start = {}, 0
  for k, stage in enumerate(pipeline.stages, start=1):
    count = len(stage.trainable_variables)
    if count == 0:
      continue
    flat = []
    for grads in (sideways_gradients, bp_gradients):
      flat.append(np.concatenate([
          np.ravel(np.asarray(g, np.float64) * s)
          for g, s in zip(grads[start:start + count],
                          scales[start:start + count])]))
    start += count
    denominator = np.linalg.norm(flat[0]) * np.linalg.norm(flat[1])
    result[f"module_{k}"] = (float(flat[0] @ flat[1] / denominator)
                             if denominator else 0.0)
  return result


def _preconditioners(optimizer, variables) -> List[np.ndarray]:
  """1 / (sqrt(v) + eps) per variable, or ones when there is no v yet."""
  second_moments = getattr(optimizer, "_velocities", None)
  epsilon = float(getattr(optimizer, "epsilon", 0.0) or 0.0)
  if not second_moments or len(second_moments) != len(variables):
    return [np.ones(v.shape) for v in variables]
  return [1.0 / (np.sqrt(np.asarray(v, np.float64)) + epsilon + 1e-30)
          for v in second_moments]


def risk(pipeline, fidelity) -> "float | None":
  """The largest lag_change of a module Sideways approximates, or None.

  Replayed modules (``Pipeline(replay_modules=N)``) take their backward step
  at the input their gradient belongs to, so their own lag does not count
  (what reaches them from a module that is not replayed still carries that
  module's lag, which its own lag_change counts).
  """
  values = [measures["lag_change"] for module, measures in fidelity.items()
            if "lag_change" in measures
            and int(module.split("_")[1]) > pipeline.replay_modules]
  return max(values) if values else None


# The risk statistic and its threshold, frozen before the out-of-sample
# cells were run (docs/fidelity.md, "Pre-registration"): a run's statistic
# is the largest `fidelity/risk` logged at a step <= RISK_WINDOW; above
# RISK_THRESHOLD the run warns (training/hooks.py) and the report counts it
# as flagged (paper_experiments/gap_report.py).
RISK_THRESHOLD = 0.4
RISK_WINDOW = 1000  # steps


def risk_statistic(logged) -> "float | None":
  """A run's risk statistic from its logged (step, fidelity/risk) pairs:
  the largest value at a step <= RISK_WINDOW, or None if there is none."""
  values = [value for step, value in logged if step <= RISK_WINDOW]
  return max(values) if values else None


# Partial replay starts at two modules (docs/fidelity.md, section 3): module
# 1's gradient is shaped by module 2's Jacobian at a newer frame, so
# replaying module 1 alone moves the mismatch instead of removing it, and two
# is the smallest replay measured at 5 seeds on the moving-digits map
# (replay_modules=2 closed most of the gap; replay_modules=1 has fewer seeds).
MIN_PARTIAL_REPLAY = 2


def replay_for(lag_changes: Dict[str, float], num_modules: int,
               threshold: float, has_skips: bool = False,
               has_batch_norm: bool = False) -> int:
  """How many bottom modules to replay so that no module Sideways still
  approximates has a lag_change above `threshold` (risk <= threshold).

  `lag_changes`: {"module_k": value} as :func:`lag_change` returns. The
  answer is the highest module k whose value exceeds the threshold (replay
  is always of the bottom modules, so every module below it too), at least
  MIN_PARTIAL_REPLAY. Every module below the top (L-1) or none where
  replaying only some trained no better than none: with Skip-Sideways skips
  (docs/skip_sideways.md), and with batch norm (VGG-8 at L = 8 with batch
  norm and replay_modules=4 collapsed to chance in 5 of 5 seeds, where 7
  matched BP; docs/fidelity.md, 4b). 0 if no module exceeds the threshold.
  """
  above = [int(name.split("_")[1]) for name, value in lag_changes.items()
           if value > threshold]
  if not above or num_modules < 2:
    return 0
  if has_skips or has_batch_norm:
    return num_modules - 1
  return min(max(max(above), MIN_PARTIAL_REPLAY), num_modules - 1)
