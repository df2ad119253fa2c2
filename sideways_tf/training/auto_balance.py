"""Balance from the config: ``config.model.num_modules = "auto"``, or
``config.model.balance = "time"`` (or "params") for a given number of modules.

The model is built with its own split, then its layers are re-cut with
:func:`sideways_tf.engine.balance.balance_by_time` (measured forward +
backward time of each layer on a batch of frames) or
:func:`~sideways_tf.engine.balance.balance_by_params`, so users get a balanced
pipeline without writing code.

* ``balance="time"`` keeps the config's number of modules.
* ``num_modules="auto"`` also chooses the number: one module per device of
  ``config.devices`` (an explicit list, or the devices ``"auto"`` finds), or,
  without devices, the model's own number of modules (frame_cnn: 4; the zoo:
  ``config.model.granularity``). It balances by time unless ``balance`` says
  "params".

The chosen split is logged and returned for the run's ``model_info.json``; a
resumed run, an evaluation or an export re-uses the saved split (a new timing
could cut differently, and the checkpoint holds the stages as they were cut).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from absl import logging
import tensorflow as tf

from sideways_tf.engine import balance

BALANCE_MODES = ("", "time", "params")
AUTO = "auto"


def check_num_modules(model_config):
  """config.model.num_modules: an int >= 0 (0: the zoo's granularity), a
  string of digits, or "auto"; anything else is a ValueError naming it."""
  value = model_config.get("num_modules", 0)
  if isinstance(value, str) and value.strip().isdigit():
    return int(value)
  if value == AUTO or (isinstance(value, int) and not isinstance(value, bool)
                       and value >= 0):
    return value
  raise ValueError(
      f"config.model.num_modules must be a number of modules (an int >= 1) "
      f"or 'auto' (one module per device, cut by measured time), got "
      f"{value!r}")


def apply(model_config, stages: Sequence, frame_shape, batch_size: int,
          stage_sizes: Optional[Sequence[int]] = None,
          num_devices: int = 0, replay_modules: int = 0, skips=None,
          skip_align: bool = False) -> Tuple[list, dict]:
  """Re-cut `stages` as `model_config` asks; returns (stages, info).

  `info` is ``{}`` without balancing, else ``{"balance", "num_modules",
  "stage_sizes", "stage_layers"}`` (layers per module, and their names; with
  ``num_modules="auto"`` also ``"num_modules_from"``). `stage_sizes`: a split
  saved by an earlier run, used as is. `num_devices`: how many devices
  config.devices names (0: none), the number of modules "auto" chooses.
  `replay_modules`, `skips`, `skip_align`: Sideways' replay, whose extra
  forwards in the bottom modules the time balance counts; `replay_modules`
  may be a function of the number of modules (an algorithm may replay L-1).
  """
  mode = model_config.get("balance", "") or ""
  if mode not in BALANCE_MODES:
    raise ValueError(f"config.model.balance must be one of {BALANCE_MODES}, "
                     f"got {mode!r}")
  auto = check_num_modules(model_config) == AUTO
  if auto and not mode:
    mode = "time"
  if not mode:
    return list(stages), {}
  layers = _layers(stages, mode)
  num_modules, chosen_from = len(stages), None
  if auto:
    num_modules, chosen_from = _auto_num_modules(
        model_config, len(layers), num_modules, stage_sizes, num_devices)
  if stage_sizes is None:
    sample = tf.random.stateless_uniform(
        (int(batch_size),) + tuple(frame_shape), seed=(0, 0))
    if callable(replay_modules):
      replay_modules = replay_modules(num_modules)
    stage_sizes, how = _balanced_sizes(
        mode, layers, num_modules, sample, replay_modules, skips, skip_align)
  else:
    how = "saved split"
  stage_sizes = [int(s) for s in stage_sizes]
  if sum(stage_sizes) != len(layers) or len(stage_sizes) != num_modules:
    raise ValueError(
        f"stage_sizes {stage_sizes} do not cut the model's {len(layers)} "
        f"layers into {num_modules} modules")
  names: List[List[str]] = [[layer.name for layer in g]
                            for g in balance.split(layers, stage_sizes)]
  if chosen_from:
    how += f"; num_modules=auto: {num_modules} from {chosen_from}"
  logging.info("model split (%s): layers per module %s: %s", how,
               stage_sizes, names)
  print(f"Model split ({how}): layers per module {stage_sizes}: {names}",
        flush=True)
  info = {"balance": mode, "num_modules": num_modules,
          "stage_sizes": stage_sizes, "stage_layers": names}
  if chosen_from:
    info["num_modules_from"] = chosen_from
  return balance.to_stages(layers, stage_sizes), info


def _layers(stages: Sequence, mode: str) -> list:
  """The layers of every stage, in order: what balancing re-cuts."""
  layers = []
  for k, stage in enumerate(stages):
    if not hasattr(stage, "layers"):
      raise ValueError(
          f"config.model.balance={mode!r} re-cuts the model's layers, but "
          f"stage {k} ({stage.name}) is a single layer, not a Sequential")
    layers.extend(stage.layers)
  return layers


def _auto_num_modules(model_config, num_layers: int, own_num_modules: int,
                      stage_sizes, num_devices: int) -> Tuple[int, str]:
  """num_modules="auto": from the saved split, else one per device of
  config.devices, else the model's own split; and where it came from."""
  if stage_sizes is not None:
    num_modules, chosen_from = len(stage_sizes), "the saved split"
  elif num_devices:
    num_modules, chosen_from = int(num_devices), "config.devices"
  else:
    num_modules = own_num_modules
    chosen_from = f"the model's own split ({model_config.name})"
  if not 1 <= num_modules <= num_layers:
    raise ValueError(
        f"config.model.num_modules='auto' chose {num_modules} modules "
        f"(from {chosen_from}), but the model has only {num_layers} "
        f"layers to cut; list fewer devices or set num_modules")
  return num_modules, chosen_from


def _balanced_sizes(mode, layers, num_modules, sample, replay_modules, skips,
                    skip_align):
  """Layers per module, balanced by time (counting replay's extra forwards)
  or by parameters; and how, for the log line."""
  if mode != "time":
    return balance.balance_by_params(layers, num_modules, sample), (
        "balanced by params")
  extra = (balance.replay_forwards(num_modules, replay_modules, skips,
                                   skip_align)
           if 0 < replay_modules < num_modules else [])
  sizes = balance.balance_by_time(layers, num_modules, sample,
                                  replay_forwards=extra)
  return sizes, "balanced by time" + (
      f", with replay's extra forwards per module {extra}"
      if any(extra) else "")
