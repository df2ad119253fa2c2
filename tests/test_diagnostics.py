"""Diagnostics that predict where Sideways trails BP (sideways_tf.training.diagnostics)."""

import keras
import numpy as np
import pytest

import sideways_tf
from sideways_tf.run import summaries
from sideways_tf.training import diagnostics
from tests import util


def test_module_lags_follow_frame_provenance():
  # docs/algorithm.md: module k's gradient lags its input by 2(L-k) frames.
  assert diagnostics.module_lags(4) == [6, 4, 2, 0]
  assert diagnostics.module_lags(1) == [0]


def test_static_clip_has_zero_lag_change_everywhere():
  pipe = sideways_tf.Pipeline(util.conv_stages(3))
  frames = util.static_clip(batch=3, frames=6, shape=(6, 6, 2))
  changes = diagnostics.lag_change(pipe, frames)
  assert sorted(changes) == ["module_1", "module_2"]  # the top has no lag
  assert all(value == 0.0 for value in changes.values())


def test_bottom_module_value_is_the_formula_on_frames():
  pipe = sideways_tf.Pipeline(util.dense_stages(3))
  frames = util.moving_clip(batch=4, frames=7, shape=(5,))
  lag = 4
  x = frames.astype(np.float64)
  expected = (np.mean(np.sum((x[:, lag:] - x[:, :-lag]) ** 2, -1)) /
              np.mean(np.sum((x - np.roll(x, 1, axis=0)) ** 2, -1)))
  got = diagnostics.lag_change(pipe, frames)["module_1"]
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_faster_motion_means_larger_lag_change():
  pipe = sideways_tf.Pipeline(util.conv_stages(3))
  rng = np.random.RandomState(0)
  start = rng.randn(4, 1, 6, 6, 2)
  drift = rng.randn(4, 1, 6, 6, 2)
  steps = np.arange(8).reshape(1, 8, 1, 1, 1)
  slow = (start + 0.05 * drift * steps).astype("float32")
  fast = (start + 0.3 * drift * steps).astype("float32")
  slow_change = diagnostics.lag_change(pipe, slow)
  fast_change = diagnostics.lag_change(pipe, fast)
  for module in slow_change:
    assert fast_change[module] > slow_change[module] > 0


def test_lag_change_rejects_what_it_cannot_measure():
  pipe = sideways_tf.Pipeline(util.conv_stages(3))
  with pytest.raises(ValueError, match="at least 2 clips"):
    diagnostics.lag_change(pipe, util.moving_clip(1, 8, (6, 6, 2)))
  with pytest.raises(ValueError, match="T > 2"):
    diagnostics.lag_change(pipe, util.moving_clip(2, 4, (6, 6, 2)))


def _two_gradients(pipe):
  frames = util.moving_clip(batch=2, frames=7, shape=(6, 6, 2))
  labels = util.labels_for(2)
  return (pipe.compute_gradients(frames, labels, "sideways"),
          pipe.compute_gradients(frames, labels, "bp"))


def test_update_cosine_without_second_moments_is_the_gradient_cosine():
  pipe = sideways_tf.Pipeline(util.conv_stages(3))
  sideways, bp = _two_gradients(pipe)
  optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
  optimizer.build(pipe.trainable_variables)
  got = diagnostics.update_cosine(pipe, optimizer, sideways, bp)
  expected = summaries.gradient_fidelity(pipe, sideways, bp)
  for module, value in got.items():
    np.testing.assert_allclose(value, expected[module]["cosine"], rtol=1e-9)
  assert got["module_3"] > got["module_1"]  # the top is nearly exact


def test_update_cosine_divides_by_adam_second_moment():
  pipe = sideways_tf.Pipeline(util.conv_stages(2))
  sideways, bp = _two_gradients(pipe)
  optimizer = keras.optimizers.Adam(1e-3, epsilon=1e-3)
  optimizer.build(pipe.trainable_variables)
  rng = np.random.RandomState(1)
  second = [rng.uniform(1e-6, 1.0, v.shape) for v in pipe.trainable_variables]
  for slot, value in zip(optimizer._velocities, second):
    slot.assign(value)
  got = diagnostics.update_cosine(pipe, optimizer, sideways, bp)
  count = len(pipe.stages[0].trainable_variables)
  a, b = ([np.ravel(np.asarray(g, np.float64) / (np.sqrt(v) + 1e-3))
           for g, v in zip(grads[:count], second[:count])]
          for grads in (sideways, bp))
  a, b = np.concatenate(a), np.concatenate(b)
  np.testing.assert_allclose(got["module_1"],
                             a @ b / np.linalg.norm(a) / np.linalg.norm(b),
                             rtol=1e-6)


def test_risk_is_the_largest_lag_change_of_the_approximated_modules():
  fidelity = {"module_1": {"cosine": 0.9, "lag_change": 0.6},
              "module_2": {"cosine": 1.0, "lag_change": 0.3},
              "module_3": {"cosine": 1.0, "lag_change": 0.1},
              "module_4": {"cosine": 1.0}}
  plain = sideways_tf.Pipeline(util.dense_stages(4))
  assert diagnostics.risk(plain, fidelity) == 0.6
  replayed = sideways_tf.Pipeline(util.dense_stages(4), replay_modules=1)
  assert diagnostics.risk(replayed, fidelity) == 0.3  # module 1 is exact
  assert diagnostics.risk(plain, {"module_4": {"cosine": 1.0}}) is None


def test_fidelity_hook_warns_once_above_the_threshold_for_sideways(caplog):
  import types
  from sideways_tf.training import hooks
  pipe = sideways_tf.Pipeline(util.dense_stages(4))
  ctx = types.SimpleNamespace(setup=types.SimpleNamespace(pipeline=pipe))
  hook = hooks.FidelityHook(every=10, algorithm="sideways")
  threshold = hooks.FidelityHook.RISK_THRESHOLD
  with caplog.at_level("WARNING"):
    hook._warn(ctx, 10, threshold - 0.01)
    assert not caplog.records
    hook._warn(ctx, 20, threshold + 0.1)
    hook._warn(ctx, 30, threshold + 0.2)
  assert len(caplog.records) == 1
  assert "replay_modules=2" in caplog.records[0].getMessage()
  bp = hooks.FidelityHook(every=10, algorithm="bp")
  caplog.clear()
  bp._warn(ctx, 10, 1.0)
  assert not caplog.records  # only Sideways runs are warned
