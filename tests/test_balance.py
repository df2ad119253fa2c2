"""Stage balancing (sideways_tf/balance.py): valid cuts, no timing assertions."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from sideways_tf.engine import balance


def dense_layers(widths, in_dim=3):
  layers = [keras.layers.Dense(w) for w in widths]
  x = tf.zeros((1, in_dim))
  for layer in layers:
    x = layer(x)
  return layers


def test_balance_by_params_minimises_the_largest_module():
  # Params: 3*10+10=40, 10*10+10=110, 10*1+1=11, 1*1+1=2.
  layers = dense_layers([10, 10, 1, 1])
  assert balance.param_costs(layers) == [40, 110, 11, 2]
  assert balance.balance_by_params(layers, 2) == [1, 3]
  assert balance.balance_by_params(layers, 4) == [1, 1, 1, 1]
  assert balance.balance_by_params(layers, 1) == [4]


def test_balance_by_params_builds_unbuilt_layers_from_a_sample():
  layers = [keras.layers.Dense(4), keras.layers.Dense(2)]
  with pytest.raises(ValueError, match="sample_input"):
    balance.balance_by_params(layers, 2)
  assert balance.balance_by_params(layers, 2, np.zeros((1, 3), "float32")) == [
      1, 1]


def test_balance_by_time_returns_a_valid_cut_of_conv_layers():
  layers = [keras.layers.Conv2D(4, 3, padding="same"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(8, 3, padding="same"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3)]
  sample = np.random.RandomState(0).rand(2, 8, 8, 1).astype("float32")
  sizes = balance.balance_by_time(layers, 3, sample, repeats=1)
  assert len(sizes) == 3 and sum(sizes) == 5 and min(sizes) >= 1
  seconds = balance.time_costs(layers, sample, repeats=1, inner=1)
  assert len(seconds) == 5 and all(s >= 0 for s in seconds)


def test_to_stages_keeps_the_layers_and_the_function():
  layers = dense_layers([5, 4, 2])
  x = tf.constant(np.random.RandomState(1).rand(2, 3).astype("float32"))
  expected = layers[2](layers[1](layers[0](x)))
  stages = balance.to_stages(layers, [2, 1])
  assert [len(s.layers) for s in stages] == [2, 1]
  np.testing.assert_allclose(stages[1](stages[0](x)), expected, rtol=1e-6)


def test_items_may_be_lists_of_layers():
  blocks = [dense_layers([4]), dense_layers([4, 4], in_dim=4)]
  assert balance.param_costs(blocks) == [16, 40]
  assert [len(s.layers) for s in balance.to_stages(blocks, [1, 1])] == [1, 2]


def test_balance_and_group_costs():
  assert balance.balance([1.0, 1.0]) == 1.0
  assert balance.balance([3.0, 1.0]) == pytest.approx(4 / 6)
  assert balance.group_costs([1, 2, 3], [2, 1]) == [3.0, 3.0]
  with pytest.raises(ValueError, match="sizes"):
    balance.split([1, 2, 3], [2, 2])


def test_replay_forwards_move_the_cut_up():
  """A replayed module also recomputes its forward (once per gradient lag),
  so the exact search charges the bottom groups their items' forward cost."""
  costs = [4, 4, 4, 4]
  assert balance.balanced_split(costs, 2) == [2, 2]
  # Module 0 replays: its items cost 4 + 3 each, so it takes one item less.
  assert balance.balanced_split(costs, 2, [3, 3, 3, 3], [1]) == [1, 3]
  with pytest.raises(ValueError, match="one cost per item"):
    balance.balanced_split(costs, 2, [3, 3], [1])


def test_replay_forwards_count_one_per_gradient_lag():
  assert balance.replay_forwards(4, 0) == [0, 0, 0, 0]
  assert balance.replay_forwards(4, 2) == [1, 1, 0, 0]
  # Below a skip's source two lags arrive (main path and skip): 2 forwards.
  assert balance.replay_forwards(4, 3, {2: [0]}) == [2, 1, 1, 0]
  assert balance.replay_forwards(4, 3, {2: [0]}, skip_align=True) == [
      2, 1, 1, 0]


def test_balance_by_time_with_replay_returns_a_valid_cut(monkeypatch):
  layers = dense_layers([8, 8, 8, 3])
  sample = np.random.RandomState(0).rand(2, 3).astype("float32")
  measured = []
  original = balance.time_costs

  def spy(*args, **kwargs):
    measured.append(kwargs.get("backward", True))
    return original(*args, **kwargs)
  monkeypatch.setattr(balance, "time_costs", spy)
  sizes = balance.balance_by_time(layers, 2, sample, repeats=1,
                                  replay_forwards=[1, 0])
  assert sum(sizes) == 4 and min(sizes) >= 1
  assert measured == [True, False]  # forward+backward, then forward only
  measured.clear()
  balance.balance_by_time(layers, 2, sample, repeats=1)
  assert measured == [True]  # no replay: no forward-only timing
