"""Backprop (BP): the exact baseline every other algorithm is tested against.

Standard backprop on the same modules and loss, with time folded into the
batch (all B*T frames in one forward and one backward pass): the strongest
single-device baseline.
"""

from __future__ import annotations

import tensorflow as tf

from sideways_tf.engine import inference
from sideways_tf.engine.algorithm import Algorithm
from sideways_tf.engine.algorithm import ClipResult


def bp_clip(pipe, frames, labels, loss_scale) -> ClipResult:
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



class Backprop(Algorithm):
  """Exact gradient of the mean per-frame loss, time folded into the batch."""
  name = "bp"
  summary = "backprop: exact, all B*T frames in one pass"
  exact = True
  streams = False

  def clip_gradients(self, pipeline, frames, labels, reset, loss_scale):
    del reset  # BP has no state between calls
    return bp_clip(pipeline, frames, labels, loss_scale)


BP = Backprop()
