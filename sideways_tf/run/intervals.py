"""Mean and 95% Student t-interval of a few repeated measurements.

One helper for every report that repeats something a few times and quotes
"mean ± half-width": the paper experiments over seeds (gap_stats.py,
time_to_accuracy.py, ...) and ``bin/benchmark --simulate_devices --rounds``
over rounds of timings (benchmark/devices_report.py). Nothing here imports
TensorFlow.
"""

from __future__ import annotations

import math

import numpy as np

# Two-sided 95% Student t quantiles by degrees of freedom (n - 1).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447,
        7: 2.365, 8: 2.306, 9: 2.262}


def interval(values) -> tuple:
  """(mean, half-width of the 95% t-interval); half-width nan for n < 2."""
  values = np.asarray(values, float)
  if len(values) < 2:
    return float(values.mean()), float("nan")
  half = _T95.get(len(values) - 1, 1.96) * values.std(ddof=1) / math.sqrt(
      len(values))
  return float(values.mean()), float(half)


def format_interval(pair, digits: int = 3, sign: bool = False) -> str:
  """An `interval` pair as "mean ± half" ("mean" alone when there is no
  half-width, "–" for None); `sign` writes the mean with its sign (gaps)."""
  if pair is None:
    return "–"
  mean, half = pair
  value = f"{mean:{'+' if sign else ''}.{digits}f}"
  return f"{value} ± {half:.{digits}f}" if np.isfinite(half) else value
