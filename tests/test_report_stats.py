"""The report's statistics: intervals (t over seeds, Wilson for one seed), rank groups, CSV columns, the
papers' numbers beside matching rows, device and extra data in every table, and the two statistics plots."""
import json
import math

import pytest

from lipbench.cli.common import parse_seeds
from lipbench.report.board import leaderboard, shown_metrics
from lipbench.report.cells import board_tables
from lipbench.report.latex import latex_table
from lipbench.report.pages import write_report
from lipbench.report.runs import load_results

T_975_2DF = 4.302652729911275  # t(0.975, 2), from tables
Z_975 = 1.959963984540054


def record(layer, seed, cra, budget="2h", dataset="cifar10", size="XS", n_test=10_000, **extra):
    return {"layer": layer, "size": size, "dataset": dataset, "budget": budget, "budget_s": 7200.0, "seed": seed,
            "status": "ok", "job_id": f"{layer}-{size}-{budget}-{seed}", "batch_size": 64, "lr": 0.05,
            "layer_options": {}, "memory_counter": "process_peak_rss", "params": 1_000_000, "lipschitz_bound": 1.0,
            "environment": {"device_name": "test cpu"}, "steps": 100, "epochs_done": 2.0, "n_test": n_test,
            "clean_acc": cra + 0.1, "cra_36": cra, "cra_72": cra / 2, "cra_108": cra / 4, "cra_255": cra / 10,
            "train_throughput": 1000.0 + 10 * seed, "infer_throughput": 4000.0, "peak_memory_mb": 500.0 + seed,
            "infer_peak_memory_mb": 300.0, **extra}


def board_of(tmp_path, records):
    for document in records:
        path = tmp_path / "jobs" / document["job_id"] / "record.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document))
    return leaderboard(load_results([tmp_path])[0])


def only(board, layer):
    return board[board["layer"] == layer].iloc[0]


def test_three_seeds_give_the_t_interval_by_hand(tmp_path):
    row = only(board_of(tmp_path, [record("aol", s, c) for s, c in enumerate([0.60, 0.62, 0.64])]), "aol")
    half = T_975_2DF * 2.0 / math.sqrt(3)  # s = 2 points over 0.60, 0.62, 0.64
    assert row["cra_36_ci_low"] == pytest.approx(62.0 - half, abs=1e-6)
    assert row["cra_36_ci_high"] == pytest.approx(62.0 + half, abs=1e-6) and row["ci_method"] == "t"
    assert (row["train_throughput_seed_min"], row["train_throughput_seed_max"]) == (1000.0, 1020.0)


def test_one_seed_gives_the_wilson_interval_of_the_test_set(tmp_path):
    row = only(board_of(tmp_path, [record("aol", 0, 0.6, n_test=500)]), "aol")
    k, n, z = 300, 500, Z_975
    center = (k + z * z / 2) / (n + z * z)
    half = z / (n + z * z) * math.sqrt(k * (n - k) / n + z * z / 4)
    assert row["cra_36_ci_low"] == pytest.approx(100 * (center - half), abs=1e-6)
    assert row["cra_36_ci_high"] == pytest.approx(100 * (center + half), abs=1e-6) and row["ci_method"] == "wilson"


def test_close_rows_with_wide_intervals_are_one_group_far_rows_two(tmp_path):
    close = [record("aol", s, c) for s, c in enumerate([0.55, 0.65, 0.60])]
    close += [record("cpl", s, c) for s, c in enumerate([0.651, 0.551, 0.600])]  # 0.1 points apart on average
    board = board_of(tmp_path / "close", close)
    assert board["group"].tolist() == ["1-2", "1-2"] and board["tied_with_best"].all()
    far = [record("aol", s, c) for s, c in enumerate([0.700, 0.701, 0.702])]
    far += [record("cpl", s, c) for s, c in enumerate([0.600, 0.602, 0.601])]  # 10 points apart, narrow
    board = board_of(tmp_path / "far", far)
    assert board["group"].tolist() == ["1", "2"] and board["tied_with_best"].tolist() == [True, False]
    table = board_tables(board, shown_metrics(board))[0]
    assert [r[0].text for r in table.rows] == ["1", "2"]  # the rank column shows the groups
    assert latex_table(table).count("\\#") == 0  # a strict order: the paper table needs no rank column
    tied = board_of(tmp_path / "close2", close)
    assert "\\#" in latex_table(board_tables(tied, shown_metrics(tied))[0])  # groups "1-2" stay


