"""Mean and a 95% interval over seeds, as every study table and plot reports them.

- n >= 5 values: the Student-t 95% confidence interval of the mean,
  mean ± t_{0.975, n−1} · s / √n, with s the sample standard deviation (n − 1 in its denominator);
- 2 <= n < 5: the range [min, max] of the values (too few for a t interval to mean much: at
  n = 3 it is ±4.3 standard errors wide);
- n = 1: the value alone; n = 0 (a cell not done): no value, shown as "—".

    from keras_sparse.intervals import interval
    interval([0.95, 0.96, 0.97])            # Interval(mean=0.96, low=0.95, high=0.97, n=3, method="range")

NumPy only (no SciPy): the t quantiles for 1 to 30 degrees of freedom are the table below, and
the normal quantile 1.96 beyond (t_{0.975, 30} is 2.042, so past 30 seeds the interval is at
most 4% too narrow).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Sequence

import numpy as np

# t_{0.975, df} for df = 1 … 30: the two-sided 95% quantiles of Student's t distribution
# (any statistics table; checked against scipy.stats.t.ppf in tests/test_intervals.py where SciPy is present).
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
NORMAL_975 = 1.96
MIN_SEEDS_FOR_T = 5  # below this, the range of the values instead of a t interval

T_INTERVAL, RANGE, SINGLE, EMPTY = "t95", "range", "single", "none"


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: the table value for 1 <= df <= 30, the normal 1.96 beyond."""
    if df < 1:
        raise ValueError(f"Student's t needs at least 1 degree of freedom, got {df}.")
    return T_975[df - 1] if df <= len(T_975) else NORMAL_975


@dataclasses.dataclass(frozen=True)
class Interval:
    """A mean over seeds and its interval ``[low, high]``; ``method`` says which interval:
    ``"t95"`` (Student-t 95% interval of the mean), ``"range"`` (min–max), ``"single"`` (one
    value: low = high = mean) or ``"none"`` (no values: all NaN)."""

    mean: float
    low: float
    high: float
    n: int
    method: str

    def scaled(self, factor: float) -> "Interval":
        """The same interval with every value multiplied by ``factor`` (e.g. 100 for percent)."""
        return dataclasses.replace(self, mean=self.mean * factor, low=self.low * factor, high=self.high * factor)


def interval(values: Iterable[float], min_seeds_for_t: int = MIN_SEEDS_FOR_T) -> Interval:
    """Mean and 95% interval of ``values`` (one per seed).

    With at least ``min_seeds_for_t`` values (default 5): the Student-t interval of the mean,
    ``mean ± t_{0.975, n−1} · s / √n`` with the sample standard deviation ``s`` (ddof 1). With
    2 to ``min_seeds_for_t − 1`` values: ``[min, max]``. One value: itself. None: NaNs, method
    ``"none"``. NaN values (a metric that could not be measured) count as values and give NaN.
    """
    array = np.asarray(list(values), dtype=float)
    n = int(array.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, EMPTY)
    mean = float(array.mean())
    if n == 1:
        return Interval(mean, mean, mean, 1, SINGLE)
    if n < min_seeds_for_t:
        return Interval(mean, float(array.min()), float(array.max()), n, RANGE)
    half = t_quantile_975(n - 1) * float(array.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, T_INTERVAL)


def format_interval(values: Sequence[float] | Interval, scale: float = 1.0, digits: int = 1) -> str:
    """``"95.2 [94.1, 96.3]"``: the mean and its interval (``interval``) times ``scale``; the
    value alone for one value; ``"—"`` for none or a NaN mean."""
    stats = values if isinstance(values, Interval) else interval(values)
    stats = stats.scaled(scale)
    if stats.n == 0 or math.isnan(stats.mean):
        return "—"
    if stats.method == SINGLE:
        return f"{stats.mean:.{digits}f}"
    return f"{stats.mean:.{digits}f} [{stats.low:.{digits}f}, {stats.high:.{digits}f}]"


def short_description(counts: Iterable[int]) -> str:
    """What a plot's bands or bars are, in a few words, for points of ``counts`` values each:
    "95% t-interval", "min–max over seeds", both, or "one seed, no interval"."""
    counts = {int(c) for c in counts if c > 0}
    kinds = [name for name, present in (("95% t-interval", any(c >= MIN_SEEDS_FOR_T for c in counts)),
                                         ("min–max over seeds", any(1 < c < MIN_SEEDS_FOR_T for c in counts)))
             if present]
    return " or ".join(kinds) if kinds else "one seed, no interval"


def describe(counts: Iterable[int], seeds: Sequence[int] | None = None) -> str:
    """A table caption's sentence saying what ``[a, b]`` means, for cells of ``counts`` values
    each (the seeds done per cell; a partial grid may mix counts): e.g. "Mean [95% Student-t
    interval of the mean] over seeds [0, 1, 2, 3, 4]."."""
    counts = sorted({int(c) for c in counts if c > 0})
    over = f"over seeds {list(seeds)}" if seeds is not None else "over seeds"
    if not counts:
        return f"No values yet ({over})."
    parts = []
    if any(c >= MIN_SEEDS_FOR_T for c in counts):
        parts.append(f"[95% Student-t interval of the mean] where a cell has {MIN_SEEDS_FOR_T} or more seeds")
    if any(1 < c < MIN_SEEDS_FOR_T for c in counts):
        parts.append(f"[min, max] over the seeds where a cell has fewer than {MIN_SEEDS_FOR_T} "
                     "(too few for a 95% interval)")
    if 1 in counts:
        parts.append("the value alone where a cell has one seed")
    if len(parts) == 1 and len(counts) == 1:
        # One kind of cell: say it plainly.
        if counts[0] >= MIN_SEEDS_FOR_T:
            return f"Mean [95% Student-t interval of the mean] {over}."
        if counts[0] > 1:
            return f"Mean [min, max] {over} (fewer than {MIN_SEEDS_FOR_T} seeds: the range, not a 95% interval)."
        if seeds is not None and len(seeds) > 1:  # a partial grid: one of its seeds done in every cell so far
            return f"One seed a cell so far, of the grid's seeds {list(seeds)}: the value alone, no interval."
        return f"One seed ({over.removeprefix('over ')}): the value alone, no interval."
    return f"Mean {over}, with " + "; ".join(parts) + "."
