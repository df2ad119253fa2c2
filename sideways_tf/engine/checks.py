"""What a Pipeline checks: its constructor's arguments and every clip.

Errors name the offending value. :func:`check_arguments` validates what
``Pipeline(...)`` is given (the algorithms' own options are validated by
their table, engine/algorithms.py); :class:`InputChecks` gives the Pipeline
`prepare_inputs`, which every algorithm's clip goes through first: the clip
checked (:func:`check_clip`), the algorithm asked whether it can run it,
and the buffers it needs made (state.py).
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional

from absl import logging
import keras
import tensorflow as tf

from sideways_tf.engine import algorithms
from sideways_tf.engine.skips import SKIP_COMBINE_MODES


class PipelineArguments(NamedTuple):
  """A Pipeline's constructor arguments, validated."""
  devices: list  # one TF device (or None) per stage
  evaluation_order: Optional[list]  # a permutation of the stages, or None
  skip_sources: List[tuple]  # the Skip-Sideways sources of each stage
  skip_combine: str
  skip_align: bool
  replay_modules: int


def check_arguments(stages, loss_fn, devices, evaluation_order, skips,
                    skip_combine, skip_align,
                    replay_modules) -> PipelineArguments:
  """Every argument of ``Pipeline(...)`` but the algorithms' options,
  validated: a ValueError names the first bad one."""
  devices, evaluation_order = check_pipeline_args(stages, devices,
                                                  evaluation_order)
  if not callable(loss_fn):
    raise ValueError(f"loss_fn must be callable, got {loss_fn!r}")
  if skip_combine not in SKIP_COMBINE_MODES:
    raise ValueError(f"unknown skip_combine {skip_combine!r}; expected one "
                     f"of {SKIP_COMBINE_MODES}")
  sources = skip_sources(skips, len(stages))
  replay_modules = check_replay(replay_modules, sources)
  if not isinstance(skip_align, bool):
    raise ValueError(f"skip_align must be True or False, got {skip_align!r}")
  return PipelineArguments(devices or [None] * len(stages), evaluation_order,
                           sources, skip_combine, skip_align, replay_modules)


def check_pipeline_args(stages, devices, evaluation_order):
  """Validated `devices` and `evaluation_order` of a Pipeline (lists or None)."""
  if not stages:
    raise ValueError("stages must name at least one Keras layer, got []")
  for k, stage in enumerate(stages):
    if not isinstance(stage, keras.layers.Layer):
      raise ValueError(
          f"stages[{k}] must be a keras.layers.Layer, got {type(stage)!r}")
  if devices is not None:
    devices = list(devices)
    if len(devices) != len(stages):
      raise ValueError(
          f"devices must give one device per stage: {len(stages)} stages "
          f"but {len(devices)} devices ({devices!r})")
  if evaluation_order is not None:
    evaluation_order = [int(k) for k in evaluation_order]
    if sorted(evaluation_order) != list(range(len(stages))):
      raise ValueError(
          "evaluation_order must be a permutation of "
          f"range({len(stages)}), got {evaluation_order!r}")
  return devices, evaluation_order


def skip_sources(skips, num_modules) -> List[tuple]:
  """Validated Skip-Sideways sources of each stage: a tuple per stage."""
  sources = [()] * num_modules
  for target, from_stages in dict(skips or {}).items():
    target = int(target)
    from_stages = tuple(sorted(int(j) for j in from_stages))
    if not 0 <= target < num_modules:
      raise ValueError(f"skips: target stage {target} is not in "
                       f"[0, {num_modules})")
    for j in from_stages:
      if not 0 <= j < target - 1:
        raise ValueError(
            f"skips: stage {target} may take skips from stages 0..{target - 2}"
            f" (stage {target - 1} is its main input), got {j}")
    if len(set(from_stages)) != len(from_stages):
      raise ValueError(f"skips: repeated source in {from_stages}")
    sources[target] = from_stages
  return sources