def test_csv_has_interval_group_and_range_columns(tmp_path):
    board_of(tmp_path, [record("aol", s, c) for s, c in enumerate([0.60, 0.62, 0.64])] + [record("cpl", 0, 0.5)])
    report = write_report([tmp_path], tmp_path / "report")
    header = (tmp_path / "report" / "leaderboard.csv").read_text().splitlines()[0].split(",")
    for column in ("group", "tied_with_best", "ci_method", "cra_36_pct_ci_low", "cra_36_pct_ci_high",
                   "clean_acc_pct_ci_low", "cra_255_pct_ci_high", "train_throughput_img_s_seed_min",
                   "peak_memory_mb_seed_max", "device", "extra_data", "paper", "paper_cra_36"):
        assert column in header, column
    page = (tmp_path / "report" / "report.md").read_text()
    assert "Wilson score interval" in page and "paired t-test" in page and "lipbench references" in page
    assert "the ranking rests on one seed for 1 of 2 rows" in page
    assert report.board["group"].tolist() == ["1", "2"]


def test_paper_column_for_a_matching_setting_only(tmp_path):
    board = board_of(tmp_path, [record("aol", 0, 0.60), record("aol", 0, 0.60, budget="3h", job_id="other")])
    matched, other = board[board["budget"] == "2h"].iloc[0], board[board["budget"] == "3h"].iloc[0]
    assert matched["paper"] == "prach2024" and matched["paper_cra_36"] == pytest.approx(55.6)
    assert matched["paper_diff_cra_36"] == pytest.approx(4.4)
    assert other["paper"] == "" and math.isnan(other["paper_cra_36"])
    table = board_tables(board[board["budget"] == "2h"], shown_metrics(board))[0]
    cells = {h: c.text for h, c in zip(table.headers, table.rows[0])}
    assert cells["paper CRA 36 %"] == "55.6" and cells["Δ paper"] == "+4.4"


def test_device_and_extra_data_are_columns_where_they_differ_else_the_caption(tmp_path):
    same = board_of(tmp_path / "same", [record("aol", 0, 0.6), record("cpl", 0, 0.5)])
    table = board_tables(same, shown_metrics(same))[0]
    assert "device: test cpu" in table.caption and "extra data: none" in table.caption
    assert "device" not in table.headers and "extra data" not in table.headers
    generated = {"extra_data": "/data/edm-1m.npz", "extra_file": "edm-1m.npz", "extra_sha256": "ab" * 32,
                 "extra_ratio": 0.75}
    mixed = board_of(tmp_path / "mixed", [record("aol", 0, 0.6, **generated), record("cpl", 0, 0.5, extra_data=None),
                                          {**record("sll", 0, 0.4), "environment": {"device_name": "other gpu"}}])
    plain, extra = board_tables(mixed, shown_metrics(mixed))  # runs with extra data are a table of their own
    assert "extra data: none" in plain.caption and "extra data: edm-1m.npz abababab at 75%" in extra.caption
    devices = {r[1].text: r[plain.headers.index("device")].text for r in plain.rows}
    assert devices == {"cpl": "test cpu", "sll": "other gpu"}
    assert only(mixed, "aol")["paper"] == ""  # a run with extra data does not match a paper's run without


def test_the_statistics_plots_are_written(tmp_path):
    board_of(tmp_path, [record("aol", s, c) for s, c in enumerate([0.60, 0.62, 0.64])] + [record("cpl", 0, 0.5)])
    report = write_report([tmp_path], tmp_path / "report")
    plots = {plot.name: plot for plot in report.plots}
    for name in ("cra_intervals", "reproduced_vs_reported"):
        assert plots[name].note == "" and plots[name].files[0].read_bytes()[:4] == b"\x89PNG", plots[name].note
        assert plots[name].files[0].stat().st_size > 10_000


def test_seeds_count_is_shorthand_for_the_first_seeds():
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds("5,7") == [5, 7]
