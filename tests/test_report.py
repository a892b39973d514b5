"""The report: seeds aggregated as mean ± std, ranks, failed rows kept, audits flagged, every file written."""
import json
import math
import re

import pytest
from rich.console import Console

from lipbench.report.board import leaderboard, shown_metrics
from lipbench.report.cells import board_tables
from lipbench.report.latex import latex_escape, latex_table
from lipbench.report.metrics import PAPER
from lipbench.report.notes import undertrained, violations
from lipbench.report.pages import report_into, write_report
from lipbench.report.runs import load_results
from lipbench.report.terminal import print_board

BUDGETS = {"2m": 120.0, "10m": 600.0}


def record(layer, size, budget, seed, status="ok", cra=0.5, clean=0.8, throughput=1000.0, **extra):
    base = {"layer": layer, "size": size, "dataset": "synthetic", "budget": budget, "budget_s": BUDGETS[budget],
            "seed": seed, "status": status, "job_id": f"{layer}-{size}-{budget}-{seed}-{extra.get('lr', 0.05)}",
            "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0, "precision": "fp32",
            "layer_options": {}, "memory_counter": "process_peak_rss", "params": 1_500_000, "lipschitz_bound": 1.0,
            "environment": {"device_name": "test cpu", "torch_version": "2.x", "git_commit": "abc"},
            "steps": 100, "epochs_done": 2.0}
    if status == "ok":
        base.update(clean_acc=clean, cra_36=cra, cra_72=cra / 2, cra_108=cra / 4, cra_255=cra / 10,
                    train_throughput=throughput, infer_throughput=4 * throughput, peak_memory_mb=500.0 + 100 * seed,
                    infer_peak_memory_mb=300.0)
    else:
        base["error"] = f"{status} at step 3"
    return {**base, **extra}


def write(folder, name, document):
    path = folder / "jobs" / name / "record.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document if isinstance(document, str) else json.dumps(document))


def sweep_records():
    return [
        record("aol", "XS", "2m", 0, cra=0.60, clean=0.80, throughput=1000.0),
        record("aol", "XS", "2m", 1, cra=0.62, clean=0.82, throughput=1100.0),
        record("aol", "S", "2m", 0, cra=0.65, throughput=500.0, params=6_000_000),
        record("aol", "S", "2m", 1, cra=0.65, throughput=520.0, params=6_000_000),
        record("cayley", "XS", "2m", 0, cra=0.55, throughput=300.0),
        record("cayley", "XS", "2m", 1, cra=0.57, throughput=310.0),
        record("cayley", "S", "2m", 0, cra=0.50, throughput=150.0, params=6_000_000),
        record("cayley", "S", "2m", 1, status="nan"),
        record("my_layer", "XS", "2m", 0, status="oom"),
        record("my_layer", "XS", "2m", 1, status="oom"),
        record("aol", "XS", "10m", 0, cra=0.70, throughput=1000.0),
        record("aol", "XS", "10m", 1, cra=0.72, throughput=1000.0),
        record("cayley", "XS", "10m", 0, cra=0.66, throughput=300.0),
        record("cayley", "XS", "10m", 1, cra=0.66, throughput=300.0),
    ]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("results")
    for document in sweep_records():
        write(folder, document["job_id"], document)
    write(folder, "corrupt", '{"layer": "soc", "sta')
    return folder


@pytest.fixture(scope="module")
def report(results):
    return write_report([results], results / "report")


def row(board, layer, size, budget="2m"):
    match = board[(board["layer"] == layer) & (board["size"] == size) & (board["budget"] == budget)]
    assert len(match) == 1, match
    return match.iloc[0]


def test_seeds_are_mean_and_sample_std_in_percent(results):
    runs, problems = load_results([results])
    board = leaderboard(runs)
    aol = row(board, "aol", "XS")
    assert aol["seeds"] == 2 and aol["status"] == "ok"
    assert aol["cra_36"] == pytest.approx(61.0)
    assert aol["cra_36_std"] == pytest.approx(100 * math.sqrt(2 * 0.01**2))  # ddof=1
    assert aol["clean_acc"] == pytest.approx(81.0)
    assert aol["train_throughput"] == pytest.approx(1050.0)
    assert aol["epoch_seconds"] == pytest.approx(50 * 64 / 1050.0, rel=0.05)  # steps/epoch × batch / throughput
    assert math.isnan(row(board, "aol", "S")["cra_36_std"]) is False and row(board, "aol", "S")["cra_36_std"] == 0
    assert any("corrupt" in problem for problem in problems)  # reported, skipped, not fatal


