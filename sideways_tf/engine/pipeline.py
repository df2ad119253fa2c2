"""`Pipeline`: a video model cut into modules, and the one entry point to
every algorithm that computes its gradient.

`Pipeline` holds the modules (engine/module.py) and their buffers
(engine/state.py), validates its arguments and every clip
(engine/checks.py), looks the algorithm up in the table of
engine/algorithms.py and caches the traced functions. The algorithms are one
module each, below this file: the Sideways tick engine (engine/sideways.py;
the spec is docs/algorithm.md), the BP baseline (engine/bp.py) and GPipe
(engine/gpipe.py). Each returns the *clip gradient* (docs/algorithm.md,
"Per-clip gradient and update") aligned with
:attr:`Pipeline.trainable_variables`. The trainer, the tests and the
benchmarks all call them through this class; there is no other
implementation. Clip and streaming inference are in engine/inference.py.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import keras
import tensorflow as tf

from sideways_tf.engine import algorithms
from sideways_tf.engine import checks
from sideways_tf.engine import inference
from sideways_tf.engine import state as state_lib
from sideways_tf.engine.algorithm import ClipResult
from sideways_tf.engine.algorithm import LossFn
from sideways_tf.engine.algorithm import sparse_softmax_cross_entropy
from sideways_tf.engine.algorithms import ALGORITHMS

# Public here as before the algorithms moved to their own modules.
__all__ = ["ALGORITHMS", "ClipResult", "Pipeline",
           "sparse_softmax_cross_entropy"]


class Pipeline(checks.InputChecks, inference.InferenceMethods,
               state_lib.StateMethods, tf.Module):
  """A video model cut into modules, trainable with Sideways or with BP.

  Clip and streaming inference (`predict_frames`, `stream_tick`, ...) come
  from `inference.py`, building the stages and their buffers (`build`,
  `allocate_state`, `reset_state`, `state_variables`) from `state.py`, the
  checks every clip goes through first (`prepare_inputs`) from `checks.py`.

  Args:
    stages: Keras layers, one per Sideways module, in order; the last one emits
      logits. Stages that are already built keep their weights; unbuilt ones
      are built (under their device) on the first call.
    loss_fn: ``loss_fn(labels, logits) -> [B]`` per-example loss.
    devices: ``None`` for default placement, or one TF device string per
      stage (e.g. ``["/GPU:0", "/GPU:1"]``).
    evaluation_order: for testing the double buffering only. A permutation of
      ``range(L)``; the stages of a tick are then evaluated strictly in that
      order (chained with control dependencies) instead of concurrently.
      Results must not change.
    skips: Skip-Sideways (docs/skip_sideways.md). ``{k: [j, ...]}`` with
      0-based stage indices, ``j < k - 1``: stage k also receives what stage j
      emitted at the previous tick, a frame k-1-j steps newer than its main
      input. ``None``/``{}`` is plain Sideways.
    skip_combine: how a stage joins its skip inputs: "concat" (channels) or
      "add"; larger skip feature maps are average-pooled to the input size.
    skip_align: hold each skip k-j ticks instead of one, so that stage k
      joins stage j's output of the *same* frame as its main input (a
      frame-wise model: it cannot see motion). Default False.
    replay_modules: Sideways only (docs/engine.md, "Replay"). The bottom
      `replay_modules` modules keep their last 2(L-k) inputs and take their
      backward step at the input their gradient belongs to (one extra forward
      of each such module per tick; with skips, one per path lag): exact
      given the gradient that arrives from above. 0 = plain Sideways; L-1 =
      the exact gradient of the frames whose gradient reaches every module
      within the clip (along every path, with skips).
      ``algorithm="pipelined_bp"`` is the tick engine with L-1 whatever this
      says: a ``reset=True`` call with it reallocates the buffers for L-1
      (and a Sideways call after it back), so build the Pipeline with L-1 to
      switch between the two.
    **algorithm_options: the options the algorithms of engine/algorithms.py
      add, by name: today GPipe's ``gpipe_micro_batch_frames`` (frames per
      micro-batch, default 1) and ``gpipe_rematerialize`` (default False),
      see engine/gpipe.py; BP's ``bp_chunk_frames`` (0 = the whole clip at
      once, N = chunks of N frames), see engine/bp.py. A name no algorithm
      knows is a TypeError.
  """

  def __init__(self,
               stages: Sequence[keras.layers.Layer],
               loss_fn: LossFn = sparse_softmax_cross_entropy,
               devices: Optional[Sequence[Optional[str]]] = None,
               evaluation_order: Optional[Sequence[int]] = None,
               skips: Optional[Dict[int, Sequence[int]]] = None,
               skip_combine: str = "concat",
               skip_align: bool = False,
               replay_modules: int = 0,
               name: str = "pipeline",
               **algorithm_options):
    super().__init__(name=name)
    stages = list(stages)
    self._algorithm_kwargs = dict(algorithm_options)  # for with_devices
    arguments = checks.check_arguments(stages, loss_fn, devices,
                                       evaluation_order, skips, skip_combine,
                                       skip_align, replay_modules)
    self.skip_sources = arguments.skip_sources
    self.replay_modules = arguments.replay_modules
    self.skip_combine = arguments.skip_combine
    self.skip_align = arguments.skip_align
    # {algorithm name: its validated options}, e.g. ["gpipe"] GPipeOptions.
    self.algorithm_options = algorithms.make_options(algorithm_options)
    self.stages = stages
    self.loss_fn = loss_fn
    self.devices = arguments.devices
    self.evaluation_order = arguments.evaluation_order
    self.modules = self._new_modules(self.replay_modules)
    with tf.device(self.devices[0]):
      # Global tick count since the last reset: the validity masks depend on
      # it, so a stream fed in chunks masks exactly as if fed whole.
      self.ticks_seen = tf.Variable(
          0, dtype=tf.int64, trainable=False, name="ticks_seen")
    # (batch_size, frame_shape, replayed modules) of the buffers
    self._state_signature = None
    self._compiled = state_lib.FunctionCache()
    self.trace_count = 0
    self._warned_lengths = set()

  @property
  def num_modules(self) -> int:
    return len(self.stages)

  @property
  def trainable_variables(self) -> list:
    """Every trainable variable of every stage, stage by stage, in order."""
    return [v for stage in self.stages for v in stage.trainable_variables]

  @property
  def has_temporal_layers(self) -> bool:
    """Whether any stage holds a causal temporal layer."""
    return any(m.temporal_layers for m in self.modules)

  def with_devices(self, devices: Optional[Sequence[Optional[str]]]
                   ) -> "Pipeline":
    """The same stages (the same weights) and options on other devices, with
    buffers of its own: one replica of data parallelism
    (training/data_parallel.py), which streams its own clips."""
    return Pipeline(
        self.stages, self.loss_fn, devices=devices,
        evaluation_order=self.evaluation_order,
        skips={k: list(s) for k, s in enumerate(self.skip_sources) if s},
        skip_combine=self.skip_combine, skip_align=self.skip_align,
        replay_modules=self.replay_modules, name=self.name,
        **self._algorithm_kwargs)

  def compute_gradients(self, frames, labels, algorithm: str = "sideways",
                        reset: bool = True) -> List[tf.Tensor]:
    """The clip gradient of docs/algorithm.md, aligned with trainable_variables.

    Args:
      frames: ``[B, T, ...]`` batch-major clip.
      labels: ``[B]`` integer clip labels.
      algorithm: a name of ``sideways_tf.ALGORITHMS`` (engine/algorithms.py):
        ``"sideways"``, ``"bp"``, ``"gpipe"`` (BP's exact gradient,
        pipelined over the stages), ``"pipelined_bp"`` (the tick engine with
        every module below the top replayed), ...
      reset: ``True`` (default) starts a clip from zero buffers. ``False``
        continues the stream from the buffers left by the previous call
        (chunked streaming). The tick engine (``sideways``,
        ``pipelined_bp``): the returned gradient is then the sum of this
        chunk's per-tick gradients over its own valid loss terms, zero if it
        has none. BP with temporal layers: the chunk starts from the
        temporal states the previous chunk left, the gradient stopped there
        (truncated BP through time); BP ignores it otherwise.

    Applies nothing.
    """
    return self.compute_gradients_and_metrics(
        frames, labels, algorithm=algorithm, reset=reset).gradients

  def compute_gradients_and_metrics(self, frames, labels,
                                    algorithm: str = "sideways",
                                    reset: bool = True) -> ClipResult:
    """Like :meth:`compute_gradients`, with the loss and accuracy as well."""
    frames, labels = self.prepare_inputs(frames, labels, algorithm, reset)
    key = (algorithm, bool(reset))
    if key not in self._compiled:
      self._compiled[key] = tf.function(
          lambda f, l: self.clip_gradients(f, l, algorithm, reset),
          autograph=False)
    return ClipResult(*self._compiled[key](frames, labels))

  def clip_gradients(self, frames, labels, algorithm: str,
                     reset: bool = True, loss_scale=None) -> ClipResult:
    """Graph-building entry point (call inside ``tf.function``).

    Inputs must have gone through :meth:`prepare_inputs` first. The trainer
    calls this inside its own ``tf.function`` so that the optimizer step fuses
    with the gradient computation.

    `loss_scale` (a float32 scalar, for float16 stages) multiplies the loss
    where it is differentiated, so the gradients flowing through the modules
    stay clear of float16 underflow; the returned gradients and loss are
    divided by it again (so they are unscaled, but may be Inf/NaN on
    overflow: the caller checks).
    """
    self.trace_count += 1
    scale = (tf.constant(1.0, tf.float32) if loss_scale is None
             else tf.cast(loss_scale, tf.float32))
    return algorithms.get(algorithm).clip_gradients(self, frames, labels,
                                                    reset, scale)

  @property
  def gpipe_options(self):
    """GPipe's options (``algorithm_options["gpipe"]``; kept for callers)."""
    return self.algorithm_options["gpipe"]

  def stage_tick_seconds(self, frames, labels, repeats: int = 5,
                         ticks_per_call: int = 16) -> List[float]:
    """Median wall time of one tick of each module, each run on its own.

    See :func:`sideways_tf.engine.stage_timing.stage_tick_seconds`.
    """
    from sideways_tf.engine import stage_timing  # only profiling needs it
    return stage_timing.stage_tick_seconds(self, frames, labels, repeats,
                                           ticks_per_call)
