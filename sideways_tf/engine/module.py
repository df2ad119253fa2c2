"""SidewaysModule: one stage of a Sideways pipeline, its buffers and its tick.

A module wraps any Keras layer (or stack of layers) `f_k` and owns, as
non-trainable weights, the state docs/algorithm.md calls `a_k` and `d_k`:

* ``input_buffer`` (`a_k`): what the module below emitted at the previous tick,
  i.e. the input this module consumes at the next tick. The first module reads
  the current frame instead, so it has no input buffer.
* ``gradient_buffer`` (`d_k`): the gradient with respect to this module's
  output that the module above emitted at the previous tick. The top module
  computes its own from the loss, so it has none.

The tick itself is :meth:`SidewaysModule.tick`: a forward step on the given
input and a backward step with the given output gradient, the Jacobian taken at
that same input (the Sideways approximation). The buffers are read and written
by :class:`sideways_tf.Pipeline`, which runs every module's tick at once.

The class is read in three files: this one (the settings, the tick and the
forward step it shares with replay), `buffers.py` (every buffer, replay's
and the temporal layers' included: allocation and reset) and `replay.py`
(:meth:`SidewaysModule.replay_tick`, a replayed module's backward at a held
input, with batch norm's stateless recomputation and weight stashing).
The skips' rules (delays, the join) are in `skips.py`.

A stage with causal temporal layers (sideways_tf/layers/temporal.py) also
has their states, one ``temporal_state_<i>`` buffer per layer (its last
inputs); a tick runs the stage on one frame with them (stream mode) and
returns the new ones, and its backward step folds the gradient with respect
to them into the current input's (docs/algorithm.md, "Temporal layers").
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import keras
import tensorflow as tf

from sideways_tf.engine.buffers import ModuleBuffers
from sideways_tf.engine.replay import ReplayMethods
from sideways_tf.engine.replay import ReplayResult
from sideways_tf.engine.skips import combine_skips
from sideways_tf.engine.skips import skip_delay
from sideways_tf.layers import temporal

# Where they were before the module's pieces moved to their own files.
__all__ = ["ReplayResult", "SidewaysModule", "TickResult", "combine_skips"]


class TickResult(NamedTuple):
  """What one module produces in one tick."""
  outputs: tf.Tensor            # y_k = f_k(a_k); becomes a_{k+1} next tick.
  emitted_gradient: Optional[tf.Tensor]  # e_k; becomes d_{k-1} next tick.
  parameter_gradients: list     # g_k(t), aligned with trainable_variables.
  loss: Optional[tf.Tensor]     # top module only: the (masked) summed loss.
  skip_gradients: list = []     # Skip-Sideways: one per skip input; added to
                                # the source module's d_j next tick.
  temporal_states: list = []    # the temporal layers' states for next tick.


class SidewaysModule(ModuleBuffers, ReplayMethods, keras.layers.Layer):
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
  def is_first(self) -> bool:
    return self.index == 0

  @property
  def is_top(self) -> bool:
    return self.index == self.num_modules - 1

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
