"""Replay: a module's backward step at the input its gradient belongs to.

The replay half of :class:`sideways_tf.engine.module.SidewaysModule`
(docs/engine.md, "Replay"). A replayed module keeps its last inputs (the
buffers are allocated in `buffers.py`); at every tick it takes its forward
step on the newest input as any module does, and then, for each lag of the
gradients it receives, a backward step at the input held that many ticks ago
(:meth:`ReplayMethods.replay_tick`), recomputing the stage's forward there
(:meth:`ReplayMethods.replayed_forward`).

Two things make the recomputation the forward that actually ran:

* batch norm: it runs in training mode (the held batch's own statistics, as
  the original forward used) but stateless (``keras.Layer.stateless_call``),
  so the moving averages are updated once per frame, by the original forward
  only;
* weight stashing (PipeDream), for updates inside a clip: a module with a
  ``weight_history`` replays an input held before the current call with the
  weights of the tick that held it (:meth:`ReplayMethods.weights_at_lag`).
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import tensorflow as tf

from sideways_tf.engine.skips import combine_skips
from sideways_tf.layers import temporal


class ReplayResult(NamedTuple):
  """What a replayed module produces in one tick: one backward per lag."""
  outputs: tf.Tensor
  emitted_gradients: list       # per lag in replay_lags (None for module 1)
  parameter_gradients: list     # summed over the lags
  skip_gradients: list          # per lag: one per skip input
  temporal_states: list = []    # the temporal layers' states for next tick


@contextlib.contextmanager
def mixed_precision_as_in_call(stage):
  """What keras.Layer.__call__ does around `call` and `stateless_call` does
  not, under a mixed precision policy: floating inputs cast to the compute
  dtype, float variables read in it. Without it a replayed stage that is a
  bare layer (a container's sub-layers do it in their own __call__) runs
  in float32 under mixed_bfloat16, and its gradient meets a bfloat16 one.
  Yields the input cast."""
  compute = stage.compute_dtype
  if not stage.autocast or compute == stage.variable_dtype:
    yield lambda inputs: inputs
    return
  from keras.src.backend import AutocastScope  # noqa: PLC0415  (no public one)
  with AutocastScope(compute):
    yield lambda inputs: tf.nest.map_structure(
        lambda x: tf.cast(x, compute) if x.dtype.is_floating else x, inputs)


class ReplayMethods:
  """The replay methods of :class:`SidewaysModule` (a mixin: it reads the
  module's `stage`, `replay_lags`, `skip_combine`, `temporal_layers`,
  `weight_history` and its forward step `_forward`)."""

  @property
  def replay_length(self) -> int:
    """How many past inputs a replayed module keeps (0: not replayed)."""
    return self.replay_lags[0] if self.replay_lags else 0

  def held_at_lags(self, held) -> list:
    """Per replay lag, the [input, *skip inputs] its gradient belongs to,
    read from the held histories [inputs, *skip inputs] (oldest first)."""
    return [[h[self.replay_length - lag] for h in held]
            for lag in self.replay_lags]

  def replay_tick(self, inputs, skip_inputs, backward, output_gradients,
                  training=True, chunk_tick=None, temporal_states=None,
                  backward_temporal=None, record=True) -> ReplayResult:
    """A replayed module's tick: forward at `inputs` (and `skip_inputs`,
    `temporal_states`, as :meth:`SidewaysModule.tick`); then, for each lag,
    a backward step with that lag's output gradient at the inputs it
    belongs to, `backward[i]` = [input, *skip inputs] held replay_lags[i]
    ticks ago and `backward_temporal[i]` the temporal states of that tick
    (None: zeros) (a recomputed forward per lag, see
    :meth:`replayed_forward`).

    `chunk_tick` (0-based tick within the current call) lets a module with
    a weight history replay an input held before this call with the
    weights of that tick; None (or no history) replays with the current
    weights.
    """
    if self.is_top or len(backward) != len(self.replay_lags) or len(
        output_gradients) != len(self.replay_lags):
      raise ValueError(
          f"{self.name}: replay needs a module below the top and one "
          f"(inputs, gradient) pair per lag {self.replay_lags}, got "
          f"{len(backward)} and {len(output_gradients)}")
    outputs, new_states = self._forward(
        combine_skips(inputs, list(skip_inputs), self.skip_combine), training,
        temporal_states, record)
    current = [tf.convert_to_tensor(v) for v in self.stage.trainable_variables]
    emitted, skip_grads, parameter_grads = [], [], None
    backward_temporal = backward_temporal or [None] * len(backward)
    for lag, held, old_states, gradient in zip(
        self.replay_lags, backward, backward_temporal, output_gradients):
      lag_emitted, lag_skips, grads = self._backward_at(
          held, old_states, gradient,
          self.weights_at_lag(lag, current, chunk_tick))
      emitted.append(lag_emitted)
      skip_grads.append(lag_skips)
      parameter_grads = grads if parameter_grads is None else [
          a + b for a, b in zip(parameter_grads, grads)]
    return ReplayResult(outputs, emitted, parameter_grads, skip_grads,
                        new_states)

  def _backward_at(self, held, temporal_states, output_gradient, weights):
    """One backward step at held inputs `held` = [input, *skip inputs]:
    (gradient emitted down (None for module 1), the skip inputs' gradients,
    the parameter gradients)."""
    old_input, *old_skips = held
    with tf.GradientTape() as tape:
      tape.watch([old_input] + old_skips + weights)
      replayed = self.replayed_forward(
          combine_skips(old_input, old_skips, self.skip_combine), weights,
          temporal_states)
    sources = old_skips + weights
    if not self.is_first:
      sources = [old_input] + sources
    grads = tape.gradient(replayed, sources, output_gradients=output_gradient,
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    emitted = None if self.is_first else grads.pop(0)
    return emitted, grads[:len(old_skips)], grads[len(old_skips):]

  def replayed_forward(self, inputs, weights, temporal_states=None):
    """The stage's forward at a held input, as the original forward ran it:
    in training mode, so batch norm normalises the held batch with its own
    statistics (the original forward's, given the same weights) and the
    gradient flows through them; but stateless, so the moving averages are
    not updated a second time. torchgpipe's `DeferredBatchNorm` treats
    recomputation the same way. `weights`: values of the stage's trainable
    variables (the current ones, or stashed ones).

    A warm-up input (zeros) is replayed in training mode too; the gradient
    paired with it is exactly zero, so the mode does not matter there.
    Temporal layers run from `temporal_states`, the pasts held with the
    input, with the Sideways fold of the past's gradient.
    """
    state = [tf.convert_to_tensor(v)
             for v in self.stage.non_trainable_variables]
    with temporal.stream_scope(
        None if temporal_states is None
        else dict(zip(self.temporal_layers, temporal_states)), record=False,
        fold_past_gradient=True), \
        mixed_precision_as_in_call(self.stage) as cast:
      outputs, _ = self.stage.stateless_call(weights, state, cast(inputs),
                                             training=True)
    return outputs

  # ------------------------------------------------------ weight stashing

  def weights_at_lag(self, lag: int, current: list, chunk_tick) -> list:
    """The weights the stage had when it held the input of `lag` ticks ago.

    Without a weight history, or inside the same call (the optimizer steps
    only between calls), the current ones; else the stashed ones of that
    tick (`weight_history[replay_length - lag + chunk_tick]`).
    """
    if not self.weight_history or chunk_tick is None:
      return current
    held_before_this_call = chunk_tick < lag
    index = tf.minimum(self.replay_length - lag + chunk_tick,
                       self.replay_length - 1)
    return [tf.where(held_before_this_call, tf.gather(history, index), value)
            for history, value in zip(self.weight_history, current)]

  def weight_history_updates(self, num_ticks) -> list:
    """Assignments that leave the weight history as it stands after a call
    of `num_ticks` ticks at the current weights (run once per call)."""
    updates = []
    for history, variable in zip(self.weight_history,
                                 self.stage.trainable_variables):
      fresh = tf.minimum(tf.cast(num_ticks, tf.int32), self.replay_length)
      kept = tf.convert_to_tensor(history)[fresh:]
      newest = tf.repeat(tf.convert_to_tensor(variable)[None], fresh, axis=0)
      updates.append(history.assign(tf.ensure_shape(
          tf.concat([kept, newest], 0), history.shape)))
    return updates

  def _fill_weight_history(self) -> None:
    """Every entry of the weight history holds the current weights (the
    state at allocation and at a clip boundary)."""
    for history, variable in zip(self.weight_history,
                                 self.stage.trainable_variables):
      history.assign(tf.repeat(
          tf.convert_to_tensor(variable)[None], self.replay_length, axis=0))
