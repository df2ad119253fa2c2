"""Stage balancing: cut a list of layers into L modules of even cost.

A Sideways tick lasts as long as its slowest module, so the depth-parallel
speedup is bounded by ``sum(stage times) / max(stage times)`` (see
:func:`balance`). These helpers choose where to cut a model's consecutive
pieces ("items": a Keras layer, a list of layers, or a zoo
:class:`sideways_tf.models.zoo.Unit`) so the most expensive module is as cheap
as possible, like torchgpipe's ``balance_by_time`` / ``balance_by_size``:

* :func:`balance_by_params`: cost = trainable parameter count (free, but a
  conv's cost is its parameters times its output area, so early, wide-image
  layers are underestimated);
* :func:`balance_by_time`: cost = measured forward + backward time of each item
  on a sample batch of frames (what a tick actually spends), plus, with
  replay, a measured forward per gradient lag in the replayed modules.

Both return group sizes; :func:`split` turns sizes into groups and
:func:`to_stages` into Keras stages for :class:`sideways_tf.Pipeline`. The
partition itself is :func:`sideways_tf.models.zoo.balanced_split` (exact
minimax over the cut points), the same one the zoo uses for an int
granularity.
"""

from __future__ import annotations

import time
from typing import List, Sequence

import numpy as np
import tensorflow as tf

from sideways_tf.engine import checks
from sideways_tf.engine import state
from sideways_tf.models import zoo
from sideways_tf.models.zoo import balanced_split
from sideways_tf.models.zoo import item_layers
from sideways_tf.models.zoo import split


def _apply(layers, inputs, training):
  for layer in layers:
    inputs = layer(inputs, training=training)
  return inputs


def _params(layers) -> int:
  return int(sum(np.prod(v.shape) for layer in layers
                 for v in layer.trainable_variables))


def param_costs(layers: Sequence, sample_input=None) -> List[int]:
  """Trainable parameters of each item. Unbuilt items need `sample_input`
  (a batch of frames) to be built first."""
  items = [item_layers(item) for item in layers]
  if any(not layer.built for item in items for layer in item):
    if sample_input is None:
      raise ValueError("some layers are not built: pass sample_input (a batch "
                       "of frames) so they can be built")
    x = tf.convert_to_tensor(sample_input)
    for item in items:
      x = _apply(item, x, False)
  return [_params(item) for item in items]


def time_costs(layers: Sequence, sample_input, repeats: int = 5,
               inner: int = 8, backward: bool = True) -> List[float]:
  """Seconds of one forward + backward (inputs and parameters) of each item;
  with `backward=False`, of one forward (what replay recomputes).

  Each item runs on the output of the items before it (so shapes are the
  model's), `inner` times per ``tf.function`` call; the median over
  `repeats` calls divided by `inner`.
  """
  items = [item_layers(item) for item in layers]
  x = tf.convert_to_tensor(sample_input)
  seconds = []
  for item in items:
    y = _apply(item, x, False)  # builds

    @tf.function(autograph=False)
    def step(inputs, item=item):
      variables = [v for layer in item for v in layer.trainable_variables]

      def body(i, acc):
        perturbed = inputs + tf.cast(i, inputs.dtype) * 1e-12  # not hoistable
        with tf.GradientTape() as tape:
          tape.watch(perturbed)
          outputs = _apply(item, perturbed, True)
        grads = (tape.gradient(outputs, [perturbed] + variables,
                               unconnected_gradients="zero") if backward
                 else [outputs])
        return i + 1, acc + tf.add_n(
            [tf.reduce_sum(tf.cast(g, tf.float32)) for g in grads])

      return tf.while_loop(lambda i, _: i < inner, body,
                           (tf.constant(0), tf.constant(0.0)))[1]

    step(x).numpy()  # trace, warm up
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      step(x).numpy()
      times.append(time.perf_counter() - start)
    seconds.append(float(np.median(times)) / inner)
    x = y
  return seconds


def balance_by_params(layers: Sequence, num_modules: int,
                      sample_input=None) -> List[int]:
  """Group sizes minimising the largest module's parameter count."""
  return balanced_split(param_costs(layers, sample_input), num_modules)


def balance_by_time(layers: Sequence, num_modules: int, sample_input,
                    repeats: int = 5,
                    replay_forwards: Sequence[int] = ()) -> List[int]:
  """Group sizes minimising the largest module's measured tick time.

  `sample_input`: a batch of frames ``[B, H, W, C]`` (the per-tick batch).
  `replay_forwards[k]`: extra forwards module k runs per tick (replay: one
  per gradient lag, :func:`replay_forwards`); they are timed too.
  """
  costs = time_costs(layers, sample_input, repeats=repeats)
  forwards = (time_costs(layers, sample_input, repeats=repeats,
                         backward=False) if any(replay_forwards) else None)
  # balanced_split works on integers: nanoseconds.
  return balanced_split(
      [max(1, int(c * 1e9)) for c in costs], num_modules,
      None if forwards is None else [int(c * 1e9) for c in forwards],
      replay_forwards)


def replay_forwards(num_modules: int, replay_modules: int, skips=None,
                    skip_align: bool = False) -> List[int]:
  """Extra forwards per tick of each module under replay: one per gradient
  lag of a replayed module (more than one below a skip's source), else 0."""
  lags = state.gradient_lags(checks.skip_sources(skips, num_modules),
                             min(int(replay_modules), num_modules - 1),
                             skip_align)
  return [len(lags[k]) if k < replay_modules else 0
          for k in range(num_modules)]


def to_stages(layers: Sequence, sizes: Sequence[int]):
  """One ``keras.Sequential`` per group, named ``stage_k``."""
  return zoo.to_stages(split(layers, sizes))


def group_costs(costs: Sequence[float], sizes: Sequence[int]) -> List[float]:
  """Sum of item costs per group."""
  return [float(sum(group)) for group in split(list(costs), sizes)]


def balance(stage_costs: Sequence[float]) -> float:
  """sum / (L * max): 1 is perfect; the depth-parallel speedup is L times it."""
  costs = [float(c) for c in stage_costs]
  return sum(costs) / (len(costs) * max(costs)) if max(costs) > 0 else 1.0
