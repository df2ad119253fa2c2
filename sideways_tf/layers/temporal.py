"""Causal temporal layers: frames that see their past, in clips and in streams.

Every model of the zoo is per-frame; these layers let a stage mix each frame
with the frames before it (never after: they are causal, so a stream can run
them one frame at a time):

* :class:`CausalTemporalConv`: a convolution over the last K frames of its
  input (MoViNet's causal temporal convolution; after a spatial conv, the
  "(2+1)D" pair), depthwise by default.
* :class:`TemporalShift`: online TSM: a fraction of the channels is replaced
  by the same channels of the previous frame; no weights.

One set of weights, two modes, the same numbers (tested: stream == clip):

* clip mode, ``with clip_scope(num_frames=T):``: the layer's input holds the
  frames of B clips with time folded into the batch, ``[B*T, ...]``
  batch-major (as the engine's BP, GPipe and clip inference pass them); the
  past before the first frame is zero.
* stream mode, ``with stream_scope(states):``: the input is one frame per
  clip, ``[B, ...]``, and the layer's *state* (its last `memory` inputs,
  ``[B, memory, ...]``, oldest first) comes in and goes out explicitly.

Why a scope rather than a layer argument: a temporal layer sits anywhere
inside a stage (a keras.Sequential, a residual block), where only one
tensor flows. The engine opens a scope around a stage call; the scope hands
each temporal layer its state and collects the new one (like flax's mutable
collections). Inside the engine's ``tf.while_loop`` the states are loop
variables; between calls they live in non-trainable variables of the
module that holds the stage, like the module's other buffers. Called outside
any scope (Keras tracing a stage for a SavedModel, a user calling a stage
on a batch of frames), a temporal layer cannot know where time is: it
treats each input as a first frame (zero past), and says so with a warning
when that happens eagerly.

The Sideways rule for the gradient with respect to the buffered past
(docs/algorithm.md, "Temporal layers") is the scope's
``fold_past_gradient``: in a training tick the past inputs are treated as
copies of the current one in the backward pass, so the gradient with
respect to them joins the current input's.
"""

from __future__ import annotations

import threading
from typing import Dict, List, Optional, Sequence

from absl import logging
import keras
import tensorflow as tf

_LOCAL = threading.local()


def _scopes() -> list:
  if not hasattr(_LOCAL, "stack"):
    _LOCAL.stack = []
  return _LOCAL.stack


def current_scope() -> Optional["TemporalScope"]:
  """The innermost open scope of this thread, or None."""
  stack = _scopes()
  return stack[-1] if stack else None


