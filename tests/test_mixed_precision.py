"""Mixed precision: 16-bit stages give gradients close to float32's."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from sideways_tf.engine.pipeline import ALGORITHMS, Pipeline
from sideways_tf.training.trainer import DynamicLossScale, Trainer
from tests import util


@pytest.fixture(autouse=True)
def _float32_after():
  yield
  keras.mixed_precision.set_dtype_policy("float32")


def clip_gradients(policy, algorithm, loss_scale=None):
  keras.mixed_precision.set_dtype_policy(policy)
  keras.utils.set_random_seed(0)  # the same float32 weights for every policy
  pipeline = Pipeline(util.conv_stages(3))
  frames, labels = pipeline.prepare_inputs(
      util.moving_clip(batch=4, frames=6, shape=(8, 8, 2)),
      util.labels_for(4), algorithm)
  result = tf.function(lambda f, l: pipeline.clip_gradients(
      f, l, algorithm, loss_scale=loss_scale))(frames, labels)
  return pipeline, [np.asarray(g, np.float64) for g in result.gradients]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("policy,loss_scale", [("mixed_bfloat16", None),
                                               ("mixed_float16", 2.0 ** 15)])
def test_16_bit_gradients_are_close_to_float32(algorithm, policy, loss_scale):
  _, reference = clip_gradients("float32", algorithm)
  pipeline, gradients = clip_gradients(policy, algorithm, loss_scale)
  if algorithm == "sideways":  # the buffers hold the 16-bit stage outputs
    assert pipeline.modules[1].input_buffer.dtype == policy[len("mixed_"):]
  for variable in pipeline.trainable_variables:
    assert variable.dtype == "float32"  # master weights stay float32
  for g, r in zip(gradients, reference):
    cosine = np.dot(g.ravel(), r.ravel()) / (np.linalg.norm(g) *
                                             np.linalg.norm(r))
    # bfloat16 keeps 8 significant bits (float16 11): a relative rounding of
    # 2^-8 ~ 0.4% per op, ~1% after a few layers (measured: <= 1.1%, cosine
    # >= 0.99996). 5% and 0.999 leave room without hiding a real error
    # (a wrong or unscaled gradient is off by far more).
    assert cosine > 0.999
    assert np.linalg.norm(g - r) <= 0.05 * np.linalg.norm(r)


def test_dynamic_loss_scale_halves_on_overflow_and_grows_after_good_steps():
  scale = DynamicLossScale(initial_scale=8.0, growth_steps=2)
  assert not bool(scale.update([tf.constant([1.0, np.inf])]))
  assert float(scale.scale) == 4.0 and int(scale.good_steps) == 0
  assert bool(scale.update([tf.constant([1.0])]))
  assert float(scale.scale) == 4.0 and int(scale.good_steps) == 1
  assert bool(scale.update([tf.constant([1.0])]))
  assert float(scale.scale) == 8.0 and int(scale.good_steps) == 0


def test_float16_trainer_skips_an_overflowing_step_and_lowers_the_scale():
  keras.mixed_precision.set_dtype_policy("mixed_float16")
  pipeline = Pipeline(util.conv_stages(3))
  loss_scale = DynamicLossScale(initial_scale=2.0 ** 60)  # overflows float16
  trainer = Trainer(pipeline, keras.optimizers.SGD(0.1), "sideways",
                    loss_scale=loss_scale)
  frames = util.moving_clip(batch=2, frames=6, shape=(8, 8, 2))
  labels = util.labels_for(2)
  pipeline.prepare_inputs(frames, labels)
  before = [np.asarray(v) for v in pipeline.trainable_variables]
  trainer.train_step(frames, labels)
  assert float(loss_scale.scale) == 2.0 ** 59
  for b, v in zip(before, pipeline.trainable_variables):
    np.testing.assert_array_equal(b, np.asarray(v))
  loss_scale.scale.assign(2.0 ** 10)
  metrics = trainer.train_step(frames, labels)
  assert np.isfinite(metrics["loss"])
  assert any(not np.array_equal(b, np.asarray(v))
             for b, v in zip(before, pipeline.trainable_variables))
