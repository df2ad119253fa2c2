"""The buffers one SidewaysModule owns, as non-trainable Keras weights.

The state half of :class:`sideways_tf.engine.module.SidewaysModule`: every
buffer is made by ``add_weight(trainable=False)`` so that
``tf.train.Checkpoint`` and ``.weights.h5`` keep it, and a stream trained
chunk by chunk survives a restart. Each holds one frame's worth (or, for
replay, a fixed number of frames' worth) whatever the clip length:

* the tick's: ``input_buffer`` (`a_k`, not for module 1), ``gradient_buffer``
  (`d_k`, not for the top), one ``skip_buffer_from_<j>`` per Skip-Sideways
  skip (a queue of its delay's outputs when aligned);
* replay's (docs/engine.md, "Replay"): ``input_history`` and
  ``skip_history_from_<j>`` (the last replay_length inputs),
  ``gradient_buffer_lag_<n>`` (one per extra lag) and, with weight stashing,
  ``weight_history_<i>`` (one per trainable variable);
* the causal temporal layers': ``temporal_state_<i>`` (and, replayed,
  ``temporal_history_<i>`` beside the input history).

The order the weights are created in is the order ``.weights.h5`` files
store them: keep it.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from sideways_tf.engine.skips import skip_buffer_shape


class ModuleBuffers:
  """The buffer methods of :class:`SidewaysModule` (a mixin of a Keras
  layer: it calls `add_weight` and reads the module's skip, replay and
  temporal settings)."""

  @property
  def state_variables(self) -> list:
    """The buffers this module owns (input, gradient, skips, replay,
    temporal states)."""
    return [v for v in (self.input_buffer, self.gradient_buffer)
            if v is not None] + list(self.skip_buffers) + (
                [self.input_history] if self.input_history is not None
                else []) + list(self.skip_histories) + list(
                    self.lag_gradient_buffers) + list(self.weight_history) + (
                        list(self.temporal_buffers)
                        + list(self.temporal_histories))

  def allocate_state(self, input_shape: Sequence[int], input_dtype,
                     output_shape: Sequence[int], output_dtype,
                     skip_specs: Sequence = (),
                     temporal_specs: Sequence = ()) -> None:
    """Creates the zero-initialised buffers for a fixed batch and frame shape.

    `skip_specs`: (shape, dtype) of each skip input, in skip_sources order
    (with batch); a skip held for more than one tick keeps a queue
    [B, delay, ...] of them. `temporal_specs`: (shape, dtype) of each
    temporal layer's state (with batch), in `temporal_layers` order.
    """
    if self._has_state:
      raise RuntimeError(
          f"{self.name} already has state; create a new module to change its "
          "shape")
    self._allocate_tick_buffers(input_shape, input_dtype, output_shape,
                                output_dtype, skip_specs)
    if self.replay_length:
      self._allocate_replay_buffers(input_shape, input_dtype, output_shape,
                                    output_dtype, skip_specs)
    self._allocate_temporal_buffers(temporal_specs)
    self._has_state = True
    self.built = True
    self._fill_weight_history()

  def reset_state(self) -> None:
    """Zeroes the buffers (the state at the start of a clip); the weight
    history holds the current weights."""
    for buffer in self.state_variables:
      buffer.assign(tf.zeros(buffer.shape, buffer.dtype))
    self._fill_weight_history()

  def _zeros(self, shape, dtype, name):
    """A zero-initialised buffer: a non-trainable weight of this module."""
    return self.add_weight(shape=tuple(shape), dtype=dtype,
                           initializer="zeros", trainable=False, name=name)

  def _allocate_tick_buffers(self, input_shape, input_dtype, output_shape,
                             output_dtype, skip_specs) -> None:
    """a_k, d_k and the skip buffers: what one tick reads."""
    if not self.is_first:
      self.input_buffer = self._zeros(input_shape, input_dtype, "input_buffer")
    if not self.is_top:
      self.gradient_buffer = self._zeros(output_shape, output_dtype,
                                         "gradient_buffer")
    self.skip_buffers = [
        self._zeros(skip_buffer_shape(shape, delay), dtype,
                    f"skip_buffer_from_{source}")
        for source, delay, (shape, dtype) in zip(
            self.skip_sources, self.skip_delays, skip_specs)]

  def _allocate_replay_buffers(self, input_shape, input_dtype, output_shape,
                               output_dtype, skip_specs) -> None:
    """The held inputs, one gradient buffer per extra lag and, when
    stashing, the weight history."""
    held = (self.replay_length,)
    self.input_history = self._zeros(held + tuple(input_shape), input_dtype,
                                     "input_history")
    self.skip_histories = [
        self._zeros(held + tuple(shape), dtype, f"skip_history_from_{source}")
        for source, (shape, dtype) in zip(self.skip_sources, skip_specs)]
    self.lag_gradient_buffers = [
        self._zeros(output_shape, output_dtype, f"gradient_buffer_lag_{lag}")
        for lag in self.replay_lags[1:]]
    if self.stash_weights:
      self.weight_history = [
          self._zeros(held + tuple(v.shape), v.dtype, f"weight_history_{i}")
          for i, v in enumerate(self.stage.trainable_variables)]

  def _allocate_temporal_buffers(self, temporal_specs) -> None:
    """One state per temporal layer and, replayed, its history."""
    self.temporal_buffers = [
        self._zeros(shape, dtype, f"temporal_state_{i}")
        for i, (shape, dtype) in enumerate(temporal_specs)]
    if self.replay_length:
      self.temporal_histories = [
          self._zeros((self.replay_length,) + tuple(shape), dtype,
                      f"temporal_history_{i}")
          for i, (shape, dtype) in enumerate(temporal_specs)]