class TemporalScope:
  """Where time is for the temporal layers called inside it.

  Args:
    num_frames: T, frames per clip in the folded ``[B*T, ...]`` inputs (1 in
      stream mode).
    states: ``{layer: [B, memory, ...]}`` the past each layer starts from;
      a layer missing here starts from zeros (the start of a stream).
    record: whether the frames go into the new states: True, False, or a
      bool tensor of shape ``[]`` or ``[B]``. The engine passes False while a
      module holds warm-up zeros rather than a frame, so those never enter
      the past of the first real frame (stream == clip).
    fold_past_gradient: the Sideways backward (one frame, ``num_frames=1``):
      the gradient with respect to the past inputs is added to the current
      input's; the values are unchanged.
  """

  def __init__(self, num_frames, states=None, record=True,
               fold_past_gradient: bool = False):
    if fold_past_gradient and not (isinstance(num_frames, int)
                                   and num_frames == 1):
      raise ValueError("fold_past_gradient is the rule of a one-frame tick; "
                       f"got num_frames={num_frames!r}")
    self.num_frames = num_frames
    self.record = record
    self.fold_past_gradient = fold_past_gradient
    self._given = {id(layer): (layer, s) for layer, s in
                   dict(states or {}).items()}
    self._new: Dict[int, tuple] = {}

  def __enter__(self) -> "TemporalScope":
    _scopes().append(self)
    return self

  def __exit__(self, *exc) -> None:
    _scopes().pop()

  def new_state(self, layer: "TemporalLayer"):
    """The state `layer` left (its last `memory` inputs, oldest first)."""
    if id(layer) not in self._new:
      raise ValueError(
          f"temporal layer {layer.name} was not called inside this scope")
    return self._new[id(layer)][1]

  def new_states(self, layers: Sequence["TemporalLayer"]) -> list:
    return [self.new_state(layer) for layer in layers]

  def run(self, layer: "TemporalLayer", inputs):
    """Applies `layer` to folded frames: [B*T, ...] -> [B*T, ...out]."""
    if id(layer) in self._new:
      raise ValueError(
          f"temporal layer {layer.name} was called twice in one scope; a "
          "temporal layer keeps one past, so it cannot be shared")
    frames = _unfold(inputs, self.num_frames)
    kept = layer.kept(frames)
    if id(layer) in self._given:
      past = tf.cast(self._given[id(layer)][1], kept.dtype)
    else:
      past = tf.zeros(tf.concat([tf.shape(kept)[:1], [layer.memory],
                                 tf.shape(kept)[2:]], 0), kept.dtype)
    used_past = past
    if self.fold_past_gradient:
      # Value: the past, exactly (x - stop(x) is 0). Gradient: what reaches
      # the past reaches the current frame's kept part.
      used_past = tf.stop_gradient(past) + (kept - tf.stop_gradient(kept))
    outputs = layer.mix(used_past, frames)
    _, new_state = _split_last(tf.concat([past, kept], axis=1), layer.memory)
    if self.record is not True:
      new_state = _where_recorded(self.record, new_state, past)
    self._new[id(layer)] = (layer, new_state)
    return _fold(outputs)


def _split_last(window, count):
  """(all but the last `count` frames, the last `count`) of [B, n, ...].

  tf.split, not a strided slice: on CPU the gradient of a strided slice
  along time is an order of magnitude slower than the convolution itself.
  """
  return tf.split(window, [-1, count], axis=1)


def _unfold(inputs, num_frames):
  """[B*T, ...] (batch-major) -> [B, T, ...]."""
  shape = tf.shape(inputs)
  return tf.reshape(inputs, tf.concat([[-1, num_frames], shape[1:]], 0))


def _fold(frames):
  shape = tf.shape(frames)
  return tf.reshape(frames, tf.concat([[-1], shape[2:]], 0))


def _where_recorded(record, new_state, past):
  record = tf.convert_to_tensor(record, tf.bool)
  if record.shape.rank == 1:  # per clip: [B] -> [B, 1, ..., 1]
    record = tf.reshape(record, tf.concat(
        [tf.shape(record), tf.ones([new_state.shape.rank - 1], tf.int32)],
        0))
  return tf.where(record, new_state, past)


def clip_scope(num_frames, states=None) -> TemporalScope:
  """Clip mode: inputs are ``[B*T, ...]`` with T = `num_frames`."""
  return TemporalScope(num_frames, states)


def stream_scope(states=None, record=True,
                 fold_past_gradient: bool = False) -> TemporalScope:
  """Stream mode: inputs are one frame per clip, ``[B, ...]``."""
  return TemporalScope(1, states, record, fold_past_gradient)


