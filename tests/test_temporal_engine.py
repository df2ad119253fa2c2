"""Temporal layers in the engine: Sideways and BP against the float64 NumPy
reference of docs/algorithm.md ("Temporal layers"), stream == clip in
training and in streaming inference, chunks, truncated BP, flat memory.

Tolerances: the engine runs float32 over a handful of layers and ticks, the
reference float64; rtol 1e-4 with atol 1e-6 is a few float32 ulps of the
accumulated sums, as in tests/test_pipeline.py. stream == clip: 1e-5.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import sideways_tf
from sideways_tf.layers import temporal
from tests import temporal_reference as reference
from tests import util

RTOL, ATOL = 1e-4, 1e-6
STREAM_TOLERANCE = 1e-5

# Stage specs (see temporal_reference): temporal layers in several modules,
# depthwise and full convs, a shift, and a stage without any.
MODELS = {
    "conv_and_shift": [
        [("dense", 6, True), ("tconv", 3, None)],
        [("dense", 6, True), ("shift", 0.5)],
        [("dense", 3, False)]],
    "full_conv_on_top": [
        [("dense", 6, True)],
        [("dense", 6, True), ("tconv", 2, 4), ("dense", 5, True)],
        [("tconv", 3, None), ("dense", 3, False)]],
    "four_modules": [
        [("dense", 6, True), ("shift", 0.34)],
        [("tconv", 2, None), ("dense", 6, True)],
        [("dense", 6, True), ("tconv", 3, 6)],
        [("dense", 3, False)]],
}


def build(specs, in_dim=5):
  stages = [reference.keras_stage(spec) for spec in specs]
  x = tf.zeros((1, in_dim))
  with temporal.clip_scope(1):
    for stage in stages:
      x = stage(x)
  for stage in stages:  # random biases, so zero inputs are not special
    for v in stage.trainable_variables:
      if len(v.shape) == 1:
        v.assign(tf.random.normal(v.shape, stddev=0.3))
  return stages, [reference.numpy_stage(s, spec)
                  for s, spec in zip(stages, specs)]


def clip(batch=3, frames=9, seed=0):
  return (util.moving_clip(batch=batch, frames=frames, shape=(5,), seed=seed),
          util.labels_for(batch))


def assert_close(actual, expected, rtol=RTOL, atol=ATOL):
  assert len(actual) == len(expected)
  for a, e in zip(util.to_numpy(actual), expected):
    np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_sideways_matches_the_numpy_reference(model):
  stages, twins = build(MODELS[model])
  frames, labels = clip()
  pipe = sideways_tf.Pipeline(stages)
  expected = reference.sideways(twins, frames.astype(np.float64), labels)
  assert_close(pipe.compute_gradients(frames, labels), expected)


@pytest.mark.parametrize("model, replay", [("conv_and_shift", 1),
                                           ("conv_and_shift", 2),
                                           ("four_modules", 3)])
def test_replayed_sideways_matches_the_numpy_reference(model, replay):
  stages, twins = build(MODELS[model])
  frames, labels = clip(frames=10)
  pipe = sideways_tf.Pipeline(stages, replay_modules=replay)
  expected = reference.sideways(twins, frames.astype(np.float64), labels,
                                replay_modules=replay)
  assert_close(pipe.compute_gradients(frames, labels), expected)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_bp_is_the_exact_gradient_through_time(model):
  stages, twins = build(MODELS[model])
  frames, labels = clip()
  pipe = sideways_tf.Pipeline(stages)
  expected, _ = reference.bp(twins, frames.astype(np.float64), labels)
  assert_close(pipe.compute_gradients(frames, labels, "bp"), expected)


def test_bp_equals_a_tape_through_the_frame_by_frame_stream():
  """BP's clip mode == differentiating the stream frame by frame with the
  states carried (and differentiated) between frames: two ways in TF."""
  stages, _ = build(MODELS["four_modules"])
  frames, labels = clip(frames=6)
  pipe = sideways_tf.Pipeline(stages)
  layers = [l for s in stages for l in temporal.temporal_layers(s)]
  with tf.GradientTape() as tape:
    states, losses = None, []
    for t in range(frames.shape[1]):
      with temporal.stream_scope(states) as scope:
        x = tf.constant(frames[:, t])
        for stage in stages:
          x = stage(x)
      states = dict(zip(layers, scope.new_states(layers)))
      losses.append(sideways_tf.sparse_softmax_cross_entropy(labels, x))
    loss = tf.reduce_mean(tf.stack(losses))
  expected = tape.gradient(loss, pipe.trainable_variables)
  assert_close(pipe.compute_gradients(frames, labels, "bp"),
               util.to_numpy(expected), rtol=1e-5, atol=1e-7)


def test_the_training_stream_computes_the_clip_outputs():
  """stream == clip in training: the Sideways tick's loss (the top module's
  outputs of frames 1..T-L+1, one per tick, states carried) equals the loss
  of the clip path's outputs for those frames."""
  stages, _ = build(MODELS["four_modules"])
  frames, labels = clip(frames=10)
  pipe = sideways_tf.Pipeline(stages)
  result = pipe.compute_gradients_and_metrics(frames, labels)
  logits = pipe.predict_frames(frames)[:, :10 - 4 + 1]
  losses = sideways_tf.sparse_softmax_cross_entropy(
      np.repeat(labels, 7), tf.reshape(logits, (-1, 3)))
  np.testing.assert_allclose(result.loss, tf.reduce_mean(losses),
                             rtol=STREAM_TOLERANCE, atol=STREAM_TOLERANCE)


