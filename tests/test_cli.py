"""The command line end to end, on the synthetic dataset, in subprocesses as a user runs it."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path


PLUGINS = Path(__file__).parent / "plugins"


def lipbench(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "lipbench", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=600)


def one_line_error(result, fragment):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    assert any(fragment in line for line in lines), result.stderr
    return lines


def test_unknown_layer_is_one_clear_line(tmp_path):
    result = lipbench("run", "--layers", "aol,nope", "--dataset", "synthetic", "--out", tmp_path)
    assert len(one_line_error(result, "unknown layer 'nope'")) <= 2


def test_malformed_budget_is_one_clear_line(tmp_path):
    one_line_error(lipbench("run", "--budget", "2 minutes", "--out", tmp_path), "malformed budget")


def test_broken_yaml_budget_is_one_clear_line(tmp_path):
    (tmp_path / "b.yaml").write_text("budget: [2m\n")
    one_line_error(lipbench("run", "--budget", tmp_path / "b.yaml", "--out", tmp_path), "not valid YAML")


def test_missing_dataset_is_one_clear_line(tmp_path):
    result = lipbench("run", "--dataset", "cifar10", "--data-dir", tmp_path, "--out", tmp_path,
                      env={"LIPBENCH_CIFAR_MIRROR": "http://127.0.0.1:9"})
    one_line_error(result, "cifar-10-python.tar.gz is missing")


def test_run_records_reports_and_resumes(tmp_path):
    out = tmp_path / "results"
    result = lipbench("run", "--budget", "4s", "--layers", "aol,test-nan", "--plugin", PLUGINS / "nan_layer.py",
                      "--dataset", "synthetic", "--batch-size", "16", "--out", out)
    assert result.returncode == 0, result.stderr + result.stdout
    records = {r["layer"]: r for r in map(lambda p: json.loads(p.read_text()), out.glob("jobs/*/record.json"))}
    ok, failed = records["aol"], records["test-nan"]
    assert ok["status"] == "ok" and failed["status"] == "nan"  # a failed run is a row, never a gap
    for field in ("layer", "size", "dataset", "budget_s", "train_seconds", "epochs_planned", "epochs_done",
                  "train_throughput", "infer_throughput", "peak_memory_mb", "params", "clean_acc", "cra_36",
                  "cra_72", "cra_108", "cra_255", "lipschitz_bound", "status", "approximation", "environment"):
        assert field in ok, field
    assert ok["lipschitz_bound"] == 1.0 and ok["params"] > 1e6 and ok["n_classes"] == 10
    assert ok["environment"]["torch_version"] and ok["environment"]["lipbench_version"]
    assert ok["train_seconds"] <= 4 * 1.05 + ok["warmup_seconds"]  # the first step always runs
    assert (out / "report" / "leaderboard.md").is_file() and (out / "report" / "cra_vs_throughput.png").is_file()
    assert "test-nan" in (out / "report" / "leaderboard.md").read_text()
    assert "aol" in result.stdout and "nan" in result.stdout

    again = lipbench("run", "--budget", "4s", "--layers", "aol", "--dataset", "synthetic", "--batch-size", "16",
                     "--out", out)
    assert again.returncode == 0 and "1 already done" in again.stdout
    report = lipbench("report", out)
    assert report.returncode == 0 and "aol" in report.stdout


def test_report_skips_a_corrupt_record(tmp_path):
    good = tmp_path / "jobs" / "a" / "record.json"
    good.parent.mkdir(parents=True)
    good.write_text(json.dumps({"layer": "aol", "size": "XS", "dataset": "synthetic", "budget": "2m", "seed": 0,
                                "status": "ok", "clean_acc": 0.8, "cra_36": 0.6, "train_throughput": 100.0}))
    bad = tmp_path / "jobs" / "b" / "record.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"layer": "soc", "sta')
    result = lipbench("report", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "skipped" in result.stdout and "80.0" in result.stdout


def test_dry_run_lists_the_plan_without_running(tmp_path):
    result = lipbench("run", "--dry-run", "--budget", "2h,10h", "--layers", "a*l,standard", "--sizes", "XS,S",
                      "--datasets", "cifar10,fashion-mnist", "--out", tmp_path, env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    assert "16 planned jobs" in result.stdout and not (tmp_path / "jobs").exists()
    assert "…" not in result.stdout and re.search(r"^[0-9a-f]{12} pending aol ", result.stdout, re.MULTILINE)


def test_layers_table_names_every_method_and_fits_80_columns():
    result = lipbench("layers", env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    for name in ("aol", "bcop", "cayley", "cpl", "lot", "sll", "soc", "lipnext", "rslmi", "standard"):
        assert f"  {name} " in result.stdout
    assert "…" not in result.stdout and "bjorck_iterations=" in result.stdout
    assert "training: lr=0.01" in result.stdout  # the unconstrained layers' own lr


def test_a_run_says_its_recipe_and_the_protocol_a_plain_duration_got_in_its_first_line(tmp_path):
    result = lipbench("run", "--budget", "2m", "--layers", "aol", "--dataset", "synthetic", "--recipe", "bronet",
                      "--dry-run", "--out", str(tmp_path), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    first = " ".join(result.stdout.split("fashion")[0].split("synthetic")[0].split())
    assert first.startswith("recipe bronet; --budget 2m: the short-run protocol (budgets/cpu-2m.yaml;"), first
    preset = lipbench("run", "--budget", "cpu-2m", "--layers", "aol", "--dataset", "synthetic", "--dry-run",
                      "--out", str(tmp_path), "--device", "cpu")
    assert preset.stdout.splitlines()[0] == "recipe prach"
