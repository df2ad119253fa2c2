"""Inference on a Pipeline's modules: whole clips and streams, no gradients.

* :func:`frame_logits`: every frame through all modules, time folded into the
  batch (no pipeline); what evaluation and the SavedModel's clip signature run.
* :func:`stream_tick`: one tick of the pipelined forward pass, state in and
  out; what the SavedModel's streaming signature runs.
"""

from __future__ import annotations

from typing import List

import tensorflow as tf

from sideways_tf.engine.skips import push_skip
from sideways_tf.engine.skips import read_skip
from sideways_tf.engine.skips import skip_buffer_shape
from sideways_tf.engine.skips import skip_offset
from sideways_tf.layers import temporal


def receptive_depth(skip_sources: List[tuple], align: bool = False) -> int:
  """How many frames past frame s the prediction for frame s looks (D).

  0 for plain Sideways. A skip from stage j into stage k brings a frame
  k-1-j steps newer than k's main input (0 when aligned), so D is the
  longest such path.
  """
  depth = [0] * len(skip_sources)
  for k in range(1, len(skip_sources)):
    depth[k] = max([depth[k - 1]] + [depth[j] + skip_offset(k, j, align)
                                     for j in skip_sources[k]])
  return depth[-1]


def frame_logits(pipe, frames, training=False) -> tf.Tensor:
  """Graph-building clip path: every frame through all modules. [B, T, C].

  Time is folded into the batch, no pipeline. With Skip-Sideways, frame s
  also sees frames s+1..s+D (receptive_depth) exactly as the pipelined
  stream does; frames past the clip's end are zero frames, as when a stream
  is flushed with zero padding frames.
  """
  num_frames = tf.shape(frames)[1]
  return sequence_outputs(pipe, frames, pipe.receptive_depth,
                          training)[:, :num_frames]


def sequence_outputs(pipe, frames, pad: int, training,
                     temporal_states=None) -> tf.Tensor:
  """Top outputs for every frame of `frames` + `pad` zero frames.

  The output of frame s is exact where s + D <= T + pad; later ones saw
  frames past the end (zeros). Temporal layers run in clip mode from a zero
  past, or from `temporal_states` ({layer: state}).
  """
  outputs, _ = sequence_outputs_and_states(pipe, frames, pad, training,
                                           temporal_states)
  return outputs


def sequence_outputs_and_states(pipe, frames, pad: int, training,
                                temporal_states=None):
  """:func:`sequence_outputs` and the temporal layers' states it leaves,
  one list per module (the clip's last inputs of each layer)."""
  if pad:
    frames = tf.concat([frames, tf.zeros_like(frames[:, :pad])], axis=1)
  shape = tf.shape(frames)
  batch_size, num_frames = shape[0], shape[1]

  def unfold(x):  # [B*T, ...] -> [B, T, ...]
    return tf.reshape(x, tf.concat([[batch_size, num_frames],
                                    tf.shape(x)[1:]], axis=0))

  def fold(x):
    return tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], axis=0))

  def newer(x, steps):  # frame s gets frame s+steps (zeros past the end)
    if not steps:
      return x
    x = unfold(x)
    return fold(tf.concat([x[:, steps:], tf.zeros_like(x[:, :steps])], 1))

  outputs = []
  with temporal.clip_scope(num_frames, temporal_states) as scope:
    for k, (module, device) in enumerate(zip(pipe.modules, pipe.devices)):
      with tf.device(device), tf.name_scope(f"stage_{k}"):
        inputs = fold(frames) if k == 0 else outputs[k - 1]
        skip_inputs = [newer(outputs[j], skip_offset(k, j, pipe.skip_align))
                       for j in module.skip_sources]
        outputs.append(module.call(inputs, skip_inputs, training=training))
  return unfold(outputs[-1]), [scope.new_states(m.temporal_layers)
                               for m in pipe.modules]


def stream_state_specs(pipe, shapes):
  """[(name, shape without batch, dtype)] of the streaming state.

  activation_k: the input held by module k = 2..L; skip_k_from_j: the
  Skip-Sideways input module k holds from module j (1-based, as in
  docs/algorithm.md; with `skip_align` a queue [delay, ...] of them, oldest
  first); temporal_k_i: the state of the i-th causal temporal layer of
  module k (its last inputs, oldest first). `shapes` come from the
  pipeline's probe pass.
  """
  specs = [(f"activation_{k + 1}", shape.input_shape, shape.input_dtype)
           for k, shape in enumerate(shapes) if k > 0]
  for k, (module, shape) in enumerate(zip(pipe.modules, shapes)):
    specs.extend(
        (f"skip_{k + 1}_from_{j + 1}",
         skip_buffer_shape((None,) + s, delay)[1:], d)
        for j, delay, (s, d) in zip(module.skip_sources, module.skip_delays,
                                    shape.skip_specs))
  for k, shape in enumerate(shapes):
    specs.extend((f"temporal_{k + 1}_{i + 1}", s, d)
                 for i, (s, d) in enumerate(shape.temporal_specs))
  return specs