def test_streaming_inference_reproduces_the_clip():
  stages, _ = build(MODELS["four_modules"])
  frames, _ = clip(frames=8)
  pipe = sideways_tf.Pipeline(stages)
  expected = pipe.predict_frames(frames)
  specs = pipe.stream_state_specs((5,))
  assert [name for name, _, _ in specs] == [
      "activation_2", "activation_3", "activation_4", "temporal_1_1",
      "temporal_2_1", "temporal_3_1"]
  state = [tf.zeros((3,) + tuple(shape), dtype) for _, shape, dtype in specs]
  padded = np.concatenate([frames, np.zeros_like(frames[:, :3])], 1)
  outputs = []
  for t in range(padded.shape[1]):
    out, state = pipe.stream_tick(tf.constant(padded[:, t]), state,
                                  ticks=tf.fill([3], t))
    outputs.append(out)
  np.testing.assert_allclose(tf.stack(outputs[3:], 1), expected,
                             atol=STREAM_TOLERANCE, rtol=0)
  with pytest.raises(ValueError, match="ticks"):
    pipe.stream_tick(tf.constant(padded[:, 0]), state)


def test_two_chunks_of_a_stream_equal_the_whole_clip():
  stages, _ = build(MODELS["conv_and_shift"])
  frames, labels = clip(frames=10)
  util.assert_two_chunks_equal_whole(sideways_tf.Pipeline(stages), frames,
                                     labels, split=5, terms=(3, 5))


def test_replayed_chunks_equal_the_whole_clip():
  stages, _ = build(MODELS["conv_and_shift"])
  frames, labels = clip(frames=10)
  util.assert_two_chunks_equal_whole(
      sideways_tf.Pipeline(stages, replay_modules=2), frames, labels,
      split=5, terms=(3, 5))


def test_truncated_bp_carries_the_state_and_stops_the_gradient():
  stages, twins = build(MODELS["conv_and_shift"])
  frames, labels = clip(frames=10)
  pipe = sideways_tf.Pipeline(stages)
  pipe.allocate_state(3, (5,))
  pipe.reset_state()
  first = pipe.compute_gradients(frames[:, :4], labels, "bp", reset=False)
  second = pipe.compute_gradients(frames[:, 4:], labels, "bp", reset=False)
  frames64 = frames.astype(np.float64)
  expected_first, pasts = reference.bp(twins, frames64[:, :4], labels)
  expected_second, _ = reference.bp(twins, frames64[:, 4:], labels, pasts)
  assert_close(first, expected_first)
  assert_close(second, expected_second)
  # Different from starting the second chunk afresh (the state matters) and
  # from the whole clip (the gradient stopped at the edge).
  fresh = pipe.compute_gradients(frames[:, 4:], labels, "bp")
  whole, _ = reference.bp(twins, frames64, labels)
  assert max(np.abs(np.asarray(a) - b).max()
             for a, b in zip(second, util.to_numpy(fresh))) > 1e-4
  mixed = [(4 * a + 6 * b) / 10 for a, b in zip(expected_first,
                                                 expected_second)]
  assert max(np.abs(a - b).max() for a, b in zip(mixed, whole)) > 1e-4


def test_the_state_does_not_grow_with_the_clip():
  stages, _ = build(MODELS["conv_and_shift"])
  pipe = sideways_tf.Pipeline(stages)
  sizes = []
  for num_frames in (4, 16, 64):
    frames, labels = clip(frames=num_frames)
    pipe.compute_gradients(frames, labels)
    sizes.append(sum(int(np.prod(v.shape)) for v in pipe.state_variables))
  # Inputs of modules 2-3 and gradients of 1-2 ([3, 6] each), the conv's
  # last 2 inputs [3, 2, 6], the shift's last input [3, 1, 3], the counter.
  assert sizes == [4 * 18 + 36 + 9 + 1] * 3