class TemporalLayer(keras.layers.Layer):
  """A layer whose output for frame t depends on its inputs of frames
  t-memory..t. Subclasses define `memory`, `kept` and `mix`."""

  memory: int = 1

  def kept(self, frames):
    """The part of each input frame the state keeps: [B, T, ...kept]."""
    return frames

  def mix(self, past, frames):
    """Outputs [B, T, ...] from the kept past [B, memory, ...] and the
    frames [B, T, ...]. Every temporal layer defines its own."""
    raise TypeError(f"{type(self).__name__} is a TemporalLayer without its "
                    "own mix(past, frames): subclasses define how the kept "
                    "past and the new frames make the outputs")

  def call(self, inputs):
    scope = current_scope()
    if scope is None:
      if tf.executing_eagerly() and not getattr(self, "_warned", False):
        self._warned = True
        logging.warning(
            "%s %s mixes frames over time but was called outside a temporal "
            "scope: each input counts as a first frame (zero past). Run it "
            "through sideways_tf.Pipeline or SidewaysModel, or inside "
            "sideways_tf.layers.clip_scope(num_frames) ([B*T, ...] inputs) "
            "or stream_scope(states) (one frame per clip).",
            type(self).__name__, self.name)
      scope = TemporalScope(1)
    return scope.run(self, inputs)

  def state_shape(self, frame_shape) -> tuple:
    """The state's shape without the batch, for frames of `frame_shape`."""
    return (self.memory,) + tuple(frame_shape)


def temporal_layers(layer: keras.layers.Layer) -> List[TemporalLayer]:
  """Every temporal layer inside `layer` (itself included), in a fixed order.

  The order is Keras' layer tracking order, the same for every call, so
  the engine can keep one state buffer per position.
  """
  return [l for l in layer._flatten_layers(include_self=True, recursive=True)  # pylint: disable=protected-access
          if isinstance(l, TemporalLayer)]


def _current_frame_kernel(kernel_size: int):
  """The initializer that starts a temporal conv as the identity in time:
  the current frame's tap is 1 (or the identity matrix), the past's 0, so a
  temporal variant of a frame model starts out computing the frame model."""
  def initializer(shape, dtype=None):
    taps = [tf.zeros(shape[1:], dtype)] * (kernel_size - 1)
    if len(shape) == 2:
      current = tf.ones(shape[1:], dtype)
    else:
      current = tf.eye(shape[1], shape[2], dtype=dtype)
    return tf.stack(taps + [current], 0)
  return initializer


