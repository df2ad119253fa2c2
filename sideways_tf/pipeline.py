"""The Sideways tick engine and the backprop baseline: where gradients are made.

Read this file top to bottom to see the whole algorithm of SIDEWAYS.md:

* :meth:`Pipeline._sideways_graph` runs the ticks of a clip inside one
  ``tf.while_loop``. Every tick, each module k does a forward step on the input
  it holds (`a_k`; module 1 reads frame t) and a backward step with the gradient
  it holds (`d_k`; the top module differentiates the loss of tick t). All
  modules read the buffers as they stood after tick t-1 and their results only
  become the next tick's buffers, so within a tick the modules are independent
  and, placed on distinct devices, run at once.
* :meth:`Pipeline._bp_graph` is standard backprop on the same modules and loss,
  with time folded into the batch.

Both return the *clip gradient* (SIDEWAYS.md, "Per-clip gradient and update")
aligned with :attr:`Pipeline.trainable_variables`. The trainer, the tests and
the benchmarks all call these two methods; there is no other implementation.
"""

from __future__ import annotations

import time
from typing import Callable, List, NamedTuple, Optional, Sequence

import keras
import numpy as np
from absl import logging
import tensorflow as tf

from sideways_tf.module import SidewaysModule

ALGORITHMS = ("sideways", "bp")

LossFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


class ClipResult(NamedTuple):
  """Clip gradient plus what the trainer logs about the same forward passes."""
  gradients: List[tf.Tensor]  # aligned with Pipeline.trainable_variables
  loss: tf.Tensor             # mean per-example loss over the valid loss terms
  accuracy: tf.Tensor         # fraction of valid loss terms classified right
  num_loss_terms: tf.Tensor   # B * (number of ticks/frames with a valid loss)


class _FunctionCache(dict):
  """Traced functions by key. A dict subclass: tf.Module neither wraps nor
  checkpoints it (it would refuse the tuple keys)."""


def sparse_softmax_cross_entropy(labels, logits):
  """The default loss: per-example cross-entropy from logits, shape [B]."""
  return tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=tf.cast(labels, tf.int32), logits=logits)


