"""What a Pipeline builds and allocates before the engine runs.

The probe forward pass that builds the stages and finds the buffer shapes,
the modules for a number of replayed modules (which stages replay, at which
lags) and the allocation of every module's buffers for one batch size and
frame shape. The checks of the Pipeline's arguments and of each clip are in
checks.py.
"""

from __future__ import annotations

from typing import List, NamedTuple, Sequence

from absl import logging
import keras
import tensorflow as tf

from sideways_tf.engine.module import SidewaysModule
from sideways_tf.engine.skips import skip_delay
from sideways_tf.layers import temporal


class StageShapes(NamedTuple):
  """Per-example shapes around one stage (found by a probe forward pass)."""
  input_shape: tuple
  input_dtype: tf.DType
  output_shape: tuple
  output_dtype: tf.DType
  skip_specs: list  # [(shape, dtype)] of the skip inputs, in source order
  # [(shape, dtype)] of the temporal layers' states, in the module's
  # temporal_layers order.
  temporal_specs: list = []


class FunctionCache(dict):
  """Traced functions by key. A dict subclass: tf.Module neither wraps nor
  checkpoints it (it would refuse the tuple keys)."""


def batch_norm_variables(stage) -> set:
  """ids of the moving statistics of the batch-norm layers in a stage."""
  return {id(v) for layer in stage._flatten_layers()
          if isinstance(layer, keras.layers.BatchNormalization)
          for v in layer.non_trainable_variables}


def has_batch_norm(stages) -> bool:
  """Whether any stage normalises with batch statistics (batch norm): the
  replay advice then replays every module below the top or none
  (training/diagnostics.replay_for)."""
  return any(batch_norm_variables(stage) for stage in stages)


def check_replayable(modules, replay_modules) -> None:
  """Replay recomputes a stage's forward at a held input. Batch norm's
  moving averages are fine (the recomputation is stateless and uses the
  batch statistics, as the original forward did); any other state (e.g.
  dropout's random seed) would make the recomputation differ from the
  original forward, so it is refused, naming the variables."""
  for module in modules[:replay_modules]:
    stage = module.stage
    moving = batch_norm_variables(stage)
    other = [v.path for v in stage.non_trainable_variables
             if id(v) not in moving]
    if other:
      raise ValueError(
          f"replay_modules={replay_modules}: stage {module.index} "
          f"({stage.name}) holds state other than batch-norm statistics "
          f"({', '.join(other)}; e.g. dropout's random seed), which a "
          "replayed forward cannot reproduce; remove it from the bottom "
          "modules or replay fewer modules")


def gradient_lags(sources, replay_modules, skip_align=False) -> List[tuple]:
  """Per stage, the lags of the gradients it receives, largest first.

  A lag is how many ticks before the tick that applies a gradient the stage
  held the input that gradient belongs to. An edge costs one tick down plus
  the ticks the activation took up (1 along the main path, a skip's delay),
  so a gradient that came down a path belongs to an input as many ticks back
  as the path's edges cost; the main path, 2(L-1-k), is the longest. A
  replayed stage (below `replay_modules`) keeps one gradient per distinct
  lag of the paths above it; any other stage sums what it receives, so the
  stages below pair its gradient with its main path's lag (plain replay).
  `skip_align`: aligned skips wait k-j ticks instead of one (skip_delay).
  """
  num_modules = len(sources)
  lags = [()] * num_modules
  lags[-1] = (0,)
  for k in range(num_modules - 2, -1, -1):
    if k >= replay_modules:
      lags[k] = (2 * (num_modules - 1 - k),)
      continue
    arriving = {lag + 2 for lag in lags[k + 1]}
    for m in range(k + 2, num_modules):
      if k in sources[m]:
        delay = skip_delay(m, k, skip_align)
        arriving |= {lag + 1 + delay for lag in lags[m]}
    lags[k] = tuple(sorted(arriving, reverse=True))
  return lags


def build_stages(modules, devices, frame_shape, dtype) -> List[StageShapes]:
  """Builds unbuilt stages under their devices; returns per-stage shapes.

  A forward pass of one zero frame finds the shapes (and creates the weights
  of unbuilt stages on their own devices); temporal layers run it as a clip
  of one frame.
  """
  shapes, outputs = [], []
  frame = tf.zeros((1,) + tuple(frame_shape), dtype)
  for k, (module, device) in enumerate(zip(modules, devices)):
    inputs = frame if k == 0 else outputs[k - 1]
    skip_inputs = [outputs[j] for j in module.skip_sources]
    try:
      with tf.device(device), temporal.clip_scope(1) as scope:
        outputs.append(module.call(inputs, skip_inputs, training=False))
    except Exception as error:  # Keras raises many kinds; name the shape.
      raise ValueError(
          f"stage {k} ({module.stage.name}) cannot take inputs of shape "
          f"{[None] + list(inputs.shape[1:])}"
          + (f" with skip inputs {[[None] + list(x.shape[1:]) for x in skip_inputs]}"
             if skip_inputs else "")
          + f" (from frames of shape [B, T] + {list(frame_shape)}): "
          f"{error}") from error
    shapes.append(StageShapes(
        tuple(inputs.shape[1:]), inputs.dtype, tuple(outputs[-1].shape[1:]),
        outputs[-1].dtype,
        [(tuple(x.shape[1:]), x.dtype) for x in skip_inputs],
        [(tuple(x.shape[1:]), x.dtype)
         for x in scope.new_states(module.temporal_layers)]))
  return shapes


