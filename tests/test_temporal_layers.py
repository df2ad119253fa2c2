"""Causal temporal layers: clip mode, stream mode, the same weights and numbers.

stream == clip is checked within 1e-5 (float32, a handful of multiply-adds
per output), clip mode against the formula in NumPy float64.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from sideways_tf.layers import temporal
from sideways_tf.layers.temporal import CausalTemporalConv, TemporalShift

TOLERANCE = 1e-5


def _clip(layer_or_stage, frames):
  """[B, T, ...] through the layer in clip mode -> ([B, T, ...], states)."""
  batch, num_frames = frames.shape[:2]
  folded = tf.reshape(frames, (batch * num_frames,) + frames.shape[2:])
  with temporal.clip_scope(num_frames) as scope:
    outputs = layer_or_stage(folded)
  layers = temporal.temporal_layers(layer_or_stage)
  return (tf.reshape(outputs, (batch, num_frames) + tuple(outputs.shape[1:])),
          scope.new_states(layers))


def _stream(layer_or_stage, frames, states=None):
  """The same frames one per call, the state carried -> ([B, T, ...], states)."""
  layers = temporal.temporal_layers(layer_or_stage)
  outputs = []
  for t in range(frames.shape[1]):
    given = dict(zip(layers, states)) if states is not None else None
    with temporal.stream_scope(given) as scope:
      outputs.append(layer_or_stage(frames[:, t]))
    states = scope.new_states(layers)
  return tf.stack(outputs, 1), states


def _frames(shape, seed=0):
  return tf.constant(np.random.RandomState(seed).randn(*shape), tf.float32)


LAYERS = {
    "conv3_depthwise": lambda: CausalTemporalConv(
        3, kernel_initializer="glorot_uniform"),
    "conv2_full": lambda: CausalTemporalConv(2, filters=5),
    "shift": lambda: TemporalShift(0.25),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("frame_shape", [(4,), (3, 3, 4)])
def test_stream_equals_clip(name, frame_shape):
  layer = LAYERS[name]()
  frames = _frames((2, 6) + frame_shape)
  clip_out, clip_states = _clip(layer, frames)
  stream_out, stream_states = _stream(layer, frames)
  np.testing.assert_allclose(stream_out, clip_out, atol=TOLERANCE, rtol=0)
  np.testing.assert_allclose(stream_states[0], clip_states[0], atol=0, rtol=0)


def _numpy_causal_conv(frames, kernel, bias):
  """y_t = b + sum_i W_i x_{t-K+1+i} with zeros before frame 0 (float64)."""
  frames = np.asarray(frames, np.float64)
  kernel = np.asarray(kernel, np.float64)
  size = kernel.shape[0]
  padded = np.concatenate(
      [np.zeros_like(frames[:, :size - 1]), frames], 1)
  out = 0.0
  for i in range(size):
    taps = padded[:, i:i + frames.shape[1]]
    out = out + (taps * kernel[i] if kernel.ndim == 2
                 else np.einsum("...c,cf->...f", taps, kernel[i]))
  return out + np.asarray(bias, np.float64)


@pytest.mark.parametrize("filters", [None, 3])
def test_clip_mode_is_the_causal_convolution(filters):
  layer = CausalTemporalConv(3, filters=filters,
                             kernel_initializer="glorot_uniform")
  frames = _frames((2, 5, 2, 2, 4))
  _clip(layer, frames)  # builds it
  layer.bias.assign(np.arange(layer.bias.shape[0], dtype="float32"))
  outputs, _ = _clip(layer, frames)
  expected = _numpy_causal_conv(frames, layer.kernel, layer.bias)
  np.testing.assert_allclose(outputs, expected, atol=1e-5, rtol=1e-5)


def test_shift_moves_a_fraction_of_the_channels_one_frame_later():
  layer = TemporalShift(0.25)
  frames = _frames((2, 4, 8))
  outputs, states = _clip(layer, frames)
  np.testing.assert_array_equal(outputs[:, 0, :2], np.zeros((2, 2)))
  np.testing.assert_array_equal(outputs[:, 1:, :2], frames[:, :-1, :2])
  np.testing.assert_array_equal(outputs[:, :, 2:], frames[:, :, 2:])
  np.testing.assert_array_equal(states[0], frames[:, -1:, :2])
  assert layer.state_shape((8,)) == (1, 2)


def test_a_frame_never_sees_the_future():
  layer = CausalTemporalConv(3, filters=4, kernel_initializer="glorot_uniform")
  frames = _frames((1, 6, 4)).numpy()
  changed = frames.copy()
  changed[:, 3] += 1.0
  before, _ = _clip(layer, tf.constant(frames))
  after, _ = _clip(layer, tf.constant(changed))
  np.testing.assert_array_equal(before[:, :3], after[:, :3])
  assert np.abs(np.asarray(before[:, 3:5]) - after[:, 3:5]).min() > 0


def test_chunks_carrying_the_state_equal_the_whole_clip():
  layer = CausalTemporalConv(3, kernel_initializer="glorot_uniform")
  frames = _frames((2, 7, 3, 3, 2))
  whole, whole_states = _clip(layer, frames)
  first, states = _clip(layer, frames[:, :3])
  with temporal.clip_scope(4, {layer: states[0]}) as scope:
    second = layer(tf.reshape(frames[:, 3:], (8, 3, 3, 2)))
  np.testing.assert_allclose(
      tf.concat([first, tf.reshape(second, (2, 4, 3, 3, 2))], 1), whole,
      atol=TOLERANCE, rtol=0)
  np.testing.assert_array_equal(scope.new_state(layer), whole_states[0])


def test_record_false_keeps_the_state_per_clip():
  layer = CausalTemporalConv(2)
  past = _frames((2, 1, 3), seed=1)
  frame = _frames((2, 3), seed=2)
  with temporal.stream_scope({layer: past},
                             record=tf.constant([True, False])) as scope:
    layer(frame)
  state = scope.new_state(layer)
  np.testing.assert_array_equal(state[0], frame[0:1])
  np.testing.assert_array_equal(state[1], past[1])


def test_fold_keeps_values_and_moves_the_past_gradient_to_the_frame():
  """The Sideways backward: the gradient w.r.t. the past joins the current
  frame's; forward values are bit-identical."""
  layer = CausalTemporalConv(3, kernel_initializer="glorot_uniform")
  past = _frames((2, 2, 4), seed=1)
  frame = _frames((2, 4), seed=2)
  weights = _frames((2, 4), seed=3)
  results = {}
  for fold in (False, True):
    with tf.GradientTape(persistent=True) as tape:
      tape.watch([past, frame])
      with temporal.stream_scope({layer: past},
                                 fold_past_gradient=fold) as scope:
        out = layer(frame)
      loss = tf.reduce_sum(out * weights)
    results[fold] = (out, tape.gradient(loss, frame),
                     tape.gradient(loss, past), scope.new_state(layer),
                     tape.gradient(loss, layer.kernel))
  exact, folded = results[False], results[True]
  np.testing.assert_array_equal(folded[0], exact[0])
  np.testing.assert_array_equal(folded[3], exact[3])
  np.testing.assert_allclose(folded[1], exact[1] + tf.reduce_sum(exact[2], 1),
                             atol=1e-6, rtol=1e-6)
  assert folded[2] is None or not np.any(folded[2])
  np.testing.assert_array_equal(folded[4], exact[4])  # weights: exact


