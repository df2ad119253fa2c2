"""The Sideways tick engine and the backprop baseline: where gradients are made.

Read top to bottom (the spec is docs/algorithm.md):

* :func:`sideways_clip` runs the ticks of a clip inside one ``tf.while_loop``
  whose loop state is one :class:`TickState`. Every tick (:func:`tick`), each
  module k does a forward step on the input it holds (`a_k`; module 1 reads
  frame t) and a backward step with the gradient it holds (`d_k`; the top
  module differentiates the loss of tick t). All modules read the buffers as
  they stood after tick t-1 and their results only become the next tick's
  buffers, so within a tick the modules are independent and, placed on
  distinct devices, run at once. After the loop the buffers are written back
  (:func:`write_back`) and the sums normalised into the clip gradient
  (:func:`normalise`).
* :func:`bp_clip` is standard backprop on the same modules and loss, with time
  folded into the batch.
* :class:`Pipeline` holds the modules, validates inputs and caches the traced
  functions; clip and streaming inference are in `inference.py`, the buffers'
  allocation in `state.py`.

Both return the *clip gradient* (docs/algorithm.md, "Per-clip gradient and
update") aligned with :attr:`Pipeline.trainable_variables`. The trainer, the
tests and the benchmarks all call them; there is no other implementation.
(GPipe, the exact pipelined baseline, is in `gpipe.py`.) The file is a little
over 400 lines on purpose: the tick, the baseline it is tested against and the
class that dispatches between them read best as one piece.
"""

from __future__ import annotations

from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import keras
from absl import logging
import tensorflow as tf

from sideways_tf.engine import gpipe
from sideways_tf.engine import inference
from sideways_tf.engine import state as state_lib
from sideways_tf.engine.module import SKIP_COMBINE_MODES
from sideways_tf.engine.module import push_skip
from sideways_tf.engine.module import read_skip

ALGORITHMS = ("sideways", "bp", "gpipe")

LossFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


class ClipResult(NamedTuple):
  """Clip gradient plus what the trainer logs about the same forward passes."""
  gradients: List[tf.Tensor]  # aligned with Pipeline.trainable_variables
  loss: tf.Tensor             # mean per-example loss over the valid loss terms
  accuracy: tf.Tensor         # fraction of valid loss terms classified right
  num_loss_terms: tf.Tensor   # B * (number of ticks/frames with a valid loss)


def sparse_softmax_cross_entropy(labels, logits):
  """The default loss: per-example cross-entropy from logits, shape [B]."""
  return tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=tf.cast(labels, tf.int32), logits=logits)


# ------------------------------------------------------------ the tick engine


class TickState(NamedTuple):
  """The loop state of the tick loop: the buffers and the running sums.

  `inputs[k]` is a_k of module k+2 (module 1 reads the frame), `grads[k]` is
  d_k of module k+1 (the top module has the loss) as a list: one gradient,
  or with replay one per lag (`module.gradient_lags`); `skips[k]` the
  Skip-Sideways inputs of module k+1 (usually none); `accumulators[k]` sums
  module k+1's parameter gradients over the ticks.
  """
  t: tf.Tensor
  inputs: list
  grads: list
  skips: list
  accumulators: list
  loss_sum: tf.Tensor
  correct_sum: tf.Tensor
  valid_ticks: tf.Tensor
  # Replay: [inputs, *skip inputs] of modules 1..replay_modules, each the
  # last 2(L-k) of them, oldest first.
  histories: list


def sideways_clip(pipe: "Pipeline", frames, labels, reset: bool,
                  loss_scale) -> ClipResult:
  """All ticks of one clip (or one chunk of a stream) in a tf.while_loop.

  The buffers become loop variables: read once before the loop, written once
  after it. Inside the loop no stage touches a variable that another stage
  writes, so nothing serialises the stages of a tick.
  """
  modules = pipe.modules
  num_ticks = tf.shape(frames)[1]
  read = tf.zeros_like if reset else tf.convert_to_tensor
  zero = tf.constant(0.0, tf.float32)
  start = TickState(
      t=tf.constant(0),
      inputs=[read(m.input_buffer) for m in modules[1:]],
      grads=[[read(b) for b in [m.gradient_buffer] + m.lag_gradient_buffers]
             for m in modules[:-1]],
      skips=[[read(b) for b in m.skip_buffers] for m in modules],
      accumulators=[[tf.zeros_like(v) for v in m.stage.trainable_variables]
                    for m in modules],
      loss_sum=zero, correct_sum=zero, valid_ticks=zero,
      histories=[[read(h) for h in [m.input_history] + m.skip_histories]
                 for m in modules[:pipe.replay_modules]])
  ticks_before = (tf.constant(0, tf.int64) if reset
                  else pipe.ticks_seen.read_value())
  end, = tf.while_loop(
      lambda s: s.t < num_ticks,
      lambda s: (tick(pipe, s, frames, labels, ticks_before, loss_scale),),
      (start,))
  updates = write_back(pipe, end, num_ticks, reset)
  with tf.control_dependencies(updates):
    return normalise(pipe, end, tf.shape(frames)[0], loss_scale)


