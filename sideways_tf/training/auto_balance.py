"""Balance from the config: ``config.model.balance = "time"`` (or "params").

The model is built with its own split, then its layers are re-cut into the
same number of modules with :func:`sideways_tf.engine.balance.balance_by_time`
(measured forward + backward time of each layer on a batch of frames) or
:func:`~sideways_tf.engine.balance.balance_by_params`, so users get a balanced
pipeline without writing code. The chosen split is logged and returned for
the run's ``model_info.json``; a resumed run, an evaluation or an export
re-uses the saved split (a new timing could cut differently, and the
checkpoint holds the stages as they were cut).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from absl import logging
import tensorflow as tf

from sideways_tf.engine import balance

BALANCE_MODES = ("", "time", "params")


def apply(model_config, stages: Sequence, frame_shape, batch_size: int,
          stage_sizes: Optional[Sequence[int]] = None) -> Tuple[list, dict]:
  """Re-cut `stages` as `model_config.balance` asks; returns (stages, info).

  `info` is ``{}`` without balancing, else ``{"balance", "stage_sizes",
  "stage_layers"}`` (layers per module, and their names). `stage_sizes`:
  a split saved by an earlier run, used as is.
  """
  mode = model_config.get("balance", "") or ""
  if mode not in BALANCE_MODES:
    raise ValueError(f"config.model.balance must be one of {BALANCE_MODES}, "
                     f"got {mode!r}")
  if not mode:
    return list(stages), {}
  layers = []
  for k, stage in enumerate(stages):
    if not hasattr(stage, "layers"):
      raise ValueError(
          f"config.model.balance={mode!r} re-cuts the model's layers, but "
          f"stage {k} ({stage.name}) is a single layer, not a Sequential")
    layers.extend(stage.layers)
  num_modules = len(stages)
  if stage_sizes is None:
    sample = tf.random.stateless_uniform(
        (int(batch_size),) + tuple(frame_shape), seed=(0, 0))
    if mode == "time":
      stage_sizes = balance.balance_by_time(layers, num_modules, sample)
    else:
      stage_sizes = balance.balance_by_params(layers, num_modules, sample)
    how = f"balanced by {mode}"
  else:
    how = "saved split"
  stage_sizes = [int(s) for s in stage_sizes]
  if sum(stage_sizes) != len(layers) or len(stage_sizes) != num_modules:
    raise ValueError(
        f"stage_sizes {stage_sizes} do not cut the model's {len(layers)} "
        f"layers into {num_modules} modules")
  groups = balance.split(layers, stage_sizes)
  names: List[List[str]] = [[layer.name for layer in g] for g in groups]
  logging.info("model split (%s): layers per module %s: %s", how,
               stage_sizes, names)
  print(f"Model split ({how}): layers per module {stage_sizes}: {names}",
        flush=True)
  return balance.to_stages(layers, stage_sizes), {
      "balance": mode, "stage_sizes": stage_sizes, "stage_layers": names}
