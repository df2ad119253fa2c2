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

# Two-sided 95% Student t quantiles by degrees of freedom (n - 1), as the
# reports have always printed them; more degrees ask scipy (installed with
# scikit-learn, which requirements.txt pins).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447,
        7: 2.365, 8: 2.306, 9: 2.262}


def t95(degrees_of_freedom: int) -> float:
  """The two-sided 95% quantile of Student's t with that many degrees of
  freedom: 12.706 for 1, 2.228 for 10, towards 1.96 (the normal's) as it
  grows. Using 1.96 from 10 on would make the interval of 11 values 12%
  too narrow."""
  if degrees_of_freedom in _T95:
    return _T95[degrees_of_freedom]
  from scipy import stats  # noqa: PLC0415  (only for n > 10)
  return float(stats.t.ppf(0.975, degrees_of_freedom))


def interval(values) -> tuple:
  """(mean, half-width of the 95% t-interval); half-width nan for n < 2."""
  values = np.asarray(values, float)
  if len(values) < 2:
    return float(values.mean()), float("nan")
  half = t95(len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
  return float(values.mean()), float(half)


def format_interval(pair, digits: int = 3, sign: bool = False) -> str:
  """An `interval` pair as "mean ± half" ("mean" alone when there is no
  half-width, "–" for None); `sign` writes the mean with its sign (gaps)."""
  if pair is None:
    return "–"
  mean, half = pair
  value = f"{mean:{'+' if sign else ''}.{digits}f}"
  return f"{value} ± {half:.{digits}f}" if np.isfinite(half) else value
