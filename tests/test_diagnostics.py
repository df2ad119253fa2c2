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


def _hook_context(pipe):
  import types
  return types.SimpleNamespace(setup=types.SimpleNamespace(pipeline=pipe))


def _fidelity(*lag_changes):
  return {f"module_{k}": {"lag_change": v}
          for k, v in enumerate(lag_changes, start=1)}


def test_fidelity_hook_warns_once_above_the_threshold_for_sideways(caplog):
  from sideways_tf.training import hooks
  pipe = sideways_tf.Pipeline(util.dense_stages(4))
  ctx = _hook_context(pipe)
  hook = hooks.FidelityHook(every=10, algorithm="sideways")
  threshold = hooks.FidelityHook.RISK_THRESHOLD
  fidelity = _fidelity(0.6, 0.5, 0.1)
  with caplog.at_level("WARNING"):
    hook._warn(ctx, 10, threshold - 0.01, fidelity)
    assert not caplog.records
    hook._warn(ctx, 20, threshold + 0.1, fidelity)
    hook._warn(ctx, 30, threshold + 0.2, fidelity)
  assert len(caplog.records) == 1
  assert "replay_modules=2" in caplog.records[0].getMessage()
  bp = hooks.FidelityHook(every=10, algorithm="bp")
  caplog.clear()
  bp._warn(ctx, 10, 1.0, fidelity)
  assert not caplog.records  # only Sideways runs are warned


def test_fidelity_hook_warns_only_within_the_risk_window(caplog):
  from sideways_tf.training import hooks
  hook = hooks.FidelityHook(every=10, algorithm="sideways")
  window = hooks.FidelityHook.RISK_WINDOW
  ctx = _hook_context(sideways_tf.Pipeline(util.dense_stages(4)))
  with caplog.at_level("WARNING"):
    hook._warn(ctx, window + 10, 0.9, _fidelity(0.9, 0.9, 0.9))
    assert not caplog.records  # the statistic is over steps <= window
    hook._warn(ctx, window, 0.9, _fidelity(0.9, 0.9, 0.9))
  assert len(caplog.records) == 1


@pytest.mark.parametrize("lag_changes,skips,batch_norm,expected", [
    ((0.6, 0.5, 0.1), None, False, 2),    # modules 1 and 2 move: both
    ((0.6, 0.5, 0.45), None, False, 3),   # module 3 too: all below the top
    ((0.6, 0.3, 0.1), None, False, 2),    # module 1 alone: at least two
    ((0.3, 0.2, 0.1), None, False, 0),    # nothing above the threshold
    ((0.6, 0.3, 0.1), {2: [0]}, False, 3),  # skips: all below the top or none
    ((0.6, 0.3, 0.1), None, True, 3),     # batch norm: all or none too
    ((0.3, 0.2, 0.1), None, True, 0),
])
def test_replay_advice_fits_the_model(lag_changes, skips, batch_norm,
                                      expected):
  from sideways_tf.training import hooks
  from tests.engine.test_replay_batch_norm import batch_norm_stages
  stages = batch_norm_stages(4) if batch_norm else util.dense_stages(4)
  pipe = sideways_tf.Pipeline(stages, skips=skips)
  fidelity = _fidelity(*lag_changes)
  assert diagnostics.replay_for(
      {m: v["lag_change"] for m, v in fidelity.items()}, 4, 0.4,
      has_skips=bool(skips), has_batch_norm=batch_norm) == expected
  if expected:
    advice = hooks.replay_advice(pipe, fidelity, 0.4)
    assert f"replay_modules={expected} " in advice
    assert ("Skip-Sideways" in advice) == bool(skips)
    assert ("with batch norm" in advice) == batch_norm


def test_replay_for_a_deep_model_replays_up_to_the_highest_module_that_moves():
  # VGG-8 at L = 8: lag changes falling with depth, above 0.4 up to module 5.
  changes = {f"module_{k}": v for k, v in enumerate(
      (0.9, 0.8, 0.7, 0.6, 0.5, 0.3, 0.2), start=1)}
  assert diagnostics.replay_for(changes, 8, 0.4) == 5
  assert diagnostics.replay_for(changes, 8, 0.95) == 0
  assert diagnostics.replay_for(changes, 8, 0.1) == 7
