"""The engine's fixed cost per tick, against a real model's tick.

Near-empty stages (a 2-unit Dense on 2-number "frames") leave only what the
tick loop itself costs: the while-loop iteration, the per-module gradient
tapes, the frame gather, the masks, the accumulator adds and the buffer
hand-over. Its ratio to the tick of the default 4-module model
(configs/default.py: frame_cnn, 32x32 frames, B = 8) says how small a module
may get before the engine, not the model, sets the pace.

``bin/benchmark --tick_overhead`` prints and saves the figures.
"""

from __future__ import annotations

import time
from typing import Dict

import numpy as np


def _tick_seconds(pipeline, frames, labels, algorithm="sideways",
                  repeats=7) -> float:
  fn = lambda: pipeline.compute_gradients(frames, labels, algorithm)[0].numpy()  # noqa: E731
  fn()
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times)) / int(frames.shape[1])


def measure(num_modules: int = 4, num_frames: int = 64, batch_size: int = 8,
            image_size: int = 32, repeats: int = 7) -> Dict[str, float]:
  """Seconds per tick: empty stages vs the default model; and their ratio."""
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import sideways_tf  # pylint: disable=g-import-not-at-top
  from sideways_tf import models  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(0)
  labels = tf.zeros([batch_size], tf.int32)
  empty = sideways_tf.Pipeline(
      [keras.layers.Dense(2, name=f"empty_{k}") for k in range(num_modules)])
  tiny = tf.random.uniform((batch_size, num_frames, 2))
  default = sideways_tf.Pipeline(models.MODELS["frame_cnn"](
      num_classes=4, num_modules=num_modules))
  frames = tf.random.uniform((batch_size, num_frames, image_size, image_size,
                              3))
  empty_s = _tick_seconds(empty, tiny, labels, repeats=repeats)
  model_s = _tick_seconds(default, frames, labels, repeats=repeats)
  # How the fixed cost grows with the number of modules (1 = the loop alone
  # plus one module).
  by_modules = {}
  for count in (1, 2 * num_modules):
    pipe = sideways_tf.Pipeline([keras.layers.Dense(2, name=f"e{count}_{k}")
                                 for k in range(count)])
    by_modules[count] = _tick_seconds(pipe, tiny, labels, repeats=repeats)
  by_modules[num_modules] = empty_s
  return {"num_modules": num_modules, "num_frames": num_frames,
          "batch_size": batch_size, "image_size": image_size,
          "empty_tick_s": empty_s, "model_tick_s": model_s,
          "ratio": empty_s / model_s,
          "empty_tick_s_by_modules": dict(sorted(by_modules.items()))}