class Pipeline(tf.Module):
  """A video model cut into modules, trainable with Sideways or with BP.

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
  """

  def __init__(self,
               stages: Sequence[keras.layers.Layer],
               loss_fn: LossFn = sparse_softmax_cross_entropy,
               devices: Optional[Sequence[Optional[str]]] = None,
               evaluation_order: Optional[Sequence[int]] = None,
               name: str = "pipeline"):
    super().__init__(name=name)
    stages = list(stages)
    if not stages:
      raise ValueError("stages must name at least one Keras layer, got []")
    for k, stage in enumerate(stages):
      if not isinstance(stage, keras.layers.Layer):
        raise ValueError(
            f"stages[{k}] must be a keras.layers.Layer, got {type(stage)!r}")
    if devices is not None:
      devices = list(devices)
      if len(devices) != len(stages):
        raise ValueError(
            f"devices must give one device per stage: {len(stages)} stages "
            f"but {len(devices)} devices ({devices!r})")
    if evaluation_order is not None:
      evaluation_order = [int(k) for k in evaluation_order]
      if sorted(evaluation_order) != list(range(len(stages))):
        raise ValueError(
            "evaluation_order must be a permutation of "
            f"range({len(stages)}), got {evaluation_order!r}")
    if not callable(loss_fn):
      raise ValueError(f"loss_fn must be callable, got {loss_fn!r}")
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
    self._compiled = _FunctionCache()
    self.trace_count = 0
    self._warned_lengths = set()

  # ---------------------------------------------------------------- public API

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
    """The clip gradient of SIDEWAYS.md, aligned with trainable_variables.

    Args:
      frames: ``[B, T, ...]`` batch-major clip.
      labels: ``[B]`` integer clip labels.
      algorithm: ``"sideways"`` or ``"bp"``.
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
      return self._sideways_graph(frames, labels, reset, scale)
    return self._bp_graph(frames, labels, scale)

  def prepare_inputs(self, frames, labels, algorithm: str = "sideways",
                     reset: bool = True):
    """Validates a clip and makes sure the state exists for its shape.

    Raises ValueError naming the offending value. Returns the frames as a float
    tensor and the labels as int32.
    """
    if algorithm not in ALGORITHMS:
      raise ValueError(
          f"unknown algorithm {algorithm!r}; expected one of {ALGORITHMS}")
    frames = tf.convert_to_tensor(frames)
    labels = tf.convert_to_tensor(labels)
    if not frames.dtype.is_floating:
      raise ValueError(
          f"frames must be floating point (scale uint8 video first), got "
          f"dtype {frames.dtype.name}")
    if frames.shape.rank is None or frames.shape.rank < 3:
      raise ValueError(
          f"frames must have shape [B, T, ...frame] (rank >= 3), got shape "
          f"{frames.shape}")
    if not labels.dtype.is_integer:
      raise ValueError(
          f"labels must be integer class ids, got dtype {labels.dtype.name}")
    batch_size, num_frames = frames.shape[0], frames.shape[1]
    frame_shape = tuple(frames.shape[2:])
    if labels.shape.rank != 1 or labels.shape[0] != batch_size:
      raise ValueError(
          f"labels must have shape [B] = [{batch_size}] to match frames of "
          f"shape {frames.shape}, got labels of shape {labels.shape}")
    if num_frames is None or batch_size is None or None in frame_shape:
      raise ValueError(
          f"frames must have a fully known shape, got {frames.shape}")
    if (self._state_signature is not None and
        len(frame_shape) != len(self._state_signature[1])):
      raise ValueError(
          f"frames must have rank {2 + len(self._state_signature[1])} "
          f"([B, T] + frame shape {list(self._state_signature[1])}), got "
          f"shape {frames.shape}")
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

  def reset_state(self) -> None:
    """Zeroes every module's buffers and the tick count (a clip boundary)."""
    for module in self.modules:
      module.reset_state()
    self.ticks_seen.assign(0)

  def allocate_state(self, batch_size: int, frame_shape: Sequence[int],
                     dtype=tf.float32) -> None:
    """Creates the buffers for a batch size and frame shape ahead of time.

    Call it before restoring a checkpoint that holds pipeline state, so the
    state variables exist to receive their values.
    """
    self._ensure_state(int(batch_size), tuple(frame_shape),
                       tf.as_dtype(dtype), reset=True)

  def predict_frames(self, frames) -> tf.Tensor:
    """Clip inference: every frame through all modules. Returns [B, T, C]."""
    frames = tf.convert_to_tensor(frames)
    if frames.shape.rank is None or frames.shape.rank < 3:
      raise ValueError(
          f"frames must have shape [B, T, ...frame], got {frames.shape}")
    self._ensure_built(tuple(frames.shape[2:]), frames.dtype)
    if "predict" not in self._compiled:
      self._compiled["predict"] = tf.function(self.frame_logits,
                                              autograph=False)
    return self._compiled["predict"](frames)

  def frame_logits(self, frames, training=False) -> tf.Tensor:
    """Graph-building clip path: time folded into the batch, no pipeline."""
    shape = tf.shape(frames)
    batch_size, num_frames = shape[0], shape[1]
    outputs = tf.reshape(frames, tf.concat([[-1], shape[2:]], axis=0))
    for k, (stage, device) in enumerate(zip(self.stages, self.devices)):
      with tf.device(device), tf.name_scope(f"stage_{k}"):
        outputs = stage(outputs, training=training)
    return tf.reshape(outputs, tf.concat(
        [[batch_size, num_frames], tf.shape(outputs)[1:]], axis=0))

  def stream_state_specs(self, frame_shape, dtype=tf.float32):
    """(shape without batch, dtype) of each streaming buffer a_2..a_L."""
    shapes = self._ensure_built(tuple(frame_shape), dtype)
    return [(in_shape, in_dtype) for in_shape, in_dtype, _, _ in shapes[1:]]

  def stream_tick(self, frame, activations):
    """Streaming inference: one tick of the pipelined forward pass alone.

    `activations` are the inputs a_2..a_L held by modules 2..L (zeros at the
    start of a stream). Every module steps at once on what it holds; returns
    the top module's output, which belongs to frame t-L+1, and the next
    activations. Stages run in inference mode.
    """
    outputs = []
    for k, (stage, device) in enumerate(zip(self.stages, self.devices)):
      with tf.device(device), tf.name_scope(f"stage_{k}"):
        outputs.append(stage(frame if k == 0 else activations[k - 1],
                             training=False))
    return outputs[-1], outputs[:-1]

  def stage_tick_seconds(self, frames, labels, repeats: int = 5,
                         ticks_per_call: int = 16) -> List[float]:
    """Median wall time of one tick of each module, each run on its own.

    The balance of these times bounds the depth-parallel speedup (sum / max).
    Uses the module's own `tick` on the current buffers, so it measures
    exactly the work the engine does per module per tick. Each call runs
    `ticks_per_call` ticks of the module in a ``tf.while_loop`` (module 1
    reading successive frames, the accumulators carried as in the engine) and
    the time is divided by it, so the per-call dispatch of a ``tf.function``
    (about as long as a small module's tick on a CPU) does not swamp it.
    """
    if int(ticks_per_call) < 1:
      raise ValueError(f"ticks_per_call must be >= 1, got {ticks_per_call}")
    frames, labels = self.prepare_inputs(frames, labels, "sideways")
    key = ("stage_ticks", int(ticks_per_call))
    if key not in self._compiled:
      self._compiled[key] = [
          tf.function(lambda f, l, k=k: self._module_ticks(
              k, f, l, int(ticks_per_call)), autograph=False)
          for k in range(self.num_modules)]
    seconds = []
    for fn in self._compiled[key]:
      fn(frames, labels).numpy()  # trace, warm up
      times = []
      for _ in range(repeats):
        start = time.perf_counter()
        fn(frames, labels).numpy()
        times.append(time.perf_counter() - start)
      seconds.append(float(np.median(times)) / int(ticks_per_call))
    return seconds

  def _module_ticks(self, k, frames, labels, num_ticks):
    """`num_ticks` ticks of module k alone; returns a scalar to wait on."""
    module = self.modules[k]
    with tf.device(self.devices[k]), tf.name_scope(f"stage_{k}"):
      clip_length = tf.shape(frames)[1]
      inputs0 = (tf.zeros([], frames.dtype) if module.is_first
                 else tf.convert_to_tensor(module.input_buffer))
      # The output gradient rides along as a loop variable, as d_k does in
      # the engine (a tensor captured from outside the loop trips the
      # gradient of batch norm's tf.cond).
      output_gradient0 = (tf.zeros([]) if module.is_top
                          else tf.convert_to_tensor(module.gradient_buffer))
      accumulators0 = [tf.zeros_like(v)
                       for v in module.stage.trainable_variables]

      def loss_of_outputs(logits):
        return tf.reduce_sum(tf.cast(self.loss_fn(labels, logits), tf.float32))

      def body(i, inputs, output_gradient, accumulators):
        result = module.tick(
            tf.gather(frames, i % clip_length, axis=1) if module.is_first
            else inputs,
            output_gradient=None if module.is_top else output_gradient,
            loss_of_outputs=loss_of_outputs if module.is_top else None,
            training=i >= 0)
        if not module.is_first:
          # Carry the input through the emitted gradient so that no part of
          # the tick is loop-invariant (grappler would hoist it out).
          inputs = tf.where(i >= 0, inputs, result.emitted_gradient)
        return (i + 1, inputs, output_gradient,
                [acc + g for acc, g in zip(accumulators,
                                           result.parameter_gradients)])

      _, _, _, accumulators = tf.while_loop(
          lambda i, *_: i < num_ticks, body,
          (tf.constant(0), inputs0, output_gradient0, accumulators0))
      return tf.add_n([tf.reduce_sum(tf.cast(a, tf.float32))
                       for a in accumulators] + [tf.constant(0.0)])

  # -------------------------------------------------------- the tick engine

  def _sideways_graph(self, frames, labels, reset: bool,
                      loss_scale) -> ClipResult:
    """All ticks of one clip (or one chunk of a stream) in a tf.while_loop."""
    num_modules = self.num_modules
    batch_size = tf.shape(frames)[0]
    num_ticks = tf.shape(frames)[1]
    modules, devices = self.modules, self.devices

    # The buffers become loop variables: read once before the loop, written
    # once after it. `inputs[k]` is a_k of module k+1..L (module 1 reads the
    # frame), `grads[k]` is d_k of modules 1..L-1 (the top has the loss).
    # Inside the loop no stage touches a variable that another stage writes, so
    # nothing serialises the stages of a tick.
    if reset:
      inputs0 = [tf.zeros_like(m.input_buffer) for m in modules[1:]]
      grads0 = [tf.zeros_like(m.gradient_buffer) for m in modules[:-1]]
      ticks_before = tf.constant(0, tf.int64)
    else:
      inputs0 = [tf.convert_to_tensor(m.input_buffer) for m in modules[1:]]
      grads0 = [tf.convert_to_tensor(m.gradient_buffer) for m in modules[:-1]]
      ticks_before = self.ticks_seen.read_value()
    accumulators0 = [[tf.zeros_like(v) for v in m.stage.trainable_variables]
                     for m in modules]
    zero = tf.constant(0.0, tf.float32)

    def tick(t, inputs, grads, accumulators, loss_sum, correct_sum,
             valid_ticks):
      # 1-based global tick: module k (1-based) holds a real frame iff
      # tick >= k, and the top's loss is real iff tick >= L.
      global_tick = ticks_before + tf.cast(t, tf.int64) + 1
      loss_mask = tf.cast(global_tick >= num_modules, tf.float32)

      def masked_loss(logits):
        per_example = tf.cast(self.loss_fn(labels, logits), tf.float32)
        return tf.reduce_sum(per_example) * (loss_mask * loss_scale)

      new_inputs = [None] * (num_modules - 1)
      new_grads = [None] * (num_modules - 1)
      new_accumulators = [None] * num_modules
      after = []  # control inputs; only non-empty to force a test order
      for k in self.evaluation_order or range(num_modules):
        module = modules[k]
        with tf.device(devices[k]), tf.name_scope(f"stage_{k}"), \
            tf.control_dependencies(after):
          module_input = (tf.gather(frames, t, axis=1) if k == 0
                          else inputs[k - 1])
          result = module.tick(
              module_input,
              output_gradient=None if module.is_top else grads[k],
              loss_of_outputs=masked_loss if module.is_top else None,
              training=global_tick >= k + 1)
          if module.is_top:
            top = result
          else:
            new_inputs[k] = result.outputs       # a_{k+1} <- y_k
          if not module.is_first:
            new_grads[k - 1] = result.emitted_gradient  # d_{k-1} <- e_k
          new_accumulators[k] = [
              acc + g for acc, g in zip(accumulators[k],
                                        result.parameter_gradients)]
        if self.evaluation_order is not None:
          after = [result.outputs] + list(result.parameter_gradients)

      correct = tf.cast(tf.equal(
          tf.argmax(top.outputs, axis=-1, output_type=tf.int32), labels),
                        tf.float32)
      return (t + 1, new_inputs, new_grads, new_accumulators,
              loss_sum + top.loss,
              correct_sum + tf.reduce_sum(correct) * loss_mask,
              valid_ticks + loss_mask)

    _, inputs, grads, accumulators, loss_sum, correct_sum, valid_ticks = (
        tf.while_loop(
            lambda t, *_: t < num_ticks,
            tick,
            (tf.constant(0), inputs0, grads0, accumulators0, zero, zero, zero)))

    # Leave the buffers for the next chunk of the stream.
    updates = [self.ticks_seen.assign_add(tf.cast(num_ticks, tf.int64))
               if not reset else
               self.ticks_seen.assign(tf.cast(num_ticks, tf.int64))]
    for k in range(num_modules - 1):
      with tf.device(devices[k + 1]):
        updates.append(modules[k + 1].input_buffer.assign(inputs[k]))
      with tf.device(devices[k]):
        updates.append(modules[k].gradient_buffer.assign(grads[k]))

    # Clip gradient: divide by B * (number of ticks with a valid loss).
    with tf.control_dependencies(updates):
      num_terms = valid_ticks * tf.cast(batch_size, tf.float32)
      gradients = []
      for k, accs in enumerate(accumulators):
        with tf.device(devices[k]):
          gradients.extend(
              tf.math.divide_no_nan(acc, tf.cast(num_terms * loss_scale,
                                                 acc.dtype))
              for acc in accs)
      return ClipResult(gradients,
                        tf.math.divide_no_nan(loss_sum,
                                              num_terms * loss_scale),
                        tf.math.divide_no_nan(correct_sum, num_terms),
                        tf.identity(num_terms))

  # ------------------------------------------------------------ the baseline

  def _bp_graph(self, frames, labels, loss_scale) -> ClipResult:
    """Exact gradient of the mean per-frame loss over batch and all T frames.

    Time is folded into the batch (all B*T frames in one forward and one
    backward pass): the strongest single-device baseline.
    """
    num_frames = tf.shape(frames)[1]
    frame_labels = tf.repeat(labels, num_frames)  # frames are batch-major
    with tf.GradientTape() as tape:
      logits = self.frame_logits(frames, training=True)
      logits = tf.reshape(logits, [-1, tf.shape(logits)[-1]])
      per_example = tf.cast(self.loss_fn(frame_labels, logits), tf.float32)
      loss = tf.reduce_mean(per_example)
      scaled_loss = loss * loss_scale
    gradients = [g / tf.cast(loss_scale, g.dtype) for g in tape.gradient(
        scaled_loss, self.trainable_variables,
        unconnected_gradients=tf.UnconnectedGradients.ZERO)]
    correct = tf.cast(tf.equal(
        tf.argmax(logits, axis=-1, output_type=tf.int32), frame_labels),
                      tf.float32)
    return ClipResult(gradients, loss, tf.reduce_mean(correct),
                      tf.cast(tf.size(frame_labels), tf.float32))

  # -------------------------------------------------------------- the state

  def _new_modules(self) -> List[SidewaysModule]:
    return [SidewaysModule(stage, k, len(self.stages))
            for k, stage in enumerate(self.stages)]

  def _ensure_built(self, frame_shape, dtype) -> List[tuple]:
    """Builds unbuilt stages under their devices; returns per-stage shapes.

    Returns [(input_shape, input_dtype, output_shape, output_dtype)] for a
    batch of one, found by a forward pass of zeros (which also creates the
    weights of unbuilt stages on their own devices).
    """
    shapes = []
    outputs = tf.zeros((1,) + tuple(frame_shape), dtype)
    for k, (stage, device) in enumerate(zip(self.stages, self.devices)):
      inputs = outputs
      try:
        with tf.device(device):
          outputs = stage(inputs, training=False)
      except Exception as error:  # Keras raises many kinds; name the shape.
        raise ValueError(
            f"stage {k} ({stage.name}) cannot take inputs of shape "
            f"{[None] + list(inputs.shape[1:])} (from frames of shape "
            f"[B, T] + {list(frame_shape)}): {error}") from error
      shapes.append((tuple(inputs.shape[1:]), inputs.dtype,
                     tuple(outputs.shape[1:]), outputs.dtype))
    return shapes

  def _ensure_state(self, batch_size, frame_shape, dtype, reset) -> None:
    signature = (batch_size, tuple(frame_shape))
    if signature == self._state_signature:
      return
    if not reset and self._state_signature is not None:
      raise ValueError(
          f"cannot continue a stream whose state was made for batch size "
          f"{self._state_signature[0]} and frame shape "
          f"{list(self._state_signature[1])} with frames of batch size "
          f"{batch_size} and frame shape {list(frame_shape)}; pass reset=True")
    shapes = self._ensure_built(frame_shape, dtype)
    if self._state_signature is not None:
      # New shapes need new buffers: fresh wrappers, and fresh traces that
      # capture them.
      self.modules = self._new_modules()
      self._compiled.clear()
    for module, device, (in_shape, in_dtype, out_shape, out_dtype) in zip(
        self.modules, self.devices, shapes):
      with tf.device(device):
        module.allocate_state((batch_size,) + in_shape, in_dtype,
                              (batch_size,) + out_shape, out_dtype)
    self._state_signature = signature
    self.ticks_seen.assign(0)