def test_rank_by_cra_within_budget_and_failed_rows_stay(results):
    board = leaderboard(load_results([results])[0])
    two_minutes = board[board["budget"] == "2m"]
    assert list(zip(two_minutes["layer"], two_minutes["size"])) == [
        ("aol", "S"), ("aol", "XS"), ("cayley", "XS"), ("cayley", "S"), ("my_layer", "XS")]
    assert two_minutes["rank"].tolist()[:4] == [1, 2, 3, 4] and math.isnan(two_minutes["rank"].iloc[4])
    mixed = row(board, "cayley", "S")
    assert mixed["status"] == "1 ok, 1 nan" and mixed["seeds"] == 2 and mixed["ok_seeds"] == 1
    assert mixed["cra_36"] == pytest.approx(50.0) and math.isnan(mixed["cra_36_std"])  # the ok seed alone
    failed = row(board, "my_layer", "XS")
    assert failed["status"] == "oom" and math.isnan(failed["cra_36"]) and "oom at step 3" in failed["error"]
    assert board["budget"].drop_duplicates().tolist() == ["2m", "10m"]  # budgets ordered by seconds


def test_runs_differing_in_settings_or_device_are_not_seeds(tmp_path):
    write(tmp_path, "a", record("aol", "XS", "2m", 0, cra=0.6))
    write(tmp_path, "b", record("aol", "XS", "2m", 1, cra=0.6, lr=0.2))
    write(tmp_path, "c", record("aol", "XS", "2m", 2, cra=0.6, environment={"device_name": "other gpu"}))
    write(tmp_path, "d", record("aol", "S", "2m", 0, cra=0.6, holdout=0.1))
    board = leaderboard(load_results([tmp_path])[0])
    labels = sorted(board.loc[board["size"] == "XS", "variant"])
    assert labels == ["lr=0.05, device_name=other gpu", "lr=0.05, device_name=test cpu",
                      "lr=0.2, device_name=test cpu"]
    assert (board["seeds"] == 1).all()
    assert board.loc[board["size"] == "S", "variant"].item() == "holdout=0.1"  # never mistaken for test accuracy


def test_layer_options_label_their_runs_by_name(tmp_path):
    for index, options in enumerate([{}, {"sketch_dim": 8}, {"sketch_dim": 64, "penalty_weight": 1.0}]):
        write(tmp_path, str(index), record("rslmi", "XS", "2m", 0, layer_options=options, job_id=f"r{index}"))
    labels = sorted(leaderboard(load_results([tmp_path])[0])["variant"])
    assert labels == ["default options", "penalty_weight=1.0, sketch_dim=64", "sketch_dim=8"]


def test_a_failure_recorded_without_device_or_settings_joins_its_seeds(tmp_path):
    write(tmp_path, "a", record("aol", "XS", "2m", 0))
    write(tmp_path, "b", record("aol", "XS", "2m", 1, status="nan"))
    crashed = record("aol", "XS", "2m", 2, status="crashed")
    del crashed["environment"], crashed["precision"]  # the parent knows no device; precision had its default
    write(tmp_path, "c", crashed)
    board = leaderboard(load_results([tmp_path])[0])
    assert len(board) == 1 and board["variant"].item() == ""
    assert board["status"].item() == "1 ok, 1 crashed, 1 nan" and board["seeds"].item() == 3


def test_the_same_job_found_twice_counts_once(results, tmp_path):
    twice = leaderboard(load_results([results, results])[0])
    assert row(twice, "aol", "XS")["seeds"] == 2
    copy = tmp_path / "copy"
    write(copy, "x", record("aol", "XS", "2m", 0, cra=0.60, clean=0.80, throughput=1000.0))
    runs, problems = load_results([results, copy])
    assert row(leaderboard(runs), "aol", "XS")["seeds"] == 2
    assert any("appears twice" in problem for problem in problems)


