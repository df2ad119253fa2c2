"""Mixed precision: 16-bit stages give gradients close to float32's.

How close follows from the arithmetic, not from one machine's result. A
16-bit result is rounded with a relative error of at most the unit roundoff
u: 2^-8 for bfloat16 (8 significant bits), 2^-11 for float16 (11 bits). How
a kernel sums is up to the platform: oneDNN and GPU kernels accumulate in
float32 and round once, TF's Eigen kernels (CPUs without AVX-512, or
TF_ENABLE_ONEDNN_OPTS=0) may round every partial sum to 16 bits; BiasAddGrad
does on every CPU. A sum of n 16-bit numbers can then lose up to (n-1)u, and
when its terms cancel that error is relative to sum|x_i|, not to |sum x_i|:
on random conv weights the bias gradient of a 1536-term sum was 50% off on
this machine with Eigen's kernels while 0.5% off with oneDNN's. No bound from
u and the depth holds there, so the test model is built so that one does:

* no cancellation: non-negative frames and weights, one label, and top
  weights only in that label's column, so every gradient entry is a sum of
  terms of one sign;
* no amplification: every column of weights sums to 1/2 (biases 0), so each
  pre-activation lies in [0, 1/2] and the logits in [0, 1/4]; then
  tanh' = 1 - y^2 scales the relative error of y by 2y^2/(1-y^2) < 1, the
  softmax that of the logits by at most 2|l| < 1, and p_label - 1 that of
  p_label by p/(1-p) < 1 (p_label <= 0.39);
* short sums: dense stages and B*T = 12 rows, so a 16-bit accumulation over
  the rows costs at most 11 roundings.

Then to first order the relative error of every entry is at most u times
the number of roundings in its history: each operation adds its own rounding
to the errors of its inputs (added for products, at most the largest for
sums of one sign), counting a value that is used twice twice.
`roundings_along_depth` counts them for the bottom module's kernel, whose
history is the longest: 56 for 3 modules, a bound of 0.22 for bfloat16 and
0.027 for float16 (measured on this machine, oneDNN or Eigen kernels: at
most 0.012 and 0.001). A wrong or unscaled gradient (the loss scale left in,
a wrong frame count, a missing tick) is off by far more.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from sideways_tf.engine.pipeline import ALGORITHMS, Pipeline
from sideways_tf.training.trainer import DynamicLossScale, Trainer
from tests import util

NUM_MODULES, BATCH, FRAMES, FRAME_SIZE = 3, 2, 6, 5
UNIT_ROUNDOFF = {"mixed_bfloat16": 2.0 ** -8, "mixed_float16": 2.0 ** -11}


@pytest.fixture(autouse=True)
def _float32_after():
  yield
  keras.mixed_precision.set_dtype_policy("float32")


def roundings_along_depth(num_modules, rows):
  """Roundings in the history of the bottom module's kernel gradient (see
  the module docstring); a rounding of a reused value counts at each use."""
  history = 1                      # the frames, cast to 16 bits
  activations = []
  for k in range(num_modules):     # weight cast, matmul, bias add, tanh
    history += 3 if k == num_modules - 1 else 4
    activations.append(history)
  gradient = history + 7           # softmax (shift, exp, sum, divide), minus
  # the label, times the upstream gradient (itself rounded): d logits
  for k in reversed(range(num_modules - 1)):
    gradient += 2                  # weight cast, matmul: d y_k
    gradient += activations[k] + 3  # tanh' = 1 - y_k^2: y_k, square,
    # subtract, multiply: d z_k
  return gradient + 1 + 1 + (rows - 1)  # the frames, the matmul over the
  # rows, and their sum if it is accumulated in 16 bits


def cancellation_free(pipeline):
  """Non-negative weights, every column summing to 1/2, biases 0, and the
  top weights only in label 0's column (the module docstring says why)."""
  kernels = [v for v in pipeline.trainable_variables if len(v.shape) == 2]
  for variable in pipeline.trainable_variables:
    value = np.abs(np.asarray(variable))
    if len(variable.shape) == 2:
      value = 0.5 * value / value.sum(axis=0, keepdims=True)
      if variable is kernels[-1]:
        value[:, 1:] = 0.0
    else:
      value = np.zeros_like(value)
    variable.assign(value)


def clip_gradients(policy, algorithm, loss_scale=None):
  keras.mixed_precision.set_dtype_policy(policy)
  keras.utils.set_random_seed(0)  # the same float32 weights for every policy
  pipeline = Pipeline(util.dense_stages(NUM_MODULES, in_dim=FRAME_SIZE))
  clip = np.abs(util.moving_clip(batch=BATCH, frames=FRAMES,
                                 shape=(FRAME_SIZE,)))
  frames, labels = pipeline.prepare_inputs(
      clip / clip.max(), np.zeros(BATCH, np.int32), algorithm)
  cancellation_free(pipeline)
  result = tf.function(lambda f, l: pipeline.clip_gradients(
      f, l, algorithm, loss_scale=loss_scale))(frames, labels)
  return pipeline, [np.asarray(g, np.float64) for g in result.gradients]


def test_the_rounding_count_of_the_docstring():
  assert roundings_along_depth(NUM_MODULES, BATCH * FRAMES) == 56
  assert roundings_along_depth(1, 1) < roundings_along_depth(2, 1)


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
  bound = (roundings_along_depth(NUM_MODULES, BATCH * FRAMES)
           * UNIT_ROUNDOFF[policy])
  for g, r, variable in zip(gradients, reference,
                            pipeline.trainable_variables):
    np.testing.assert_array_less(np.abs(g - r), bound * np.abs(r) + 1e-30,
                                 err_msg=variable.path)


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
