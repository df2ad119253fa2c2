"""GPipe on the Sideways engine: an exact, pipelined baseline.

The clip's frames are the micro-batches (``micro_batch_frames`` consecutive
frames each, M = T / micro_batch_frames of them). A fill-and-drain schedule
runs them through the K stages in clocks: at forward clock c stage k works on
micro-batch c - k, so stage k works on m while stage k+1 works on m-1. Each
clock is one ``tf.while_loop`` iteration in which, as in the Sideways tick,
every stage reads only what the stage below emitted at the previous clock, so
the K stage computations of a clock are independent ops, each built under its
stage's ``tf.device``. The backward pass drains the same way in reverse.

The result is the exact gradient of BP's loss (the mean per-frame loss over
the batch and all T frames): only the order of the sums changes. Two ways to
keep what the backward pass needs:

* ``rematerialize=False``: the forward clock loop is differentiated by
  TensorFlow, which keeps every intermediate activation of every micro-batch
  (GPipe's memory: O(T) activations of the whole model). The reverse loop's
  ops are put back on their stage's device by name (``stage_k``), because
  TensorFlow does not colocate a loop's gradient ops with their forward ops.
* ``rematerialize=True``: only each stage's input (the stage-boundary
  activation) is kept per micro-batch; the backward loop re-runs the stage's
  forward pass on it and backpropagates (:func:`_backward_step`, at the
  *stored* input, which is what makes it exact), as GPipe's
  re-materialisation does.

Fill and drain: a stage with no micro-batch at a clock (its bubble) skips its
work (``tf.cond``), so it idles rather than computing padding.

Causal temporal layers (docs/algorithm.md, "Temporal layers") run each
micro-batch in clip mode from the state the stage's previous micro-batch
left (loop variables of the forward clocks), so the gradient is still BP's
through time: TensorFlow differentiates through the carried states, and the
re-materialised drain stores each micro-batch's starting state beside its
input and carries the gradient with respect to it back from micro-batch
m+1 to m.

Not supported (ValueError): Skip-Sideways skips, and stages with moving
statistics (batch norm), whose batch statistics over one micro-batch of B*m
frames would differ from BP's over B*T frames.

Read top to bottom: the options and their checks, :func:`gpipe_graph` (the
clip gradient, either way), :func:`stage_timeline`, then the clocks:
:class:`_Schedule` (what every clock shares), :func:`_forward_clocks` with
one stage's work :func:`_forward_stage`, and the re-materialised drain
:func:`_rematerialized` with :func:`_drain_stage` and
:func:`_backward_step`; last the table's entry, :class:`GPipe`.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import tensorflow as tf

from sideways_tf.layers import temporal
from sideways_tf.engine.algorithm import Algorithm
from sideways_tf.engine.algorithm import ClipResult


class GPipeOptions(NamedTuple):
  """How `algorithm="gpipe"` cuts and keeps the clip."""
  micro_batch_frames: int = 1   # frames per micro-batch; must divide T
  rematerialize: bool = False   # keep only stage inputs, recompute backward


def make_options(micro_batch_frames=1, rematerialize=False) -> GPipeOptions:
  """Validated options (ValueError naming the bad value)."""
  if isinstance(micro_batch_frames, bool) or int(micro_batch_frames) != (
      micro_batch_frames) or int(micro_batch_frames) < 1:
    raise ValueError(f"gpipe micro_batch_frames must be an integer >= 1, got "
                     f"{micro_batch_frames!r}")
  if not isinstance(rematerialize, bool):
    raise ValueError(f"gpipe rematerialize must be True or False, got "
                     f"{rematerialize!r}")
  return GPipeOptions(int(micro_batch_frames), rematerialize)


def validate(pipeline, num_frames: int) -> None:
  """Raises ValueError if `pipeline` cannot run GPipe on T = num_frames."""
  options = pipeline.algorithm_options["gpipe"]
  if any(pipeline.skip_sources):
    raise ValueError(
        f"algorithm='gpipe' does not support Skip-Sideways skips (got skip "
        f"sources {pipeline.skip_sources}); use 'bp' for their exact gradient")
  for k, stage in enumerate(pipeline.stages):
    if stage.non_trainable_variables:
      raise ValueError(
          f"algorithm='gpipe': stage {k} ({stage.name}) has non-trainable "
          f"state ({stage.non_trainable_variables[0].path}, e.g. batch norm "
          f"moving statistics); its statistics over one micro-batch would "
          f"differ from BP's over the whole clip. Use a stateless "
          f"normalisation (group/layer norm) or algorithm='bp'")
  if num_frames % options.micro_batch_frames:
    raise ValueError(
        f"gpipe micro_batch_frames = {options.micro_batch_frames} must divide "
        f"the clip length T = {num_frames}")


def num_micro_batches(pipeline, num_frames: int) -> int:
  return num_frames // pipeline.algorithm_options["gpipe"].micro_batch_frames


def bubble_fraction(num_stages: int, num_micro_batches: int) -> float:
  """GPipe's idle fraction per device with equal stages: (K-1)/(M+K-1)."""
  return (num_stages - 1) / (num_micro_batches + num_stages - 1)