def test_fold_gives_the_shifted_channels_a_gradient():
  layer = TemporalShift(0.5)
  frame = _frames((1, 4))
  with tf.GradientTape() as tape:
    tape.watch(frame)
    with temporal.stream_scope(fold_past_gradient=True):
      loss = tf.reduce_sum(layer(frame))
  np.testing.assert_array_equal(tape.gradient(loss, frame), np.ones((1, 4)))


def test_outside_a_scope_each_input_is_a_first_frame(caplog):
  """What Keras' SavedModel tracing of a stage sees; eagerly, a warning
  says where to call the layer instead."""
  layer = CausalTemporalConv(2, kernel_initializer="glorot_uniform")
  frames = _frames((3, 4))
  with caplog.at_level("WARNING"):
    outputs = layer(frames)
  assert "clip_scope" in caplog.text
  expected, _ = _clip(layer, frames[:, None])
  np.testing.assert_array_equal(outputs, expected[:, 0])


def test_a_layer_called_twice_in_one_scope_is_refused():
  layer = TemporalShift()
  with temporal.clip_scope(1):
    layer(tf.zeros((1, 8)))
    with pytest.raises(ValueError, match="called twice"):
      layer(tf.zeros((1, 8)))


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="kernel_size"):
    CausalTemporalConv(1)
  with pytest.raises(ValueError, match="filters"):
    CausalTemporalConv(3, filters=0)
  with pytest.raises(ValueError, match="fraction"):
    TemporalShift(0.0)
  with pytest.raises(ValueError, match="fold_past_gradient"):
    temporal.TemporalScope(3, fold_past_gradient=True)


def test_current_frame_initializer_starts_as_the_frame_model():
  frames = _frames((2, 5, 6))
  for layer in (CausalTemporalConv(3), CausalTemporalConv(2, filters=6)):
    outputs, _ = _clip(layer, frames)
    np.testing.assert_array_equal(outputs, frames)


def _stage():
  """A stage mixing spatial and temporal layers, temporal ones nested."""
  return keras.Sequential([
      keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
      CausalTemporalConv(3, kernel_initializer="glorot_uniform"),
      keras.Sequential([keras.layers.Conv2D(8, 3, padding="same"),
                        TemporalShift(0.25)]),
      keras.layers.ReLU(),
      CausalTemporalConv(2, filters=8),
      keras.layers.GlobalAveragePooling2D(),
      keras.layers.Dense(3),
  ])


def test_a_stage_of_several_temporal_layers_streams_as_its_clip():
  stage = _stage()
  frames = _frames((2, 7, 6, 6, 2))
  clip_out, clip_states = _clip(stage, frames)
  stream_out, stream_states = _stream(stage, frames)
  assert len(temporal.temporal_layers(stage)) == 3
  np.testing.assert_allclose(stream_out, clip_out, atol=TOLERANCE, rtol=0)
  for a, b in zip(stream_states, clip_states):
    np.testing.assert_allclose(a, b, atol=TOLERANCE, rtol=0)
  shapes = [tuple(s.shape[1:]) for s in clip_states]
  assert shapes == [(2, 6, 6, 4), (1, 6, 6, 2), (1, 6, 6, 8)]


def test_config_round_trip():
  for layer in (CausalTemporalConv(4, filters=3, use_bias=False),
                TemporalShift(0.25)):
    copy = type(layer).from_config(layer.get_config())
    assert copy.get_config() == layer.get_config()


def test_a_temporal_layer_without_mix_says_so():
  class NoMix(temporal.TemporalLayer):
    memory = 1

  with pytest.raises(TypeError, match="NoMix is a TemporalLayer without"):
    NoMix().mix(None, None)
