"""How exact a gradient is: against BP run in float64 on the same weights.

float32 BP is not an exact reference at benchmark sizes: a conv bias's
gradient sums B*T*H*W float32 terms, so float32 BP and GPipe (which sums the
same terms in another order) differ by float32 rounding. ``float64_stages``
copies the stages into float64 (same layers, same weights), and
``float64_bp_gradients`` runs BP through the same engine
(``Pipeline.compute_gradients``) on them and a float64 copy of the clip;
``max_relative_difference`` is the figure the benchmark and the tests use.
The engine averages the per-frame losses in float32, so the reference's
1/N scale is rounded to float32 (about 3e-8 relative; tests/test_gpipe.py
checks it against the NumPy float64 BP), far below the 1e-5 it resolves.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def float64_stages(stages: Sequence, frame_shape) -> list:
  """float64 copies of Keras `stages` (built first if need be: their
  weights are created then), with the same weights."""
  copies, shape = [], tuple(frame_shape)
  for stage in stages:
    if not stage.built:
      stage.build((None,) + shape)
    copy = stage.__class__.from_config(_as_float64(stage.get_config()))
    if not copy.built:  # a Sequential with an input shape builds itself
      copy.build((None,) + shape)
    copy.set_weights([np.asarray(w, np.float64) for w in stage.get_weights()])
    if len(copy.weights) != len(stage.weights):
      raise ValueError(f"float64 copy of {stage.name} has other weights")
    shape = tuple(copy.compute_output_shape((None,) + shape)[1:])
    copies.append(copy)
  return copies


def _as_float64(config):
  """A layer config with every dtype policy set to float64."""
  if isinstance(config, dict):
    return {key: ("float64" if key == "dtype" else _as_float64(value))
            for key, value in config.items()}
  if isinstance(config, list):
    return [_as_float64(value) for value in config]
  return config


def float64_bp_gradients(stages: Sequence, frames, labels) -> list:
  """BP's clip gradient in float64 on `stages`' weights and the clip."""
  import sideways_tf  # pylint: disable=g-import-not-at-top
  frames = np.asarray(frames, np.float64)
  copies = float64_stages(stages, frames.shape[2:])
  gradients = sideways_tf.Pipeline(copies).compute_gradients(
      frames, np.asarray(labels), "bp")
  return [np.asarray(g, np.float64) for g in gradients]


def max_relative_difference(actual: Sequence, expected: Sequence) -> float:
  """max over variables of max |a - e| / max |e|."""
  return float(max(
      np.abs(np.asarray(a, np.float64) - np.asarray(e, np.float64)).max() /
      np.abs(np.asarray(e, np.float64)).max()
      for a, e in zip(actual, expected)))
