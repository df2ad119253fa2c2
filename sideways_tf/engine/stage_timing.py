"""Per-module tick times: the measurements behind stage balance.

Each module's own `SidewaysModule.tick` (`replay_tick` for a replayed module,
with its recomputed forwards) runs alone, several ticks per call, on the
pipeline's current buffers, so it measures exactly the work the engine does
per module per tick. Used by TensorBoard's `stages/<k>/seconds`, the
benchmark tool and the stage balancer.
"""

import time
from typing import List

import numpy as np
import tensorflow as tf

from sideways_tf.engine.skips import read_skip


def stage_tick_seconds(pipeline, frames, labels, repeats: int = 5,
                       ticks_per_call: int = 16) -> List[float]:
  """Median wall time of one tick of each module, each run on its own.

  The balance of these times bounds the depth-parallel speedup (sum / max).
  Uses the module's own `tick` on the current buffers, so it measures
  exactly the work the engine does per module per tick. Each call runs
  `ticks_per_call` ticks of the module in a ``tf.while_loop`` (module 1
  reading successive frames, the accumulators carried as in the engine) and
  the time is divided by it, so the per-call dispatch of a ``tf.function``
  (about as long as a small module's tick on a CPU) does not swamp it.
  """
  if int(ticks_per_call) < 1:
    raise ValueError(f"ticks_per_call must be >= 1, got {ticks_per_call}")
  frames, labels = pipeline.prepare_inputs(frames, labels, "sideways")
  key = ("stage_ticks", int(ticks_per_call))
  if key not in pipeline._compiled:
    pipeline._compiled[key] = [
        tf.function(lambda f, l, k=k: _module_ticks(
            pipeline, k, f, l, int(ticks_per_call)), autograph=False)
        for k in range(pipeline.num_modules)]
  seconds = []
  for fn in pipeline._compiled[key]:
    fn(frames, labels).numpy()  # trace, warm up
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      fn(frames, labels).numpy()
      times.append(time.perf_counter() - start)
    seconds.append(float(np.median(times)) / int(ticks_per_call))
  return seconds

def _module_ticks(pipeline, k, frames, labels, num_ticks):
  """`num_ticks` ticks of module k alone; returns a scalar to wait on."""
  module = pipeline.modules[k]
  with tf.device(pipeline.devices[k]), tf.name_scope(f"stage_{k}"):
    clip_length = tf.shape(frames)[1]
    inputs0 = (tf.zeros([], frames.dtype) if module.is_first
               else tf.convert_to_tensor(module.input_buffer))
    # The output gradient rides along as a loop variable, as d_k does in
    # the engine (a tensor captured from outside the loop trips the
    # gradient of batch norm's tf.cond).
    output_gradient0 = (tf.zeros([]) if module.is_top
                        else tf.convert_to_tensor(module.gradient_buffer))
    accumulators0 = [tf.zeros_like(v)
                     for v in module.stage.trainable_variables]

    def loss_of_outputs(logits):
      return tf.reduce_sum(tf.cast(pipeline.loss_fn(labels, logits),
                                   tf.float32))

    def body(i, inputs, output_gradient, accumulators):
      skip_inputs = [read_skip(tf.convert_to_tensor(b), delay) for b, delay
                     in zip(module.skip_buffers, module.skip_delays)]
      module_input = (tf.gather(frames, i % clip_length, axis=1)
                      if module.is_first else inputs)
      if module.replay_lags:
        result = _replay_tick(module, i, module_input, skip_inputs,
                              output_gradient)
        emitted = result.emitted_gradients[0]
      else:
        result = module.tick(
            module_input,
            output_gradient=None if module.is_top else output_gradient,
            loss_of_outputs=loss_of_outputs if module.is_top else None,
            training=i >= 0, skip_inputs=skip_inputs)
        emitted = result.emitted_gradient
      if not module.is_first:
        # Carry the input through the emitted gradient so that no part of
        # the tick is loop-invariant (grappler would hoist it out).
        inputs = tf.where(i >= 0, inputs, emitted)
      return (i + 1, inputs, output_gradient,
              [acc + g for acc, g in zip(accumulators,
                                         result.parameter_gradients)])

    _, _, _, accumulators = tf.while_loop(
        lambda i, *_: i < num_ticks, body,
        (tf.constant(0), inputs0, output_gradient0, accumulators0))
    return tf.add_n([tf.reduce_sum(tf.cast(a, tf.float32))
                     for a in accumulators] + [tf.constant(0.0)])


def _replay_tick(module, i, inputs, skip_inputs, output_gradient):
  """A replayed module's tick on its held inputs: one backward per lag.

  The held inputs and the other lags' gradients are made to depend on the
  loop counter, so that no recomputed forward is hoisted out of the loop.
  """
  def varying(x):
    return tf.where(i >= 0, x, -x)

  held = [tf.convert_to_tensor(h)
          for h in [module.input_history] + module.skip_histories]
  backward = [[varying(x) for x in inputs_of_lag]
              for inputs_of_lag in module.held_at_lags(held)]
  gradients = [output_gradient] + [
      varying(tf.convert_to_tensor(b)) for b in module.lag_gradient_buffers]
  return module.replay_tick(inputs, skip_inputs, backward, gradients,
                            training=i >= 0)
