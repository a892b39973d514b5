"""Intervals and ranked groups for the leaderboard: plain functions on plain numbers (no I/O, numpy only).

Which interval the report shows for an accuracy (``accuracy_interval``):

* two or more seeds: the t-interval of the mean over the seeds, mean ± t(1 - α/2, n - 1) · s / √n. Its
  width comes from what changes from one training run to the next (initialization, data order), the
  variation that decides whether two methods' ranks can be trusted.
* one seed: the Wilson score interval of k correct (or certified) test points out of n. It covers only the
  finite test set, not the seed-to-seed variation, so it is usually narrower than a seed interval would be;
  Wilson rather than the normal approximation because it stays inside [0, 1] and keeps its coverage near
  0% and 100% (CRA at radius 1 is often a few percent).

Throughput and memory are measurements of a machine, not samples of a test set: the report shows their
range over seeds (``seed_range``: lowest and highest), which makes no distributional assumption.

Ranked groups (``rank_ranges``, ``group_labels``): two rows differ when a two-sided test at level α says so:

* a paired t-test on the per-seed differences where at least two seeds match (on the matching seeds):
  runs with the same seed share the data order, so pairing removes that shared part of the variation;
* else Welch's t-test where both rows have two or more seeds (it does not assume equal variances);
* else (a row with one seed) non-overlapping intervals (``accuracy_interval``), the only evidence there is;
  non-overlap of two 95% intervals is a stricter criterion than a 5% test, so such rows tie more easily.

A row's group is the range of ranks it could hold: from one plus the number of rows significantly above it
to the number of rows not significantly below it ("1", "1-3"). Rows whose range starts at 1 are tied with
the best: no row is significantly better. Each pair is tested on its own, without a correction for the
number of pairs, as in the papers' tables.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

LEVEL = 0.95
# For the report's "how to read this" (same form as lipbench.report.HOW_TO_READ).
READING = [
    ("Intervals", "[low, high] after an accuracy is a 95% confidence interval. With two or more seeds it is the "
                  "t-interval of the mean over seeds (mean ± t·s/√n, t for n−1 degrees of freedom): the uncertainty "
                  "of the mean that comes from the variation between training runs. With one seed it is the Wilson score interval of k "
                  "certified (or correct) test points out of n: it covers only the finite test set, not the "
                  "variation between training runs, and is therefore narrower than a seed interval would be. "
                  "Throughput and memory show the lowest and highest value over seeds."),
    ("Groups", "rows of one dataset and budget are compared at CRA 36/255 by a two-sided test at the 5% level: a "
               "paired t-test on the per-seed differences where at least two seeds match, Welch's t-test where "
               "both rows have two or more seeds, and non-overlapping 95% intervals where a row has one seed. "
               "The group is the range of ranks a row could hold: from one plus the number of rows "
               "significantly above it to the number of rows not significantly below it; \"1-3\" means first "
               "to third. Rows whose group starts at 1 (shaded in the plots) are statistically "
               "indistinguishable from the best: no row is significantly better. Each pair is tested on its "
               "own, without a correction for the number of pairs."),
]
MAX_FRACTION_TERMS = 100_000  # continued-fraction terms; convergence takes O(sqrt(df)) of them
FRACTION_EPS = 1e-15
TINY = 1e-300


# --- Student's t distribution without scipy ---------------------------------------------------------

def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularized incomplete beta function, for a, b > 0 and x in [0, 1].

    The continued fraction of DLMF 8.17.22, evaluated with the modified Lentz method; it converges
    fast for x < (a + 1) / (a + b + 2), and the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) covers the rest.
    """
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * beta_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * beta_fraction(1.0 - x, b, a) / b