def test_audit_sound_cra_lowers_the_job_cra_and_violations_are_flagged(tmp_path):
    audit_bad = {"sound_bound": 1.2, "lower_bound": 1.1, "violations": 3,
                 "cra_sound": {"cra_36": 0.40, "72/255": 0.2, "108": 0.1, "1": 0.0}}
    write(tmp_path, "a", record("bcop", "XS", "2m", 0, cra=0.6, audit=audit_bad))
    write(tmp_path, "b", record("aol", "XS", "2m", 0, cra=0.5, audit={"sound_bound": 1.0, "lower_bound": 0.99,
                                                                       "violations": 0}))
    write(tmp_path, "c", record("rslmi", "XS", "2m", 0, cra=0.45, lipschitz_bound=1.3, lipschitz_bound_claimed=1.0))
    tighter = {"sound_bound": 0.9, "lower_bound": 0.5, "violations": 0, "cra_sound": {"cra_36": 0.7}}
    write(tmp_path, "d", record("soc", "XS", "2m", 0, cra=0.45, audit=tighter))
    runs, _ = load_results([tmp_path])
    board = leaderboard(runs)
    bcop = row(board, "bcop", "XS")
    assert bcop["cra_36"] == pytest.approx(40.0) and bcop["cra_72"] == pytest.approx(20.0)
    assert bcop["cra_255"] == pytest.approx(0.0) and bcop["violations"] == 3
    assert runs.loc[runs["layer"] == "bcop", "cra_36_job"].item() == pytest.approx(0.6)  # kept for reference
    assert row(board, "aol", "XS")["rank"] == 1  # the audited CRA decides the rank
    assert row(board, "soc", "XS")["cra_36"] == pytest.approx(45.0)  # a tighter sound bound never raises a CRA
    assert len(violations(board)) == 1 and "bcop XS" in violations(board)[0]
    table = board_tables(board, shown_metrics(board))[0]
    audit = table.headers.index("audit")
    cells = {r[1].text: r[audit] for r in table.rows}
    assert cells["bcop"].text == "VIOLATED (3)" and cells["bcop"].alert
    assert cells["aol"].text == "ok" and cells["rslmi"].text == "-"
    assert {"L claimed", "L sound", "audit L sound"} <= set(table.headers)
    claimed = {r[1].text: r[table.headers.index("L claimed")].text for r in table.rows}
    assert claimed == {"aol": "-", "bcop": "-", "rslmi": "1", "soc": "-"}

    console = Console(width=100, record=True)
    print_board(board, console)
    text = console.export_text()
    assert "VIOLATED (3)" in text and "✗ bcop XS" in text
    assert "rslmi: claimed L = 1, sound L = 1.3 in 1 row(s)" in text


def test_undertrained_rows_are_said_to_be(tmp_path):
    write(tmp_path, "a", record("cpl", "XS", "2m", 0, cra=0.0, clean=0.136, n_classes=10))  # near chance
    write(tmp_path, "b", record("sll", "XS", "2m", 0, cra=0.001, clean=0.324, n_classes=10))  # L = 1, certifies nothing
    write(tmp_path, "c", record("aol", "XS", "2m", 0, cra=0.6, clean=0.8, n_classes=10))
    write(tmp_path, "d", record("standard", "XS", "2m", 0, cra=0.0, clean=0.85, n_classes=10, lipschitz_bound=1e3))
    write(tmp_path, "e", record("lot", "XS", "2m", 0, cra=0.05, clean=0.05, n_classes=100))  # 100 classes: 5% is not chance
    write(tmp_path, "f", record("soc", "XS", "2m", 0, cra=0.0, clean=0.4))  # a record from before n_classes was kept
    board = leaderboard(load_results([tmp_path])[0])
    lines = {line.split()[0]: line for line in undertrained(board)}
    assert set(lines) == {"cpl", "sll", "soc"}  # a loose bound (standard) is no sign of undertraining
    assert lines["cpl"].startswith("cpl XS on synthetic, budget 2m: 13.6% clean (chance 10%), CRA 36 0.0%")
    assert "chance" not in lines["soc"].split(":")[1] and "cpu-2m@TIME" in lines["soc"]

    report = write_report([tmp_path], tmp_path / "report")
    for page in ("report.html", "report.md"):
        assert (tmp_path / "report" / page).read_text().count("looks undertrained") == 3, page
    console = Console(width=200, record=True)
    print_board(report.board, console)
    assert console.export_text().count("looks undertrained") == 3


def test_cells_show_best_in_bold_and_spread(results):
    board = leaderboard(load_results([results])[0])
    table = board_tables(board[board["budget"] == "2m"], shown_metrics(board))[0]
    cra = table.headers.index("CRA 36/255 %")
    throughput = table.headers.index("train img/s")
    by_row = {(r[1].text, r[2].text): r for r in table.rows}
    assert by_row[("aol", "XS")][cra].plain() == "61.0 [48.3, 73.7]"  # 61 ± t(0.975, 1) · 1.41 / √2
    assert by_row[("aol", "S")][cra].bold and by_row[("aol", "XS")][cra].bold  # tied with the best (paired t)
    assert not by_row[("cayley", "XS")][cra].bold  # 4 points below aol XS on both seeds: significantly worse
    assert by_row[("aol", "XS")][throughput].bold and by_row[("aol", "XS")][throughput].plain() == "1,050 [1,000, 1,100]"
    assert [r[0].text for r in table.rows] == ["1-4", "1-3", "2-4", "1-4", "-"]
    assert by_row[("my_layer", "XS")][cra].text == "-" and by_row[("my_layer", "XS")][0].text == "-"
    assert table.failed == [False, False, False, False, True]


