"""SidewaysModule alone: one tick's forward and backward, its buffers, skips."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from sideways_tf.engine.module import SidewaysModule
from sideways_tf.engine.module import combine_skips


def dense_module(index, num_modules, units=3, in_features=4):
  stage = keras.layers.Dense(units)
  stage.build((None, in_features))
  return SidewaysModule(stage, index, num_modules)


def test_middle_tick_is_the_vector_jacobian_product_at_its_input():
  keras.utils.set_random_seed(0)
  module = dense_module(1, 3)
  x = tf.random.normal([2, 4])
  g = tf.random.normal([2, 3])
  result = module.tick(x, output_gradient=g)
  kernel, bias = module.stage.kernel, module.stage.bias
  np.testing.assert_allclose(result.outputs, x @ kernel + bias, rtol=1e-6)
  # y = x W + b: dL/dx = g W^T, dL/dW = x^T g, dL/db = sum_b g.
  np.testing.assert_allclose(result.emitted_gradient,
                             g @ tf.transpose(kernel), rtol=1e-5)
  np.testing.assert_allclose(result.parameter_gradients[0],
                             tf.transpose(x) @ g, rtol=1e-5)
  np.testing.assert_allclose(result.parameter_gradients[1],
                             tf.reduce_sum(g, 0), rtol=1e-5)
  assert result.loss is None


def test_top_tick_differentiates_its_loss():
  keras.utils.set_random_seed(1)
  module = dense_module(2, 3)
  x = tf.random.normal([2, 4])
  result = module.tick(x, loss_of_outputs=lambda y: tf.reduce_sum(y * y))
  y = result.outputs
  np.testing.assert_allclose(result.loss, tf.reduce_sum(y * y), rtol=1e-6)
  np.testing.assert_allclose(result.emitted_gradient,
                             (2 * y) @ tf.transpose(module.stage.kernel),
                             rtol=1e-5)


def test_first_module_emits_no_gradient():
  module = dense_module(0, 2)
  result = module.tick(tf.ones([1, 4]), output_gradient=tf.ones([1, 3]))
  assert result.emitted_gradient is None
  assert len(result.parameter_gradients) == 2


def test_tick_needs_exactly_one_of_gradient_and_loss():
  module = dense_module(1, 3)
  with pytest.raises(ValueError, match="exactly one"):
    module.tick(tf.ones([1, 4]))
  with pytest.raises(ValueError, match="exactly one"):
    module.tick(tf.ones([1, 4]), output_gradient=tf.ones([1, 3]),
                loss_of_outputs=tf.reduce_sum)


def test_rejects_an_index_outside_the_pipeline():
  with pytest.raises(ValueError, match=r"\[0, 2\), got 2"):
    SidewaysModule(keras.layers.Dense(1), 2, 2)


@pytest.mark.parametrize("index,has_input,has_gradient",
                         [(0, False, True), (1, True, True), (2, True, False)])
def test_buffers_exist_where_the_spec_says_and_reset_to_zero(
    index, has_input, has_gradient):
  module = dense_module(index, 3)
  module.allocate_state((2, 4), tf.float32, (2, 3), tf.float32)
  assert (module.input_buffer is not None) == has_input
  assert (module.gradient_buffer is not None) == has_gradient
  assert len(module.state_variables) == has_input + has_gradient
  for buffer in module.state_variables:
    assert not buffer.trainable
    buffer.assign(tf.ones(buffer.shape))
  module.reset_state()
  for buffer in module.state_variables:
    assert float(tf.reduce_sum(tf.abs(buffer))) == 0.0


def test_combine_skips_concat_pools_larger_maps_and_add_sums():
  inputs = tf.ones([1, 2, 2, 3])
  skip = tf.reshape(tf.range(16, dtype=tf.float32), [1, 4, 4, 1])
  joined = combine_skips(inputs, [skip], "concat")
  assert joined.shape == (1, 2, 2, 4)
  np.testing.assert_allclose(joined[..., 3],
                             tf.nn.avg_pool2d(skip, 2, 2, "VALID")[..., 0])
  added = combine_skips(inputs, [2 * tf.ones([1, 2, 2, 3])], "add")
  np.testing.assert_allclose(added, 3 * np.ones([1, 2, 2, 3]))
  assert combine_skips(inputs, [], "concat") is inputs


def test_combine_skips_names_bad_inputs():
  inputs = tf.ones([1, 2, 2, 3])
  with pytest.raises(ValueError, match="ranks differ"):
    combine_skips(inputs, [tf.ones([1, 3])])
  with pytest.raises(ValueError, match="integer"):
    combine_skips(inputs, [tf.ones([1, 3, 3, 3])])
  with pytest.raises(ValueError, match="equal channels"):
    combine_skips(inputs, [tf.ones([1, 2, 2, 1])], "add")
  with pytest.raises(ValueError, match="unknown skip_combine 'max'"):
    combine_skips(inputs, [tf.ones([1, 2, 2, 3])], "max")
