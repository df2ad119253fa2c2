"""sideways_tf/run/intervals.py: mean ± 95% t-interval, by hand."""

import math

import pytest

from sideways_tf.run import intervals


def test_two_values_use_t_with_one_degree_of_freedom():
  # sd of (0.4, 0.2) = 0.1414; / sqrt(2) = 0.1; t(1) = 12.706.
  mean, half = intervals.interval([0.4, 0.2])
  assert mean == pytest.approx(0.3)
  assert half == pytest.approx(12.706 * 0.1, rel=1e-6)


def test_eleven_values_use_t_with_ten_degrees_not_the_normal():
  # 0, 1, ..., 10: mean 5, squared deviations 110, sd sqrt(110 / 10) =
  # sqrt(11), so sd / sqrt(n) = 1 and the half-width is t(10) = 2.2281
  # (tables), not 1.96.
  mean, half = intervals.interval(range(11))
  assert mean == pytest.approx(5.0)
  assert half == pytest.approx(2.2281, rel=1e-4)
  assert intervals.t95(30) == pytest.approx(2.0423, rel=1e-4)


def test_one_value_has_no_half_width_and_prints_alone():
  mean, half = intervals.interval([1.5])
  assert mean == 1.5 and math.isnan(half)
  assert intervals.format_interval((mean, half), 2) == "1.50"
  assert intervals.format_interval((1.5, 0.25), 2) == "1.50 ± 0.25"
  assert intervals.format_interval((-0.1, 0.02), 2, sign=True) == (
      "-0.10 ± 0.02")
  assert intervals.format_interval(None) == "–"
