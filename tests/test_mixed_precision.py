"""Mixed precision: 16-bit stages give gradients close to float32's.

How close follows from the arithmetic, not from one machine's result: on a
model built so that a bound holds (exact 16-bit inputs, no cancellation, no
amplification, short sums) every gradient entry is within gamma(c) =
c u / (1 - c u) of float32's, with u the unit roundoff and c the roundings
in its history, counted whatever the kernels' summation order
(tests/mixed_precision_model.py says why and how). For these 3 dense
modules and B*T = 12 rows the bottom kernel's gradient has the longest
history, 47.8 roundings: a bound of 0.23 for bfloat16 and 0.024 for float16
(measured on this machine, oneDNN or Eigen kernels: at most 0.010 and
0.0009). A wrong or unscaled gradient (the loss scale left in, a wrong frame
count, a missing tick) is off by far more.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from sideways_tf.engine.pipeline import ALGORITHMS, Pipeline
from sideways_tf.training.trainer import DynamicLossScale, Trainer
from tests import mixed_precision_model
from tests import util

NUM_MODULES, BATCH, FRAMES, FRAME_SIZE = 3, 2, 6, 5


@pytest.fixture(autouse=True)
def _float32_after():
  yield
  keras.mixed_precision.set_dtype_policy("float32")


def dense_stages():
  return util.dense_stages(NUM_MODULES, in_dim=FRAME_SIZE)


def test_the_rounding_counts_of_the_docstring():
  pipeline = Pipeline(dense_stages())
  counts = mixed_precision_model.gradient_roundings(pipeline.stages,
                                                    BATCH * FRAMES)
  bottom_kernel = pipeline.trainable_variables[0]
  assert round(counts[id(bottom_kernel)], 1) == 47.8
  assert max(counts.values()) == counts[id(bottom_kernel)]
  deeper = mixed_precision_model.gradient_roundings(
      Pipeline(util.dense_stages(NUM_MODULES + 1, in_dim=FRAME_SIZE)).stages,
      BATCH * FRAMES)
  assert max(deeper.values()) > max(counts.values())


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("policy,loss_scale", [("mixed_bfloat16", None),
                                               ("mixed_float16", 2.0 ** 15)])
def test_16_bit_gradients_are_close_to_float32(algorithm, policy, loss_scale):
  frames = mixed_precision_model.exact_clip(BATCH, FRAMES, FRAME_SIZE)
  _, reference = mixed_precision_model.clip_gradients(
      dense_stages, "float32", algorithm, frames)
  pipeline, gradients = mixed_precision_model.clip_gradients(
      dense_stages, policy, algorithm, frames, loss_scale)
  if algorithm == "sideways":  # the buffers hold the 16-bit stage outputs
    assert pipeline.modules[1].input_buffer.dtype == policy[len("mixed_"):]
  for variable in pipeline.trainable_variables:
    assert variable.dtype == "float32"  # master weights stay float32
  mixed_precision_model.assert_within_bounds(
      gradients, reference, pipeline, BATCH * FRAMES, policy)


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