def tick(pipe: "Pipeline", s: TickState, frames, labels, ticks_before,
         loss_scale) -> TickState:
  """One clock tick: every module's forward and backward step at once."""
  modules, devices = pipe.modules, pipe.devices
  # 1-based global tick: module k (1-based) holds a real frame iff tick >= k,
  # and the top's loss is real iff tick >= L.
  global_tick = ticks_before + tf.cast(s.t, tf.int64) + 1
  loss_mask = tf.cast(global_tick >= pipe.num_modules, tf.float32)

  def masked_loss(logits):
    per_example = tf.cast(pipe.loss_fn(labels, logits), tf.float32)
    return tf.reduce_sum(per_example) * (loss_mask * loss_scale)

  results = [None] * pipe.num_modules
  histories = list(s.histories)
  after = []  # control inputs; only non-empty to force a test order
  for k in pipe.evaluation_order or range(pipe.num_modules):
    module = modules[k]
    with tf.device(devices[k]), tf.name_scope(f"stage_{k}"), \
        tf.control_dependencies(after):
      module_input = (tf.gather(frames, s.t, axis=1) if k == 0
                      else s.inputs[k - 1])
      skip_inputs = [read_skip(b, delay) for b, delay in zip(
          s.skips[k], module.skip_delays)]
      if k < pipe.replay_modules:
        # The gradient of lag n belongs to the inputs held n ticks ago.
        held = s.histories[k]
        results[k] = module.replay_tick(
            module_input, skip_inputs, module.held_at_lags(held), s.grads[k],
            training=global_tick >= k + 1)
        histories[k] = [tf.concat([h[1:], x[None]], 0) for h, x in zip(
            held, [module_input] + skip_inputs)]
      else:
        results[k] = module.tick(
            module_input,
            output_gradient=None if module.is_top else s.grads[k][0],
            loss_of_outputs=masked_loss if module.is_top else None,
            training=global_tick >= k + 1, skip_inputs=skip_inputs)
      accumulators = [acc + g for acc, g in zip(
          s.accumulators[k], results[k].parameter_gradients)]
      results[k] = (results[k], accumulators)
    if pipe.evaluation_order is not None:
      after = [results[k][0].outputs] + list(results[k][0].parameter_gradients)

  top = results[-1][0]
  correct = tf.cast(tf.equal(
      tf.argmax(top.outputs, axis=-1, output_type=tf.int32), labels),
                    tf.float32)
  return TickState(
      s.t + 1, *_route(pipe, [r for r, _ in results], s.skips),
      [acc for _, acc in results],
      s.loss_sum + top.loss,
      s.correct_sum + tf.reduce_sum(correct) * loss_mask,
      s.valid_ticks + loss_mask, histories)


def _route(pipe: "Pipeline", results, skip_buffers) -> tuple:
  """The next tick's buffers from this tick's results (double buffering).

  a_{k+1} <- y_k; d_{k-1} <- e_k, plus e_{k->j} for every skip from j into k;
  y_j joins every skip buffer of a skip from j (its oldest entry leaves).
  A replayed module j keeps the gradients of each lag apart (a gradient of
  lag n from module k reaches j with lag n + 2, or n + 1 + the skip's delay).
  """
  modules = pipe.modules
  outputs = [r.outputs for r in results]
  arriving = [[[] for _ in m.gradient_lags] for m in modules]

  def send(j, lag, gradient):
    slot = modules[j].gradient_lags.index(lag) if modules[j].replay_lags else 0
    arriving[j][slot].append(gradient)

  for module, result in zip(modules, results):
    if module.replay_lags:
      parts = zip(module.replay_lags, result.emitted_gradients,
                  result.skip_gradients)
    else:
      parts = [(module.gradient_lags[0], result.emitted_gradient,
                result.skip_gradients)]
    for lag, emitted, skip_gradients in parts:
      if not module.is_first:
        send(module.index - 1, lag + 2, emitted)
      for j, delay, gradient in zip(module.skip_sources, module.skip_delays,
                                    skip_gradients):
        send(j, lag + 1 + delay, gradient)
  grads = []
  for j, slots in enumerate(arriving[:-1]):
    with tf.device(pipe.devices[j]):
      grads.append([g[0] if len(g) == 1 else tf.add_n(g) for g in slots])
  skips = [[push_skip(buffer, outputs[j], delay) for buffer, j, delay in zip(
      buffers, m.skip_sources, m.skip_delays)]
           for m, buffers in zip(modules, skip_buffers)]
  return outputs[:-1], grads, skips


