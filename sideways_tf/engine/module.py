"""SidewaysModule: one stage of a Sideways pipeline and the two buffers it keeps.

A module wraps any Keras layer (or stack of layers) `f_k` and owns, as
non-trainable weights, the state docs/algorithm.md calls `a_k` and `d_k`:

* ``input_buffer`` (`a_k`): what the module below emitted at the previous tick,
  i.e. the input this module consumes at the next tick. The first module reads
  the current frame instead, so it has no input buffer.
* ``gradient_buffer`` (`d_k`): the gradient with respect to this module's
  output that the module above emitted at the previous tick. The top module
  computes its own from the loss, so it has none.

Keeping them as weights (``add_weight(trainable=False)``) means
``tf.train.Checkpoint`` and ``.weights.h5`` save them, so a stream trained chunk
by chunk survives a restart. The buffers hold one frame's worth of activations
and gradients: memory does not depend on the clip length.

The tick itself is :meth:`SidewaysModule.tick`: a forward step on the given
input and a backward step with the given output gradient, the Jacobian taken at
that same input (the Sideways approximation). The buffers are read and written
by :class:`sideways_tf.Pipeline`, which runs every module's tick at once.

A replayed module (:meth:`SidewaysModule.replay_tick`) recomputes its forward
at a held input for its backward step. That recomputation is stateless
(``keras.Layer.stateless_call``): batch norm normalises with the held batch's
own statistics, as the original forward did, but the moving averages are
updated once per frame, by the original forward only.

A stage with causal temporal layers (sideways_tf/layers/temporal.py) also
has their states, one ``temporal_state_<i>`` buffer per layer (its last
inputs); a tick runs the stage on one frame with them (stream mode) and
returns the new ones, and its backward step folds the gradient with respect
to them into the current input's (docs/algorithm.md, "Temporal layers").
"""

from __future__ import annotations

import contextlib
from typing import Callable, NamedTuple, Optional, Sequence

import keras
import tensorflow as tf

from sideways_tf.layers import temporal


SKIP_COMBINE_MODES = ("concat", "add")


@contextlib.contextmanager
def _mixed_precision_as_in_call(stage):
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


class TickResult(NamedTuple):
  """What one module produces in one tick."""
  outputs: tf.Tensor            # y_k = f_k(a_k); becomes a_{k+1} next tick.
  emitted_gradient: Optional[tf.Tensor]  # e_k; becomes d_{k-1} next tick.
  parameter_gradients: list     # g_k(t), aligned with trainable_variables.
  loss: Optional[tf.Tensor]     # top module only: the (masked) summed loss.
  skip_gradients: list = []     # Skip-Sideways: one per skip input; added to
                                # the source module's d_j next tick.
  temporal_states: list = []    # the temporal layers' states for next tick.


class ReplayResult(NamedTuple):
  """What a replayed module produces in one tick: one backward per lag."""
  outputs: tf.Tensor
  emitted_gradients: list       # per lag in replay_lags (None for module 1)
  parameter_gradients: list     # summed over the lags
  skip_gradients: list          # per lag: one per skip input
  temporal_states: list = []    # the temporal layers' states for next tick


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