def beta_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction 1 / (1 + d1 / (1 + d2 / (1 + ...))) of I_x(a, b) (modified Lentz)."""
    c, d = 1.0, 1.0 / nonzero(1.0 - (a + b) * x / (a + 1.0))
    result = d
    for m in range(1, MAX_FRACTION_TERMS):
        for term in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),  # d_{2m}
                     -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):  # d_{2m+1}
            d = 1.0 / nonzero(1.0 + term * d)
            c = nonzero(1.0 + term / c)
            result *= c * d
        if abs(c * d - 1.0) < FRACTION_EPS:
            return result
    raise ArithmeticError(f"incomplete beta I_{x}({a}, {b}) did not converge")


def nonzero(value: float) -> float:
    """``value``, moved away from zero by at most TINY (Lentz's guard against dividing by zero)."""
    return value if abs(value) > TINY else TINY


def normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` > 0 degrees of freedom (``math.inf``: the normal)."""
    if math.isinf(df):
        return normal_cdf(t)
    tail = 0.5 * regularized_beta(df / (df + t * t), df / 2.0, 0.5)  # P(T > |t|)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p, by bisection on ``t_cdf`` (to about 1e-12 relative)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"quantile of probability {p}: need 0 < p < 1")
    if df <= 0:
        raise ValueError(f"t distribution with {df} degrees of freedom: need df > 0")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, 2.0 * high
    while high - low > 1e-12 * high:
        middle = 0.5 * (low + high)
        low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
    return 0.5 * (low + high)


def normal_quantile(p: float) -> float:
    return t_quantile(p, math.inf)


# --- intervals -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Interval:
    """An interval in the unit of its values; ``method`` is "t" (over seeds), "wilson" (one run) or "range"."""

    low: float
    high: float
    method: str


NO_INTERVAL = Interval(math.nan, math.nan, "")


def mean_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """The t-interval mean ± t(1 - α/2, n - 1) · s / √n over ``values`` (two or more, finite)."""
    array = np.asarray(values, dtype=float)
    if len(array) < 2:
        raise ValueError(f"a t-interval needs two or more values, got {len(array)}")
    half = t_quantile(0.5 + level / 2.0, len(array) - 1) * array.std(ddof=1) / math.sqrt(len(array))
    return Interval(float(array.mean() - half), float(array.mean() + half), "t")


def wilson_interval(k: int, n: int, level: float = LEVEL) -> Interval:
    """The Wilson score interval of a proportion, k successes out of n trials, as proportions in [0, 1]."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"Wilson interval of {k} out of {n}: need 0 <= k <= n and n > 0")
    z = normal_quantile(0.5 + level / 2.0)
    center = (k + z * z / 2.0) / (n + z * z)
    half = z / (n + z * z) * math.sqrt(k * (n - k) / n + z * z / 4.0)
    return Interval(max(0.0, center - half), min(1.0, center + half), "wilson")


def accuracy_interval(values_pct: Sequence[float], n_test: int | None = None, level: float = LEVEL) -> Interval:
    """The interval the report shows for an accuracy in percent over the seeds that finished.

    Two or more seeds: the t-interval, clipped to [0, 100]. One seed: the Wilson interval of round(acc · n_test / 100) points out
    of ``n_test`` (in percent); without ``n_test``, or without any value, no interval (NaN).
    """
    values = [float(v) for v in values_pct if v is not None and math.isfinite(v)]
    if len(values) >= 2:
        interval = mean_interval(values, level)
        return Interval(max(0.0, interval.low), min(100.0, interval.high), "t")  # an accuracy stays in [0, 100]
    if len(values) == 1 and n_test:
        interval = wilson_interval(round(values[0] / 100.0 * n_test), n_test, level)
        return Interval(100.0 * interval.low, 100.0 * interval.high, "wilson")
    return NO_INTERVAL


def seed_range(values: Sequence[float]) -> Interval:
    """Lowest and highest value over seeds (throughput, memory); NaN when there is none."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return Interval(min(finite), max(finite), "range") if finite else NO_INTERVAL


# --- tests between two rows ----------------------------------------------------------------------

@dataclass(frozen=True)
class Comparison:
    """The outcome of comparing row a with row b: ``difference`` (a - b, on the values the test used),
    the two-sided ``p_value`` (NaN for interval overlap), the ``test`` used and whether they ``differ``."""

    difference: float
    p_value: float
    test: str
    differ: bool


def t_test_p(mean: float, standard_error: float, df: float) -> float:
    """Two-sided p-value of mean / standard_error under t(df); a zero standard error gives 1 or 0."""
    if standard_error == 0.0:
        return 1.0 if mean == 0.0 else 0.0
    return 2.0 * (1.0 - t_cdf(abs(mean) / standard_error, df))


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean difference and two-sided p-value of the paired t-test on a_i - b_i (two or more pairs)."""
    differences = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(differences)
    standard_error = differences.std(ddof=1) / math.sqrt(n)
    return float(differences.mean()), t_test_p(float(differences.mean()), float(standard_error), n - 1)


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Difference of means and two-sided p-value of Welch's t-test (two or more values each)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    share_a, share_b = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    difference = float(a.mean() - b.mean())
    if share_a + share_b == 0.0:
        return difference, t_test_p(difference, 0.0, 1.0)
    df = (share_a + share_b) ** 2 / (share_a ** 2 / (len(a) - 1) + share_b ** 2 / (len(b) - 1))
    return difference, t_test_p(difference, math.sqrt(share_a + share_b), df)


def compare(a: Mapping[int, float], b: Mapping[int, float], n_test: tuple[int | None, int | None] = (None, None),
            level: float = LEVEL) -> Comparison:
    """Row a against row b, each as {seed: value}; ``n_test`` (per row) serves single-seed Wilson intervals."""
    a, b = finite_values(a), finite_values(b)
    common = sorted(set(a) & set(b))
    if len(common) >= 2:
        difference, p = paired_t_test([a[s] for s in common], [b[s] for s in common])
        return Comparison(difference, p, "paired t", p < 1.0 - level)
    if len(a) >= 2 and len(b) >= 2:
        difference, p = welch_t_test(list(a.values()), list(b.values()))
        return Comparison(difference, p, "Welch t", p < 1.0 - level)
    first = accuracy_interval(list(a.values()), n_test[0], level)
    second = accuracy_interval(list(b.values()), n_test[1], level)
    apart = first.low > second.high or second.low > first.high  # False when either interval is NaN
    difference = float(np.mean(list(a.values())) - np.mean(list(b.values())))
    return Comparison(difference, math.nan, "intervals", apart)


def finite_values(values: Mapping[int, float]) -> dict[int, float]:
    return {seed: float(v) for seed, v in values.items() if v is not None and math.isfinite(v)}


# --- ranked groups -------------------------------------------------------------------------------

def rank_ranges(rows: Sequence[Mapping[int, float]], n_test: int | Sequence[int | None] | None = None,
                level: float = LEVEL) -> list[tuple[int, int] | None]:
    """Per row ({seed: value}, higher is better) the ranks it could hold: (1 + rows significantly above,
    rows not significantly below); None for a row without any value (a failed run)."""
    sizes = [n_test] * len(rows) if np.ndim(n_test) == 0 else list(n_test)
    present = [i for i, row in enumerate(rows) if finite_values(row)]
    above = {i: 0 for i in present}
    below = {i: 0 for i in present}
    for position, i in enumerate(present):
        for j in present[position + 1:]:
            outcome = compare(rows[i], rows[j], (sizes[i], sizes[j]), level)
            if outcome.differ:
                better, worse = (i, j) if outcome.difference > 0 else (j, i)
                above[worse] += 1
                below[better] += 1
    return [(1 + above[i], len(present) - below[i]) if i in above else None for i in range(len(rows))]


def group_labels(rows: Sequence[Mapping[int, float]], n_test: int | Sequence[int | None] | None = None,
                 level: float = LEVEL) -> list[str]:
    """The ``group`` column: "1", "2-4", ... (the rank range), "" for a row without any value."""
    return [range_label(ranks) for ranks in rank_ranges(rows, n_test, level)]


def tied_with_best(rows: Sequence[Mapping[int, float]], n_test: int | Sequence[int | None] | None = None,
                   level: float = LEVEL) -> list[bool]:
    """Rows no other row is significantly better than: statistically indistinguishable from the best."""
    return [ranks is not None and ranks[0] == 1 for ranks in rank_ranges(rows, n_test, level)]


def range_label(ranks: tuple[int, int] | None) -> str:
    if ranks is None:
        return ""
    return str(ranks[0]) if ranks[0] == ranks[1] else f"{ranks[0]}-{ranks[1]}"


def parse_range_label(label: str) -> tuple[int, int] | None:
    """The rank range of a ``group`` label ("2" -> (2, 2), "1-3" -> (1, 3)); None for ""."""
    if not label:
        return None
    first, _, last = str(label).partition("-")
    return int(first), int(last or first)