def write_back(pipe: "Pipeline", s: TickState, num_ticks, reset) -> list:
  """Leaves the buffers and the tick count for the next chunk of the stream."""
  modules, devices = pipe.modules, pipe.devices
  updates = [pipe.ticks_seen.assign_add(tf.cast(num_ticks, tf.int64))
             if not reset else
             pipe.ticks_seen.assign(tf.cast(num_ticks, tf.int64))]
  for k in range(pipe.num_modules - 1):
    with tf.device(devices[k + 1]):
      updates.append(modules[k + 1].input_buffer.assign(s.inputs[k]))
    with tf.device(devices[k]):
      updates.extend(b.assign(g) for b, g in zip(
          [modules[k].gradient_buffer] + modules[k].lag_gradient_buffers,
          s.grads[k]))
  for k, module in enumerate(modules):
    with tf.device(devices[k]):
      updates.extend(b.assign(v) for b, v in zip(module.skip_buffers,
                                                 s.skips[k]))
  for k, held in enumerate(s.histories):
    with tf.device(devices[k]):
      updates.extend(h.assign(v) for h, v in zip(
          [modules[k].input_history] + modules[k].skip_histories, held))
  return updates


def normalise(pipe: "Pipeline", s: TickState, batch_size,
              loss_scale) -> ClipResult:
  """Clip gradient: the sums divided by B * (number of ticks with a loss)."""
  num_terms = s.valid_ticks * tf.cast(batch_size, tf.float32)
  gradients = []
  for k, accs in enumerate(s.accumulators):
    with tf.device(pipe.devices[k]):
      gradients.extend(
          tf.math.divide_no_nan(acc, tf.cast(num_terms * loss_scale,
                                             acc.dtype))
          for acc in accs)
  return ClipResult(gradients,
                    tf.math.divide_no_nan(s.loss_sum, num_terms * loss_scale),
                    tf.math.divide_no_nan(s.correct_sum, num_terms),
                    tf.identity(num_terms))


# -------------------------------------------------------------- the baseline


def bp_clip(pipe: "Pipeline", frames, labels, loss_scale) -> ClipResult:
  """Exact gradient of the mean per-frame loss over batch and all T frames.

  (With Skip-Sideways: over the T-D frames whose inputs all lie in the clip;
  the last D frames would see past the end.) Time is folded into the batch
  (all B*T frames in one forward and one backward pass): the strongest
  single-device baseline.
  """
  num_frames = tf.shape(frames)[1] - pipe.receptive_depth
  frame_labels = tf.repeat(labels, num_frames)  # frames are batch-major
  with tf.GradientTape() as tape:
    logits = inference.sequence_outputs(pipe, frames, 0,
                                        training=True)[:, :num_frames]
    logits = tf.reshape(logits, [-1, tf.shape(logits)[-1]])
    per_example = tf.cast(pipe.loss_fn(frame_labels, logits), tf.float32)
    loss = tf.reduce_mean(per_example)
    scaled_loss = loss * loss_scale
  gradients = [g / tf.cast(loss_scale, g.dtype) for g in tape.gradient(
      scaled_loss, pipe.trainable_variables,
      unconnected_gradients=tf.UnconnectedGradients.ZERO)]
  correct = tf.cast(tf.equal(
      tf.argmax(logits, axis=-1, output_type=tf.int32), frame_labels),
                    tf.float32)
  return ClipResult(gradients, loss, tf.reduce_mean(correct),
                    tf.cast(tf.size(frame_labels), tf.float32))


# --------------------------------------------------------------- the pipeline


