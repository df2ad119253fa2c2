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

from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import keras
from absl import logging
import tensorflow as tf

from sideways_tf import gpipe
from sideways_tf.module import SKIP_COMBINE_MODES
from sideways_tf.module import SidewaysModule
from sideways_tf.module import combine_skips

ALGORITHMS = ("sideways", "bp", "gpipe")

LossFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


class ClipResult(NamedTuple):
  """Clip gradient plus what the trainer logs about the same forward passes."""
  gradients: List[tf.Tensor]  # aligned with Pipeline.trainable_variables
  loss: tf.Tensor             # mean per-example loss over the valid loss terms
  accuracy: tf.Tensor         # fraction of valid loss terms classified right
  num_loss_terms: tf.Tensor   # B * (number of ticks/frames with a valid loss)


class StageShapes(NamedTuple):
  """Per-example shapes around one stage (found by a probe forward pass)."""
  input_shape: tuple
  input_dtype: tf.DType
  output_shape: tuple
  output_dtype: tf.DType
  skip_specs: list  # [(shape, dtype)] of the skip inputs, in source order


def _skip_sources(skips, num_modules) -> List[tuple]:
  """Validated Skip-Sideways sources of each stage: a tuple per stage."""
  sources = [()] * num_modules
  for target, from_stages in dict(skips or {}).items():
    target = int(target)
    from_stages = tuple(sorted(int(j) for j in from_stages))
    if not 0 <= target < num_modules:
      raise ValueError(f"skips: target stage {target} is not in "
                       f"[0, {num_modules})")
    for j in from_stages:
      if not 0 <= j < target - 1:
        raise ValueError(
            f"skips: stage {target} may take skips from stages 0..{target - 2}"
            f" (stage {target - 1} is its main input), got {j}")
    if len(set(from_stages)) != len(from_stages):
      raise ValueError(f"skips: repeated source in {from_stages}")
    sources[target] = from_stages
  return sources


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
    skips: Skip-Sideways (docs/skip_sideways.md). ``{k: [j, ...]}`` with
      0-based stage indices, ``j < k - 1``: stage k also receives what stage j
      emitted at the previous tick, a frame k-1-j steps newer than its main
      input. ``None``/``{}`` is plain Sideways.
    skip_combine: how a stage joins its skip inputs: "concat" (channels) or
      "add"; larger skip feature maps are average-pooled to the input size.
    gpipe_micro_batch_frames, gpipe_rematerialize: options of
      ``algorithm="gpipe"`` (see sideways_tf/gpipe.py).
  """

  def __init__(self,
               stages: Sequence[keras.layers.Layer],
               loss_fn: LossFn = sparse_softmax_cross_entropy,
               devices: Optional[Sequence[Optional[str]]] = None,
               evaluation_order: Optional[Sequence[int]] = None,
               skips: Optional[Dict[int, Sequence[int]]] = None,
               skip_combine: str = "concat",
               gpipe_micro_batch_frames: int = 1,
               gpipe_rematerialize: bool = False,
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
    if skip_combine not in SKIP_COMBINE_MODES:
      raise ValueError(f"unknown skip_combine {skip_combine!r}; expected one "
                       f"of {SKIP_COMBINE_MODES}")
    self.skip_sources = _skip_sources(skips, len(stages))
    self.skip_combine = skip_combine
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
      algorithm: ``"sideways"``, ``"bp"`` or ``"gpipe"`` (BP's exact
        gradient, pipelined over the stages; sideways_tf/gpipe.py).
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
    if algorithm == "gpipe":
      return gpipe.gpipe_graph(self, frames, labels, scale)
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

  @property
  def receptive_depth(self) -> int:
    """How many frames past frame s the prediction for frame s looks (D).

    0 for plain Sideways. A skip from stage j into stage k brings a frame
    k-1-j steps newer than k's main input, so D is the longest such path.
    """
    depth = [0] * self.num_modules
    for k in range(1, self.num_modules):
      depth[k] = max([depth[k - 1]] + [depth[j] + k - 1 - j
                                       for j in self.skip_sources[k]])
    return depth[-1]

  def frame_logits(self, frames, training=False) -> tf.Tensor:
    """Graph-building clip path: every frame through all modules. [B, T, C].

    Time is folded into the batch, no pipeline. With Skip-Sideways, frame s
    also sees frames s+1..s+D (receptive_depth) exactly as the pipelined
    stream does; frames past the clip's end are zero frames, as when a stream
    is flushed with zero padding frames.
    """
    num_frames = tf.shape(frames)[1]
    return self._sequence_outputs(frames, self.receptive_depth,
                                  training)[:, :num_frames]

  def _sequence_outputs(self, frames, pad: int, training) -> tf.Tensor:
    """Top outputs for every frame of `frames` + `pad` zero frames.

    The output of frame s is exact where s + D <= T + pad; later ones saw
    frames past the end (zeros).
    """
    if pad:
      frames = tf.concat([frames, tf.zeros_like(frames[:, :pad])], axis=1)
    shape = tf.shape(frames)
    batch_size, num_frames = shape[0], shape[1]

    def unfold(x):  # [B*T, ...] -> [B, T, ...]
      return tf.reshape(x, tf.concat([[batch_size, num_frames],
                                      tf.shape(x)[1:]], axis=0))

    def fold(x):
      return tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], axis=0))

    def newer(x, steps):  # frame s gets frame s+steps (zeros past the end)
      x = unfold(x)
      return fold(tf.concat([x[:, steps:], tf.zeros_like(x[:, :steps])], 1))

    outputs = []
    for k, (module, device) in enumerate(zip(self.modules, self.devices)):
      with tf.device(device), tf.name_scope(f"stage_{k}"):
        inputs = fold(frames) if k == 0 else outputs[k - 1]
        skip_inputs = [newer(outputs[j], k - 1 - j)
                       for j in module.skip_sources]
        outputs.append(module.call(inputs, skip_inputs, training=training))
    return unfold(outputs[-1])

  def stream_state_specs(self, frame_shape, dtype=tf.float32):
    """[(name, shape without batch, dtype)] of the streaming state.

    activation_k: the input held by module k = 2..L; skip_k_from_j: the
    Skip-Sideways input module k holds from module j (1-based, as in
    SIDEWAYS.md).
    """
    shapes = self._ensure_built(tuple(frame_shape), dtype)
    specs = [(f"activation_{k + 1}", shape.input_shape, shape.input_dtype)
             for k, shape in enumerate(shapes) if k > 0]
    for k, (module, shape) in enumerate(zip(self.modules, shapes)):
      specs.extend((f"skip_{k + 1}_from_{j + 1}", s, d) for j, (s, d) in zip(
          module.skip_sources, shape.skip_specs))
    return specs

  def stream_tick(self, frame, state):
    """Streaming inference: one tick of the pipelined forward pass alone.

    `state` is a list ordered as :meth:`stream_state_specs` (zeros at the
    start of a stream). Every module steps at once on what it holds; returns
    the top module's output, which belongs to frame t-L+1, and the next
    state. Stages run in inference mode.
    """
    num_inputs = self.num_modules - 1
    inputs, skips = list(state[:num_inputs]), list(state[num_inputs:])
    skip_inputs = []
    for module in self.modules:
      skip_inputs.append(skips[:len(module.skip_sources)])
      skips = skips[len(module.skip_sources):]
    outputs = []
    for k, (module, device) in enumerate(zip(self.modules, self.devices)):
      with tf.device(device), tf.name_scope(f"stage_{k}"):
        outputs.append(module.call(frame if k == 0 else inputs[k - 1],
                                   skip_inputs[k], training=False))
    new_state = outputs[:-1] + [outputs[j] for m in self.modules
                                for j in m.skip_sources]
    return outputs[-1], new_state

  def stage_tick_seconds(self, frames, labels, repeats: int = 5,
                         ticks_per_call: int = 16) -> List[float]:
    """Median wall time of one tick of each module, each run on its own.

    See :func:`sideways_tf.stage_timing.stage_tick_seconds`.
    """
    from sideways_tf import stage_timing  # only profiling needs it
    return stage_timing.stage_tick_seconds(self, frames, labels, repeats,
                                           ticks_per_call)

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
    # `skips[k]` are the Skip-Sideways inputs of module k (usually none).
    # Inside the loop no stage touches a variable that another stage writes, so
    # nothing serialises the stages of a tick.
    read = tf.zeros_like if reset else tf.convert_to_tensor
    inputs0 = [read(m.input_buffer) for m in modules[1:]]
    grads0 = [read(m.gradient_buffer) for m in modules[:-1]]
    skips0 = [[read(b) for b in m.skip_buffers] for m in modules]
    ticks_before = (tf.constant(0, tf.int64) if reset
                    else self.ticks_seen.read_value())
    accumulators0 = [[tf.zeros_like(v) for v in m.stage.trainable_variables]
                     for m in modules]
    zero = tf.constant(0.0, tf.float32)

    def tick(t, inputs, grads, skips, accumulators, loss_sum, correct_sum,
             valid_ticks):
      # 1-based global tick: module k (1-based) holds a real frame iff
      # tick >= k, and the top's loss is real iff tick >= L.
      global_tick = ticks_before + tf.cast(t, tf.int64) + 1
      loss_mask = tf.cast(global_tick >= num_modules, tf.float32)

      def masked_loss(logits):
        per_example = tf.cast(self.loss_fn(labels, logits), tf.float32)
        return tf.reduce_sum(per_example) * (loss_mask * loss_scale)

      outputs = [None] * num_modules
      new_grads = [None] * (num_modules - 1)
      skip_grads = [[] for _ in modules]  # extra gradients for d_j
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
              training=global_tick >= k + 1, skip_inputs=skips[k])
          outputs[k] = result.outputs
          if module.is_top:
            top = result
          if not module.is_first:
            new_grads[k - 1] = result.emitted_gradient  # d_{k-1} <- e_k
          for source, grad in zip(module.skip_sources, result.skip_gradients):
            skip_grads[source].append(grad)     # d_j <- ... + e_{k->j}
          new_accumulators[k] = [
              acc + g for acc, g in zip(accumulators[k],
                                        result.parameter_gradients)]
        if self.evaluation_order is not None:
          after = [result.outputs] + list(result.parameter_gradients)

      new_inputs = outputs[:-1]                  # a_{k+1} <- y_k
      new_skips = [[outputs[j] for j in m.skip_sources] for m in modules]
      for j, extra in enumerate(skip_grads):
        if extra:
          with tf.device(devices[j]):
            new_grads[j] = tf.add_n([new_grads[j]] + extra)
      correct = tf.cast(tf.equal(
          tf.argmax(top.outputs, axis=-1, output_type=tf.int32), labels),
                        tf.float32)
      return (t + 1, new_inputs, new_grads, new_skips, new_accumulators,
              loss_sum + top.loss,
              correct_sum + tf.reduce_sum(correct) * loss_mask,
              valid_ticks + loss_mask)

    (_, inputs, grads, skips, accumulators, loss_sum, correct_sum,
     valid_ticks) = tf.while_loop(
         lambda t, *_: t < num_ticks, tick,
         (tf.constant(0), inputs0, grads0, skips0, accumulators0, zero, zero,
          zero))

    # Leave the buffers for the next chunk of the stream.
    updates = [self.ticks_seen.assign_add(tf.cast(num_ticks, tf.int64))
               if not reset else
               self.ticks_seen.assign(tf.cast(num_ticks, tf.int64))]
    for k in range(num_modules - 1):
      with tf.device(devices[k + 1]):
        updates.append(modules[k + 1].input_buffer.assign(inputs[k]))
      with tf.device(devices[k]):
        updates.append(modules[k].gradient_buffer.assign(grads[k]))
    for k, module in enumerate(modules):
      with tf.device(devices[k]):
        updates.extend(b.assign(v) for b, v in zip(module.skip_buffers,
                                                   skips[k]))

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

    (With Skip-Sideways: over the T-D frames whose inputs all lie in the
    clip.) Time is folded into the batch (all B*T frames in one forward and one
    backward pass): the strongest single-device baseline.
    """
    # Frames whose receptive field lies in the clip: all T of them for plain
    # Sideways; with skips the last D frames would see past the end.
    num_frames = tf.shape(frames)[1] - self.receptive_depth
    frame_labels = tf.repeat(labels, num_frames)  # frames are batch-major
    with tf.GradientTape() as tape:
      logits = self._sequence_outputs(frames, 0, training=True)[:, :num_frames]
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
    return [SidewaysModule(stage, k, len(self.stages),
                           skip_sources=self.skip_sources[k],
                           skip_combine=self.skip_combine)
            for k, stage in enumerate(self.stages)]

  def _ensure_built(self, frame_shape, dtype) -> List[StageShapes]:
    """Builds unbuilt stages under their devices; returns per-stage shapes.

    A forward pass of one zero frame finds the shapes (and creates the weights
    of unbuilt stages on their own devices).
    """
    shapes, outputs = [], []
    frame = tf.zeros((1,) + tuple(frame_shape), dtype)
    for k, (module, device) in enumerate(zip(self.modules, self.devices)):
      inputs = frame if k == 0 else outputs[k - 1]
      skip_inputs = [outputs[j] for j in module.skip_sources]
      try:
        with tf.device(device):
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
          [(tuple(x.shape[1:]), x.dtype) for x in skip_inputs]))
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
    for module, device, shape in zip(self.modules, self.devices, shapes):
      with tf.device(device):
        module.allocate_state(
            (batch_size,) + shape.input_shape, shape.input_dtype,
            (batch_size,) + shape.output_shape, shape.output_dtype,
            [((batch_size,) + s, d) for s, d in shape.skip_specs])
    self._state_signature = signature
    self.ticks_seen.assign(0)
