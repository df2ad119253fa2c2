"""Shared pieces of the model zoo: normalisation, units and module granularity.

A zoo model is a list of *units*: the finest pieces it may be cut between (one
weight layer of VGG, one residual block of ResNet, the stem, the head). Each
unit knows its Keras layers, its trainable parameter count and the block (VGG
stage, ResNet stage) it belongs to. :func:`group_units` turns the units into
Sideways stages at the requested granularity:

* ``"layer"``: one module per unit;
* ``"block"``: one module per block;
* an int ``N``: N modules of consecutive units, chosen so the largest module's
  trainable parameter count is as small as possible (ties: the most even
  split by sum of squares). :func:`balanced_split` does this exactly by
  enumerating the cut points, which is cheap for the <= 10 units of these
  models.

Cutting a model differently only moves module boundaries: the layers, their
order and their names are the same, so the same weights give the same BP
gradient at every granularity (tested in tests/models).

Temporal variants (``temporal="conv:K"`` or ``"shift"``, config key
``model.temporal``): a causal temporal layer (sideways_tf/layers/
temporal.py) after the activation of every conv (inside each ResNet block,
on its residual branch). It sits inside a unit, so the variants cut like
their frame models.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import List, Optional, Sequence, Tuple, Union

import keras

NORMS = ("batch", "group", "none")
GRANULARITIES = ("layer", "block")
TEMPORAL_KINDS = ("conv", "shift")


@dataclasses.dataclass
class Unit:
  """The finest piece a model may be cut after."""
  name: str
  layers: List[keras.layers.Layer]
  num_params: int  # trainable parameters (analytic; checked by the tests)
  block: str       # the block ("stage" of the architecture) it belongs to


def parse_temporal(spec: str) -> Tuple[str, float]:
  """model.temporal -> ("", 0), ("conv", K) or ("shift", fraction).

  "" (a frame model), "conv:K" (a depthwise causal temporal conv over K
  frames), "shift" or "shift:F" (online temporal shift of a fraction F of
  the channels, default 1/8).
  """
  spec = str(spec or "").strip()
  if not spec:
    return "", 0
  kind, _, argument = spec.partition(":")
  try:
    if kind == "conv" and argument:
      return kind, int(argument)
    if kind == "shift":
      return kind, float(argument) if argument else 0.125
  except ValueError:
    pass
  raise ValueError(f"model.temporal must be '', 'conv:K' (K frames) or "
                   f"'shift[:fraction]', got {spec!r}")


def make_temporal(spec: str, name: str):
  """The temporal layer of `spec` (see parse_temporal), or None."""
  from sideways_tf.layers import temporal  # noqa: PLC0415 (keras models)
  kind, argument = parse_temporal(spec)
  if kind == "conv":
    return temporal.CausalTemporalConv(argument, name=name)
  if kind == "shift":
    return temporal.TemporalShift(argument, name=name)
  return None


def temporal_params(spec: str, channels: int) -> int:
  """Trainable parameters of the temporal layer of `spec` on `channels`."""
  kind, argument = parse_temporal(spec)
  return (argument + 1) * channels if kind == "conv" else 0


def check_norm(norm: str) -> str:
  if norm not in NORMS:
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
  return norm


def make_norm(norm: str, channels: int, name: str, bn_momentum: float = 0.99,
              bn_epsilon: float = 1e-5, norm_groups: int = 32):
  """The normalisation layer after a conv, or None for ``norm="none"``.

  ``"batch"``: BatchNormalization (batch statistics in training, moving
  averages in inference; the Sideways engine runs a module holding warm-up
  zeros in inference mode so the zeros never reach the moving averages).
  ``"group"``: GroupNormalization with the largest divisor of `channels` not
  above `norm_groups` groups.
  """
  check_norm(norm)
  if norm == "batch":
    return keras.layers.BatchNormalization(
        momentum=bn_momentum, epsilon=bn_epsilon, name=name)
  if norm == "group":
    return keras.layers.GroupNormalization(
        groups=num_groups(channels, norm_groups), epsilon=bn_epsilon,
        name=name)
  return None


def num_groups(channels: int, max_groups: int) -> int:
  """The largest divisor of `channels` that is <= `max_groups`."""
  for groups in range(min(int(max_groups), int(channels)), 0, -1):
    if channels % groups == 0:
      return groups
  return 1


def norm_params(norm: str, channels: int) -> int:
  """Trainable parameters of the norm layer (gamma and beta, or none)."""
  return 0 if norm == "none" else 2 * channels


def conv_params(kernel: int, in_channels: int, out_channels: int,
                norm: str) -> int:
  """A conv without bias when a norm follows it, plus that norm."""
  bias = out_channels if norm == "none" else 0
  return (kernel * kernel * in_channels * out_channels + bias +
          norm_params(norm, out_channels))


def dense_params(in_features: int, out_features: int) -> int:
  return in_features * out_features + out_features


def resolve_num_modules(units: Sequence[Unit],
                        granularity: Union[str, int] = "block",
                        num_modules: int = 0) -> Union[str, int]:
  """The effective granularity: `num_modules` > 0 overrides `granularity`.

  Returns "layer", "block" or an int number of modules. A string of digits
  (as a command-line override of a string field gives) counts as an int.
  """
  if num_modules is not None and int(num_modules) > 0:
    granularity = int(num_modules)
  if isinstance(granularity, str) and granularity.strip().isdigit():
    granularity = int(granularity)
  if isinstance(granularity, bool) or not isinstance(granularity, (str, int)):
    raise ValueError(
        f"granularity must be 'layer', 'block' or an int, got "
        f"{granularity!r}")
  if isinstance(granularity, str):
    if granularity not in GRANULARITIES:
      raise ValueError(
          f"granularity must be 'layer', 'block' or an int, got "
          f"{granularity!r}")
    return granularity
  if not 1 <= granularity <= len(units):
    raise ValueError(
        f"the number of modules must be between 1 and {len(units)} (one per "
        f"unit: {[u.name for u in units]}), got {granularity}")
  return granularity


def group_units(units: Sequence[Unit], granularity: Union[str, int] = "block",
                num_modules: int = 0) -> List[List[Unit]]:
  """Consecutive groups of units, one group per Sideways module."""
  granularity = resolve_num_modules(units, granularity, num_modules)
  if granularity == "layer":
    return [[u] for u in units]
  if granularity == "block":
    groups = []
    for unit in units:
      if groups and groups[-1][-1].block == unit.block:
        groups[-1].append(unit)
      else:
        groups.append([unit])
    return groups
  return split(units, balanced_split([u.num_params for u in units],
                                      granularity))


def split(items: Sequence, sizes: Sequence[int]) -> List[list]:
  """Consecutive groups of `items` with the given sizes."""
  if sum(sizes) != len(items) or min(sizes) < 1:
    raise ValueError(f"sizes {list(sizes)} do not cut {len(items)} items "
                     "into non-empty groups")
  groups, start = [], 0
  for size in sizes:
    groups.append(list(items[start:start + size]))
    start += size
  return groups


def balanced_split(costs: Sequence[int], parts: int,
                   extra_costs: Optional[Sequence[int]] = None,
                   extra_counts: Sequence[int] = ()) -> List[int]:
  """Sizes of `parts` consecutive non-empty groups balancing their cost sums.

  Minimises the largest group sum, then the sum of squared group sums (the
  most even split among the minimax ones), then prefers earlier cuts.
  Exhaustive over the C(n-1, parts-1) ways to cut n items: exact, and tiny
  for the zoo's <= 10 units.

  `extra_costs`/`extra_counts` (replay): group g also pays `extra_counts[g]`
  times the `extra_costs` of its items (a replayed module recomputes its
  forward once per gradient lag); missing counts are 0.
  """
  costs = [int(c) for c in costs]
  n = len(costs)
  if not 1 <= parts <= n:
    raise ValueError(f"cannot split {n} items into {parts} non-empty groups")
  if extra_costs is not None and len(extra_costs) != n:
    raise ValueError(f"extra_costs must give one cost per item ({n}), got "
                     f"{len(extra_costs)}")
  counts = list(extra_counts)[:parts] + [0] * max(0, parts - len(extra_counts))
  prefix = [0] + list(itertools.accumulate(costs))
  extra = [0] + list(itertools.accumulate(
      int(c) for c in (extra_costs if extra_costs is not None else [0] * n)))
  best, best_key = None, None
  for cuts in itertools.combinations(range(1, n), parts - 1):
    bounds = (0,) + cuts + (n,)
    sums = [prefix[b] - prefix[a] + count * (extra[b] - extra[a])
            for a, b, count in zip(bounds[:-1], bounds[1:], counts)]
    key = (max(sums), sum(s * s for s in sums), cuts)
    if best_key is None or key < best_key:
      best, best_key = bounds, key
  return [b - a for a, b in zip(best[:-1], best[1:])]


def to_stages(groups: Sequence[Sequence]):
  """One keras.Sequential per group of items, named ``stage_k``."""
  return [keras.Sequential([l for item in group for l in item_layers(item)],
                           name=f"stage_{k}")
          for k, group in enumerate(groups)]


def item_layers(item) -> List[keras.layers.Layer]:
  """The Keras layers of one item (a layer, a list of layers or a Unit)."""
  if isinstance(item, keras.layers.Layer):
    return [item]
  if hasattr(item, "layers") and not isinstance(item, (list, tuple)):
    return list(item.layers)
  layers = list(item)
  for layer in layers:
    if not isinstance(layer, keras.layers.Layer):
      raise ValueError(f"items must be Keras layers, lists of layers or zoo "
                       f"Units, got an element {layer!r}")
  return layers


def module_param_counts(groups: Sequence[Sequence[Unit]]) -> List[int]:
  """Trainable parameters per module (analytic)."""
  return [sum(u.num_params for u in group) for group in groups]
