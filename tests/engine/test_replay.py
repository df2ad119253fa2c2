"""Replay: replayed modules take their backward step at the input their
gradient belongs to (docs/engine.md, "Replay")."""

import numpy as np
import pytest

import sideways_tf
from tests import util


def by_module(pipe, grads):
  out, i = [], 0
  for stage in pipe.stages:
    n = len(stage.trainable_variables)
    out.append([np.asarray(g) for g in grads[i:i + n]])
    i += n
  return out


@pytest.mark.parametrize("make_stages,shape,num_modules,num_frames", [
    (util.dense_stages, (5,), 3, 7),
    (util.dense_stages, (5,), 4, 9),
    (util.conv_stages, (6, 6, 2), 3, 8),
])
def test_replaying_every_module_below_the_top_gives_exact_gradients(
    make_stages, shape, num_modules, num_frames):
  """Module k then gets the exact BP gradient of the frames whose gradient
  reaches it within the clip, 1..T-2L+k+1, scaled like the spec's clip
  normalisation (by the number of valid loss terms, T-L+1)."""
  pipe = sideways_tf.Pipeline(make_stages(num_modules),
                              replay_modules=num_modules - 1)
  frames = util.moving_clip(batch=2, frames=num_frames, shape=shape)
  labels = util.labels_for(2)
  replayed = by_module(pipe, pipe.compute_gradients(frames, labels))
  plain = sideways_tf.Pipeline(pipe.stages)
  approximate = by_module(plain, plain.compute_gradients(frames, labels))
  big_l, t = num_modules, num_frames
  differs = False
  for k in range(1, big_l + 1):
    n = t - 2 * big_l + k + 1
    bp = by_module(pipe, pipe.compute_gradients(frames[:, :n], labels, "bp"))
    for got, exact, approx in zip(replayed[k - 1], bp[k - 1],
                                  approximate[k - 1]):
      np.testing.assert_allclose(got, exact * n / (t - big_l + 1),
                                 rtol=1e-4, atol=1e-6)
      differs |= not np.allclose(approx, got, rtol=1e-3, atol=1e-5)
  assert differs  # the clip moves: plain Sideways is only approximate here


def test_static_clip_replay_changes_nothing():
  pipe = sideways_tf.Pipeline(util.conv_stages(3), replay_modules=1)
  plain = sideways_tf.Pipeline(pipe.stages)
  frames = util.static_clip(batch=2, frames=8, shape=(6, 6, 2))
  labels = util.labels_for(2)
  for got, expected in zip(pipe.compute_gradients(frames, labels),
                           plain.compute_gradients(frames, labels)):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_replay_only_changes_the_replayed_modules_own_gradient():
  pipe = sideways_tf.Pipeline(util.conv_stages(3), replay_modules=1)
  plain = sideways_tf.Pipeline(pipe.stages)
  frames = util.moving_clip(batch=2, frames=8, shape=(6, 6, 2))
  labels = util.labels_for(2)
  got = by_module(pipe, pipe.compute_gradients(frames, labels))
  expected = by_module(plain, plain.compute_gradients(frames, labels))
  for k in (1, 2):  # what reaches modules 2 and 3 is not touched
    for a, b in zip(got[k], expected[k]):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert not np.allclose(got[0][0], expected[0][0], rtol=1e-3)


def test_stream_in_chunks_equals_whole_clip_with_replay():
  pipe = sideways_tf.Pipeline(util.dense_stages(3), replay_modules=2)
  util.assert_two_chunks_equal_whole(
      pipe, util.moving_clip(batch=2, frames=10, shape=(5,)),
      util.labels_for(2), split=4, terms=(2, 6))


def test_replay_state_does_not_grow_with_the_clip():
  pipe = sideways_tf.Pipeline(util.dense_stages(4), replay_modules=3)
  labels = util.labels_for(2)
  pipe.compute_gradients(util.moving_clip(2, 8, (5,)), labels)
  short = [tuple(v.shape) for v in pipe.state_variables]
  pipe.compute_gradients(util.moving_clip(2, 40, (5,)), labels)
  assert [tuple(v.shape) for v in pipe.state_variables] == short
  histories = [m.input_history for m in pipe.modules if m.replay_length]
  assert [h.shape[0] for h in histories] == [6, 4, 2]  # 2(L-k)


@pytest.mark.parametrize("value", [3, -1, 1.5, True])
def test_bad_replay_modules_are_refused(value):
  with pytest.raises(ValueError, match="replay_modules"):
    sideways_tf.Pipeline(util.dense_stages(3), replay_modules=value)