@keras.saving.register_keras_serializable(package="sideways_tf")
class CausalTemporalConv(TemporalLayer):
  """A causal convolution over time: frame t sees its inputs of t-K+1..t.

  ``y_t = b + sum_i W_i x_{t-K+1+i}`` on the channel (last) axis, every
  spatial position alike (the temporal half of a (2+1)D convolution).
  Depthwise (``filters=None``, the default, as MoViNet's streaming
  blocks): ``W_i`` is a per-channel scale, ``[K, C]``. ``filters=F``: a full
  convolution, ``W_i`` is ``[C, F]``. The state holds the last K-1 inputs.

  Args:
    kernel_size: K >= 2 frames.
    filters: None (depthwise) or the output channels of a full conv.
    use_bias: add a per-channel bias.
    kernel_initializer: default "current_frame": the current frame's tap is
      the identity (ones, or the identity matrix when F = C) and the past
      taps are zero, so the layer starts as a no-op in time; a full conv
      with F != C falls back to glorot_uniform.
  """

  def __init__(self, kernel_size: int, filters: Optional[int] = None,
               use_bias: bool = True, kernel_initializer="current_frame",
               **kwargs):
    super().__init__(**kwargs)
    if isinstance(kernel_size, bool) or int(kernel_size) != kernel_size or (
        kernel_size < 2):
      raise ValueError(f"CausalTemporalConv kernel_size must be an integer "
                       f">= 2 (frames), got {kernel_size!r}")
    if filters is not None and (int(filters) != filters or filters < 1):
      raise ValueError(f"CausalTemporalConv filters must be None (depthwise) "
                       f"or a positive integer, got {filters!r}")
    self.kernel_size = int(kernel_size)
    self.filters = None if filters is None else int(filters)
    self.use_bias = bool(use_bias)
    self.kernel_initializer = kernel_initializer
    self.memory = self.kernel_size - 1

  def build(self, input_shape):
    channels = int(input_shape[-1])
    shape = ((self.kernel_size, channels) if self.filters is None else
             (self.kernel_size, channels, self.filters))
    initializer = self.kernel_initializer
    if initializer == "current_frame":
      initializer = (_current_frame_kernel(self.kernel_size)
                     if self.filters in (None, channels)
                     else "glorot_uniform")
    self.kernel = self.add_weight(name="kernel", shape=shape,
                                  initializer=initializer)
    self.bias = (self.add_weight(name="bias", shape=shape[-1:],
                                 initializer="zeros")
                 if self.use_bias else None)

  def mix(self, past, frames):
    """A 2D convolution with time as height and the spatial positions as
    width ([B, M+T, S, C] -> [B, T, S, F], "VALID"): one fast op, where K
    shifted slices of the frames would be slow to differentiate."""
    shape = tf.shape(frames)
    channels = frames.shape[-1]

    def flat(x, length):
      return tf.reshape(x, tf.stack([shape[0], length, -1, channels]))
    window = tf.concat([flat(past, self.memory), flat(frames, shape[1])], 1)
    kernel = tf.cast(self.kernel, frames.dtype)
    if self.filters is None:
      outputs = tf.nn.depthwise_conv2d(window, kernel[:, None, :, None],
                                       [1, 1, 1, 1], "VALID")
    else:
      outputs = tf.nn.conv2d(window, kernel[:, None], 1, "VALID")
    if self.bias is not None:
      outputs += tf.cast(self.bias, frames.dtype)
    return tf.reshape(outputs, tf.concat(
        [shape[:-1], tf.shape(outputs)[-1:]], 0))

  def compute_output_shape(self, input_shape):
    input_shape = tuple(input_shape)
    return input_shape if self.filters is None else (
        input_shape[:-1] + (self.filters,))

  def get_config(self):
    config = super().get_config()
    initializer = self.kernel_initializer
    config.update(kernel_size=self.kernel_size, filters=self.filters,
                  use_bias=self.use_bias,
                  kernel_initializer=initializer if isinstance(
                      initializer, str) else keras.initializers.serialize(
                          keras.initializers.get(initializer)))
    return config


@keras.saving.register_keras_serializable(package="sideways_tf")
class TemporalShift(TemporalLayer):
  """Online temporal shift (TSM, Lin et al. 2019, the uni-directional
  variant): the first ``round(fraction * C)`` channels of frame t are those
  of frame t-1 (zero before the first frame), the rest are frame t's own.
  No weights; the state is the previous frame's shifted channels.

  Args:
    fraction: share of the channels that come from the previous frame
      (TSM's default 1/8); at least one channel.
  """

  memory = 1

  def __init__(self, fraction: float = 0.125, **kwargs):
    super().__init__(**kwargs)
    if not 0 < float(fraction) <= 1:
      raise ValueError(f"TemporalShift fraction must be in (0, 1], got "
                       f"{fraction!r}")
    self.fraction = float(fraction)
    self.shifted = None

  def build(self, input_shape):
    self.shifted = max(1, int(round(self.fraction * int(input_shape[-1]))))

  def _parts(self, frames):
    """(the shifted channels, the rest), split rather than sliced (fast to
    differentiate on CPU)."""
    channels = frames.shape[-1]
    if self.shifted >= channels:
      return frames, None
    return tf.split(frames, [self.shifted, channels - self.shifted], -1)

  def kept(self, frames):
    return self._parts(frames)[0]

  def mix(self, past, frames):
    kept, rest = self._parts(frames)
    previous, _ = _split_last(tf.concat([past, kept], axis=1), 1)
    return previous if rest is None else tf.concat([previous, rest], -1)

  def state_shape(self, frame_shape) -> tuple:
    frame_shape = tuple(frame_shape)
    return (1,) + frame_shape[:-1] + (self.shifted,)

  def compute_output_shape(self, input_shape):
    return tuple(input_shape)

  def get_config(self):
    config = super().get_config()
    config.update(fraction=self.fraction)
    return config