class SidewaysModule(keras.layers.Layer):
  """A stage of a Sideways pipeline with its input and gradient buffers.

  Args:
    stage: the Keras layer computing `f_k`.
    index: position in the pipeline, 0-based (module k of docs/algorithm.md is
      index k-1).
    num_modules: L, the number of modules in the pipeline.
  """

  def __init__(self, stage: keras.layers.Layer, index: int, num_modules: int,
               skip_sources: Sequence[int] = (), skip_combine: str = "concat",
               replay_lags: Sequence[int] = (), skip_align: bool = False,
               gradient_lag: int = 0, stash_weights: bool = False,
               **kwargs):
    kwargs.setdefault("name", f"sideways_module_{index}")
    super().__init__(**kwargs)
    if not 0 <= index < num_modules:
      raise ValueError(
          f"index must be in [0, {num_modules}), got {index}")
    self.stage = stage
    self.index = index
    self.num_modules = num_modules
    self.skip_sources = tuple(skip_sources)  # lower modules feeding this one
    self.skip_combine = skip_combine
    # Ticks each skip input is held (1, or k-j when aligned): its buffer
    # keeps that many of the source's outputs.
    self.skip_delays = tuple(skip_delay(index, j, skip_align)
                             for j in self.skip_sources)
    self.input_buffer = None
    self.gradient_buffer = None
    self.skip_buffers = []
    # Replay (docs/engine.md, "Replay"): a gradient that came down a path of
    # h edges belongs to this module's input of 2h ticks ago (its lag). A
    # replayed module keeps its last max-lag inputs (and skip inputs) and one
    # gradient buffer per distinct lag, largest (the main path's) first, and
    # takes each backward step at the inputs that gradient belongs to.
    self.replay_lags = tuple(int(lag) for lag in replay_lags)
    if list(self.replay_lags) != sorted(set(self.replay_lags), reverse=True):
      raise ValueError(f"replay_lags must be distinct and decreasing, got "
                       f"{self.replay_lags}")
    # The lag of the one gradient a module that is not replayed receives
    # (its main path's): where the modules below it pair their gradients.
    self.gradient_lags = self.replay_lags or (int(gradient_lag),)
    self.input_history = None
    self.skip_histories = []
    self.lag_gradient_buffers = []  # the lags after the first
    # Weight stashing (PipeDream), for replay with updates inside a clip
    # (Trainer's update_every_ticks): the weights of the last replay_length
    # ticks before the current call, oldest first, one per trainable
    # variable, so a held input is replayed with the weights its original
    # forward used.
    self.stash_weights = bool(stash_weights)
    self.weight_history = []
    # Causal temporal layers inside the stage: one state buffer each (and,
    # replayed, a history of them beside the input history).
    self.temporal_layers = temporal.temporal_layers(stage)
    self.temporal_buffers = []
    self.temporal_histories = []
    self._has_state = False

  @property
  def replay_length(self) -> int:
    """How many past inputs a replayed module keeps (0: not replayed)."""
    return self.replay_lags[0] if self.replay_lags else 0

  @property
  def is_first(self) -> bool:
    return self.index == 0

  @property
  def is_top(self) -> bool:
    return self.index == self.num_modules - 1

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
    if not self.is_first:
      self.input_buffer = self.add_weight(
          shape=tuple(input_shape), dtype=input_dtype, initializer="zeros",
          trainable=False, name="input_buffer")
    if not self.is_top:
      self.gradient_buffer = self.add_weight(
          shape=tuple(output_shape), dtype=output_dtype, initializer="zeros",
          trainable=False, name="gradient_buffer")
    self.skip_buffers = [
        self.add_weight(shape=skip_buffer_shape(shape, delay), dtype=dtype,
                        initializer="zeros", trainable=False,
                        name=f"skip_buffer_from_{source}")
        for source, delay, (shape, dtype) in zip(
            self.skip_sources, self.skip_delays, skip_specs)]
    if self.replay_length:
      self.input_history = self.add_weight(
          shape=(self.replay_length,) + tuple(input_shape), dtype=input_dtype,
          initializer="zeros", trainable=False, name="input_history")
      self.skip_histories = [
          self.add_weight(shape=(self.replay_length,) + tuple(shape),
                          dtype=dtype, initializer="zeros", trainable=False,
                          name=f"skip_history_from_{source}")
          for source, (shape, dtype) in zip(self.skip_sources, skip_specs)]
      self.lag_gradient_buffers = [
          self.add_weight(shape=tuple(output_shape), dtype=output_dtype,
                          initializer="zeros", trainable=False,
                          name=f"gradient_buffer_lag_{lag}")
          for lag in self.replay_lags[1:]]
      if self.stash_weights:
        self.weight_history = [
            self.add_weight(shape=(self.replay_length,) + tuple(v.shape),
                            dtype=v.dtype, initializer="zeros",
                            trainable=False, name=f"weight_history_{i}")
            for i, v in enumerate(self.stage.trainable_variables)]
    self.temporal_buffers = [
        self.add_weight(shape=tuple(shape), dtype=dtype, initializer="zeros",
                        trainable=False, name=f"temporal_state_{i}")
        for i, (shape, dtype) in enumerate(temporal_specs)]
    if self.replay_length:
      self.temporal_histories = [
          self.add_weight(shape=(self.replay_length,) + tuple(shape),
                          dtype=dtype, initializer="zeros", trainable=False,
                          name=f"temporal_history_{i}")
          for i, (shape, dtype) in enumerate(temporal_specs)]
    self._has_state = True
    self.built = True
    self._fill_weight_history()

  def reset_state(self) -> None:
    """Zeroes the buffers (the state at the start of a clip); the weight
    history holds the current weights."""
    for buffer in self.state_variables:
      buffer.assign(tf.zeros(buffer.shape, buffer.dtype))
    self._fill_weight_history()

  def _fill_weight_history(self) -> None:
    for history, variable in zip(self.weight_history,
                                 self.stage.trainable_variables):
      history.assign(tf.repeat(
          tf.convert_to_tensor(variable)[None], self.replay_length, axis=0))

  def call(self, inputs, skip_inputs=(), training=None):
    """Plain forward pass of the stage (the clip and BP paths use this)."""
    return self.stage(combine_skips(inputs, list(skip_inputs),
                                    self.skip_combine), training=training)

  def tick(self,
           inputs: tf.Tensor,
           output_gradient: Optional[tf.Tensor] = None,
           loss_of_outputs: Optional[Callable[[tf.Tensor], tf.Tensor]] = None,
           training=True, skip_inputs: Sequence[tf.Tensor] = (),
           temporal_states: Optional[Sequence[tf.Tensor]] = None,
           record=True) -> TickResult:
    """One Sideways tick of this module: forward, then backward at `inputs`.

    Exactly one of `output_gradient` (modules below the top: `d_k`, the
    gradient the module above emitted at the previous tick) and
    `loss_of_outputs` (the top module: maps its outputs to a scalar loss whose
    exact gradient is `delta_L`) must be given.

    `training` may be a Python bool or a scalar bool tensor. A tensor selects
    between the stage in training and in inference mode at run time; the
    pipeline passes `False` during warm-up ticks, when the module holds zeros
    rather than a frame, so that normalisation layers don't fold those zeros
    into their moving statistics.

    `skip_inputs` (Skip-Sideways) are the outputs of `skip_sources` held
    since the previous tick; the Jacobian is taken at them too, and their
    gradients come back in `skip_gradients`.

    `temporal_states` (one per temporal layer; None: zeros) are the
    temporal layers' pasts; the Jacobian is taken at them too, with the
    gradient w.r.t. the past folded into the current input's, and the new
    states come back in `temporal_states` (this frame recorded only where
    `record`, a bool or a bool tensor: False while the module holds
    warm-up zeros).
    """
    if (output_gradient is None) == (loss_of_outputs is None):
      raise ValueError(
          "tick needs exactly one of output_gradient and loss_of_outputs")
    variables = self.stage.trainable_variables
    skip_inputs = list(skip_inputs)
    with tf.GradientTape() as tape:
      tape.watch([inputs] + skip_inputs)
      outputs, new_states = self._forward(
          combine_skips(inputs, skip_inputs, self.skip_combine), training,
          temporal_states, record)
      loss = loss_of_outputs(outputs) if loss_of_outputs is not None else None
    # The first module's input is a frame: nobody needs its gradient, so we
    # don't pay for the backward-data pass.
    sources = skip_inputs + list(variables)
    if not self.is_first:
      sources = [inputs] + sources
    if loss is not None:
      grads = tape.gradient(
          loss, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    else:
      grads = tape.gradient(
          outputs, sources, output_gradients=output_gradient,
          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    emitted = None if self.is_first else grads.pop(0)
    skip_grads = grads[:len(skip_inputs)]
    parameter_grads = grads[len(skip_inputs):]
    return TickResult(outputs, emitted, list(parameter_grads), loss,
                      list(skip_grads), new_states)

  def held_at_lags(self, held) -> list:
    """Per replay lag, the [input, *skip inputs] its gradient belongs to,
    read from the held histories [inputs, *skip inputs] (oldest first)."""
    return [[h[self.replay_length - lag] for h in held]
            for lag in self.replay_lags]

  def replay_tick(self, inputs, skip_inputs, backward, output_gradients,
                  training=True, chunk_tick=None, temporal_states=None,
                  backward_temporal=None, record=True) -> ReplayResult:
    """A replayed module's tick: forward at `inputs` (and `skip_inputs`,
    `temporal_states`, as :meth:`tick`); then, for each lag, a backward
    step with that lag's output gradient at the inputs it belongs to,
    `backward[i]` = [input, *skip inputs] held replay_lags[i] ticks ago and
    `backward_temporal[i]` the temporal states of that tick (None: zeros)
    (a recomputed forward per lag, see :meth:`replayed_forward`).

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
    skip_inputs = list(skip_inputs)
    outputs, new_states = self._forward(
        combine_skips(inputs, skip_inputs, self.skip_combine), training,
        temporal_states, record)
    current = [tf.convert_to_tensor(v) for v in self.stage.trainable_variables]
    emitted, skip_grads, parameter_grads = [], [], None
    backward_temporal = backward_temporal or [None] * len(backward)
    for lag, (old_input, *old_skips), old_states, gradient in zip(
        self.replay_lags, backward, backward_temporal, output_gradients):
      weights = self.weights_at_lag(lag, current, chunk_tick)
      with tf.GradientTape() as tape:
        tape.watch([old_input] + old_skips + weights)
        replayed = self.replayed_forward(
            combine_skips(old_input, old_skips, self.skip_combine), weights,
            old_states)
      sources = old_skips + weights
      if not self.is_first:
        sources = [old_input] + sources
      grads = tape.gradient(replayed, sources, output_gradients=gradient,
                            unconnected_gradients=tf.UnconnectedGradients.ZERO)
      emitted.append(None if self.is_first else grads.pop(0))
      skip_grads.append(grads[:len(old_skips)])
      grads = grads[len(old_skips):]
      parameter_grads = grads if parameter_grads is None else [
          a + b for a, b in zip(parameter_grads, grads)]
    return ReplayResult(outputs, emitted, parameter_grads, skip_grads,
                        new_states)

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
        _mixed_precision_as_in_call(self.stage) as cast:
      outputs, _ = self.stage.stateless_call(weights, state, cast(inputs),
                                             training=True)
    return outputs

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

  def _forward(self, inputs, training, temporal_states=None, record=True):
    """One frame through the stage: (outputs, new temporal states).

    The temporal layers run in stream mode with the Sideways backward (the
    past's gradient folded into the present). A batch-norm stage under a
    tensor `training` runs in a tf.cond whose branches each open their own
    scope and return the states, so no tensor leaves a branch unreturned.
    """
    given = (None if temporal_states is None
             else dict(zip(self.temporal_layers, temporal_states)))

    def run(mode):
      with temporal.stream_scope(given, record,
                                 fold_past_gradient=True) as scope:
        outputs = self.stage(inputs, training=mode)
      return outputs, scope.new_states(self.temporal_layers)

    if isinstance(training, bool) or not _has_moving_statistics(self.stage):
      # Only layers with non-trainable state (batch norm) care about the
      # warm-up mask; everything else takes the cheap path.
      return run(bool(training) if isinstance(training, bool) else True)
    return tf.cond(training, lambda: run(True), lambda: run(False))


def _has_moving_statistics(layer: keras.layers.Layer) -> bool:
  return bool(layer.non_trainable_variables)
