"""A diverging loss is named once, even when it never becomes NaN (a NaN
stops the run on its own: docs/robustness.md)."""

import math
import types

import numpy as np
import tensorflow as tf

from sideways_tf.training import hooks

NUM_CLASSES = 4


def log_steps(caplog, losses, learning_rate=1e6):
  """Runs LogHook over steps 2, 3, ... with these losses, logging each."""
  ctx = types.SimpleNamespace(
      setup=types.SimpleNamespace(
          datasets=types.SimpleNamespace(num_classes=NUM_CLASSES),
          optimizer=types.SimpleNamespace(learning_rate=learning_rate)),
      train_writer=tf.summary.create_noop_writer())
  hook = hooks.LogHook(every=1, num_steps=100, first_step=1)
  frames = np.zeros([2, 3, 1], np.float32)
  with caplog.at_level("WARNING"), hook.progress:
    for step, loss in enumerate(losses, start=2):
      hook.after_step(ctx, step, frames, {"loss": loss, "accuracy": 0.25},
                      seconds=1.0)
  return [r.getMessage() for r in caplog.records if "diverging" in
          r.getMessage()]


def test_a_loss_far_above_chance_warns_once(caplog):
  chance = math.log(NUM_CLASSES)
  warned = log_steps(caplog, [1.2, 5.8e5, 7e5])
  assert len(warned) == 1
  assert warned[0].startswith("step 3: train/loss = 5.8e+05")
  assert "--config.train.learning_rate (now 1e+06)" in warned[0]
  assert f"ln {NUM_CLASSES} = {chance:.2f}" in warned[0]


def test_a_loss_within_ten_times_chance_is_no_divergence(caplog):
  chance = math.log(NUM_CLASSES)
  # A first step far off (3x chance), then learning: normal.
  assert log_steps(caplog, [3 * chance, chance, 0.5,
                            hooks.LogHook.DIVERGENCE_FACTOR * chance]) == []
