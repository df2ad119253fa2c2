"""Backprop (BP): the exact baseline every other algorithm is tested against.

Standard backprop on the same modules and loss, with time folded into the
batch (all B*T frames in one forward and one backward pass): the strongest
single-device baseline.

Chunked BP (``Pipeline(..., bp_chunk_frames=N)``, ``--config.bp_chunk_frames
=N``) computes the same gradient N frames at a time: a ``tf.while_loop`` over
chunks, one ``GradientTape`` per chunk, the parameter gradients summed in
loop variables. Only one chunk's activations are alive at a time, so memory
does not grow with T (beyond the clip itself), where plain BP keeps the
activations of all B*T frames. It is an option of ``bp`` rather than an
algorithm of its own because it *is* BP's gradient: only the order of the
sums changes (as GPipe's re-materialisation is an option of ``gpipe``).

Frames are independent samples of a per-frame model, so cutting the clip
into chunks truncates nothing. With Skip-Sideways skips the prediction for
frame s also reads frames s+1..s+D (D = ``Pipeline.receptive_depth``): each
chunk then runs its N predicted frames plus the D frames after them (the
context, recomputed by the next chunk too) and takes the loss of its N
frames only, so the gradient stays exact, at the price of D extra frames'
forward and backward per chunk. Stages with moving statistics (batch norm)
are refused: their batch statistics over one chunk would differ from BP's
over all B*T frames.

With causal temporal layers it is the exact
gradient through time over the clip; fed a stream in chunks
(``reset=False``) it carries the temporal layers' states across the chunk
edges and stops the gradient there (truncated BP through time).
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from sideways_tf.engine import inference
from sideways_tf.engine.algorithm import Algorithm
from sideways_tf.engine.algorithm import ClipResult


class BPOptions(NamedTuple):
  """How `algorithm="bp"` walks the clip."""
  chunk_frames: int = 0  # 0: all T frames at once; N: N-frame chunks


def make_options(chunk_frames=0) -> BPOptions:
  """Validated options (ValueError naming the bad value)."""
  if isinstance(chunk_frames, bool) or int(chunk_frames) != chunk_frames or (
      int(chunk_frames) < 0):
    raise ValueError(f"bp_chunk_frames must be an integer >= 0 (0 = the "
                     f"whole clip at once), got {chunk_frames!r}")
  return BPOptions(int(chunk_frames))


def bp_clip(pipe, frames, labels, loss_scale, reset=True) -> ClipResult:
  """Exact gradient of the mean per-frame loss over batch and all T frames.

  (With Skip-Sideways: over the T-D frames whose inputs all lie in the clip;
  the last D frames would see past the end.) Time is folded into the batch
  (all B*T frames in one forward and one backward pass): the strongest
  single-device baseline. `reset=False` (temporal layers): the clip
  continues the temporal states the previous call left, as constants, and
  leaves its own.
  """
  num_frames = tf.shape(frames)[1] - pipe.receptive_depth
  frame_labels = tf.repeat(labels, num_frames)  # frames are batch-major
  if not reset and any(len(m.temporal_buffers) != len(m.temporal_layers)
                       for m in pipe.modules):
    raise ValueError("BP with reset=False continues the temporal states of "
                     "the previous call: prepare_inputs (or allocate_state) "
                     "first")
  carried = None if reset else {
      layer: tf.convert_to_tensor(buffer) for m in pipe.modules
      for layer, buffer in zip(m.temporal_layers, m.temporal_buffers)}
  with tf.GradientTape() as tape:
    logits, states = inference.sequence_outputs_and_states(
        pipe, frames, 0, training=True, temporal_states=carried)
    logits = logits[:, :num_frames]
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
  updates = [] if reset else [
      buffer.assign(state) for m, module_states in zip(pipe.modules, states)
      for buffer, state in zip(m.temporal_buffers, module_states)]
  with tf.control_dependencies(updates):
    return ClipResult([tf.identity(g) for g in gradients], loss,
                      tf.reduce_mean(correct),
                      tf.cast(tf.size(frame_labels), tf.float32))


def chunked_bp_clip(pipe, frames, labels, loss_scale,
                    chunk_frames: int) -> ClipResult:
  """BP's clip gradient, accumulated over chunks of `chunk_frames` frames.

  The full chunks run in a ``tf.while_loop`` (one tape per iteration, so
  only that chunk's activations are alive); a shorter last chunk, when N
  does not divide the T-D predicted frames, runs once after the loop. Every
  chunk's loss is summed and scaled by 1/(B*(T-D)) before it is
  differentiated, as BP's mean is, so the chunks' gradients add up to BP's.
  """
  batch_size, num_frames = int(frames.shape[0]), int(frames.shape[1])
  depth = pipe.receptive_depth
  predicted = num_frames - depth
  full_chunks, last = divmod(predicted, chunk_frames)
  num_terms = float(batch_size * predicted)
  variables = pipe.trainable_variables
  scale = tf.cast(loss_scale, tf.float32) / num_terms

  def chunk(start, size: int, sums):
    """Adds the chunk of `size` predicted frames from `start` to `sums`."""
    window = tf.slice(frames, [0, start] + [0] * (frames.shape.rank - 2),
                      [batch_size, size + depth] + list(frames.shape[2:]))
    frame_labels = tf.repeat(labels, size)
    with tf.GradientTape() as tape:
      logits = inference.sequence_outputs(pipe, window, 0,
                                          training=True)[:, :size]
      logits = tf.reshape(logits, [batch_size * size, -1])
      loss_sum = tf.reduce_sum(tf.cast(pipe.loss_fn(frame_labels, logits),
                                       tf.float32))
      scaled = loss_sum * scale
    gradients = tape.gradient(
        scaled, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    correct = tf.reduce_sum(tf.cast(tf.equal(
        tf.argmax(logits, axis=-1, output_type=tf.int32), frame_labels),
                                    tf.float32))
    return ([s + g for s, g in zip(sums[0], gradients)],
            sums[1] + loss_sum, sums[2] + correct)

  zero = tf.constant(0.0, tf.float32)
  sums = ([tf.zeros_like(v) for v in variables], zero, zero)
  if full_chunks:
    _, sums = tf.while_loop(
        lambda i, _: i < full_chunks,
        lambda i, s: (i + 1, chunk(i * chunk_frames, chunk_frames, s)),
        (tf.constant(0), sums))
  if last:
    sums = chunk(tf.constant(full_chunks * chunk_frames), last, sums)
  gradients = [g / tf.cast(loss_scale, g.dtype) for g in sums[0]]
  return ClipResult(gradients, sums[1] / num_terms, sums[2] / num_terms,
                    tf.constant(num_terms, tf.float32))


def validate_chunks(pipeline, num_frames: int) -> None:
  """Chunked BP needs a frame to predict, and refuses stages whose batch
  statistics would change."""
  if num_frames <= pipeline.receptive_depth:
    raise ValueError(
        f"a clip of T = {num_frames} frames has no frame whose inputs all lie "
        f"in it: the skips look D = {pipeline.receptive_depth} frames ahead")
  if pipeline.has_temporal_layers:
    # A frame's loss reaches the frames before it: chunks would cut that
    # gradient (truncate) instead of reordering BP's sums.
    raise ValueError(
        f"bp_chunk_frames={pipeline.algorithm_options['bp'].chunk_frames} "
        f"with causal temporal layers would cut the gradient through time at "
        f"every chunk edge, so it would not be BP's gradient; use "
        f"bp_chunk_frames=0 (exact, memory grows with T), algorithm='gpipe' "
        f"(exact, gpipe_rematerialize=True keeps less), or BP on a stream in "
        f"chunks with reset=False (update_every_ticks: truncated BP)")
  for k, stage in enumerate(pipeline.stages):
    if stage.non_trainable_variables:
      raise ValueError(
          f"bp_chunk_frames={pipeline.algorithm_options['bp'].chunk_frames}: "
          f"stage {k} ({stage.name}) has non-trainable state "
          f"({stage.non_trainable_variables[0].path}, e.g. batch norm "
          f"moving statistics); its statistics over one chunk would differ "
          f"from BP's over the whole clip. Use a stateless normalisation "
          f"(group/layer norm) or bp_chunk_frames=0")


class Backprop(Algorithm):
  """Exact gradient of the mean per-frame loss, time folded into the batch
  (or accumulated over chunks of frames, ``bp_chunk_frames``)."""
  name = "bp"
  summary = ("backprop: exact, all B*T frames in one pass (or N-frame "
             "chunks, bp_chunk_frames=N: memory flat in T)")
  exact = True
  streams = False
  options = {"bp_chunk_frames": 0}
  config_keys = {"bp_chunk_frames": "bp_chunk_frames"}

  def make_options(self, bp_chunk_frames=0) -> BPOptions:
    return make_options(bp_chunk_frames)

  def validate(self, pipeline, num_frames: int, reset: bool) -> None:
    del reset  # BP has no state between calls
    if pipeline.algorithm_options["bp"].chunk_frames:
      validate_chunks(pipeline, num_frames)

  def clip_gradients(self, pipeline, frames, labels, reset, loss_scale):
    chunk_frames = pipeline.algorithm_options["bp"].chunk_frames
    if chunk_frames:
      return chunked_bp_clip(pipeline, frames, labels, loss_scale,
                             chunk_frames)
    # Only temporal layers keep state between BP calls (reset=False).
    return bp_clip(pipeline, frames, labels, loss_scale, reset)


BP = Backprop()
