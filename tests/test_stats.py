"""Intervals and ranked groups (lipbench.stats) against hand computations, closed forms and printed tables;
the plots of lipbench.plots_stats by the artists they draw."""
import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from lipbench.plots_stats import plot_cra_intervals, plot_reproduced_vs_reported
from lipbench.references import paper_columns
from lipbench.stats import (accuracy_interval, compare, group_labels, mean_interval, normal_quantile,
                            parse_range_label, rank_ranges, regularized_beta, seed_range, t_cdf, t_quantile,
                            tied_with_best, welch_t_test, wilson_interval)

# Two-sided 95% (p = 0.975) critical values of Student's t, df = 1..30, as printed in statistics tables.
T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
T_LARGE_DF = {40: 2.021, 60: 2.000, 120: 1.980, math.inf: 1.960}
T_95 = {1: 6.314, 2: 2.920, 3: 2.353, 4: 2.132, 5: 2.015, 10: 1.812, 20: 1.725, 30: 1.697}  # one-sided 5%
T_995 = {1: 63.657, 2: 9.925, 3: 5.841, 4: 4.604, 5: 4.032, 10: 3.169, 20: 2.845, 30: 2.750}  # two-sided 1%


@pytest.mark.parametrize("df", range(1, 31))
def test_t_quantile_matches_the_table(df):
    assert t_quantile(0.975, df) == pytest.approx(T_975[df - 1], abs=5e-4)


@pytest.mark.parametrize("table,p", [(T_LARGE_DF, 0.975), (T_95, 0.95), (T_995, 0.995)])
def test_t_quantile_other_columns_and_large_df(table, p):
    for df, value in table.items():
        assert t_quantile(p, df) == pytest.approx(value, abs=5e-4), df


@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.999, 0.9999])
def test_t_quantile_closed_forms_for_one_and_two_degrees_of_freedom(p):
    assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-10)  # Cauchy
    assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-10)
    assert t_quantile(1 - p, 7) == pytest.approx(-t_quantile(p, 7), rel=1e-12)  # symmetric


def test_t_tends_to_the_normal_and_cdf_inverts_quantile():
    assert normal_quantile(0.975) == pytest.approx(1.959963984540054, abs=1e-9)
    assert t_quantile(0.975, 1e6) == pytest.approx(1.959963984540054, abs=1e-5)
    for df in (1, 2.5, 9, 1000):
        for p in (0.55, 0.8, 0.99):
            assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-10)
    assert regularized_beta(0.3, 1, 1) == pytest.approx(0.3)  # the uniform distribution
    assert regularized_beta(0.3, 2, 3) == pytest.approx(1 - 0.7 ** 4 - 4 * 0.3 * 0.7 ** 3)  # a binomial tail


def test_t_interval_of_three_seeds_matches_hand_computation():
    # mean 0.62, s = 0.02, half width 4.303 * 0.02 / sqrt(3) = 0.04968
    interval = mean_interval([0.60, 0.62, 0.64])
    assert interval.method == "t"
    assert interval.low == pytest.approx(0.62 - 4.302653 * 0.02 / math.sqrt(3), abs=1e-6)
    assert interval.high == pytest.approx(0.6697, abs=1e-4)
    assert accuracy_interval([60.0, 62.0, 64.0]).high == pytest.approx(66.968, abs=1e-3)  # percent in, percent out


@pytest.mark.parametrize("k,n", [(6000, 10000), (0, 10000), (10000, 10000), (3, 20), (731, 1000)])
def test_wilson_interval_matches_its_formula(k, n):
    z, p = 1.959963984540054, k / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    interval = wilson_interval(k, n)
    assert interval.low == pytest.approx(max(0.0, center - half), abs=1e-12)
    assert interval.high == pytest.approx(min(1.0, center + half), abs=1e-12)
    assert 0.0 <= interval.low <= p <= interval.high <= 1.0


def test_one_seed_gets_the_wilson_interval_of_the_test_set_and_none_without_it():
    one = accuracy_interval([60.0], n_test=10000)
    assert one.method == "wilson" and one.low == pytest.approx(59.036, abs=1e-3) and one.high == pytest.approx(60.956,
                                                                                                                abs=1e-3)
    assert math.isnan(accuracy_interval([60.0]).low) and math.isnan(accuracy_interval([], 10000).high)
    assert accuracy_interval([60.0, float("nan"), 62.0]).method == "t"  # a failed seed is no value


def test_seed_range_is_min_and_max():
    assert (seed_range([1200.0, 1000.0, 1100.0]).low, seed_range([1200.0, 1000.0, 1100.0]).high) == (1000.0, 1200.0)
    assert math.isnan(seed_range([]).low)


def test_welch_matches_a_hand_computation():
    # a: mean 2, var 1 (n 3); b: mean 5, var 4 (n 3): t = -3 / sqrt(5/3), df = (5/3)^2 / ((1/9 + 16/9) / 2) = 50/17
    difference, p = welch_t_test([1.0, 2.0, 3.0], [3.0, 5.0, 7.0])
    assert difference == -3.0
    assert p == pytest.approx(2 * t_cdf(-3 / math.sqrt(5 / 3), 50 / 17), rel=1e-12)


