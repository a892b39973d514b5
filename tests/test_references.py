"""The papers' numbers: validation of references/*.yaml, matching runs to them, and `lipbench references`."""
import math

import pytest

from lipbench.cli import main
from lipbench.errors import UserError
from lipbench.references import (find_references, load_references, paper_columns, paper_difference, select,
                                 shipped_references)

GOOD = """
paper: {title: "A paper", arxiv: "0000.00000"}
entries:
  - {method: aol, size: XS, dataset: cifar10, budget: 2h, clean_acc: 68.5, cra_36: 55.6, source: "Table 9 (p. 21)"}
  - {method: aol, size: XS, dataset: cifar10, budget: 24h, clean_acc: 71.7, cra_36: 59.1, source: "Table 9 (p. 21)",
     repository: {cra_72: 45.24, source: "statistics.csv"}}
  - {method: aol, size: XS, dataset: cifar10, budget: 2h, options: {kernel_size: 1}, clean_acc: 66.5, cra_36: 52.1,
     source: "Table 12 (p. 24)"}
  - {method: sll, size: S, dataset: cifar10, budget: 2h, clean_acc: 70.0, cra_36: 60.0, source: "Table 1",
     corrected: {cra_36: 58.0, source: "erratum, Table 1"}}
  - {method: cpl, size: S, dataset: cifar100, budget: 10h, clean_acc: 1.0, cra_36: 0.0, source: "Table 10",
     failed: true}
"""


def write(tmp_path, text, name="paper2024.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return [path]


@pytest.fixture
def references(tmp_path):
    return load_references(write(tmp_path, GOOD))


def run(method="aol", size="XS", dataset="cifar10", budget="2h", **extra):
    return {"layer": method, "size": size, "dataset": dataset, "budget": budget, **extra}


@pytest.mark.parametrize("change,fragment", [
    ('source: "Table 9 (p. 21)"}', "missing source"),
    ("method: aol", "unknown method 'nope'"),
    ("clean_acc: 68.5", "malformed number clean_acc: '68.5%'"),
    ("budget: 2h", "malformed budget 'two hours'"),
    ("dataset: cifar10", "unknown dataset 'cifar11'"),
])
def test_a_bad_first_entry_fails_with_one_line_naming_file_and_entry(tmp_path, change, fragment):
    replacement = {'source: "Table 9 (p. 21)"}': "}", "method: aol": "method: nope",
                   "clean_acc: 68.5": "clean_acc: 68.5%", "budget: 2h": "budget: two hours",
                   "dataset: cifar10": "dataset: cifar11"}[change]
    with pytest.raises(UserError) as error:
        load_references(write(tmp_path, GOOD.replace(change, replacement, 1)))
    message = str(error.value)
    assert "\n" not in message and fragment in message
    assert message.startswith("references/paper2024.yaml, entry 1 (")


def test_a_setting_twice_in_one_file_fails(tmp_path):
    line = '  - {method: soc, size: M, dataset: cifar10, budget: 2h, cra_36: 60.0, source: "Table 1"}\n'
    with pytest.raises(UserError, match=r"entry 7 \(soc M cifar10 2h\): the same setting as entry 6"):
        load_references(write(tmp_path, GOOD + line + line))


def test_broken_yaml_is_one_line(tmp_path):
    with pytest.raises(UserError, match="paper2024.yaml is not valid YAML") as error:
        load_references(write(tmp_path, "paper: [unclosed\n"))
    assert "\n" not in str(error.value)


def test_same_method_size_dataset_and_budget_matches(references):
    (found,) = find_references(run(), references)
    assert found.printed == {"clean_acc": 68.5, "cra_36": 55.6} and found.source == "Table 9 (p. 21)"
    assert paper_difference(run(cra_36=57.6), "cra_36", references) == pytest.approx(2.0)


@pytest.mark.parametrize("different", [dict(budget="10h"), dict(budget="7200s"), dict(size="S"), dict(method="soc"),
                                       dict(dataset="cifar100"), dict(extra_data=True),
                                       dict(layer_options='{"sketch_dim": 8}')])
def test_a_different_setting_does_not_match(references, different):
    assert find_references(run(**different), references) == []
    assert math.isnan(paper_difference(run(cra_36=50.0, **different), "cra_36", references))


def test_options_and_corrections_and_repository_values(references):
    (one_by_one,) = find_references(run(layer_options='{"kernel_size": 1}'), references)
    assert one_by_one.value("cra_36") == 52.1
    (corrected,) = find_references(run("sll", "S"), references)
    assert corrected.value("cra_36") == 58.0 and corrected.printed["cra_36"] == 60.0  # both kept
    assert corrected.source_of("cra_36") == "erratum, Table 1"
    columns = paper_columns(run(budget="24h", cra_36=60.1, cra_72=46.0, clean_acc=72.0), references=references)
    assert columns["paper"] == "paper2024" and columns["paper_cra_72"] == 45.24
    assert columns["paper_diff_cra_36"] == pytest.approx(1.0) and columns["paper_diff_cra_72"] == pytest.approx(0.76)
    assert math.isnan(columns["paper_cra_108"]) and math.isnan(columns["paper_diff_cra_255"])


def test_a_failed_paper_run_matches_nothing(references):
    assert find_references(run("cpl", "S", "cifar100", "10h"), references) == []


def test_the_shipped_files_all_load_and_match_the_papers_protocol():
    references = shipped_references()
    papers = {r.paper.id for r in references}
    assert {"prach2024", "hu2024", "singla2021", "meunier2022", "araujo2023"} <= papers
    prach = [r for r in references if r.paper.id == "prach2024"]
    assert len(prach) == 3 * 81 + 78  # Tables 9-11: 27 method-size rows x 3 budgets each; Table 12 without BnB
    (soc,) = find_references(run("soc", "M", "cifar10", "24h"))
    assert (soc.value("clean_acc"), soc.value("cra_36"), soc.value("cra_72")) == (76.9, 66.3, 53.37)
    assert all(r.source for r in references)
    assert select(references, "so*", "tiny-imagenet", "prach*") and not select(references, "standard")
    with pytest.raises(UserError, match="unknown method 'nope'"):
        select(references, "aol,nope")


def lipbench(capsys, monkeypatch, *args):
    """``lipbench references ARGS`` through the CLI's entry point, in this process: (exit status, stdout, stderr)."""
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as exit:
        main(["references", *args])
    output = capsys.readouterr()
    return exit.value.code, output.out, output.err


def test_cli_lists_filtered_numbers_within_80_columns(capsys, monkeypatch):
    status, out, err = lipbench(capsys, monkeypatch, "soc", "--dataset", "cifar10", "--paper", "prach2024")
    assert status == 0, err
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80 and not any("…" in line for line in lines)
    rows = [line.split() for line in lines if line.split()[:1] == ["soc"]]
    assert len(rows) == 12 + 12  # XS-L x 3 budgets, 3 x 3 and 1 x 1 kernels
    assert ["soc", "M", "24h", "76.9", "66.3", "53.4†", "40.0†", "6.7†"] in rows
    assert "aol" not in out.split()


@pytest.mark.parametrize("args,fragment", [(["nope"], "unknown method 'nope'"),
                                           (["--dataset", "mnist"], "unknown dataset 'mnist'"),
                                           (["--paper", "nobody*"], "unknown paper 'nobody*'")])
def test_cli_unknown_filter_is_one_line_and_exit_2(capsys, monkeypatch, args, fragment):
    status, out, err = lipbench(capsys, monkeypatch, *args)
    assert status == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in err
