"""The properties docs/algorithm.md says every implementation must satisfy."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import sideways_tf
from tests import util

RTOL, ATOL = 1e-4, 1e-6


def assert_all_close(actual, expected, rtol=RTOL, atol=ATOL):
  assert len(actual) == len(expected)
  for a, e in zip(util.to_numpy(actual), util.to_numpy(expected)):
    np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)


def grads_by_module(pipe, grads):
  """Splits a gradient list aligned with trainable_variables per stage."""
  out, i = [], 0
  for stage in pipe.stages:
    n = len(stage.trainable_variables)
    out.append(grads[i:i + n])
    i += n
  return out


# ---------------------------------------------------------------- property 1

@pytest.mark.parametrize("make_stages,shape", [
    (lambda: util.dense_stages(1), (5,)),
    (lambda: util.conv_stages(1), (6, 6, 2)),
])
def test_single_module_sideways_equals_bp(make_stages, shape):
  pipe = sideways_tf.Pipeline(make_stages())
  frames = util.moving_clip(batch=3, frames=5, shape=shape)
  labels = util.labels_for(3)
  sideways = pipe.compute_gradients(frames, labels, algorithm="sideways")
  bp = pipe.compute_gradients(frames, labels, algorithm="bp")
  assert any(np.abs(g).max() > 1e-3 for g in util.to_numpy(bp))
  assert_all_close(sideways, bp)


# ---------------------------------------------------------------- property 2

@pytest.mark.parametrize("num_modules,num_frames", [(3, 8), (4, 9)])
def test_static_clip_scales_bp_gradient_per_module(num_modules, num_frames):
  pipe = sideways_tf.Pipeline(util.conv_stages(num_modules))
  frames = util.static_clip(batch=2, frames=num_frames, shape=(6, 6, 2))
  labels = util.labels_for(2)
  sideways = grads_by_module(
      pipe, pipe.compute_gradients(frames, labels, "sideways"))
  bp = grads_by_module(pipe, pipe.compute_gradients(frames, labels, "bp"))
  big_l, t = num_modules, num_frames
  for k in range(1, big_l + 1):
    ratio = (t - 2 * big_l + k + 1) / (t - big_l + 1)
    expected = [ratio * g for g in util.to_numpy(bp[k - 1])]
    assert_all_close(sideways[k - 1], expected)


# ---------------------------------------------------------------- property 3

def test_top_module_per_tick_gradient_is_bp_gradient_of_its_frame():
  num_modules, num_frames, batch = 3, 7, 2
  pipe = sideways_tf.Pipeline(util.conv_stages(num_modules))
  frames = util.moving_clip(batch=batch, frames=num_frames, shape=(6, 6, 2))
  labels = util.labels_for(batch)
  pipe.allocate_state(batch, (6, 6, 2))
  pipe.reset_state()
  for t in range(1, num_frames + 1):
    per_tick = grads_by_module(pipe, pipe.compute_gradients(
        frames[:, t - 1:t], labels, "sideways", reset=False))
    top = util.to_numpy(per_tick[-1])
    if t < num_modules:  # the top holds zeros, not a frame: no loss yet
      assert all(np.all(g == 0) for g in top)
      continue
    frame = t - num_modules + 1
    bp = grads_by_module(pipe, pipe.compute_gradients(
        frames[:, frame - 1:frame], labels, "bp"))
    assert_all_close(top, bp[-1])
    # The lower modules' gradients are not BP's (they lag behind).
    if t >= 2 * num_modules - 1:
      lower = util.to_numpy(per_tick[0])
      assert not np.allclose(lower[0], util.to_numpy(bp[0])[0], rtol=1e-2)


# ---------------------------------------------------------------- property 6

class Scale(keras.layers.Layer):
  """y = w * x + b with w = 1, b = 0: passes tags up and gradients down."""

  def build(self, input_shape):
    self.w = self.add_weight(shape=(), initializer="ones", name="w")
    self.b = self.add_weight(shape=(), initializer="zeros", name="b")

  def call(self, x):
    return self.w * x + self.b


def half_square_loss(labels, outputs):
  del labels
  return 0.5 * tf.reduce_sum(tf.square(outputs), axis=-1)


@pytest.mark.parametrize("num_modules", [2, 4])
def test_frame_tagging_provenance(num_modules):
  """Frame t carries the value t; the loss gradient of frame s is s.

  Module k's per-tick gradient is then d/db = (gradient's frame) and
  d/dw = (input's frame) * (gradient's frame), so both provenances can be read
  off: input from frame t-k+1, gradient from the loss of frame t-2L+k+1.
  """
  big_l, num_frames = num_modules, 3 * num_modules + 2
  pipe = sideways_tf.Pipeline([Scale() for _ in range(big_l)],
                              half_square_loss)
  frames = np.arange(1, num_frames + 1, dtype="float32").reshape(1, -1, 1)
  labels = np.zeros([1], "int32")
  pipe.allocate_state(1, (1,))
  pipe.reset_state()
  for t in range(1, num_frames + 1):
    per_tick = grads_by_module(pipe, util.to_numpy(pipe.compute_gradients(
        frames[:, t - 1:t], labels, "sideways", reset=False)))
    for k in range(1, big_l + 1):
      grad_w, grad_b = per_tick[k - 1]
      input_frame, gradient_frame = t - k + 1, t - 2 * big_l + k + 1
      if t >= 2 * big_l - k:  # the gradient is real
        assert grad_b == gradient_frame, (t, k)
        assert grad_w == input_frame * gradient_frame, (t, k)
      else:  # still in flight from a masked (zero) loss
        assert grad_b == 0 and grad_w == 0, (t, k)


def test_frame_tagging_table_of_the_spec():
  """L = 4, t = 10: the gaps 0, 2, 4, 6 of the table in docs/algorithm.md."""
  pipe = sideways_tf.Pipeline([Scale() for _ in range(4)], half_square_loss)
  frames = np.arange(1, 11, dtype="float32").reshape(1, -1, 1)
  pipe.allocate_state(1, (1,))
  pipe.reset_state()
  pipe.compute_gradients(frames[:, :9], np.zeros([1], "int32"), reset=False)
  tick10 = grads_by_module(pipe, util.to_numpy(pipe.compute_gradients(
      frames[:, 9:], np.zeros([1], "int32"), reset=False)))
  table = {4: (7, 7), 3: (8, 6), 2: (9, 5), 1: (10, 4)}
  for k, (input_frame, gradient_frame) in table.items():
    grad_w, grad_b = tick10[k - 1]
    assert (grad_w / grad_b, grad_b) == (input_frame, gradient_frame)


# ---------------------------------------------------------------- property 4

@pytest.mark.parametrize("order", [[3, 2, 1, 0], [1, 3, 0, 2]])
def test_module_evaluation_order_does_not_matter(order):
  stages = util.conv_stages(4)
  frames = util.moving_clip(batch=2, frames=9, shape=(6, 6, 2))
  labels = util.labels_for(2)
  concurrent = sideways_tf.Pipeline(stages).compute_gradients(frames, labels)
  ordered = sideways_tf.Pipeline(stages, evaluation_order=order)
  np.testing.assert_equal(
      util.to_numpy(ordered.compute_gradients(frames, labels)),
      util.to_numpy(concurrent))


# ------------------------------------------------------------ BP correctness

def test_bp_equals_gradient_tape_on_composed_model():
  stages = util.conv_stages(3)
  pipe = sideways_tf.Pipeline(stages)
  frames = util.moving_clip(batch=2, frames=4, shape=(6, 6, 2))
  labels = util.labels_for(2)
  grads = pipe.compute_gradients(frames, labels, "bp")
  model = keras.Sequential(stages)
  flat = tf.reshape(frames, (-1, 6, 6, 2))
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
        np.repeat(labels, 4), model(flat), from_logits=True))
  expected = tape.gradient(loss, pipe.trainable_variables)
  assert_all_close(grads, expected)


# ------------------------------------------------------- NumPy references

def numpy_reference(weights, frames, labels, algorithm):
  """Sideways and BP for tanh-dense modules + linear top, written from the spec.

  weights: [(W_k, b_k)] per module. Float64 throughout.
  """
  big_l = len(weights)
  batch, num_frames, _ = frames.shape
  onehot = np.eye(weights[-1][0].shape[1])[labels]

  def forward(k, x):
    pre = x @ weights[k][0] + weights[k][1]
    return pre if k == big_l - 1 else np.tanh(pre)

  def delta_from_loss(logits):  # d(sum over batch of CE)/d logits
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True) - onehot

  grads = [[np.zeros_like(w), np.zeros_like(b)] for w, b in weights]
  if algorithm == "bp":
    for t in range(num_frames):
      xs = [frames[:, t]]
      for k in range(big_l):
        xs.append(forward(k, xs[-1]))
      delta = delta_from_loss(xs[-1])
      for k in reversed(range(big_l)):
        if k < big_l - 1:
          delta = delta * (1 - xs[k + 1] ** 2)
        grads[k][0] += xs[k].T @ delta
        grads[k][1] += delta.sum(0)
        delta = delta @ weights[k][0].T
    return [g / (batch * num_frames) for pair in grads for g in pair]

  a = [np.zeros((batch, w.shape[0])) for w, _ in weights]  # inputs
  d = [np.zeros((batch, w.shape[1])) for w, _ in weights]  # output gradients
  for t in range(1, num_frames + 1):
    new_a, new_d = [x.copy() for x in a], [x.copy() for x in d]
    for k in range(big_l):  # every module reads the buffers of tick t-1
      x = frames[:, t - 1] if k == 0 else a[k]
      y = forward(k, x)
      if k == big_l - 1:
        delta = delta_from_loss(y) * (1.0 if t >= big_l else 0.0)
      else:
        delta = d[k] * (1 - y ** 2)
      grads[k][0] += x.T @ delta
      grads[k][1] += delta.sum(0)
      if k + 1 < big_l:
        new_a[k + 1] = y
      if k > 0:
        new_d[k - 1] = delta @ weights[k][0].T
    a, d = new_a, new_d
  return [g / (batch * (num_frames - big_l + 1)) for pair in grads for g in pair]


@pytest.mark.parametrize("algorithm", ["sideways", "bp"])
@pytest.mark.parametrize("num_modules", [2, 3])
def test_matches_numpy_reference_on_moving_clip(algorithm, num_modules):
  stages = util.dense_stages(num_modules)
  pipe = sideways_tf.Pipeline(stages)
  frames = util.moving_clip(batch=3, frames=8, shape=(5,))
  labels = util.labels_for(3)
  weights = [tuple(np.asarray(v, np.float64) for v in s.trainable_variables)
             for s in stages]
  expected = numpy_reference(weights, frames.astype(np.float64), labels,
                             algorithm)
  assert_all_close(pipe.compute_gradients(frames, labels, algorithm), expected)


def test_sideways_differs_from_bp_on_moving_clip():
  """The approximation is real: on a moving clip the gradients differ."""
  pipe = sideways_tf.Pipeline(util.dense_stages(3))
  frames = util.moving_clip(batch=3, frames=8)
  labels = util.labels_for(3)
  sideways = util.to_numpy(pipe.compute_gradients(frames, labels, "sideways"))
  bp = util.to_numpy(pipe.compute_gradients(frames, labels, "bp"))
  assert not np.allclose(sideways[0], bp[0], rtol=1e-2)


# ------------------------------------------------------- chunked streaming

def test_two_chunks_without_reset_equal_the_whole_clip():
  pipe = sideways_tf.Pipeline(util.conv_stages(3))
  frames = util.moving_clip(batch=2, frames=9, shape=(6, 6, 2))
  labels = util.labels_for(2)
  whole = pipe.compute_gradients_and_metrics(frames, labels)
  whole_state = util.to_numpy(pipe.state_variables)
  first = pipe.compute_gradients_and_metrics(frames[:, :4], labels)
  second = pipe.compute_gradients_and_metrics(frames[:, 4:], labels,
                                              reset=False)
  # Chunk gradients are normalised by their own valid loss terms.
  n1, n2, n = (float(r.num_loss_terms) for r in (first, second, whole))
  assert (n1, n2, n) == (2 * 2, 5 * 2, 7 * 2)
  combined = [(n1 * g1 + n2 * g2) / n for g1, g2 in zip(
      util.to_numpy(first.gradients), util.to_numpy(second.gradients))]
  assert_all_close(combined, whole.gradients)
  np.testing.assert_allclose(
      (n1 * float(first.loss) + n2 * float(second.loss)) / n,
      float(whole.loss), rtol=RTOL)
  for a, b in zip(util.to_numpy(pipe.state_variables), whole_state):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


def test_reset_starts_every_clip_from_zero_buffers():
  pipe = sideways_tf.Pipeline(util.conv_stages(3))
  frames = util.moving_clip(batch=2, frames=6, shape=(6, 6, 2))
  labels = util.labels_for(2)
  first = util.to_numpy(pipe.compute_gradients(frames, labels))
  pipe.compute_gradients(frames[:, ::-1], labels)  # leaves other state
  np.testing.assert_equal(util.to_numpy(pipe.compute_gradients(frames, labels)),
                          first)
  pipe.reset_state()
  assert all(np.all(np.asarray(v) == 0) for v in pipe.state_variables)


# ------------------------------------------------------- property 5: memory

def test_state_size_does_not_grow_with_clip_length():
  pipe = sideways_tf.Pipeline(util.conv_stages(3))
  labels = util.labels_for(2)
  sizes = []
  for num_frames in (3, 12, 24):
    frames = util.moving_clip(batch=2, frames=num_frames, shape=(6, 6, 2))
    pipe.compute_gradients(frames, labels)
    sizes.append(sum(int(np.prod(v.shape)) for v in pipe.state_variables))
  assert sizes[0] == sizes[1] == sizes[2]
  # One input buffer (modules 2..L) and one gradient buffer (1..L-1) each:
  # [2, 6, 6, 4] activations, plus the tick counter.
  assert sizes[0] == 2 * 2 * (2 * 6 * 6 * 4) + 1


def test_tick_loop_keeps_no_per_tick_tensors():
  """No TensorArray/stack in the loop: nothing accumulates across ticks."""
  pipe = sideways_tf.Pipeline(util.conv_stages(3))
  frames, labels = pipe.prepare_inputs(
      util.moving_clip(batch=2, frames=6, shape=(6, 6, 2)),
      util.labels_for(2))
  fn = tf.function(lambda f, l: pipe.clip_gradients(f, l, "sideways"))
  graph_def = fn.get_concrete_function(frames, labels).graph.as_graph_def()
  op_types = {node.op for node in graph_def.node}
  for function in graph_def.library.function:
    op_types.update(node.op for node in function.node_def)
  assert "While" in op_types or "StatelessWhile" in op_types
  assert not [op for op in op_types if "TensorList" in op or
              "TensorArray" in op or "Stack" in op]


# ---------------------------------------------------------- tracing, state

def test_no_retracing_across_clips_of_the_same_shape():
  pipe = sideways_tf.Pipeline(util.conv_stages(3))
  labels = util.labels_for(2)
  for seed in range(5):
    pipe.compute_gradients(
        util.moving_clip(batch=2, frames=6, shape=(6, 6, 2), seed=seed),
        labels)
  assert pipe.trace_count == 1


def test_buffers_are_non_trainable_weights_saved_by_checkpoints(tmp_path):
  pipe = sideways_tf.Pipeline(util.conv_stages(3))
  frames = util.moving_clip(batch=2, frames=6, shape=(6, 6, 2))
  pipe.compute_gradients(frames, util.labels_for(2))
  for module in pipe.modules:
    assert module.trainable_weights == module.stage.trainable_weights
    buffers = [w for w in module.non_trainable_weights
               if w.name in ("input_buffer", "gradient_buffer")]
    assert len(buffers) == len(module.state_variables) > 0
  saved = util.to_numpy(pipe.state_variables)
  path = tf.train.Checkpoint(pipeline=pipe).write(str(tmp_path / "ckpt"))
  pipe.reset_state()
  tf.train.Checkpoint(pipeline=pipe).read(path).assert_consumed()
  for a, b in zip(util.to_numpy(pipe.state_variables), saved):
    np.testing.assert_array_equal(a, b)
  assert np.abs(saved[0]).max() > 0


def test_built_stages_keep_their_weights():
  stages = util.dense_stages(2)
  before = util.to_numpy([v for s in stages for v in s.trainable_variables])
  pipe = sideways_tf.Pipeline(stages)
  pipe.compute_gradients(util.moving_clip(frames=4), util.labels_for(2))
  assert [id(v) for v in pipe.trainable_variables] == [
      id(v) for s in stages for v in s.trainable_variables]
  for a, b in zip(util.to_numpy(pipe.trainable_variables), before):
    np.testing.assert_array_equal(a, b)


def test_new_batch_size_reallocates_state_on_reset():
  pipe = sideways_tf.Pipeline(util.dense_stages(2))
  pipe.compute_gradients(util.moving_clip(batch=2, frames=4),
                         util.labels_for(2))
  grads = pipe.compute_gradients(util.moving_clip(batch=3, frames=4),
                                 util.labels_for(3))
  fresh = sideways_tf.Pipeline(pipe.stages).compute_gradients(
      util.moving_clip(batch=3, frames=4), util.labels_for(3))
  assert_all_close(grads, fresh)
  with pytest.raises(ValueError, match="batch size 3"):
    pipe.compute_gradients(util.moving_clip(batch=2, frames=4),
                           util.labels_for(2), reset=False)


# --------------------------------------------------------------- bad input

@pytest.fixture
def pipe3():
  pipe = sideways_tf.Pipeline(util.conv_stages(3))
  pipe.compute_gradients(util.moving_clip(batch=2, frames=4, shape=(6, 6, 2)),
                         util.labels_for(2))
  return pipe


def test_rejects_frames_of_wrong_rank(pipe3):
  with pytest.raises(ValueError, match=r"rank 5.*\(2, 4, 6, 6\)"):
    pipe3.compute_gradients(np.zeros((2, 4, 6, 6), "float32"),
                            util.labels_for(2))
  with pytest.raises(ValueError, match="rank >= 3"):
    pipe3.compute_gradients(np.zeros((2, 4), "float32"), util.labels_for(2))


def test_rejects_labels_not_matching_the_batch(pipe3):
  with pytest.raises(ValueError, match=r"labels must have shape \[B\] = \[2\]"):
    pipe3.compute_gradients(np.zeros((2, 4, 6, 6, 2), "float32"),
                            util.labels_for(3))


def test_rejects_clips_shorter_than_the_pipeline(pipe3):
  with pytest.raises(ValueError, match="T = 2 < L = 3"):
    pipe3.compute_gradients(np.zeros((2, 2, 6, 6, 2), "float32"),
                            util.labels_for(2))


def test_rejects_devices_of_the_wrong_length():
  with pytest.raises(ValueError, match="3 stages but 2 devices"):
    sideways_tf.Pipeline(util.conv_stages(3), devices=["/CPU:0", "/CPU:0"])


def test_rejects_unknown_algorithm(pipe3):
  with pytest.raises(ValueError, match="unknown algorithm 'backprop'"):
    pipe3.compute_gradients(np.zeros((2, 4, 6, 6, 2), "float32"),
                            util.labels_for(2), algorithm="backprop")


def test_rejects_integer_frames_and_float_labels(pipe3):
  with pytest.raises(ValueError, match="floating point"):
    pipe3.compute_gradients(np.zeros((2, 4, 6, 6, 2), "uint8"),
                            util.labels_for(2))
  with pytest.raises(ValueError, match="integer class ids"):
    pipe3.compute_gradients(np.zeros((2, 4, 6, 6, 2), "float32"),
                            np.zeros(2, "float32"))


def test_rejects_frames_the_first_stage_cannot_take():
  pipe = sideways_tf.Pipeline(util.dense_stages(2, in_dim=5))
  with pytest.raises(ValueError, match=r"stage 0 .* \[None, 7\]"):
    pipe.compute_gradients(np.zeros((2, 4, 7), "float32"), util.labels_for(2))


@pytest.mark.parametrize("algorithm", ["sideways", "bp"])
def test_loss_scale_leaves_gradients_and_loss_unscaled(algorithm):
  pipe = sideways_tf.Pipeline(util.conv_stages(3))
  frames, labels = pipe.prepare_inputs(
      util.moving_clip(batch=2, frames=6, shape=(6, 6, 2)), util.labels_for(2),
      algorithm)
  plain = pipe.clip_gradients(frames, labels, algorithm)
  scaled = pipe.clip_gradients(frames, labels, algorithm, loss_scale=1024.0)
  assert_all_close(scaled.gradients, plain.gradients)
  np.testing.assert_allclose(float(scaled.loss), float(plain.loss), rtol=1e-6)