def check_replay(replay_modules, sources) -> int:
  """Validated number of replayed modules (the bottom ones, below the top)."""
  num_modules = len(sources)
  if (isinstance(replay_modules, bool) or int(replay_modules) != replay_modules
      or not 0 <= replay_modules < num_modules):
    raise ValueError(
        f"replay_modules must be an integer in [0, L-1] = [0, "
        f"{num_modules - 1}] (the top module needs no replay), got "
        f"{replay_modules!r}")
  split = sorted({(j, k) for k in range(int(replay_modules), num_modules)
                  for j in sources[k] if j < replay_modules})
  if split:
    logging.warning(
        "replay_modules=%d replays the source but not the target of the "
        "Skip-Sideways skip(s) %s: the source pairs the skip gradient with "
        "BP's frame, the target computed it at another; on the motion label "
        "that trained worse than no replay. Use replay_modules=%d (every "
        "module below the top) or 0 (docs/skip_sideways.md).",
        replay_modules, ", ".join(f"{k}:{j}" for j, k in split),
        num_modules - 1)
  return int(replay_modules)


def check_clip(frames, labels, state_signature):
  """Frames and labels as tensors of consistent, fully known shapes."""
  frames = tf.convert_to_tensor(frames)
  labels = tf.convert_to_tensor(labels)
  if not frames.dtype.is_floating:
    raise ValueError(
        f"frames must be floating point (scale uint8 video first), got "
        f"dtype {frames.dtype.name}")
  if frames.shape.rank is None or frames.shape.rank < 3:
    raise ValueError(
        f"frames must have shape [B, T, ...frame] (rank >= 3), got shape "
        f"{frames.shape}")
  if not labels.dtype.is_integer:
    raise ValueError(
        f"labels must be integer class ids, got dtype {labels.dtype.name}")
  batch_size, num_frames = frames.shape[0], frames.shape[1]
  frame_shape = tuple(frames.shape[2:])
  if labels.shape.rank != 1 or labels.shape[0] != batch_size:
    raise ValueError(
        f"labels must have shape [B] = [{batch_size}] to match frames of "
        f"shape {frames.shape}, got labels of shape {labels.shape}")
  if num_frames is None or batch_size is None or None in frame_shape:
    raise ValueError(
        f"frames must have a fully known shape, got {frames.shape}")
  if (state_signature is not None and
      len(frame_shape) != len(state_signature[1])):
    raise ValueError(
        f"frames must have rank {2 + len(state_signature[1])} "
        f"([B, T] + frame shape {list(state_signature[1])}), got "
        f"shape {frames.shape}")
  return frames, labels


class InputChecks:
  """`prepare_inputs` of :class:`sideways_tf.Pipeline` (a mixin)."""

  def prepare_inputs(self, frames, labels, algorithm: str = "sideways",
                     reset: bool = True):
    """Validates a clip and makes sure the state exists for its shape.

    Raises ValueError naming the offending value. Returns the frames as a float
    tensor and the labels as int32.
    """
    algorithm = algorithms.get(algorithm)
    frames, labels = check_clip(frames, labels, self._state_signature)
    batch_size, num_frames = frames.shape[0], frames.shape[1]
    frame_shape = tuple(frames.shape[2:])
    if algorithm.streams:
      algorithm.validate(self, num_frames, reset)
      if num_frames < 1:
        raise ValueError("frames must hold at least one frame, got T = 0")
      self._ensure_state(batch_size, frame_shape, frames.dtype, reset,
                         algorithm.replay_modules(self.num_modules,
                                                  self.replay_modules))
      self._warn_if_modules_starve(num_frames, reset)
    else:
      if num_frames < 1:
        raise ValueError("frames must hold at least one frame, got T = 0")
      # Built first: a check of the stages' variables needs them to exist.
      self._ensure_built(frame_shape, frames.dtype)
      if self.has_temporal_layers:
        # A stream fed in chunks (reset=False, the trainer's online updates)
        # carries the temporal layers' states in the buffers.
        self._ensure_state(batch_size, frame_shape, frames.dtype, reset,
                           self.replayed_modules)
      algorithm.validate(self, num_frames, reset)
    return frames, tf.cast(labels, tf.int32)

  def _warn_if_modules_starve(self, num_frames, reset):
    """A gradient reaches module k only from tick 2L-k: say so, once."""
    starving = 2 * self.num_modules - 1 - num_frames
    if reset and starving > 0 and num_frames not in self._warned_lengths:
      self._warned_lengths.add(num_frames)
      logging.warning(
          "clips of T = %d frames with L = %d modules: module(s) 1..%d get no "
          "gradient (module k needs T >= 2L-k); use T >= 2L-1 = %d.",
          num_frames, self.num_modules, starving, 2 * self.num_modules - 1)