def gpipe_graph(pipeline, frames, labels, loss_scale, timeline=None):
  """Graph of the GPipe clip gradient (call inside ``tf.function``).

  Returns a ``ClipResult`` like the other algorithms: the gradient of the
  mean per-frame loss over the batch and all T frames. `timeline`: a dict
  to receive the stage timestamps of the clocks (see `stage_timeline`).
  """
  options = pipeline.algorithm_options["gpipe"]
  batch_size, num_frames = int(frames.shape[0]), int(frames.shape[1])
  frame_shape = tuple(frames.shape[2:])
  per_micro = options.micro_batch_frames
  num_micro = num_frames // per_micro
  with tf.init_scope():  # shapes of every stage's input and output, eagerly
    shapes = pipeline._ensure_built(frame_shape, frames.dtype)  # pylint: disable=protected-access

  # [B, T, ...] -> [M, B * m, ...]: micro-batch i holds frames i*m..i*m+m-1
  # of every clip, batch-major, so its labels are repeat(labels, m).
  rest = list(frame_shape)
  micro = tf.reshape(frames, [batch_size, num_micro, per_micro] + rest)
  micro = tf.transpose(micro, [1, 0, 2] + list(range(3, 3 + len(rest))))
  micro = tf.reshape(micro, [num_micro, batch_size * per_micro] + rest)
  micro_labels = tf.repeat(labels, per_micro)
  num_terms = tf.constant(float(batch_size * num_frames), tf.float32)
  loss_scale = tf.cast(loss_scale, tf.float32)

  def top_loss(logits):
    """Summed loss and correct count of one micro-batch at the top."""
    per_example = tf.cast(pipeline.loss_fn(micro_labels, logits), tf.float32)
    correct = tf.reduce_sum(tf.cast(tf.equal(
        tf.argmax(logits, axis=-1, output_type=tf.int32), micro_labels),
                                    tf.float32))
    return tf.reduce_sum(per_example), correct

  schedule = _Schedule(pipeline, micro, shapes, batch_size, per_micro,
                       num_micro, timed=timeline is not None)
  if options.rematerialize:
    grads, loss_sum, correct_sum = _rematerialized(schedule, top_loss,
                                                   loss_scale)
    grads = [tf.math.divide_no_nan(g, tf.cast(num_terms * loss_scale,
                                              g.dtype)) for g in grads]
  else:
    variables = pipeline.trainable_variables
    with tf.GradientTape() as tape:
      loss_sum, correct_sum = _forward_clocks(schedule, top_loss)
      scaled = loss_sum / num_terms * loss_scale
    # Put the reverse loop's ops on their stage's device (by op name).
    with tf.compat.v1.get_default_graph().device(schedule.device_of_op):
      grads = tape.gradient(scaled, variables,
                            unconnected_gradients=tf.UnconnectedGradients.ZERO)
    grads = [g / tf.cast(loss_scale, g.dtype) for g in grads]
  if timeline is not None:
    timeline.update(schedule.times)
  return ClipResult(grads, loss_sum / num_terms, correct_sum / num_terms,
                    tf.identity(num_terms))


def stage_timeline(pipeline):
  """A function (frames, labels) -> {phase: [clocks, K, 2] numpy array}.

  It computes the GPipe clip gradient as ``compute_gradients`` does (the
  same schedule and placement), and also records, with ``tf.timestamp``,
  when each stage's work of each clock started (its input ready) and ended
  (its outputs ready), in seconds; a clock where the stage has no
  micro-batch holds NaN. Phases: "forward" (the top stage's loss included
  unless re-materialising) and, with re-materialisation, "backward" (the
  written-out drain; without it TensorFlow's reverse loop is not timed).
  The timestamps and their control dependencies cost a little, so this is
  for measuring the schedule (bin/benchmark --simulate_devices), not for
  training. Call it twice to time a traced function.
  """
  def graph(frames, labels):
    times = {}
    gpipe_graph(pipeline, frames, labels, tf.constant(1.0), timeline=times)
    return times

  compiled = tf.function(graph, autograph=False)

  def run(frames, labels):
    frames, labels = pipeline.prepare_inputs(frames, labels, "gpipe")
    return {phase: t.numpy() for phase, t in compiled(frames, labels).items()}
  return run


