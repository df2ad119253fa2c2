"""Temporal layers in the engine: Sideways and BP against the float64 NumPy
reference of docs/algorithm.md ("Temporal layers"), stream == clip in
training and in streaming inference, chunks, truncated BP, flat memory.

Tolerances: the engine runs float32 over a handful of layers and ticks, the
reference float64; rtol 1e-4 with atol 1e-6 is a few float32 ulps of the
accumulated sums, as in tests/test_pipeline.py. stream == clip: 1e-5.
16-bit stages: a bound derived from the unit roundoff and the roundings in
each gradient's history (tests/mixed_precision_model.py).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import sideways_tf
from sideways_tf.layers import temporal
from tests import mixed_precision_model
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


def temporal_16_bit_stages():
  """Three modules, the causal temporal conv in the middle one (its state
  crosses Sideways ticks, BP's clip, GPipe's micro-batches)."""
  return [keras.layers.Dense(3, activation="tanh", name="dense_0"),
          keras.Sequential([temporal.CausalTemporalConv(3, name="conv"),
                            keras.layers.Dense(3, activation="tanh",
                                               name="dense_1")],
                           name="temporal"),
          keras.layers.Dense(3, name="top")]


BATCH_16, FRAMES_16 = 2, 6


def test_the_temporal_rounding_counts_of_the_docstring():
  pipe = sideways_tf.Pipeline(temporal_16_bit_stages())
  pipe.build((3,))
  counts = mixed_precision_model.gradient_roundings(
      pipe.stages, BATCH_16 * FRAMES_16)
  by_path = {v.path: round(counts[id(v)], 1)
             for v in pipe.trainable_variables}
  assert by_path["temporal/conv/kernel"] == 44.7
  assert by_path["dense_0/kernel"] == 48.2
  assert max(by_path.values()) == 48.2
  assert min(by_path.values()) == by_path["top/bias"] == 28.5


@pytest.mark.parametrize("algorithm", ["sideways", "bp", "gpipe"])
@pytest.mark.parametrize("policy, loss_scale", [("mixed_bfloat16", None),
                                                ("mixed_float16", 2.0 ** 10)])
def test_16_bit_temporal_states_and_gradients(algorithm, policy, loss_scale):
  """The temporal states take the stages' compute dtype, and every gradient
  entry is within a bound derived from the arithmetic of float32's.

  The model and the rules are those of tests/mixed_precision_model.py
  (exact 16-bit inputs; no cancellation: non-negative frames and weights,
  one label, top weights in its column only; no amplification: columns and
  each channel's taps summing to at most 1/2, biases 0; a sum of n terms
  counts n roundings, whatever the kernel). What the causal temporal conv
  (K = 3 taps, depthwise) adds to a value's history:

  * forward, its output sums K products of its kernel (exact) with the
    current input and the K - 1 previous ones: K roundings. The previous
    ones come from the state, a copy of earlier inputs held in the compute
    dtype (asserted below), so carrying it rounds nothing, and they have
    the current input's history;
  * backward, an input's gradient sums K products (BP through time: the
    frames that see it; Sideways: the past's gradient folded into the
    current frame's, K - 1 terms added to 1): K roundings; its kernel's
    gradient sums over at most B*T frames and clips: B*T roundings, as a
    Dense kernel's.

  With B*T = 12 rows this gives 44.7 roundings for the temporal kernel's
  gradient and 48.2 for the bottom kernel's, the longest history: bounds of
  0.21 and 0.23 for bfloat16 (u = 2^-8), 0.022 and 0.024 for float16
  (u = 2^-11, loss scale 2^10: every intermediate stays a normal float16).
  Measured on this machine, with oneDNN's kernels and with Eigen's
  (TF_ENABLE_ONEDNN_OPTS=0): at most 0.012 (bfloat16) and 0.0009 (float16).
  A 16-bit gradient 10% off fails the float16 case only (30% fails both);
  dropping the carried state (Sideways, GPipe) or the past taps fails both.
  """
  frames = mixed_precision_model.exact_clip(BATCH_16, FRAMES_16, 3)
  try:
    reference_pipe, reference = mixed_precision_model.clip_gradients(
        temporal_16_bit_stages, "float32", algorithm, frames)
    pipe, gradients = mixed_precision_model.clip_gradients(
        temporal_16_bit_stages, policy, algorithm, frames, loss_scale)
  finally:
    keras.mixed_precision.set_dtype_policy("float32")
  for p, dtype in ((reference_pipe, "float32"),
                   (pipe, policy[len("mixed_"):])):
    assert [b.dtype for b in p.modules[1].temporal_buffers] == [dtype]
  mixed_precision_model.assert_within_bounds(
      gradients, reference, pipe, BATCH_16 * FRAMES_16, policy)


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
