"""`lipbench speed` / `lipbench check`: the statistics, the baseline file, and both directions end to end.

End-to-end tests measure tiny shapes with few pairs in real worker processes: a baseline made from
this code passes; a baseline whose ratios were halved by hand, and one made from the fast ``aol``
but checked against the test plugin's ``aol-slow`` (twice the work), fail with exit 1 naming the
layer; another device class, or a layer that is not registered, exits 2.
"""
from __future__ import annotations

import copy
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import lipbench
from lipbench import speed
from lipbench.speed import verdicts, worker
from lipbench.cli import main
from lipbench.registry import unregister_layer

SLOW_PLUGIN = str(Path(__file__).parent / "plugins" / "slow_layer.py")
TINY = ["--kind", "conv", "--batch", "8", "--channels", "16", "--size", "8", "--kernel", "3",
        "--pairs", "12", "--block-ms", "1", "--warmup-ms", "20"]


def lipbench_cli(*arguments: str) -> int:
    """Run the ``lipbench`` command in this process; its exit status."""
    with pytest.raises(SystemExit) as exited:
        main(list(arguments))
    return exited.value.code or 0


@pytest.fixture(autouse=True)
def forget_slow_layer():
    yield
    unregister_layer("aol-slow")


# ---------------------------------------------------------------- statistics

def test_rank_test_exact_p_values():
    assert speed.mann_whitney_greater([4, 5, 6], [1, 2, 3]) == pytest.approx(1 / 20)  # complete separation
    assert speed.mann_whitney_greater([1, 2, 3], [4, 5, 6]) == pytest.approx(1.0)
    # after ranks {2, 4, 5, 6} of 7: rank sum 17; 4 of the 35 splits reach 17 or more
    assert speed.mann_whitney_greater([1.5, 3.5, 4, 5], [1, 2, 3]) == pytest.approx(4 / 35)
    # ties share their average rank: pooled [1, 2, 2, 3], after = {2, 3} has rank sum 2.5 + 4
    assert speed.mann_whitney_greater([2, 3], [1, 2]) == pytest.approx(2 / 6)
    assert speed.smallest_p(3, 3) == pytest.approx(0.05)
    assert speed.smallest_p(6, 3) == pytest.approx(1 / 84)


def test_rank_test_normal_approximation_matches_exact(monkeypatch):
    generator = np.random.default_rng(0)
    after, before = generator.normal(0.6, 1, 8), generator.normal(0, 1, 8)
    exact = speed.mann_whitney_greater(after, before)
    monkeypatch.setattr(verdicts, "EXACT_TEST_LIMIT", 10)
    assert speed.mann_whitney_greater(after, before) == pytest.approx(exact, abs=0.01)


def test_judge_needs_both_the_factor_and_significance():
    before = speed.Sample([1.0, 1.02, 0.98])
    regressed = speed.judge("x", "train", before, speed.Sample([2.0, 2.1, 1.9]), factor=1.5, alpha=0.05)
    assert (regressed.mark, regressed.change, regressed.p_value) == ("regressed", pytest.approx(2.0), pytest.approx(0.05))
    noisy = speed.judge("x", "train", before, speed.Sample([2.0, 0.9, 2.2]), factor=1.5, alpha=0.05)
    assert noisy.mark == "~" and noisy.p_value > 0.05
    small = speed.judge("x", "train", before, speed.Sample([1.3, 1.31, 1.32]), factor=1.5, alpha=0.05)
    assert small.mark == "ok" and small.p_value == pytest.approx(0.05)


def test_confirmation_pools_a_second_measurement():
    before = speed.Speeds({"x": {step: speed.Sample([1.0, 1.01, 0.99]) for step in speed.STEPS}})
    after = speed.Speeds({"x": {step: speed.Sample([2.0, 2.1]) for step in speed.STEPS}})  # p = 1/10: "~"
    asked = []

    def measure_again(names):
        asked.append(names)
        return speed.Speeds({"x": {step: speed.Sample([2.05, 1.98, 2.02]) for step in speed.STEPS}})

    verdicts = speed.confirmed_verdicts(before, after, measure_again, factor=1.5, alpha=0.05)
    assert asked == [["x"]]
    assert [verdict.mark for verdict in verdicts] == ["regressed", "regressed"]
    assert len(after.samples["x"]["train"].per_process) == 5


