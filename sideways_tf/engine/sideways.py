"""Sideways: the tick engine (docs/algorithm.md), the algorithm of this package.

Read top to bottom:

* :func:`sideways_clip` runs the ticks of a clip inside one ``tf.while_loop``
  whose loop state is one :class:`TickState`. Every tick (:func:`tick`), each
  module k does a forward step on the input it holds (`a_k`; module 1 reads
  frame t) and a backward step with the gradient it holds (`d_k`; the top
  module differentiates the loss of tick t): :func:`_module_step`. All
  modules read the buffers as they stood after tick t-1 and their results
  only become the next tick's buffers (:func:`_route`), so within a tick
  the modules are independent and, placed on distinct devices, run at once. After the loop the buffers are
  written back (:func:`write_back`) and the sums normalised into the clip
  gradient (:func:`normalise`).
* Replay (``Pipeline(replay_modules=n)``, docs/engine.md) is part of the
  tick: a replayed module takes its backward step at the inputs its gradient
  belongs to (``SidewaysModule.replay_tick``). The modules the buffers
  replay (``Pipeline.replayed_modules``) are n for Sideways, L-1 for
  ``pipelined_bp`` (engine/pipelined_bp.py: this engine, every module below
  the top replayed).
* Causal temporal layers inside a stage keep their states (their last
  inputs) as loop variables too, `temporal`; a module records its frame in
  them only from the tick it holds a real one (docs/algorithm.md,
  "Temporal layers").
* :class:`Sideways` is the entry in the algorithm table (`algorithms.py`).

One module's forward/backward step and its buffers are in `module.py`.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from sideways_tf.engine.algorithm import Algorithm
from sideways_tf.engine.algorithm import ClipResult
from sideways_tf.engine.skips import push_skip
from sideways_tf.engine.skips import read_skip


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
  # Replay: [inputs, *skip inputs, *temporal states] of modules
  # 1..replayed_modules, each the last 2(L-k) of them, oldest first.
  histories: list
  # The states of each module's temporal layers (one per layer).
  temporal: list


def sideways_clip(pipe, frames, labels, reset: bool,
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
      histories=[[read(h) for h in [m.input_history] + m.skip_histories
                  + m.temporal_histories]
                 for m in modules[:pipe.replayed_modules]],
      temporal=[[read(b) for b in m.temporal_buffers] for m in modules])
  ticks_before = (tf.constant(0, tf.int64) if reset
                  else pipe.ticks_seen.read_value())
  end, = tf.while_loop(
      lambda s: s.t < num_ticks,
      lambda s: (tick(pipe, s, frames, labels, ticks_before, loss_scale),),
      (start,))
  updates = write_back(pipe, end, num_ticks, reset)
  with tf.control_dependencies(updates):
    return normalise(pipe, end, tf.shape(frames)[0], loss_scale)


def tick(pipe, s: TickState, frames, labels, ticks_before,
         loss_scale) -> TickState:
  """One clock tick: every module's forward and backward step at once."""
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
    holds_frame = global_tick >= k + 1  # else warm-up zeros
    with tf.device(pipe.devices[k]), tf.name_scope(f"stage_{k}"), \
        tf.control_dependencies(after):
      result, held = _module_step(pipe, k, s, frames, holds_frame,
                                  masked_loss)
      if held is not None:
        histories[k] = held
      accumulators = [acc + g for acc, g in zip(
          s.accumulators[k], result.parameter_gradients)]
      results[k] = (result, accumulators)
    if pipe.evaluation_order is not None:
      after = [result.outputs] + list(result.parameter_gradients)

  top = results[-1][0]
  correct = tf.cast(tf.equal(
      tf.argmax(top.outputs, axis=-1, output_type=tf.int32), labels),
                    tf.float32)
  return TickState(
      s.t + 1, *_route(pipe, [r for r, _ in results], s.skips),
      [acc for _, acc in results],
      s.loss_sum + top.loss,
      s.correct_sum + tf.reduce_sum(correct) * loss_mask,
      s.valid_ticks + loss_mask, histories,
      [list(r.temporal_states) for r, _ in results])


def _module_step(pipe, k, s: TickState, frames, holds_frame, masked_loss):
  """Module k's forward and backward step of this tick, from the buffers
  as they stood after the previous one: (its TickResult, or ReplayResult
  if replayed, and then also its held inputs after this tick, else None)."""
  module = pipe.modules[k]
  module_input = (tf.gather(frames, s.t, axis=1) if k == 0
                  else s.inputs[k - 1])
  skip_inputs = [read_skip(b, delay) for b, delay in zip(
      s.skips[k], module.skip_delays)]
  if k >= pipe.replayed_modules:
    return module.tick(
        module_input,
        output_gradient=None if module.is_top else s.grads[k][0],
        loss_of_outputs=masked_loss if module.is_top else None,
        training=holds_frame, skip_inputs=skip_inputs,
        temporal_states=s.temporal[k], record=holds_frame), None
  # The gradient of lag n belongs to the inputs (and temporal states) held
  # n ticks ago.
  held = s.histories[k]
  held_inputs = held[:1 + len(skip_inputs)]
  result = module.replay_tick(
      module_input, skip_inputs, module.held_at_lags(held_inputs),
      s.grads[k], training=holds_frame, chunk_tick=s.t,
      temporal_states=s.temporal[k],
      backward_temporal=module.held_at_lags(held[1 + len(skip_inputs):]),
      record=holds_frame)
  return result, [tf.concat([h[1:], x[None]], 0) for h, x in zip(
      held, [module_input] + skip_inputs + list(s.temporal[k]))]


def _route(pipe, results, skip_buffers) -> tuple:
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


def write_back(pipe, s: TickState, num_ticks, reset) -> list:
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
          [modules[k].input_history] + modules[k].skip_histories
          + modules[k].temporal_histories, held))
      updates.extend(modules[k].weight_history_updates(num_ticks))
  for k, states in enumerate(s.temporal):
    with tf.device(devices[k]):
      updates.extend(b.assign(v) for b, v in zip(
          modules[k].temporal_buffers, states))
  return updates


def normalise(pipe, s: TickState, batch_size,
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



class Sideways(Algorithm):
  """Depth-parallel approximate backprop: every module steps every tick."""
  name = "sideways"
  summary = ("Sideways: all modules step every tick, approximate "
             "(replay_modules makes the bottom ones exact)")
  exact = False
  streams = True

  def validate(self, pipeline, num_frames: int, reset: bool) -> None:
    if reset and num_frames < pipeline.num_modules:
      raise ValueError(
          f"a Sideways clip needs at least as many frames as modules: "
          f"T = {num_frames} < L = {pipeline.num_modules}")

  def clip_gradients(self, pipeline, frames, labels, reset, loss_scale):
    return sideways_clip(pipeline, frames, labels, reset, loss_scale)


SIDEWAYS = Sideways()