def _split(values, sizes):
  parts = []
  for size in sizes:
    parts.append(list(values[:size]))
    values = values[size:]
  return parts


def stream_tick(pipe, frame, state, ticks=None):
  """Streaming inference: one tick of the pipelined forward pass alone.

  `state` is a list ordered as :func:`stream_state_specs` (zeros at the
  start of a stream). Every module steps at once on what it holds; returns
  the top module's output, which belongs to frame t-L+1, and the next
  state. Stages run in inference mode. `ticks` (a scalar or [B]: frames
  fed before this one) is needed with temporal layers: module k records
  its input in their states only once it holds a real frame (ticks >= k-1,
  1-based), as in training.
  """
  num_inputs = pipe.num_modules - 1
  inputs = list(state[:num_inputs])
  skip_inputs = _split(state[num_inputs:],
                       [len(m.skip_sources) for m in pipe.modules])
  num_skips = sum(len(m.skip_sources) for m in pipe.modules)
  temporal_states = _split(state[num_inputs + num_skips:],
                           [len(m.temporal_layers) for m in pipe.modules])
  if any(m.temporal_layers for m in pipe.modules) and ticks is None:
    raise ValueError("stream_tick of a model with temporal layers needs "
                     "`ticks` (frames fed before this one)")
  outputs, new_temporal = [], []
  for k, (module, device) in enumerate(zip(pipe.modules, pipe.devices)):
    if len(temporal_states[k]) != len(module.temporal_layers):
      raise ValueError(
          f"stream_tick: module {k + 1} has {len(module.temporal_layers)} "
          f"temporal layer(s) but the state holds "
          f"{len(temporal_states[k])} temporal state(s) for it; order the "
          f"state as stream_state_specs")
    given = dict(zip(module.temporal_layers, temporal_states[k]))
    record = True if ticks is None else tf.convert_to_tensor(ticks) >= k
    with tf.device(device), tf.name_scope(f"stage_{k}"), \
        temporal.stream_scope(given, record) as scope:
      outputs.append(module.call(
          frame if k == 0 else inputs[k - 1],
          [read_skip(b, delay) for b, delay in zip(skip_inputs[k],
                                                   module.skip_delays)],
          training=False))
    new_temporal += scope.new_states(module.temporal_layers)
  new_state = outputs[:-1]
  for module, buffers in zip(pipe.modules, skip_inputs):
    buffers = buffers + [None] * (len(module.skip_sources) - len(buffers))
    new_state += [push_skip(b, outputs[j], delay) for b, j, delay in zip(
        buffers, module.skip_sources, module.skip_delays)]
  return outputs[-1], new_state + new_temporal


class InferenceMethods:
  """The inference methods of :class:`sideways_tf.Pipeline`."""

  @property
  def receptive_depth(self) -> int:
    """How many frames past frame s the prediction for frame s looks (D)."""
    return receptive_depth(self.skip_sources, self.skip_align)

  def predict_frames(self, frames) -> tf.Tensor:
    """Clip inference: every frame through all modules. Returns [B, T, C]."""
    frames = tf.convert_to_tensor(frames)
    if frames.shape.rank is None or frames.shape.rank < 3:
      raise ValueError(
          f"frames must have shape [B, T, ...frame], got {frames.shape}")
    self._ensure_built(tuple(frames.shape[2:]), frames.dtype)
    if "predict" not in self._compiled:
      self._compiled["predict"] = tf.function(self.frame_logits,
                                              autograph=False)
    return self._compiled["predict"](frames)

  def frame_logits(self, frames, training=False) -> tf.Tensor:
    """Graph-building clip path; see :func:`frame_logits`."""
    return frame_logits(self, frames, training)

  def stream_state_specs(self, frame_shape, dtype=tf.float32):
    """[(name, shape without batch, dtype)]; see :func:`stream_state_specs`."""
    return stream_state_specs(
        self, self._ensure_built(tuple(frame_shape), dtype))

  def stream_tick(self, frame, state, ticks=None):
    """Streaming inference, one tick; see :func:`stream_tick`."""
    return stream_tick(self, frame, state, ticks)
