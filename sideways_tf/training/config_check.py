"""Values of a training config that would fail late, after the run has
written its workdir, or be accepted and quietly do nothing, refused before
anything is written, each error naming its --config flag.

ml_collections checks each override's type (an int field takes no "abc");
the ranges and the model widths (a tuple field takes "abc" as ("abc",)) are
checked here. `train_lib.train` calls `check` first.
"""

from __future__ import annotations

import math

# (key, smallest allowed value, why a smaller one is refused).
_BOUNDS = (
    ("train.num_steps", 1, "the number of steps to train up to"),
    ("train.batch_size", 1, "clips per step"),
    ("eval.batch_size", 1, "clips per evaluation batch"),
    ("train.checkpoint_every", 1,
     "steps between checkpoints (a run without them loses every step on a "
     "crash; set it to num_steps for a checkpoint at the end only)"),
    ("train.keep_checkpoints", 1, "checkpoints kept on disk"),
    ("train.log_every", 0, "steps between log lines (0 = at the end only)"),
    ("train.eval_every", 0, "steps between evaluations (0 = at the end)"),
    ("train.fidelity_every", 0, "steps between fidelity measures (0 = off)"),
    ("train.stage_time_every", 0, "steps between stage timings (0 = off)"),
    ("train.update_every_ticks", 0, "ticks between optimizer steps (0 = "
     "one per clip)"),
    ("eval.num_batches", 0, "evaluation batches (0 = the whole split)"),
    ("replicas", 1, "data-parallel replicas on this machine"),
)


def _get(config, key):
  value = config
  for part in key.split("."):
    value = value[part]
  return value


def check(config) -> None:
  """Raises ValueError naming the first bad value (`config` with defaults,
  configs.with_defaults)."""
  for key, smallest, what in _BOUNDS:
    value = _get(config, key)
    if isinstance(value, bool) or not isinstance(value, int) or \
        value < smallest:
      need = "a positive integer" if smallest == 1 else "an integer >= 0"
      raise ValueError(f"--config.{key} must be {need} ({what}), got "
                       f"{value!r}")
  rate = config.train.learning_rate
  if not (isinstance(rate, (int, float)) and math.isfinite(rate)
          and rate > 0):
    raise ValueError(f"--config.train.learning_rate must be a positive "
                     f"number, got {rate!r}")
  widths = config.model.get("widths")
  if widths is not None and not (
      isinstance(widths, (tuple, list)) and widths and all(
          isinstance(w, int) and not isinstance(w, bool) and w > 0
          for w in widths)):
    raise ValueError(f"--config.model.widths must be positive integers "
                     f"such as \"(16, 32, 64)\", got {widths!r}")