# ---------------------------------------------------------------- configuration and baseline files

def test_config_validation():
    config = speed.timing_config("cpu", batch=4)
    assert (config.shape.batch, config.shape.channels, config.timing.clock) == (4, 64, "cpu")
    assert speed.timing_config("cuda").timing.clock == "wall"
    for bad in (dict(dtype="int8"), dict(dtype="floaty"), dict(kind="conv3d"), dict(clock="sundial")):
        with pytest.raises(lipbench.UserError):
            speed.timing_config("cpu", **bad)
    with pytest.raises(lipbench.UserError, match="cpu clock"):
        speed.timing_config("cuda", clock="cpu")


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_baseline_round_trip_and_hand_edits(tmp_path, suffix):
    config = speed.timing_config("cpu", batch=8)
    speeds = speed.Speeds({"aol": {"train": speed.Sample([2.0, 2.2, 1.9], [9.0], [4.5]),
                                   "eval": speed.Sample([1.4, 1.5, 1.3], [2.0], [1.4])}},
                          environment=speed.baseline_environment("cpu"))
    path = tmp_path / f"baseline{suffix}"
    speed.save_document(speed.to_document(speeds, config), path)
    loaded_config, loaded = speed.from_document(speed.load_document(path))
    assert loaded_config == config
    assert loaded.samples["aol"]["train"].per_process == pytest.approx([2.0, 2.2, 1.9])
    assert loaded.environment["cpu_count"] == speeds.environment["cpu_count"]

    document = speed.load_document(path)
    document["layers"]["aol"]["train"]["ratio"] = 1.0  # edited by hand: the spread follows the ratio
    _, edited = speed.from_document(document)
    assert edited.samples["aol"]["train"].ratio == pytest.approx(1.0)
    assert edited.samples["aol"]["train"].per_process == pytest.approx([1.0, 1.1, 0.95])

    for broken in ({}, {**document, "layers": {"aol": {"train": {"ratio": 1.0}}}}, {**document, "format": "v0"}):
        with pytest.raises(lipbench.UserError, match="not a lipbench speed baseline"):
            speed.from_document(broken)
    path.write_text("{not json" if suffix == ".json" else "a: [b")
    with pytest.raises(lipbench.UserError, match="not valid"):
        speed.load_document(path)


def test_time_layer_in_process():
    config = speed.timing_config("cpu", batch=4, channels=8, size=8, pairs=7, block_ms=1, warmup_ms=5)
    timed = worker.time_layer(worker.build_layer("standard", config.shape), config)
    assert set(timed) == set(speed.STEPS)
    for step in speed.STEPS:
        assert 0.1 < timed[step]["ratio"] < 10  # the same convolution as the reference (a plumbing check)
        assert timed[step]["layer_ms"] > 0 and timed[step]["reference_ms"] > 0


# ---------------------------------------------------------------- end to end, real worker processes

@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> dict:
    """A baseline of aol and standard measured by `lipbench speed` from this code (3 processes)."""
    path = tmp_path_factory.mktemp("speed") / "baseline.json"
    with pytest.MonkeyPatch.context() as patch:
        printed = io.StringIO()
        patch.setattr(sys, "stdout", printed)
        assert lipbench_cli("speed", "--layers", "aol,stand*", "--device", "cpu", "--processes", "3", *TINY,
                            "--save", str(path), "--json") == 0
    document = json.loads(path.read_text())
    assert json.loads(printed.getvalue()) == document  # --json prints what --save writes
    assert document["config"]["shape"] == {"kind": "conv", "batch": 8, "channels": 16, "size": 8, "kernel": 3}
    assert document["config"]["device_class"] == "cpu" and document["config"]["reference"] == "nn.Conv2d"
    assert {"lipbench", "torch", "device", "cpu_count"} <= set(document["environment"])
    for name in ("aol", "standard"):
        for step in speed.STEPS:
            assert len(document["layers"][name][step]["per_process"]) == 3
    return document


