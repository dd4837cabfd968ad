"""Mean and 95% interval over seeds (keras_sparse.intervals) on hand-made numbers."""

import math

import pytest

from keras_sparse import intervals
from keras_sparse.intervals import Interval, describe, format_interval, interval, t_quantile_975


def test_five_or_more_values_give_the_student_t_interval_of_the_mean():
    # 1..5: mean 3, sample variance 2.5, standard error sqrt(2.5 / 5) = sqrt(0.5); t(0.975, 4) = 2.776.
    stats = interval([1, 2, 3, 4, 5])
    assert (stats.mean, stats.n, stats.method) == (3.0, 5, "t95")
    assert stats.high - 3.0 == pytest.approx(2.776 * math.sqrt(0.5), abs=1e-12)
    assert (stats.low, stats.high) == pytest.approx((3 - 1.9629284, 3 + 1.9629284), abs=1e-6)
    # 2, 4, 4, 4, 5, 5, 7, 9: mean 5, squared deviations sum to 32, so s² = 32 / 7 and the
    # standard error is sqrt(32 / 7 / 8) = sqrt(4 / 7); t(0.975, 7) = 2.365.
    stats = interval([2, 4, 4, 4, 5, 5, 7, 9])
    assert stats.mean == 5.0 and stats.method == "t95"
    assert (stats.low, stats.high) == pytest.approx((5 - 1.7877718, 5 + 1.7877718), abs=1e-6)


def test_fewer_than_five_values_give_min_and_max_one_gives_itself_none_gives_nan():
    assert interval([0.9, 0.95, 0.93]) == Interval(pytest.approx(2.78 / 3), 0.9, 0.95, 3, "range")
    assert interval([0.5, 0.7]) == Interval(pytest.approx(0.6), 0.5, 0.7, 2, "range")
    assert interval([0.8]) == Interval(0.8, 0.8, 0.8, 1, "single")
    empty = interval([])
    assert empty.n == 0 and empty.method == "none" and math.isnan(empty.mean) and math.isnan(empty.low)
    # The threshold is a parameter: 3 values with a t interval, t(0.975, 2) = 4.303, s = 1.
    stats = interval([1, 2, 3], min_seeds_for_t=3)
    assert stats.method == "t95" and stats.high == pytest.approx(2 + 4.303 / math.sqrt(3), abs=1e-12)


def test_identical_values_give_a_zero_width_interval():
    assert interval([0.9] * 6) == Interval(pytest.approx(0.9), pytest.approx(0.9), pytest.approx(0.9), 6, "t95")


def test_t_quantiles_table_then_normal():
    assert t_quantile_975(1) == 12.706 and t_quantile_975(4) == 2.776 and t_quantile_975(30) == 2.042
    assert t_quantile_975(31) == 1.96 and t_quantile_975(1000) == 1.96
    with pytest.raises(ValueError):
        t_quantile_975(0)
    # 32 values of 0 and 1 alternating: mean 0.5, s² = 32 · 0.25 / 31; 31 degrees of freedom are
    # past the table: the normal quantile.
    stats = interval([float(i % 2) for i in range(32)])
    assert stats.mean == 0.5 and stats.high - 0.5 == pytest.approx(1.96 * math.sqrt(8 / 31 / 32), abs=1e-12)


def test_the_table_matches_scipy_where_it_is_installed():
    stats = pytest.importorskip("scipy.stats", reason="SciPy is not installed: the table is checked by hand only")
    for df, value in enumerate(intervals.T_975, 1):
        assert value == pytest.approx(stats.t.ppf(0.975, df), abs=6e-4), df


def test_format_interval():
    assert format_interval([0.95, 0.96, 0.97], scale=100) == "96.0 [95.0, 97.0]"
    assert format_interval([1, 2, 3, 4, 5], digits=2) == "3.00 [1.04, 4.96]"
    assert format_interval([0.953], scale=100) == "95.3"
    assert format_interval([], scale=100) == "—"
    assert format_interval([float("nan")]) == "—"
    assert format_interval(interval([0.5, 0.7]), scale=10) == "6.0 [5.0, 7.0]"


def test_describe_says_which_interval_the_table_shows():
    assert describe([5, 5], [0, 1, 2, 3, 4]) == "Mean [95% Student-t interval of the mean] over seeds [0, 1, 2, 3, 4]."
    assert describe([3, 3], [0, 1, 2]) == (
        "Mean [min, max] over seeds [0, 1, 2] (fewer than 5 seeds: the range, not a 95% interval).")
    assert describe([1], [0]) == "One seed (seeds [0]): the value alone, no interval."
    assert describe([1, 1], [0, 1, 2]) == (  # a partial grid
        "One seed a cell so far, of the grid's seeds [0, 1, 2]: the value alone, no interval.")
    mixed = describe([5, 3, 0], [0, 1, 2, 3, 4])  # a partial grid: some cells short of seeds
    assert "95% Student-t" in mixed and "[min, max]" in mixed and mixed.startswith("Mean over seeds [0, 1, 2, 3, 4]")
    assert describe([0]) == "No values yet (over seeds)."


def test_short_description_names_the_bands():
    assert intervals.short_description([5, 6]) == "95% t-interval"
    assert intervals.short_description([3, 0]) == "min–max over seeds"
    assert intervals.short_description([5, 3]) == "95% t-interval or min–max over seeds"
    assert intervals.short_description([1]) == "one seed, no interval"
