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