class Pipeline(inference.InferenceMethods, state_lib.StateMethods, tf.Module):
  """A video model cut into modules, trainable with Sideways or with BP.

  Clip and streaming inference (`predict_frames`, `stream_tick`, ...) come
  from `inference.py`, the buffers' allocation (`allocate_state`,
  `reset_state`) from `state.py`.

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
      of each such module per tick; with skips, one per path lag), which
      removes the approximation in them. 0 = plain Sideways; L-1 = the exact
      gradient of the frames whose gradient reaches every module within the
      clip (along every path, with skips).
    gpipe_micro_batch_frames, gpipe_rematerialize: options of
      ``algorithm="gpipe"`` (see engine/gpipe.py); it ignores replay.
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
               gpipe_micro_batch_frames: int = 1,
               gpipe_rematerialize: bool = False,
               name: str = "pipeline"):
    super().__init__(name=name)
    stages = list(stages)
    devices, evaluation_order = state_lib.check_pipeline_args(
        stages, devices, evaluation_order)
    if not callable(loss_fn):
      raise ValueError(f"loss_fn must be callable, got {loss_fn!r}")
    if skip_combine not in SKIP_COMBINE_MODES:
      raise ValueError(f"unknown skip_combine {skip_combine!r}; expected one "
                       f"of {SKIP_COMBINE_MODES}")
    self.skip_sources = state_lib.skip_sources(skips, len(stages))
    self.replay_modules = state_lib.check_replay(replay_modules,
                                                 self.skip_sources)
    self.skip_combine = skip_combine
    if not isinstance(skip_align, bool):
      raise ValueError(f"skip_align must be True or False, got {skip_align!r}")
    self.skip_align = skip_align
    self.gpipe_options = gpipe.make_options(gpipe_micro_batch_frames,
                                            gpipe_rematerialize)
    self.stages = stages
    self.loss_fn = loss_fn
    self.devices = devices or [None] * len(stages)
    self.evaluation_order = evaluation_order
    self.modules = self._new_modules()
    with tf.device(self.devices[0]):
      # Global tick count since the last reset: the validity masks depend on
      # it, so a stream fed in chunks masks exactly as if fed whole.
      self.ticks_seen = tf.Variable(
          0, dtype=tf.int64, trainable=False, name="ticks_seen")
    self._state_signature = None  # (batch_size, frame_shape) of the buffers
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
  def state_variables(self) -> list:
    """The pipeline state: every module's buffers and the tick counter."""
    return [v for m in self.modules for v in m.state_variables] + [
        self.ticks_seen]

  def compute_gradients(self, frames, labels, algorithm: str = "sideways",
                        reset: bool = True) -> List[tf.Tensor]:
    """The clip gradient of docs/algorithm.md, aligned with trainable_variables.

    Args:
      frames: ``[B, T, ...]`` batch-major clip.
      labels: ``[B]`` integer clip labels.
      algorithm: ``"sideways"``, ``"bp"`` or ``"gpipe"`` (BP's exact
        gradient, pipelined over the stages; engine/gpipe.py).
      reset: Sideways only. ``True`` (default) starts a clip from zero
        buffers. ``False`` continues the stream from the buffers left by the
        previous call (chunked streaming): the returned gradient is then the
        sum of this chunk's per-tick gradients over its own valid loss terms,
        zero if it has none.

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
    if algorithm == "sideways":
      return sideways_clip(self, frames, labels, reset, scale)
    if algorithm == "gpipe":
      return gpipe.gpipe_graph(self, frames, labels, scale)
    return bp_clip(self, frames, labels, scale)

  def prepare_inputs(self, frames, labels, algorithm: str = "sideways",
                     reset: bool = True):
    """Validates a clip and makes sure the state exists for its shape.

    Raises ValueError naming the offending value. Returns the frames as a float
    tensor and the labels as int32.
    """
    if algorithm not in ALGORITHMS:
      raise ValueError(
          f"unknown algorithm {algorithm!r}; expected one of {ALGORITHMS}")
    frames, labels = state_lib.check_clip(
        frames, labels, self._state_signature)
    batch_size, num_frames = frames.shape[0], frames.shape[1]
    frame_shape = tuple(frames.shape[2:])
    if algorithm == "sideways":
      if reset and num_frames < self.num_modules:
        raise ValueError(
            f"a Sideways clip needs at least as many frames as modules: "
            f"T = {num_frames} < L = {self.num_modules}")
      if num_frames < 1:
        raise ValueError(f"frames must hold at least one frame, got T = 0")
      self._ensure_state(batch_size, frame_shape, frames.dtype, reset)
      self._warn_if_modules_starve(num_frames, reset)
    else:
      if num_frames < 1:
        raise ValueError(f"frames must hold at least one frame, got T = 0")
      self._ensure_built(frame_shape, frames.dtype)
      if algorithm == "gpipe":
        gpipe.validate(self, num_frames)
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

  def stage_tick_seconds(self, frames, labels, repeats: int = 5,
                         ticks_per_call: int = 16) -> List[float]:
    """Median wall time of one tick of each module, each run on its own.

    See :func:`sideways_tf.engine.stage_timing.stage_tick_seconds`.
    """
    from sideways_tf.engine import stage_timing  # only profiling needs it
    return stage_timing.stage_tick_seconds(self, frames, labels, repeats,
                                           ticks_per_call)
