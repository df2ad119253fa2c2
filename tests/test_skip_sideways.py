"""Skip-Sideways: temporal skip connections on the same tick engine."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import sideways_tf
from sideways_tf.engine.skips import skip_offset
from tests import skip_reference
from tests import util
from tests.test_pipeline import Scale, assert_all_close, grads_by_module
from tests.test_pipeline import half_square_loss


class ScaleSum(Scale):
  """y = w * sum(inputs) + b for [x] or concat([main, skip]) inputs."""

  def call(self, x):
    return self.w * tf.reduce_sum(x, axis=-1, keepdims=True) + self.b


def test_no_skips_is_plain_sideways():
  stages = util.conv_stages(3)
  frames = util.moving_clip(batch=2, frames=7, shape=(6, 6, 2))
  labels = util.labels_for(2)
  plain = sideways_tf.Pipeline(stages)
  empty = sideways_tf.Pipeline(stages, skips={})
  for algorithm in sideways_tf.ALGORITHMS:
    np.testing.assert_equal(
        util.to_numpy(empty.compute_gradients(frames, labels, algorithm)),
        util.to_numpy(plain.compute_gradients(frames, labels, algorithm)))
  assert empty.receptive_depth == 0
  assert [len(m.skip_buffers) for m in empty.modules] == [0, 0, 0]


def test_receptive_depth():
  stages = util.dense_stages(4)
  assert sideways_tf.Pipeline(stages, skips={2: [0]}).receptive_depth == 1
  assert sideways_tf.Pipeline(stages, skips={3: [0]}).receptive_depth == 2
  assert sideways_tf.Pipeline(stages, skips={2: [0], 3: [1]}).receptive_depth == 1


def test_forward_provenance_of_what_a_module_combines():
  """Stage k (0-based) combines frame t-k (main) with frame t-1-j (skip
  from stage j) at tick t: with additive identity stages the top emits the
  sum of the two frame tags."""
  pipe = sideways_tf.Pipeline([ScaleSum() for _ in range(3)],
                              half_square_loss, skips={2: [0]})
  state = [tf.zeros([1, 1])] * 2
  for t in range(1, 9):
    out, state = pipe.stream_tick(tf.constant([[float(t)]]), state)
    if t >= 3:
      assert float(out[0, 0]) == (t - 2) + (t - 1)


def _gradients_tick_by_tick(pipe, frames):
  """Streams a [1, T, 1] clip one frame per call (no reset, label 0);
  yields (t, the tick's gradients by module) for t = 1..T."""
  for t in range(1, frames.shape[1] + 1):
    yield t, grads_by_module(pipe, util.to_numpy(pipe.compute_gradients(
        frames[:, t - 1:t], np.zeros([1], "int32"), reset=False)))


def test_gradient_provenance_along_the_skip():
  """d_0 at tick t = (what stage 1 emitted at t-1) + (what stage 2 sent back
  along the skip at t-1): gradients of the losses of two different frames."""
  pipe = sideways_tf.Pipeline([ScaleSum() for _ in range(3)],
                              half_square_loss, skips={2: [0]})
  frames = np.arange(1, 13, dtype="float32").reshape(1, -1, 1)
  pipe.allocate_state(1, (1,))
  pipe.reset_state()
  delta2 = lambda t: 2 * t - 3 if t >= 3 else 0   # top: y = tags t-2 and t-1
  delta1 = lambda t: delta2(t - 1)
  delta0 = lambda t: delta1(t - 1) + delta2(t - 1)
  for t, per_tick in _gradients_tick_by_tick(pipe, frames):
    for k, delta in enumerate([delta0, delta1, delta2]):
      grad_w, grad_b = per_tick[k]
      assert grad_b == delta(t), (t, k)
    assert per_tick[0][0] == t * delta0(t)  # stage 0's input is frame t


def numpy_skip_sideways(weights, frames, labels):
  """Sideways with one skip 0 -> 2 (concat), tanh dense stages, from the rule:
  every stage reads the buffers of t-1; the skip's gradient joins d_0."""
  batch, num_frames, _ = frames.shape
  onehot = np.eye(weights[-1][0].shape[1])[labels]
  hidden = weights[0][0].shape[1]
  a1 = np.zeros((batch, hidden)); a2 = np.zeros((batch, hidden))
  s2 = np.zeros((batch, hidden))
  d0 = np.zeros((batch, hidden)); d1 = np.zeros((batch, hidden))
  grads = [[np.zeros_like(w), np.zeros_like(b)] for w, b in weights]
  for t in range(1, num_frames + 1):
    x0 = frames[:, t - 1]
    y0 = np.tanh(x0 @ weights[0][0] + weights[0][1])
    y1 = np.tanh(a1 @ weights[1][0] + weights[1][1])
    x2 = np.concatenate([a2, s2], axis=1)
    y2 = x2 @ weights[2][0] + weights[2][1]
    p = np.exp(y2 - y2.max(-1, keepdims=True))
    delta2 = (p / p.sum(-1, keepdims=True) - onehot) * (t >= 3)
    delta1 = d1 * (1 - y1 ** 2)
    delta0 = d0 * (1 - y0 ** 2)
    for k, (x, delta) in enumerate([(x0, delta0), (a1, delta1),
                                    (x2, delta2)]):
      grads[k][0] += x.T @ delta
      grads[k][1] += delta.sum(0)
    e2 = delta2 @ weights[2][0].T
    e1 = delta1 @ weights[1][0].T
    a1, a2, s2 = y0, y1, y0
    d1, d0 = e2[:, :hidden], e1 + e2[:, hidden:]
  return [g / (batch * (num_frames - 2)) for pair in grads for g in pair]


def test_matches_numpy_reference_with_a_skip():
  hidden = 4
  stages = [keras.layers.Dense(hidden, activation="tanh"),
            keras.layers.Dense(hidden, activation="tanh"),
            keras.layers.Dense(3)]
  for stage, fan_in in zip(stages, (5, hidden, 2 * hidden)):
    stage.build((None, fan_in))
  pipe = sideways_tf.Pipeline(stages, skips={2: [0]})
  frames = util.moving_clip(batch=3, frames=8)
  labels = util.labels_for(3)
  weights = [tuple(np.asarray(v, np.float64) for v in s.trainable_variables)
             for s in stages]
  expected = numpy_skip_sideways(weights, frames.astype(np.float64), labels)
  assert_all_close(pipe.compute_gradients(frames, labels), expected)


def test_bp_with_skips_is_the_gradient_of_the_unrolled_model():
  stages = util.conv_stages(3)
  for stage in stages[:2]:
    stage.build((None, 6, 6, 2) if stage is stages[0] else (None, 6, 6, 4))
  pipe = sideways_tf.Pipeline(stages, skips={2: [0]})
  frames = tf.constant(util.moving_clip(batch=2, frames=5, shape=(6, 6, 2)))
  labels = util.labels_for(2)
  grads = pipe.compute_gradients(frames, labels, "bp")
  with tf.GradientTape() as tape:
    h0 = [stages[0](frames[:, s]) for s in range(5)]
    losses = []
    for s in range(4):  # frame s also sees frame s+1: D = 1
      logits = stages[2](tf.concat([stages[1](h0[s]), h0[s + 1]], -1))
      losses.append(keras.losses.sparse_categorical_crossentropy(
          labels, logits, from_logits=True))
    loss = tf.reduce_mean(tf.stack(losses))
  assert_all_close(grads, tape.gradient(loss, pipe.trainable_variables))


def test_stream_equals_clip_with_skips():
  stages = util.conv_stages(4)
  pipe = sideways_tf.Pipeline(stages, skips={2: [0], 3: [0, 1]})
  frames = util.moving_clip(batch=2, frames=6, shape=(6, 6, 2))
  clip = np.asarray(pipe.predict_frames(frames))
  specs = pipe.stream_state_specs((6, 6, 2))
  assert [name for name, _, _ in specs] == [
      "activation_2", "activation_3", "activation_4", "skip_3_from_1",
      "skip_4_from_1", "skip_4_from_2"]
  state = [tf.zeros((2,) + shape, dtype) for _, shape, dtype in specs]
  streamed = []
  for t in range(6 + 3):
    frame = frames[:, t] if t < 6 else np.zeros_like(frames[:, 0])
    out, state = pipe.stream_tick(tf.constant(frame), state)
    if t >= 3:
      streamed.append(np.asarray(out))
  np.testing.assert_allclose(np.stack(streamed, 1), clip, rtol=1e-5,
                             atol=1e-6)


def test_skip_buffers_are_state_and_conv_skips_are_pooled():
  pipe = sideways_tf.Pipeline(
      [keras.Sequential([keras.layers.Conv2D(3, 3, padding="same"),
                         keras.layers.MaxPooling2D(2)]),
       keras.layers.Conv2D(3, 3, padding="same"),
       keras.Sequential([keras.layers.GlobalAveragePooling2D(),
                         keras.layers.Dense(2)])], skips={2: [0]})
  pipe.compute_gradients(util.moving_clip(2, 5, (8, 8, 1)),
                         util.labels_for(2, 2))
  assert [tuple(b.shape) for b in pipe.modules[2].skip_buffers] == [
      (2, 4, 4, 3)]
  assert id(pipe.modules[2].skip_buffers[0]) in {
      id(v) for v in pipe.state_variables}


@pytest.mark.parametrize("skips,message", [
    ({2: [1]}, "stage 2 may take skips from stages 0..0"),
    ({5: [0]}, "target stage 5"),
])
def test_bad_skips_are_rejected(skips, message):
  with pytest.raises(ValueError, match=message):
    sideways_tf.Pipeline(util.dense_stages(3), skips=skips)
  with pytest.raises(ValueError, match="unknown skip_combine"):
    sideways_tf.Pipeline(util.dense_stages(3), skip_combine="mul")


# ------------------------------------------- the NumPy reference, many skips

DENSE = [("dense", 4, True)] * 4 + [("dense", 3, False)]
CONV = [("conv", 4, ""), ("conv", 4, "avg"), ("conv", 4, ""), ("head", 3)]
# (stage specs, skips, frame shape, T): dense and conv stages, skips into the
# middle and into the top, one and several sources, a pooled conv skip.
SKIP_CASES = {
    "dense L3 2:0": (DENSE[-3:], {2: [0]}, (5,), 7),
    "dense L4 3:0": (DENSE[-4:], {3: [0]}, (5,), 9),
    "dense L4 3:1": (DENSE[-4:], {3: [1]}, (5,), 8),
    "dense L4 2:0 3:0,1": (DENSE[-4:], {2: [0], 3: [0, 1]}, (5,), 9),
    "dense L5 3:1 4:0,2": (DENSE, {3: [1], 4: [0, 2]}, (5,), 11),
    "conv L4 2:0 3:0,1 pooled": (CONV, {2: [0], 3: [0, 1]}, (8, 8, 2), 8),
}


def _reference_case(name, mode, align, clip=util.moving_clip):
  specs, skips, shape, num_frames = SKIP_CASES[name]
  stages = [skip_reference.keras_stage(s) for s in specs]
  pipe = sideways_tf.Pipeline(stages, skips=skips, skip_combine=mode,
                              skip_align=align)
  frames = clip(batch=3, frames=num_frames, shape=shape)
  labels = util.labels_for(3)
  pipe.predict_frames(frames[:, :1])  # builds the stages
  reference = skip_reference.numpy_stages(stages, specs)
  return pipe, reference, frames, labels, skips


@pytest.mark.parametrize("align", [False, True], ids=["offset", "aligned"])
@pytest.mark.parametrize("mode", ["concat", "add"])
@pytest.mark.parametrize("name", sorted(SKIP_CASES))
def test_engine_matches_numpy_reference_on_moving_clip(name, mode, align):
  """Sideways and BP with skips == the NumPy reference (rule of
  docs/skip_sideways.md) for dense and conv stages, several (k, j) pairs,
  both combines, offset and aligned skips."""
  pipe, reference, frames, labels, skips = _reference_case(name, mode, align)
  f64 = frames.astype(np.float64)
  assert_all_close(pipe.compute_gradients(frames, labels, "sideways"),
                   skip_reference.sideways(reference, f64, labels, skips,
                                           mode, align))
  assert_all_close(pipe.compute_gradients(frames, labels, "bp"),
                   skip_reference.bp(reference, f64, labels, skips, mode,
                                     align))


@pytest.mark.parametrize("align", [False, True], ids=["offset", "aligned"])
@pytest.mark.parametrize("mode", ["concat", "add"])
@pytest.mark.parametrize("name", sorted(SKIP_CASES))
def test_static_clip_scales_each_path_by_its_hop_count(name, mode, align):
  """On a static clip a gradient that took h hops from the top counts in
  T-L+1-h ticks: BP's per-path gradient times (T-L+1-h)/(T-L+1). Without
  skips h = L-k for module k (property 2 of docs/algorithm.md); a skip path
  is shorter, so a skip source is not one multiple of BP."""
  pipe, reference, frames, labels, skips = _reference_case(
      name, mode, align, clip=util.static_clip)
  expected_sideways, expected_bp = skip_reference.static_sideways(
      reference, frames[:, 0].astype(np.float64), labels, skips,
      frames.shape[1], mode)
  assert_all_close(pipe.compute_gradients(frames, labels, "sideways"),
                   expected_sideways)
  assert_all_close(pipe.compute_gradients(frames, labels, "bp"), expected_bp)


# ------------------------------------------------------- aligned skips


class Tags(keras.layers.Layer):
  """Identity: a concat pipeline then carries every path's frame tag."""

  def call(self, x):
    return x


@pytest.mark.parametrize("align", [False, True], ids=["offset", "aligned"])
def test_frame_provenance_of_every_skip_path(align):
  """Frame t carries the value t. With identity stages and concat, the top
  (stage 3) emits one channel per path from the frame: its main input is
  frame t-3; a skip j -> k brings frame (frame of k's main input) + k-1-j,
  or the same frame when aligned. Stream, clip and tick engine agree."""
  skips = {2: [0], 3: [0, 1]}
  pipe = sideways_tf.Pipeline([Tags() for _ in range(4)], half_square_loss,
                              skips=skips, skip_align=align)
  offset = (lambda k, j: 0) if align else (lambda k, j: k - 1 - j)
  num_frames = 12
  frames = np.arange(1, num_frames + 1, dtype="float32").reshape(1, -1, 1)
  specs = pipe.stream_state_specs((1,))
  state = [tf.zeros((1,) + shape, dtype) for _, shape, dtype in specs]
  for t in range(1, num_frames + 1):
    out, state = pipe.stream_tick(tf.constant(frames[:, t - 1]), state)
    if t < 4 + 2:  # every buffer holds a real frame from tick 6 on
      continue
    main = t - 3  # frame of stage 3's main input; stage 2 worked on it
    expected = [main, main + offset(2, 0),  # stage 2's main and skip
                main + offset(3, 0), main + offset(3, 1)]
    np.testing.assert_array_equal(np.asarray(out)[0], expected)
  clip = np.asarray(pipe.predict_frames(frames))[0]
  depth = pipe.receptive_depth
  assert depth == (0 if align else 2)
  for s in range(1, num_frames - depth + 1):  # frame s (1-based)
    np.testing.assert_array_equal(
        clip[s - 1], [s, s + offset(2, 0), s + offset(3, 0),
                      s + offset(3, 1)])


def test_aligned_skip_gradient_provenance():
  """Aligned skip 0 -> 2 in L = 3: stage 2 joins frames t-2 and t-2 (held
  two ticks); its skip gradient joins d_0 one tick later, as unaligned."""
  pipe = sideways_tf.Pipeline([ScaleSum() for _ in range(3)],
                              half_square_loss, skips={2: [0]},
                              skip_align=True)
  frames = np.arange(1, 13, dtype="float32").reshape(1, -1, 1)
  pipe.allocate_state(1, (1,))
  pipe.reset_state()
  assert tuple(pipe.modules[2].skip_buffers[0].shape) == (1, 2, 1)
  delta2 = lambda t: 2 * (t - 2) if t >= 3 else 0  # top: y = 2 * tag t-2
  delta1 = lambda t: delta2(t - 1)
  delta0 = lambda t: delta1(t - 1) + delta2(t - 1)
  for t, per_tick in _gradients_tick_by_tick(pipe, frames):
    for k, delta in enumerate([delta0, delta1, delta2]):
      assert per_tick[k][1] == delta(t), (t, k)
    assert per_tick[0][0] == t * delta0(t)
    assert per_tick[2][0] == 2 * (t - 2) * delta2(t) if t >= 3 else True


def test_aligned_skips_bp_and_chunks():
  """Aligned: BP == the unrolled frame-wise model; a stream in two chunks
  == the whole clip (the skip queues carry over)."""
  stages = util.conv_stages(3)
  pipe = sideways_tf.Pipeline(stages, skips={2: [0]}, skip_align=True)
  frames = tf.constant(util.moving_clip(batch=2, frames=7, shape=(6, 6, 2)))
  labels = util.labels_for(2)
  grads = pipe.compute_gradients(frames, labels, "bp")
  with tf.GradientTape() as tape:
    losses = []
    for s in range(7):  # every frame on its own: D = 0
      h0 = stages[0](frames[:, s])
      logits = stages[2](tf.concat([stages[1](h0), h0], -1))
      losses.append(keras.losses.sparse_categorical_crossentropy(
          labels, logits, from_logits=True))
    loss = tf.reduce_mean(tf.stack(losses))
  assert_all_close(grads, tape.gradient(loss, pipe.trainable_variables))
  whole = pipe.compute_gradients_and_metrics(frames, labels)
  first = pipe.compute_gradients_and_metrics(frames[:, :4], labels)
  second = pipe.compute_gradients_and_metrics(frames[:, 4:], labels,
                                              reset=False)
  n1, n2 = float(first.num_loss_terms), float(second.num_loss_terms)
  assert_all_close(
      [(n1 * a + n2 * b) / (n1 + n2) for a, b in zip(first.gradients,
                                                     second.gradients)],
      whole.gradients)


def test_skip_align_must_be_a_bool():
  with pytest.raises(ValueError, match="skip_align must be True or False"):
    sideways_tf.Pipeline(util.dense_stages(3), skips={2: [0]},
                         skip_align="yes")


# ------------------------------------------------------- replay with skips


def _paths(pipe, k):
  """(edges, lag) of every path from stage k up to the top: a main edge
  costs 2 ticks of lag, a skip 1 + its delay (docs/skip_sideways.md)."""
  top = pipe.num_modules - 1
  if k == top:
    return [((), 0)]
  paths = [(((k, k + 1),) + edges, lag + 2)
           for edges, lag in _paths(pipe, k + 1)]
  for m in range(k + 2, top + 1):
    module = pipe.modules[m]
    for j, delay in zip(module.skip_sources, module.skip_delays):
      if j == k:
        paths += [(((k, m),) + edges, lag + 1 + delay)
                  for edges, lag in _paths(pipe, m)]
  return paths


def _bp_along(pipe, frames, labels, edges, num_losses):
  """BP gradient of the summed loss of frames 0..num_losses-1, through the
  edges in `edges` only (the gradient stopped on every other edge)."""
  batch, num_frames = frames.shape[:2]

  def fold(x):
    return tf.reshape(x, [batch * num_frames] + list(x.shape[2:]))

  def unfold(x):
    return tf.reshape(x, [batch, num_frames] + list(x.shape[1:]))

  def newer(x, steps):
    x = unfold(x)
    return fold(tf.concat([x[:, steps:], tf.zeros_like(x[:, :steps])], 1))

  def edge(x, j, k):
    return x if (j, k) in edges else tf.stop_gradient(x)

  with tf.GradientTape() as tape:
    outputs = []
    for k, module in enumerate(pipe.modules):
      main = fold(tf.constant(frames)) if k == 0 else edge(outputs[-1], k - 1,
                                                           k)
      skips = [edge(newer(outputs[j], skip_offset(k, j, pipe.skip_align)),
                    j, k) for j in module.skip_sources]
      outputs.append(module.call(main, skips, training=False))
    logits = unfold(outputs[-1])[:, :num_losses]
    loss = tf.reduce_sum(pipe.loss_fn(
        tf.repeat(labels, num_losses),
        tf.reshape(logits, [-1, logits.shape[-1]])))
  # (Zeros by hand: TF cannot fill in zeros for an unconnected Keras 3
  # variable, whose dtype is a string.)
  return [np.zeros(v.shape) if g is None else np.asarray(g) for v, g in zip(
      pipe.trainable_variables,
      tape.gradient(loss, pipe.trainable_variables))]


@pytest.mark.parametrize("algorithm", ["sideways", "pipelined_bp"])
@pytest.mark.parametrize("align", [False, True], ids=["offset", "aligned"])
@pytest.mark.parametrize("name", sorted(SKIP_CASES))
def test_replaying_every_module_below_the_top_gives_exact_path_gradients(
    name, align, algorithm):
  """With replay_modules=L-1 (or algorithm="pipelined_bp", which is that)
  every gradient is taken at the inputs of the frame it belongs to: module k
  gets, for each path from the top, BP's gradient along that path of the
  frames whose gradient reaches k within the clip (1..T-L+1-e for a path of
  e edges), over the spec's B(T-L+1)."""
  pipe, _, frames, labels, _ = _reference_case(name, "concat", align)
  replayed = sideways_tf.Pipeline(
      pipe.stages, skips=dict(SKIP_CASES[name][1]), skip_align=align,
      replay_modules=pipe.num_modules - 1 if algorithm == "sideways" else 0)
  got = replayed.compute_gradients(frames, labels, algorithm)
  batch, num_frames = frames.shape[:2]
  num_losses = num_frames - pipe.num_modules + 1
  expected = [np.zeros(v.shape) for v in pipe.trainable_variables]
  owner = [k for k, stage in enumerate(pipe.stages)
           for _ in stage.trainable_variables]
  for k in range(pipe.num_modules):
    for edges, _ in _paths(replayed, k):
      along = _bp_along(pipe, frames, labels, edges,
                        num_losses - len(edges))
      for i, gradient in enumerate(along):
        if owner[i] == k:
          expected[i] += gradient / (batch * num_losses)
  assert_all_close(got, expected)
  plain = pipe.compute_gradients(frames, labels)
  assert not all(np.allclose(a, b, rtol=1e-3, atol=1e-5)
                 for a, b in zip(util.to_numpy(plain), expected))


def test_replay_keeps_one_gradient_buffer_per_path_lag(caplog):
  """skips={2: [0]}, L = 4: stage 0's gradient comes down the main path
  (lag 6) and along the skip (lag 4); each part is paired with its own
  input, from its own buffer, and the state stays flat in T."""
  pipe = sideways_tf.Pipeline(util.conv_stages(4), skips={2: [0]},
                              replay_modules=3)
  labels = util.labels_for(2)
  pipe.compute_gradients(util.moving_clip(2, 8, (6, 6, 2)), labels)
  assert "replays the source" not in caplog.text  # every path replayed
  assert [m.gradient_lags for m in pipe.modules] == [(6, 4), (4,), (2,),
                                                      (0,)]
  names = [v.path.split("/")[-1] for v in pipe.modules[0].state_variables]
  assert "gradient_buffer_lag_4" in names
  assert [v.path.split("/")[-1] for v in pipe.modules[2].skip_histories] == [
      "skip_history_from_0"]
  shapes = [tuple(v.shape) for v in pipe.state_variables]
  pipe.compute_gradients(util.moving_clip(2, 30, (6, 6, 2)), labels)
  assert [tuple(v.shape) for v in pipe.state_variables] == shapes
  partial = sideways_tf.Pipeline(util.conv_stages(4), skips={2: [0]},
                                 replay_modules=1)
  assert "replays the source but not the target" in caplog.text
  assert "skip(s) 2:0" in caplog.text
  # Stages that are not replayed pass one gradient at their main path's lag.
  assert [m.gradient_lags for m in partial.modules] == [(6, 4), (4,), (2,),
                                                       (0,)]
  aligned = sideways_tf.Pipeline(util.conv_stages(4), skips={2: [0]},
                                 skip_align=True, replay_modules=3)
  assert aligned.modules[0].gradient_lags == (6, 5)  # the skip waits 2 ticks


def test_stream_in_chunks_equals_whole_clip_with_replayed_skips():
  pipe = sideways_tf.Pipeline(util.conv_stages(4), skips={2: [0]},
                              replay_modules=3)
  util.assert_two_chunks_equal_whole(
      pipe, util.moving_clip(batch=2, frames=12, shape=(6, 6, 2)),
      util.labels_for(2), split=5, terms=(2, 7))


def test_exported_stream_equals_clip_with_aligned_skips(tmp_path):
  """The SavedModel's streaming state carries the skip queues
  (skip_k_from_j: [B, k-j, ...]) and streams like the clip path."""
  from sideways_tf.serving import export  # noqa: PLC0415
  pipe = sideways_tf.Pipeline(util.conv_stages(4), skips={2: [0], 3: [0, 1]},
                              skip_align=True)
  video = np.random.RandomState(0).randint(
      0, 256, size=(2, 5, 6, 6, 2)).astype(np.uint8)
  clip = np.asarray(pipe.predict_frames(video.astype(np.float32) / 255.0))
  loaded = tf.saved_model.load(str(export.export_saved_model(
      pipe, (6, 6, 2), tmp_path / "model")))
  state = loaded.signatures["init_state"](batch_size=tf.constant(2))
  assert tuple(state["skip_4_from_1"].shape) == (2, 3, 6, 6, 4)
  streamed = []
  for t in range(5 + 3):
    frame = video[:, t] if t < 5 else np.zeros_like(video[:, 0])
    out = loaded.signatures["step"](frame=tf.constant(frame), **state)
    state = {k: v for k, v in out.items() if k not in ("logits", "valid")}
    if t >= 3:
      streamed.append(out["logits"].numpy())
  np.testing.assert_allclose(np.stack(streamed, 1), clip, rtol=1e-5,
                             atol=1e-5)
