"""Models whose 16-bit gradients have an error bound derived from the arithmetic.

Used by tests/test_mixed_precision.py (dense stages) and
tests/test_temporal_engine.py (a causal temporal conv between them).

Why a special model: a 16-bit result is rounded with a relative error of at
most the unit roundoff u, 2^-8 for bfloat16 (8 significant bits), 2^-11 for
float16 (11 bits), but how a kernel sums is up to the platform. oneDNN and
GPU kernels accumulate in float32 and round once; TF's Eigen kernels (CPUs
without AVX-512, or TF_ENABLE_ONEDNN_OPTS=0) may round every partial sum to
16 bits (on this machine with Eigen's kernels: the depthwise conv and its
filter gradient do, MatMul does not), and BiasAddGrad does on every CPU. A
sum of n numbers can then lose up to (n-1)u, relative to sum|x_i|: when the
terms cancel, the error relative to |sum x_i| has no bound (a conv bias
gradient over 1536 positions of a random model was 50% off with Eigen's
kernels, 0.5% with oneDNN's). So the model is built so that a bound holds:

* exact inputs: frames are multiples of 1/16 in [1/16, 1], weights multiples
  of 2^-8 in [2^-8, 1/2) (or 0): 16-bit numbers, so the float32 and the
  16-bit run start from the same numbers, and no value comes near float16's
  subnormals;
* no cancellation: non-negative frames and weights, one label (0), and the
  top weights only in that label's column, so every value and every gradient
  entry is a sum of terms of one sign (the Sideways pairing of a frame's
  activation with another frame's gradient keeps the signs);
* no amplification: every column of weights (a Dense unit's, a temporal
  conv channel's taps) sums to at most 1/2, biases are 0, so pre-activations
  lie in [0, 1/2] and the logits in [0, 1/4] (see the rules below);
* short sums: a few features and B*T rows.

Then, with c(v) the relative error of a value v in units of u (to first
order), `gradient_roundings` counts, whatever the kernels do:

* a copy is exact: the cast of an exact input, a buffer or temporal state
  (held in the compute dtype), a 16-bit gradient cast to float32, adding a
  zero bias, a zero term of a sum;
* a sum of n non-zero terms of one sign (a dot product, a row sum):
  max c(term) + n. Each product and each partial sum is rounded at most
  once on any path (products of two 16-bit numbers are exact in float32),
  so n covers both a float32 accumulator rounded once and 16-bit partial
  sums; the relative error of a one-signed sum is at most its terms' largest;
* tanh: c(z) + 1, its condition number 2z / sinh(2z) being <= 1;
  its derivative 1 - y^2 (y <= tanh(1/2)): y^2 adds 2 c(y) + 1, and the
  subtraction scales that by y^2 / (1 - y^2) <= 0.27, and adds 1; times the
  output gradient, 1 more;
* the loss gradient (TF's SparseSoftmaxCrossEntropyWithLogits, in the
  compute dtype): p = exp(l - max l) / sum exp(l - max l) moves by at most
  2 max|dl| <= c(l)/2 for logits in [0, 1/4], the shift's rounding by 1/2
  more, the exps of the numerator and the denominator 2, the sum over C
  classes C, the division 1; p - 1 at the label scales p's error by
  p / (1 - p) < 1 (p <= e^(1/4) / (e^(1/4) + C - 1) = 0.39 for C = 3) and
  adds 1; times the loss's upstream gradient (1/N, itself rounded): 2;
* the float32 roundings of both runs (the reference's, and the 16-bit run's
  accumulation over ticks and normalisation; 2^-24 each, at most 2^-13 u,
  far fewer than 2^13 of them): 1 for all.

The bound on the relative error of a gradient entry is then
gamma(c) = c u / (1 - c u) (Higham, Accuracy and Stability of Numerical
Algorithms, Lemma 3.1: the product of c factors (1 + delta), |delta| <= u,
is within gamma(c) of 1); the nonlinear steps (tanh, exp, 1 - y^2, p - 1)
enter to first order, through their condition numbers. A wrong gradient (a
dropped state, a missing tick, a loss scale left in, a wrong frame count)
is off by more than that; the tests say by how much.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from sideways_tf.engine.pipeline import Pipeline
from sideways_tf.layers import CausalTemporalConv
from tests import util

UNIT_ROUNDOFF = {"mixed_bfloat16": 2.0 ** -8, "mixed_float16": 2.0 ** -11}
LABEL = 0
FRAME_STEP = 1.0 / 16
WEIGHT_STEP = 2.0 ** -8
TANH_MAX = math.tanh(0.5)  # pre-activations lie in [0, 1/2]
# Relative condition number of 1 - s at s = y^2 <= tanh(1/2)^2.
ONE_MINUS_SQUARE = TANH_MAX ** 2 / (1 - TANH_MAX ** 2)
# Both runs' float32 roundings (2^-24 each, at most 2^-13 u), all together.
FLOAT32_ROUNDINGS = 1


def exact_clip(batch, frames, size, seed=0):
  """A non-negative moving clip of 16-bit numbers: multiples of 1/16 in
  [1/16, 1] (no zero rows, so no pre-activation is tiny)."""
  clip = np.abs(util.moving_clip(batch=batch, frames=frames, shape=(size,),
                                 seed=seed))
  steps = np.clip(np.round(clip / clip.max() / FRAME_STEP), 1, 1 / FRAME_STEP)
  return (steps * FRAME_STEP).astype("float32")


def set_cancellation_free_weights(pipeline, seed=0):
  """Every kernel non-negative, multiples of 2^-8, each column (the last
  axis' entries summed over the others) at most 1/2; biases 0; the top
  kernel only in the label's column."""
  rng = np.random.RandomState(seed)
  kernels = [v for v in pipeline.trainable_variables if len(v.shape) >= 2]
  for variable in pipeline.trainable_variables:
    if len(variable.shape) < 2:
      variable.assign(np.zeros(variable.shape, np.float32))
      continue
    value = rng.uniform(1.0, 2.0, variable.shape)
    value = 0.5 * value / value.sum(axis=tuple(range(value.ndim - 1)),
                                    keepdims=True)
    value = np.floor(value / WEIGHT_STEP) * WEIGHT_STEP  # the sums stay <= 1/2
    if variable is kernels[-1]:
      value[..., LABEL + 1:] = 0.0
      value[..., :LABEL] = 0.0
    variable.assign(value.astype(np.float32))


def clip_gradients(make_stages, policy, algorithm, frames, loss_scale=None,
                   **pipeline_options):
  """(pipeline, float64 gradients) of `frames` with label LABEL under the
  dtype `policy`, on stages from `make_stages()` with the weights above."""
  keras.mixed_precision.set_dtype_policy(policy)
  pipeline = Pipeline(make_stages(), **pipeline_options)
  frames, labels = pipeline.prepare_inputs(
      frames, np.full(frames.shape[0], LABEL, np.int32), algorithm)
  set_cancellation_free_weights(pipeline)
  result = tf.function(lambda f, l: pipeline.clip_gradients(
      f, l, algorithm, loss_scale=loss_scale))(frames, labels)
  return pipeline, [np.asarray(g, np.float64) for g in result.gradients]


def _leaf_layers(stages):
  """The layers in forward order; the count knows Dense (tanh or linear) and
  depthwise CausalTemporalConv only."""
  for stage in stages:
    for layer in (stage.layers if isinstance(stage, keras.Sequential)
                  else [stage]):
      if isinstance(layer, keras.layers.Dense):
        if layer.activation not in (keras.activations.tanh,
                                    keras.activations.linear):
          raise ValueError(f"no rounding count for {layer.name}'s activation")
      elif not (isinstance(layer, CausalTemporalConv) and
                layer.filters is None):
        raise ValueError(f"no rounding count for layer {layer.name}")
      yield layer


def _is_tanh(layer):
  return getattr(layer, "activation", None) is keras.activations.tanh


def _loss_gradient_roundings(logits, classes):
  """c(d loss / d logits) from c(logits) (the module docstring's rule)."""
  p = logits / 2 + 0.5 + 2 + classes + 1
  p_label = math.exp(0.25) / (math.exp(0.25) + classes - 1)
  minus_label = max(p, p_label / (1 - p_label) * p + 1)
  return minus_label + 2


def gradient_roundings(stages, rows):
  """{id(variable): c} for every kernel and bias of `stages`: the roundings
  (in units of u) in the history of its gradient, by the module docstring's
  rules; `rows` = B*T bounds every sum over frames and clips."""
  layers = list(_leaf_layers(stages))
  inputs, outputs, c = [], [], 0.0  # the frames are exact
  for layer in layers:
    inputs.append(c)
    # Dense: a dot product over its inputs; the temporal conv: over its K
    # frames, the past ones from the state, copies of earlier inputs.
    c += (layer.kernel.shape[0] if isinstance(layer, keras.layers.Dense)
          else layer.kernel_size)
    c += 1 if _is_tanh(layer) else 0
    outputs.append(c)
  gradient = _loss_gradient_roundings(c, layers[-1].units)
  counts = {}
  for i in reversed(range(len(layers))):
    layer = layers[i]
    if _is_tanh(layer):  # times 1 - y^2
      gradient += ONE_MINUS_SQUARE * (2 * outputs[i] + 1) + 1 + 1
    # Sums over the rows (for the kernel, of products with the inputs).
    counts[id(layer.kernel)] = inputs[i] + gradient + rows + FLOAT32_ROUNDINGS
    if layer.bias is not None:
      counts[id(layer.bias)] = gradient + rows + FLOAT32_ROUNDINGS
    # The input gradient: the top has one non-zero column; a Dense sums over
    # its units; the temporal conv (BP through time, or Sideways folding the
    # past's gradient into the current frame's) over its K taps.
    if i == len(layers) - 1:
      gradient += 1
    elif isinstance(layer, keras.layers.Dense):
      gradient += layer.units
    else:
      gradient += layer.kernel_size
  return counts


def relative_error_bound(roundings, policy):
  """gamma(c) = c u / (1 - c u) (the module docstring)."""
  cu = roundings * UNIT_ROUNDOFF[policy]
  assert cu < 1, "too many roundings for a bound"
  return cu / (1 - cu)


def assert_within_bounds(gradients, reference, pipeline, rows, policy):
  """Every entry of every gradient within its variable's bound of the
  float32 gradient; returns {variable path: (largest error, bound)}."""
  counts = gradient_roundings(pipeline.stages, rows)
  report = {}
  for g, r, variable in zip(gradients, reference,
                            pipeline.trainable_variables):
    bound = relative_error_bound(counts[id(variable)], policy)
    assert (r != 0).all(), variable.path  # one sign, no cancellation to 0
    error = np.abs(g - r) / np.abs(r)
    report[variable.path] = (float(error.max()), bound)
    np.testing.assert_array_less(error, bound, err_msg=variable.path)
  return report