def allocate(modules, devices, shapes, batch_size) -> None:
  """Every module's zero buffers for `batch_size`, each on its device."""
  for module, device, shape in zip(modules, devices, shapes):
    with tf.device(device):
      module.allocate_state(
          (batch_size,) + shape.input_shape, shape.input_dtype,
          (batch_size,) + shape.output_shape, shape.output_dtype,
          [((batch_size,) + s, d) for s, d in shape.skip_specs],
          [((batch_size,) + s, d) for s, d in shape.temporal_specs])


class StateMethods:
  """The stage-building and buffer methods of :class:`sideways_tf.Pipeline`
  (a mixin)."""

  # Weight stashing for replay (SidewaysModule.weight_history): off until a
  # Trainer that updates inside a clip turns it on (stash_replay_weights).
  replay_weight_stash = False

  @property
  def state_variables(self) -> list:
    """The pipeline state: every module's buffers and the tick counter."""
    return [v for m in self.modules for v in m.state_variables] + [
        self.ticks_seen]

  def build(self, frame_shape: Sequence[int], dtype=tf.float32) -> None:
    """Builds the unbuilt stages (each under its device) for frames of
    `frame_shape`, without allocating buffers. Data parallelism calls it
    under its strategy's scope, so the weights are mirrored while the
    buffers, allocated later outside it, stay each replica's own."""
    self._ensure_built(tuple(frame_shape), tf.as_dtype(dtype))

  def reset_state(self) -> None:
    """Zeroes every module's buffers and the tick count (a clip boundary)."""
    for module in self.modules:
      module.reset_state()
    self.ticks_seen.assign(0)

  def allocate_state(self, batch_size: int, frame_shape: Sequence[int],
                     dtype=tf.float32) -> None:
    """Creates the buffers for a batch size and frame shape ahead of time.

    Call it before restoring a checkpoint that holds pipeline state, so the
    state variables exist to receive their values. The buffers are those of
    the Pipeline's own ``replay_modules``.
    """
    self._ensure_state(int(batch_size), tuple(frame_shape),
                       tf.as_dtype(dtype), reset=True,
                       replay=self.replay_modules)

  def stash_replay_weights(self) -> None:
    """Weight stashing (PipeDream) for replay with online updates.

    With `Trainer(update_every_ticks=N)` the optimizer steps between chunks
    of a clip, so a held input was computed with older weights than the
    current ones. A replayed module then keeps the weights of the last
    2(L-k) ticks and replays each held input with the weights its original
    forward used, so its recomputation is the forward that actually ran.
    Replaces replayed modules: state allocated before is dropped and
    allocated afresh (zero buffers) on the next call. Without replay it only
    turns stashing on for the modules an algorithm replays later
    (``pipelined_bp`` replays L-1 whatever ``replay_modules`` says).
    """
    if self.replay_weight_stash:
      return
    self.replay_weight_stash = True
    if not self.replayed_modules:
      return  # _new_modules reads the flag when an algorithm replays
    self._state_signature = None
    self.modules = self._new_modules(self.replayed_modules)
    self._compiled.clear()

  @property
  def replayed_modules(self) -> int:
    """How many bottom modules the current buffers replay: the Pipeline's
    ``replay_modules``, or L-1 after a ``pipelined_bp`` call."""
    return sum(1 for m in self.modules if m.replay_lags)

  def _new_modules(self, replay: int) -> List[SidewaysModule]:
    num_modules = len(self.stages)
    lags = gradient_lags(self.skip_sources, replay, self.skip_align)
    return [SidewaysModule(stage, k, num_modules,
                           skip_sources=self.skip_sources[k],
                           skip_combine=self.skip_combine,
                           skip_align=self.skip_align,
                           replay_lags=lags[k] if k < replay else (),
                           gradient_lag=lags[k][0],
                           stash_weights=self.replay_weight_stash)
            for k, stage in enumerate(self.stages)]

  def _ensure_built(self, frame_shape, dtype) -> List[StageShapes]:
    """Builds unbuilt stages under their devices; returns per-stage shapes."""
    return build_stages(self.modules, self.devices, frame_shape, dtype)

  def _ensure_state(self, batch_size, frame_shape, dtype, reset,
                    replay: int) -> None:
    """Buffers for this batch size, frame shape and number of replayed
    modules (`replay`, what the streaming algorithm asks for)."""
    signature = (batch_size, tuple(frame_shape), int(replay))
    if signature == self._state_signature:
      return
    if not reset and self._state_signature is not None:
      raise ValueError(
          f"cannot continue a stream whose state was made for batch size "
          f"{self._state_signature[0]}, frame shape "
          f"{list(self._state_signature[1])} and {self._state_signature[2]} "
          f"replayed module(s) with frames of batch size {batch_size} and "
          f"frame shape {list(frame_shape)} and {replay} replayed module(s); "
          f"pass reset=True")
    shapes = self._ensure_built(frame_shape, dtype)
    check_replayable(self.modules, replay)
    if (self._state_signature is not None and
        self._state_signature[2] != replay):
      logging.warning(
          "reallocating the buffers for %d replayed module(s) (they held "
          "%d): sideways with replay_modules=%d and pipelined_bp (L-1) "
          "need different buffers, and switching retraces. To switch often, "
          "build the Pipeline with replay_modules=L-1 = %d.", replay,
          self._state_signature[2], self.replay_modules, len(self.stages) - 1)
    if self._state_signature is not None or replay != self.replayed_modules:
      # New shapes or another replay need new buffers: fresh wrappers, and
      # fresh traces that capture them.
      self.modules = self._new_modules(replay)
      self._compiled.clear()
    allocate(self.modules, self.devices, shapes, batch_size)
    self._state_signature = signature
    self.ticks_seen.assign(0)
