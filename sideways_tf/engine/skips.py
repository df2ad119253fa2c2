"""Skip-Sideways's skips: how long a skip is held and how it joins.

A skip from stage j into stage k (docs/skip_sideways.md) brings stage j's
output to stage k beside its main input. These are the rules every path of
the engine shares (the tick, clip and streaming inference, BP, the buffers):
how many ticks a skip waits (:func:`skip_delay`, one, or k-j when aligned),
which frame it then brings (:func:`skip_offset`), the buffer that holds it
(:func:`skip_buffer_shape`, :func:`read_skip`, :func:`push_skip`) and the
parameter-free join (:func:`combine_skips`).
"""

from __future__ import annotations

import tensorflow as tf


SKIP_COMBINE_MODES = ("concat", "add")


def skip_delay(target: int, source: int, align: bool) -> int:
  """Ticks between stage `source` emitting an output and stage `target`
  combining it (0-based stages).

  1 by default: the skip brings a frame target-1-source steps newer than the
  main input (what lets a model see motion). k-j when aligned: the skip is
  held k-j ticks, so both inputs come from the same frame.
  """
  return target - source if align else 1


def skip_offset(target: int, source: int, align: bool) -> int:
  """Stage `target` joins its main input of frame s with stage `source`'s
  output of frame s + skip_offset (k-1-j, or 0 when aligned)."""
  return target - source - skip_delay(target, source, align)


def read_skip(buffer, delay: int):
  """The skip input held in a skip buffer: the oldest of its `delay` outputs.

  A buffer of delay 1 is the output itself ([B, ...]); a longer one is a
  queue [B, delay, ...], oldest first.
  """
  return buffer if delay == 1 else buffer[:, 0]


def push_skip(buffer, outputs, delay: int):
  """The skip buffer for the next tick: `outputs` joins, the oldest leaves."""
  if delay == 1:
    return outputs
  return tf.concat([buffer[:, 1:], tf.expand_dims(outputs, 1)], axis=1)


def combine_skips(inputs, skip_inputs, mode: str = "concat"):
  """Skip-Sideways: joins a module's input with outputs of lower modules.

  Parameter-free, so every learnt weight stays in a stage. Skip features with
  a larger spatial size than `inputs` are average-pooled down to it (by an
  integer factor); then "concat" stacks channels and "add" sums them.
  """
  if not skip_inputs:
    return inputs
  joined = [inputs]
  for skip in skip_inputs:
    if skip.shape.rank != inputs.shape.rank:
      raise ValueError(
          f"a skip input of shape {skip.shape} cannot join a module input of "
          f"shape {inputs.shape}: ranks differ")
    if inputs.shape.rank == 4 and skip.shape[1] != inputs.shape[1]:
      factor = skip.shape[1] // inputs.shape[1]
      if factor * inputs.shape[1] != skip.shape[1] or (
          skip.shape[2] != factor * inputs.shape[2]):
        raise ValueError(
            f"skip input of spatial size {skip.shape[1:3]} is not an integer "
            f"multiple of the module input's {inputs.shape[1:3]}")
      skip = tf.nn.avg_pool2d(skip, factor, factor, "VALID")
    joined.append(tf.cast(skip, inputs.dtype))
  if mode == "concat":
    return tf.concat(joined, axis=-1)
  if mode == "add":
    if any(j.shape[-1] != inputs.shape[-1] for j in joined):
      raise ValueError(
          f"skip_combine='add' needs equal channels, got "
          f"{[j.shape[-1] for j in joined]}")
    return tf.add_n(joined)
  raise ValueError(
      f"unknown skip_combine {mode!r}; expected one of {SKIP_COMBINE_MODES}")


def skip_buffer_shape(shape, delay: int) -> tuple:
  """Shape of a skip buffer holding `delay` outputs of shape [B, ...]."""
  shape = tuple(shape)
  return shape if delay == 1 else shape[:1] + (delay,) + shape[1:]