class _Schedule:
  """The fill-and-drain clocks of one clip: what the forward clocks
  (:func:`_forward_clocks`) and the re-materialised drain
  (:func:`_rematerialized`) share. Which micro-batch a stage works on at
  a clock, a stage run on one micro-batch, the bubble's ``tf.cond``, zero
  buffers and, when timed, the stages' timestamps."""

  def __init__(self, pipeline, micro, shapes, batch_size, per_micro,
               num_micro, timed=False):
    self.pipeline = pipeline
    self.timed = timed  # record each stage's start and end per clock
    self.times = {}  # phase -> [clocks, K, 2] float64 (when timed)
    self.modules = pipeline.modules
    self.devices = pipeline.devices
    self.num_stages = pipeline.num_modules
    self.micro = micro
    self.shapes = shapes
    self.batch_size = batch_size
    self.per_micro = per_micro  # frames per micro-batch
    self.rows = batch_size * per_micro
    self.num_micro = num_micro
    self.num_clocks = num_micro + self.num_stages - 1

  def zero_states(self, k):
    """Stage k's temporal states at the start of the clip."""
    return [tf.zeros([self.batch_size] + list(shape), dtype)
            for shape, dtype in self.shapes[k].temporal_specs]

  def run_stage(self, k, x, states):
    """Stage k on one micro-batch (m frames of every clip, clip mode) from
    its temporal `states`: (outputs, the states it leaves)."""
    module = self.modules[k]
    with tf.name_scope(f"stage_{k}"), temporal.clip_scope(
        self.per_micro, dict(zip(module.temporal_layers, states))) as scope:
      outputs = module.call(x, training=True)
    return outputs, scope.new_states(module.temporal_layers)

  def device_of_op(self, op):
    match = re.search(r"stage_(\d+)/", op.name)
    return self.devices[int(match.group(1))] or "" if match else ""

  def zeros_output(self, k):
    return tf.zeros([self.rows] + list(self.shapes[k].output_shape),
                    self.shapes[k].output_dtype)

  def zeros_input(self, k):
    return tf.zeros([self.rows] + list(self.shapes[k].input_shape),
                    self.shapes[k].input_dtype)

  def frames_of(self, m):
    # Nobody needs the gradient of a frame: stop it, so the first stage's
    # backward-data pass is never built.
    index = tf.clip_by_value(m, 0, self.num_micro - 1)
    return tf.stop_gradient(tf.gather(self.micro, index))

  def _valid(self, m):
    return tf.logical_and(m >= 0, m < self.num_micro)

  def cond(self, m, work, idle, inputs):
    """tf.cond(valid m, work, idle); when timed, also [start, end] of the
    work (NaN when idle), stamped after `inputs` and `work`'s outputs."""
    if not self.timed:
      return tf.cond(self._valid(m), work, idle), None

    def timed_work():
      with tf.control_dependencies(tf.nest.flatten(inputs)):
        start = tf.timestamp()
      with tf.control_dependencies([start]):
        out = work()
      with tf.control_dependencies(tf.nest.flatten(out)):
        end = tf.timestamp()
      return out, tf.stack([start, end])

    def timed_idle():
      return idle(), tf.constant([float("nan")] * 2, tf.float64)
    return tf.cond(self._valid(m), timed_work, timed_idle)

  def no_work(self):
    return tf.constant([float("nan")] * 2, tf.float64)

  def times_array(self):
    return (tf.TensorArray(tf.float64, self.num_clocks,
                           element_shape=[self.num_stages, 2])
            if self.timed else [])

  def record_times(self, times, c, stamps):
    """`times` with clock c's stamps written (when timed)."""
    return times.write(c, tf.stack(stamps)) if self.timed else times

  def stored_arrays(self):
    """Empty stores, indexed by clock, of what the re-materialised drain
    needs: every stage k >= 1's input and every stage's temporal states."""
    def arrays(shape, dtype, batch):
      return tf.TensorArray(dtype, self.num_clocks,
                            element_shape=[batch] + list(shape))
    return ([arrays(self.shapes[k].input_shape, self.shapes[k].input_dtype,
                    self.rows) for k in range(1, self.num_stages)],
            [[arrays(shape, dtype, self.batch_size)
              for shape, dtype in self.shapes[k].temporal_specs]
             for k in range(self.num_stages)])