def write(document: dict, tmp_path: Path) -> str:
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(document))
    return str(path)


def marks(printed: str) -> dict[tuple[str, str], str]:
    return {(verdict["layer"], verdict["step"]): verdict["mark"] for verdict in json.loads(printed)["verdicts"]}


def test_check_passes_against_a_baseline_of_the_same_code(baseline, tmp_path, capsys):
    assert lipbench_cli("check", "--baseline", write(baseline, tmp_path), "--processes", "2", "--json") == 0
    assert set(marks(capsys.readouterr().out)) == {(name, step) for name in ("aol", "standard") for step in speed.STEPS}


def test_check_fails_on_a_slower_layer_and_on_halved_ratios(baseline, tmp_path, capsys):
    document = copy.deepcopy(baseline)
    document["layers"]["aol-slow"] = document["layers"].pop("aol")  # measured on aol, checked on 2x aol
    for step in speed.STEPS:
        entry = document["layers"]["standard"][step]
        entry["ratio"] /= 2
        entry["per_process"] = [value / 2 for value in entry["per_process"]]
    status = lipbench_cli("check", "--baseline", write(document, tmp_path), "--processes", "2",
                          "--plugin", SLOW_PLUGIN, "--json")
    captured = capsys.readouterr()
    assert status == 1
    assert "regression:" in captured.err and "aol-slow" in captured.err and "standard" in captured.err
    assert "measuring once more" in captured.err
    verdicts = marks(captured.out)
    assert verdicts[("standard", "train")] == verdicts[("standard", "eval")] == "regressed"
    assert "regressed" in (verdicts[("aol-slow", "train")], verdicts[("aol-slow", "eval")])


def test_check_refuses_another_device_class(baseline, tmp_path, capsys):
    document = copy.deepcopy(baseline)
    document["config"]["device_class"] = "cuda"
    assert lipbench_cli("check", "--baseline", write(document, tmp_path), "--device", "cpu") == 2
    assert "not comparable" in capsys.readouterr().err


def test_check_refuses_a_layer_missing_from_the_registry(baseline, tmp_path, capsys):
    document = copy.deepcopy(baseline)
    document["layers"]["no-such-layer"] = document["layers"].pop("aol")
    assert lipbench_cli("check", "--baseline", write(document, tmp_path)) == 2
    assert "no-such-layer" in capsys.readouterr().err


def test_check_usage_errors(baseline, tmp_path, capsys):
    assert lipbench_cli("check") == 2
    assert lipbench_cli("check", "--baseline", write(baseline, tmp_path), "--processes", "1") == 2
    assert "never be significant" in capsys.readouterr().err
    assert lipbench_cli("check", "--baseline", str(tmp_path / "missing.json")) == 2


def test_check_against_a_git_revision(capsys):
    if not (Path(lipbench.__file__).resolve().parent.parent / ".git").exists():
        pytest.skip("lipbench is not imported from a git checkout")
    status = lipbench_cli("check", "--against", "HEAD", "--layers", "standard", "--device", "cpu",
                          "--processes", "3", *TINY, "--json")
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert set(marks(captured.out)) == {("standard", "train"), ("standard", "eval")}


def test_help_teaches_the_method(capsys):
    for command, words in (("speed", ["nn.Conv2d", "median of their medians", "ABAB", "CPU time"]),
                           ("check", ["Mann-Whitney", "Exit codes: 0 ok; 1", "regressed", "--against"])):
        assert lipbench_cli(command, "--help") == 0
        text = " ".join(capsys.readouterr().out.replace("│", " ").split())
        for word in words:
            assert word in text, f"`lipbench {command} --help` should mention {word!r}"