def test_a_temporal_layer_beside_batch_norm_keeps_its_state():
  """A batch-norm stage runs its tick in a tf.cond (warm-up in inference
  mode); its temporal states come out of both branches."""
  stages = [
      keras.Sequential([keras.layers.Dense(6), keras.layers.BatchNormalization(),
                        temporal.CausalTemporalConv(
                            3, kernel_initializer="glorot_uniform")]),
      keras.Sequential([keras.layers.Dense(3)])]
  frames, labels = clip(frames=6)
  pipe = sideways_tf.Pipeline(stages)
  pipe.compute_gradients(frames, labels)
  state = np.asarray(pipe.modules[0].temporal_buffers[0])
  assert state.shape == (3, 2, 6) and np.abs(state).max() > 0
  expected = pipe.predict_frames(frames)
  specs = pipe.stream_state_specs((5,))
  stream = [tf.zeros((3,) + tuple(s), d) for _, s, d in specs]
  outputs = []
  for t in range(7):
    out, stream = pipe.stream_tick(
        tf.constant(np.pad(frames, ((0, 0), (0, 1), (0, 0)))[:, t]), stream,
        ticks=t)
    outputs.append(out)
  np.testing.assert_allclose(tf.stack(outputs[1:], 1), expected,
                             atol=STREAM_TOLERANCE, rtol=0)


@pytest.mark.parametrize("micro_batch_frames, rematerialize",
                         [(1, False), (2, False), (1, True), (3, True)])
def test_gpipe_is_bp_through_time(micro_batch_frames, rematerialize):
  """GPipe carries the temporal states from one micro-batch to the next
  (and, re-materialising, their gradient back): BP's exact gradient."""
  stages, twins = build(MODELS["full_conv_on_top"])
  frames, labels = clip(frames=6)
  pipe = sideways_tf.Pipeline(stages,
                              gpipe_micro_batch_frames=micro_batch_frames,
                              gpipe_rematerialize=rematerialize)
  expected, _ = reference.bp(twins, frames.astype(np.float64), labels)
  result = pipe.compute_gradients_and_metrics(frames, labels, "gpipe")
  assert_close(result.gradients, expected)
  bp = pipe.compute_gradients_and_metrics(frames, labels, "bp")
  np.testing.assert_allclose(result.loss, bp.loss, rtol=1e-6)


def test_online_bp_updates_are_truncated_bp_through_time():
  """Trainer(update_every_ticks=N) with BP streams the clip in chunks: the
  temporal states cross the chunk edges (here, with no update, the stream
  ends in the whole clip's states)."""
  stages, twins = build(MODELS["conv_and_shift"])
  frames, labels = clip(frames=8)
  pipe = sideways_tf.Pipeline(stages)
  trainer = sideways_tf.Trainer(pipe, keras.optimizers.SGD(0.0), "bp",
                                update_every_ticks=3)
  trainer.train_step(frames, labels)
  _, pasts = reference.bp(twins, frames.astype(np.float64), labels)
  states = [np.asarray(b) for m in pipe.modules for b in m.temporal_buffers]
  assert len(states) == 2
  for state, past in zip(states, [p for stage in pasts for p in stage]):
    np.testing.assert_allclose(state, past, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("algorithm", ["sideways", "bp", "gpipe"])
def test_bfloat16_temporal_states_and_gradients(algorithm):
  """The states take the stages' compute dtype; the gradient stays within
  bfloat16's precision (8-bit mantissa, ~4e-3 per op over a few layers:
  cosine to float32's > 0.999)."""
  from sideways_tf.models import frame_cnn_stages
  frames = np.random.RandomState(0).rand(2, 6, 8, 8, 3).astype("float32")
  gradients = {}
  try:
    for policy in ("float32", "mixed_bfloat16"):
      keras.mixed_precision.set_dtype_policy(policy)
      keras.utils.set_random_seed(0)
      pipe = sideways_tf.Pipeline(frame_cnn_stages(
          3, num_modules=3, widths=(4, 8), temporal="conv:3"))
      gradients[policy] = np.concatenate([np.ravel(np.asarray(
          g, np.float64)) for g in pipe.compute_gradients(
              frames, np.array([0, 1]), algorithm)])
      assert pipe.modules[0].temporal_buffers[0].dtype == (
          policy.replace("mixed_", ""))
  finally:
    keras.mixed_precision.set_dtype_policy("float32")
  a, b = gradients["float32"], gradients["mixed_bfloat16"]
  assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.999


def test_exact_algorithms_that_would_not_be_exact_are_refused():
  """Chunked BP would truncate the gradient through time, pipelined BP's
  backward folds the past: with temporal layers neither is BP's."""
  stages, _ = build(MODELS["conv_and_shift"])
  frames, labels = clip()
  with pytest.raises(ValueError, match="cut the gradient through time"):
    sideways_tf.Pipeline(stages, bp_chunk_frames=3).compute_gradients(
        frames, labels, "bp")
  with pytest.raises(ValueError, match="exact for frame models only"):
    sideways_tf.Pipeline(stages).compute_gradients(frames, labels,
                                                   "pipelined_bp")