def _forward_clocks(schedule, top_loss, keep_inputs: bool = False,
                    run_top=True):
  """The forward clocks; returns (loss sum, correct sum[, stored]).

  `keep_inputs`: also store, at each clock, what every stage k >= 1 held
  (its input for micro-batch c - k) and every stage's temporal states
  before that micro-batch, for the rematerialised backward: stored =
  (inputs, states), TensorArrays indexed by clock.
  """
  s = schedule
  held0 = [s.zeros_output(k) for k in range(s.num_stages - 1)]
  states0 = [s.zero_states(k) for k in range(s.num_stages)]
  stored0 = s.stored_arrays() if keep_inputs else ([], [])
  zero = tf.constant(0.0, tf.float32)

  def clock(c, held, states, stored, loss_sum, correct_sum, times):
    outputs, new_states, stamps = [], [], []
    stored_inputs, stored_states = list(stored[0]), list(stored[1])
    for k, module in enumerate(s.modules):
      with tf.device(s.devices[k]), tf.name_scope(f"stage_{k}"):
        x = s.frames_of(c - k) if k == 0 else held[k - 1]
        if keep_inputs:
          if k > 0:
            stored_inputs[k - 1] = stored_inputs[k - 1].write(c, x)
          stored_states[k] = [a.write(c, v) for a, v in zip(
              stored_states[k], states[k])]
        output, after, counts, stamp = _forward_stage(
            s, k, c - k, x, states[k], top_loss, run_top)
      if counts is not None:
        loss_sum += counts[0]
        correct_sum += counts[1]
      if not module.is_top:
        outputs.append(output)
      new_states.append(after)
      stamps.append(stamp)
    return (c + 1, outputs, new_states, (stored_inputs, stored_states),
            loss_sum, correct_sum, s.record_times(times, c, stamps))

  _, _, _, stored, loss_sum, correct_sum, times = tf.while_loop(
      lambda c, *_: c < s.num_clocks, clock,
      (tf.constant(0), held0, states0, stored0, zero, zero,
       s.times_array()))
  if s.timed:
    s.times["forward"] = times.stack()
  if keep_inputs:
    return loss_sum, correct_sum, stored
  return loss_sum, correct_sum


def _forward_stage(s, k, m, x, states, top_loss, run_top):
  """Stage k at one forward clock: micro-batch m (none in the bubble) from
  its input `x` and temporal `states`. Returns (its output, the states it
  leaves, (loss, correct) where the top runs its loss else None, its
  [start, end] when timed)."""
  module = s.modules[k]
  if module.is_top and run_top:
    ((loss, correct), after), stamp = s.cond(
        m, lambda: _top(s.run_stage(k, x, states), top_loss),
        lambda: ((tf.constant(0.0), tf.constant(0.0)), states), x)
    return None, after, (loss, correct), stamp
  if module.is_top and not module.temporal_layers:
    return None, states, None, s.no_work() if s.timed else None
  # A stage below the top, or a rematerialised top's states.
  (output, after), stamp = s.cond(
      m, lambda: s.run_stage(k, x, states),
      lambda: (s.zeros_output(k), states), x)
  return output, after, None, stamp


def _top(run, top_loss):
  """(top_loss of the top stage's outputs, its states) from run_stage."""
  outputs, states = run
  return top_loss(outputs), states


def _rematerialized(schedule, top_loss, loss_scale):
  """Forward keeping stage inputs only, then the backward drain: (summed
  parameter gradients, loss sum, correct sum).

  Backward clock c: stage k works on micro-batch M-1-c+(K-1-k) (the top
  starts with the last one), re-running its forward pass on the input it
  stored and pushing the output gradient stage k+1 emitted at clock c-1.
  """
  s = schedule
  _, _, stored = _forward_clocks(s, top_loss, keep_inputs=True,
                                 run_top=False)
  grads0 = [s.zeros_output(k) for k in range(s.num_stages - 1)]
  state_grads0 = [s.zero_states(k) for k in range(s.num_stages)]
  accumulators0 = [[tf.zeros_like(v) for v in m.stage.trainable_variables]
                   for m in s.modules]
  zero = tf.constant(0.0, tf.float32)

  def clock(c, grads, state_grads, accumulators, loss_sum, correct_sum,
            times):
    new_grads = [None] * (s.num_stages - 1)
    new_state_grads, new_accumulators, stamps = [], [], []
    for k, module in enumerate(s.modules):
      m = s.num_micro - 1 - c + (s.num_stages - 1 - k)
      with tf.device(s.devices[k]), tf.name_scope(f"stage_{k}"):
        (parameter_grads, emitted, before, counts), stamp = _drain_stage(
            s, k, m, stored, None if module.is_top else grads[k],
            state_grads[k], top_loss, loss_scale)
        stamps.append(stamp)
        if module.is_top:
          loss_sum += counts[0]
          correct_sum += counts[1]
        if not module.is_first:
          new_grads[k - 1] = emitted[0]
        new_state_grads.append(before)
        new_accumulators.append([a + g for a, g in zip(accumulators[k],
                                                       parameter_grads)])
    return (c + 1, new_grads, new_state_grads, new_accumulators, loss_sum,
            correct_sum, s.record_times(times, c, stamps))

  _, _, _, accumulators, loss_sum, correct_sum, times = tf.while_loop(
      lambda c, *_: c < s.num_clocks, clock,
      (tf.constant(0), grads0, state_grads0, accumulators0, zero, zero,
       s.times_array()))
  if s.timed:
    s.times["backward"] = times.stack()
  return ([a for accs in accumulators for a in accs], loss_sum, correct_sum)


