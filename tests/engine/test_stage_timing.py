"""Stage timing measures the module ticks without changing the pipeline."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import sideways_tf


def small_pipeline(**kwargs):
  keras.utils.set_random_seed(0)
  stages = [keras.Sequential([keras.layers.Dense(4, activation="relu")]),
            keras.Sequential([keras.layers.Dense(4, activation="relu")]),
            keras.Sequential([keras.layers.Dense(3)])]
  return sideways_tf.Pipeline(stages, **kwargs)


def test_one_positive_time_per_module_and_no_side_effects():
  pipe = small_pipeline()
  frames = tf.random.normal([2, 5, 6])
  labels = tf.constant([0, 2])
  pipe.compute_gradients(frames, labels)  # non-zero buffers
  weights = [v.numpy() for v in pipe.trainable_variables]
  state = [v.numpy() for v in pipe.state_variables]
  seconds = pipe.stage_tick_seconds(frames, labels, repeats=2,
                                    ticks_per_call=2)
  assert len(seconds) == pipe.num_modules
  assert all(isinstance(s, float) and s > 0 for s in seconds)
  for before, after in zip(weights + state,
                           pipe.trainable_variables + pipe.state_variables):
    np.testing.assert_array_equal(before, after.numpy())


def test_traces_once_per_ticks_per_call():
  pipe = small_pipeline()
  frames, labels = tf.random.normal([1, 3, 6]), tf.constant([1])
  pipe.stage_tick_seconds(frames, labels, repeats=1, ticks_per_call=2)
  keys = set(pipe._compiled)
  pipe.stage_tick_seconds(frames, labels, repeats=1, ticks_per_call=2)
  assert set(pipe._compiled) == keys


def test_rejects_fewer_than_one_tick_per_call():
  pipe = small_pipeline()
  with pytest.raises(ValueError, match="ticks_per_call must be >= 1, got 0"):
    pipe.stage_tick_seconds(tf.zeros([1, 3, 6]), tf.constant([0]),
                            ticks_per_call=0)


@pytest.mark.parametrize("skips", [None, {2: [0]}])
def test_replayed_modules_are_timed_with_their_replay(skips, monkeypatch):
  """A replayed module's time includes its recomputed forwards (one per
  lag): what the balancer must see to cut a replayed pipeline."""
  pipe = small_pipeline(replay_modules=2, skips=skips)
  frames, labels = tf.random.normal([2, 5, 6]), tf.constant([0, 2])
  pipe.compute_gradients(frames, labels)
  state = [v.numpy() for v in pipe.state_variables]
  replayed = []
  for module in pipe.modules:
    original = module.replay_tick

    def spy(*args, module=module, original=original, **kwargs):
      replayed.append((module.index, len(args[2])))  # backward: one per lag
      return original(*args, **kwargs)
    monkeypatch.setattr(module, "replay_tick", spy)
  seconds = pipe.stage_tick_seconds(frames, labels, repeats=1,
                                    ticks_per_call=2)
  assert all(s > 0 for s in seconds)
  lags = [len(m.replay_lags) for m in pipe.modules[:2]]
  assert sorted(set(replayed)) == [(0, lags[0]), (1, lags[1])]
  assert lags[0] == (2 if skips else 1)
  for before, after in zip(state, pipe.state_variables):
    np.testing.assert_array_equal(before, after.numpy())