def test_latex_is_a_booktabs_tabular_with_escapes_and_bold(results):
    board = leaderboard(load_results([results])[0])
    text = latex_table(board_tables(board, shown_metrics(board, PAPER))[0])
    assert text.count("{") == text.count("}") and text.count("$") % 2 == 0
    assert r"\toprule" in text and r"\midrule" in text and r"\bottomrule" in text
    assert text.count(r"\begin{tabular}") == text.count(r"\end{tabular}") == 1
    assert r"my\_layer" in text and "my_layer" not in text
    assert r"$\mathbf{65.0}\,{\scriptstyle[65.0,\,65.0]}$" in text
    assert r"$\mathbf{61.0}\,{\scriptstyle[48.3,\,73.7]}$" in text and "device: test cpu" in text
    assert "1 ok, 1 nan" in text  # status kept where a row failed
    columns = len(re.search(r"\\begin\{tabular\}\{(\w+)\}", text).group(1))
    body = text.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    assert len(body) == 5 and all(line.count(" & ") == columns - 1 for line in body)
    assert latex_escape("a_b & 5% #1 {x}") == r"a\_b \& 5\% \#1 \{x\}"


def test_write_report_writes_tables_pages_and_plots(report, results):
    out = results / "report"
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.tex", "runs.csv", "report.html", "report.md"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert {plot.name for plot in report.plots} == {"cra_vs_throughput", "cra_vs_budget", "cost_vs_size",
                                                    "clean_vs_cra", "cra_vs_epsilon", "cra_intervals",
                                                    "reproduced_vs_reported"}
    assert "no row's setting" in next(p.note for p in report.plots if p.name == "reproduced_vs_reported")
    for plot in (p for p in report.plots if p.name != "reproduced_vs_reported"):
        assert [f.suffix for f in plot.files] == [".png", ".svg"] and plot.note == "", plot.note
        assert plot.files[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.files[0].stat().st_size > 10_000
        assert "<svg" in plot.files[1].read_text()[:2000]
    csv = (out / "leaderboard.csv").read_text().splitlines()
    assert "cra_36_pct" in csv[0] and "cra_36_pct_std" in csv[0] and len(csv) == 1 + 7
    markdown = (out / "leaderboard.md").read_text()
    assert "| 1-3 | aol | XS | 2 | ok | **81.0 [68.3, 93.7]** | **61.0 [48.3, 73.7]** |" in markdown and "my_layer" in markdown
    page = (out / "report.html").read_text()
    assert "<script" not in page and 'src="cra_vs_throughput.png"' in page and str(out) not in page
    assert "How to read this" in page and "process_peak_rss" in page and "1 ok, 1 nan" in page
    assert "corrupt" in page  # the skipped file is said
    assert "![" in (out / "report.md").read_text() and "How to read this" in (out / "report.md").read_text()


def test_a_single_budget_skips_the_budget_plot_and_says_why(tmp_path):
    for document in sweep_records()[:6]:
        write(tmp_path, document["job_id"], document)
    (tmp_path / "report").mkdir()
    stale = tmp_path / "report" / "cra_vs_budget.png"
    stale.write_bytes(b"an earlier report's picture")
    report = write_report([tmp_path], tmp_path / "report")
    skipped = {plot.name: plot.note for plot in report.plots if plot.note}
    assert list(skipped) == ["cra_vs_budget", "reproduced_vs_reported"] and "needs ≥ 2 budgets" in skipped["cra_vs_budget"]
    assert stale.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # now the note, never the earlier picture
    page = (tmp_path / "report" / "report.md").read_text()
    assert "needs ≥ 2 budgets" in page and "(cra_vs_budget.png)" not in page


def test_terminal_table_fits_100_columns_without_cutting(results):
    board = leaderboard(load_results([results])[0])
    console = Console(width=100, record=True)
    print_board(board, console)
    text = console.export_text()
    assert "…" not in text and max(len(line.rstrip()) for line in text.splitlines()) <= 100
    assert "61.0 [48.3,73.7]" in text and "1 ok, 1 nan" in text and "peak" in text and "[low,high]" in text and "my_layer" in text


def test_report_into_returns_the_sweeps_jobs_and_their_retries(results, tmp_path):
    for document in sweep_records()[:2]:
        write(tmp_path, document["job_id"], document)
    retry = record("aol", "S", "2m", 1000, cra=0.5, retry_of="earlier-job")
    write(tmp_path, retry["job_id"], retry)
    write(tmp_path, "other", record("cayley", "XS", "2m", 0))
    board = report_into(tmp_path, [sweep_records()[0]["job_id"], sweep_records()[1]["job_id"], "earlier-job"], Console())
    assert sorted(zip(board["layer"], board["size"])) == [("aol", "S"), ("aol", "XS")]
    assert (tmp_path / "report" / "report.html").is_file()
    assert report_into(tmp_path / "empty", None, Console()) is None