def _drain_stage(s, k, m, stored, output_gradient, state_gradients,
                 top_loss, loss_scale):
  """Stage k at one backward clock: :func:`_backward_step` on micro-batch
  m, read back from `stored` (inputs, states), or zeros in the bubble.
  Returns ((parameter gradients, [emitted gradient], the starting states'
  gradients, [loss, correct]), [start, end] when timed)."""
  module = s.modules[k]
  inputs, states = stored

  def work():
    # Stage k held micro-batch m (and its starting states) at forward
    # clock m+k.
    x = s.frames_of(m) if k == 0 else inputs[k - 1].read(m + k)
    return _backward_step(s, k, x, [a.read(m + k) for a in states[k]],
                          output_gradient, state_gradients, top_loss,
                          loss_scale)

  def idle():
    emitted = [] if module.is_first else [s.zeros_input(k)]
    return ([tf.zeros_like(v) for v in module.stage.trainable_variables],
            emitted, state_gradients, [tf.constant(0.0)] * 2)

  return s.cond(m, work, idle,
                [] if output_gradient is None else output_gradient)


def _backward_step(s, k, x, states, output_gradient, state_gradients,
                   top_loss, loss_scale):
  """Stage k's forward on one stored micro-batch, then its vector-Jacobian
  product: the gradient of the stage's outputs (the top: its scaled loss)
  and of the temporal states it leaves (what micro-batch m+1 sent back),
  with respect to its parameters, its input and its starting states.
  Returns (parameter gradients, [emitted gradient] (none for stage 0),
  gradients w.r.t. the starting states, [loss, correct] (the top))."""
  module = s.modules[k]
  variables = list(module.stage.trainable_variables)
  with tf.GradientTape() as tape:
    tape.watch([x] + list(states))
    outputs, after = s.run_stage(k, x, states)
    counts = [tf.constant(0.0)] * 2
    if module.is_top:
      counts = list(top_loss(outputs))
      outputs = counts[0] * loss_scale
      output_gradient = tf.ones_like(outputs)
  sources = ([] if module.is_first else [x]) + list(states) + variables
  grads = tape.gradient([outputs] + list(after), sources,
                        output_gradients=[output_gradient]
                        + list(state_gradients),
                        unconnected_gradients=tf.UnconnectedGradients.ZERO)
  emitted = [] if module.is_first else [grads.pop(0)]
  return (grads[len(states):], emitted, grads[:len(states)], counts)


class GPipe(Algorithm):
  """BP's exact gradient, pipelined with the clip's frames as micro-batches."""
  name = "gpipe"
  summary = ("GPipe: exact, fill-and-drain over the stage devices, frames as "
             "micro-batches")
  exact = True
  streams = False
  options = {"gpipe_micro_batch_frames": 1, "gpipe_rematerialize": False}
  config_keys = {"gpipe_micro_batch_frames": "gpipe.micro_batch_frames",
                 "gpipe_rematerialize": "gpipe.rematerialize"}

  def make_options(self, gpipe_micro_batch_frames=1,
                   gpipe_rematerialize=False) -> GPipeOptions:
    return make_options(gpipe_micro_batch_frames, gpipe_rematerialize)

  def validate(self, pipeline, num_frames: int, reset: bool) -> None:
    del reset  # GPipe has no state between calls
    validate(pipeline, num_frames)

  def clip_gradients(self, pipeline, frames, labels, reset, loss_scale):
    del reset
    return gpipe_graph(pipeline, frames, labels, loss_scale)


GPIPE = GPipe()