def test_paired_test_is_used_where_seeds_match():
    # the same offset of 0.2 on every seed, despite a spread of 4 points between seeds: paired sees it
    a = {0: 60.2, 1: 64.2, 2: 62.2}
    b = {0: 60.0, 1: 64.0, 2: 62.1}
    paired = compare(a, b)
    assert paired.test == "paired t" and paired.differ
    unpaired = compare(a, {3: 60.0, 4: 64.0, 5: 62.1})
    assert unpaired.test == "Welch t" and not unpaired.differ


def rows_with(means, spread, seeds=3):
    offsets = np.linspace(-spread, spread, seeds)
    return [{seed: mean + offset * (1 if i % 2 else -1) for seed, offset in enumerate(offsets)}
            for i, mean in enumerate(means)]


def test_close_rows_with_wide_intervals_are_one_group():
    rows = rows_with([65.1, 65.0], spread=2.0)
    assert group_labels(rows) == ["1-2", "1-2"]
    assert tied_with_best(rows) == [True, True]


def test_distant_rows_with_narrow_intervals_are_two_groups():
    rows = rows_with([70.0, 60.0], spread=0.3)
    assert group_labels(rows) == ["1", "2"]
    assert tied_with_best(rows) == [True, False]


def test_ranges_span_the_ranks_a_row_could_hold_and_failed_rows_have_none():
    # 1 and 2 indistinguishable, 3 below both, 4 failed (no value)
    rows = rows_with([70.0, 69.9, 60.0], spread=0.5) + [{0: float("nan")}]
    assert rank_ranges(rows) == [(1, 2), (1, 2), (3, 3), None]
    assert group_labels(rows) == ["1-2", "1-2", "3", ""]
    assert [parse_range_label(label) for label in ("1-2", "3", "")] == [(1, 2), (3, 3), None]


def test_single_seeds_compare_by_their_wilson_intervals():
    assert group_labels([{0: 70.0}, {0: 60.0}], n_test=10000) == ["1", "2"]
    assert group_labels([{0: 60.4}, {0: 60.0}], n_test=10000) == ["1-2", "1-2"]  # 0.4 points on 10,000 points
    assert group_labels([{0: 70.0}, {0: 60.0}]) == ["1-2", "1-2"]  # no test-set size: no evidence either way


# --- plots (lipbench.plots_stats): artists from constructed data, never pixels ------------------------------

def board_with_intervals():
    """Three rows of seeds -> the columns the report would write: cra_36, its interval and the group."""
    seeds = {("soc", "M"): [66.0, 66.5, 67.0], ("cpl", "M"): [65.8, 66.4, 66.9], ("aol", "M"): [60.0, 60.2, 60.4]}
    rows = [{seed: value for seed, value in enumerate(values)} for values in seeds.values()]
    frame = pd.DataFrame([{"layer": layer, "size": size, "dataset": "cifar10", "budget": "24h", "variant": "",
                           "cra_36": float(np.mean(values)), "cra_36_ci_low": mean_interval(values).low,
                           "cra_36_ci_high": mean_interval(values).high} for (layer, size), values in seeds.items()])
    frame["group"] = group_labels(rows)
    papers = pd.DataFrame([paper_columns(row) for _, row in frame.iterrows()])
    return pd.concat([frame, papers], axis=1)


def test_plot_cra_intervals_draws_a_bar_per_row_and_shades_the_tied_rows():
    frame = board_with_intervals()
    assert list(frame["group"]) == ["1-2", "1-2", "3"]
    axes = Figure().add_subplot()
    plot_cra_intervals(frame, axes)
    assert len(axes.patches) == 2  # one shaded band per row tied with the best
    bars = axes.containers[0]
    assert len(bars.lines[2][0].get_segments()) == 3  # an interval per row
    assert [tick.get_text() for tick in axes.get_yticklabels()] == ["soc M", "cpl M", "aol M"]
    assert axes.get_ylim()[0] > axes.get_ylim()[1]  # first row on top


def test_plot_reproduced_vs_reported_puts_matched_rows_against_the_diagonal():
    frame = board_with_intervals()
    assert list(frame["paper_cra_36"]) == [66.3, 65.1, 61.0]  # Prach et al., Table 9, 24h M
    axes = Figure().add_subplot()
    plot_reproduced_vs_reported(frame, axes)
    (x, y), = axes.containers[0].lines[0].get_xydata()[:1]
    assert (x, y) == (66.3, pytest.approx(66.5))
    assert [text.get_text() for text in axes.texts] == ["soc M", "cpl M", "aol M"]
    diagonal = [line for line in axes.lines if line.get_linestyle() == "--"]
    assert len(diagonal) == 1 and list(diagonal[0].get_xdata()) == list(diagonal[0].get_ydata())
    empty = Figure().add_subplot()
    plot_reproduced_vs_reported(frame.assign(paper_cra_36=float("nan")), empty)
    assert "no run matches" in empty.texts[0].get_text()
