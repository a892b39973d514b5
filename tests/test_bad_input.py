"""Every bad input is one clear line and exit status 2: no traceback, a message that names the problem, and
a results folder given to the command left exactly as it was. Run in this process (``lipbench.cli.main``)
so that the whole table takes seconds."""
from __future__ import annotations

import io
import json
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lipbench.cli import main
from lipbench.jobfolder import MODEL_NAME, RECORD_NAME, write_config, write_json_atomic
from lipbench.settings import JobConfig

RUN = ["run", "--budget", "2s", "--layers", "aol", "--dataset", "synthetic", "--dry-run"]

CASES = [
    # lipbench run: names, lists and durations
    ("run", [*RUN, "--layers", "nope"], "unknown layer 'nope'"),
    ("run", [*RUN, "--layers", ","], "--layers is empty"),
    ("run", [*RUN, "--budget", ""], "--budget is empty"),
    ("run", [*RUN, "--seeds", ""], "--seeds is empty"),
    ("run", [*RUN, "--seeds", "0"], "asks for no seed"),
    ("run", [*RUN, "--seeds", "-1,2"], "--seeds must be non-negative"),
    ("run", [*RUN, "--seeds", "a,b"], "--seeds must be integers"),
    ("run", [*RUN, "--budget", "99999h"], "is longer than 30 days, the most a job may train"),
    ("run", [*RUN, "--budget", "5x"], "malformed budget '5x'"),
    ("run", [*RUN, "--budget", "0s"], "budget '0s' must be positive"),
    ("run", [*RUN, "--sizes", "XXL"], "nothing to run"),
    ("run", [*RUN, "--model", "nope"], "unknown model 'nope'"),
    ("run", [*RUN, "--dataset", "nope"], "unknown dataset 'nope'"),
    # lipbench run: settings from the command line
    ("run", [*RUN, "--lr", "nan"], "lr must be a number (finite), got nan"),
    ("run", [*RUN, "--lr", "-1"], "lr must be > 0"),
    ("run", [*RUN, "--batch-size", "0"], "batch_size must be >= 1"),
    ("run", [*RUN, "--batch-size", "1.5"], "Invalid value for '--batch-size'"),
    ("run", [*RUN, "--momentum", "1.5"], "momentum must be in [0, 1)"),
    ("run", [*RUN, "--weight-decay", "-0.1"], "weight_decay must be >= 0"),
    ("run", [*RUN, "--precision", "fp8"], "precision must be fp32 or bf16"),
    ("run", [*RUN, "--max-steps", "-3"], "max_steps must be >= 0"),
    # lipbench run: settings from a preset file
    ("run", [*RUN, "--budget", "{inputs}/augment.yaml"], "augment must be true or false, got 'false'"),
    ("run", [*RUN, "--budget", "{inputs}/batch.yaml"], "batch_size must be an integer, got 1.5"),
    ("run", [*RUN, "--budget", "{inputs}/nan.yaml"], "lr must be a number (finite), got nan"),
    ("run", [*RUN, "--budget", "{inputs}/zero.yaml"], "batch_size must be >= 1, got 0"),
    ("run", [*RUN, "--budget", "{inputs}/unknown.yaml"], "unknown keys ['learning_rate']"),
    ("run", [*RUN, "--budget", "{inputs}/method.yaml"], "(methods.aol): unknown setting 'budget'"),
    ("run", [*RUN, "--budget", "{inputs}/broken.yaml"], "is not valid YAML"),
    ("run", [*RUN, "--budget", "{inputs}/missing.yaml"], "does not exist"),
    # lipbench run: devices, processes, executors
    ("run", [*RUN, "--device", "cuda"], "torch sees no CUDA GPU here"),
    ("run", [*RUN, "--device", "foo"], "unknown device 'foo'"),
    ("run", [*RUN, "--nproc", "0"], "--nproc must be at least 1"),
    ("run", [*RUN, "--max-parallel", "0"], "--max-parallel must be at least 1"),
    ("run", [*RUN, "--executor", "k8s"], "--executor must be local or slurm"),
    ("run", [*RUN, "--slurm", "partition"], "--slurm 'partition' must look like key=value"),
    ("run", [*RUN, "--layer-option", "sketch_dim"], "must look like key=value"),
    # lipbench run: datasets and plugins
    ("run", [*RUN, "--dataset", "{inputs}/empty.npz"], "lacks arrays"),
    ("run", [*RUN, "--dataset", "{inputs}/objects.npz"], "cannot read"),
    ("run", [*RUN, "--dataset", "{inputs}/nan.npz"], "contains NaN"),
    ("run", [*RUN, "--dataset", "{inputs}/images"], "is not an image lipbench can read"),
    ("run", [*RUN, "--dataset", "cifar10", "--data-dir", "{inputs}/escape"], "would land outside"),
    ("run", [*RUN, "--dataset", "fashion-mnist", "--data-dir", "{inputs}/nowhere"], "not in --data-dir"),
    ("run", [*RUN, "--plugin", "{inputs}/missing_plugin.py"], "no such file"),
    ("run", [*RUN, "--plugin", "{inputs}/raising_plugin.py"], "failed to load: RuntimeError: broken on purpose"),
    ("run", [*RUN, "--plugin", "{inputs}/clashing_plugin.py"], "'aol' is already registered"),
    # lipbench report
    ("report", ["report", "{inputs}/nowhere"], "does not exist"),
    ("report", ["report", "{inputs}/augment.yaml"], "is a file; give the results folder"),
    ("report", ["report", "{inputs}/empty_results"], "no records found"),
    # lipbench audit
    ("audit", ["audit", "{inputs}/nowhere"], "does not exist"),
    ("audit", ["audit", "{results}/jobs/corrupt"], "cannot be loaded safely"),
    ("audit", ["audit", "{results}/jobs/incomplete"], "lacks budget, budget_s, dataset"),
    ("audit", ["audit", "{results}/jobs/plugin"], "pass the plugin that defines it"),
    ("audit", ["audit", "{results}/jobs/corrupt/model.pt", "--config", "{inputs}/augment.yaml"], "cannot read"),
    ("audit", ["audit", "{inputs}/loose.pt"], "pass --config"),
    # lipbench tune
    ("tune", ["tune", "--dataset", "synthetic", "--holdout", "1.5"], "--holdout must be between 0 and 1"),
    ("tune", ["tune", "--dataset", "synthetic", "--trials", "0"], "--trials must be at least 1"),
    ("tune", ["tune", "--dataset", "synthetic", "--layers", "nope"], "unknown layer 'nope'"),
    ("tune", ["tune", "--dataset", "synthetic", "--device", "cuda"], "torch sees no CUDA GPU"),
    # lipbench speed and check
    ("speed", ["speed", "--layers", "nope"], "unknown layer 'nope'"),
    ("speed", ["speed", "--dtype", "int8"], "unknown dtype 'int8'"),
    ("speed", ["speed", "--device", "cuda"], "torch sees no CUDA GPU"),
    ("speed", ["speed", "--kind", "pool"], "unknown kind 'pool'"),
    ("check", ["check"], "give exactly one of --baseline FILE and --against GIT_REF"),
    ("check", ["check", "--baseline", "{inputs}/missing.json"], "cannot read baseline"),
    ("check", ["check", "--baseline", "{inputs}/broken.json"], "is not valid json"),
    ("check", ["check", "--baseline", "{inputs}/augment.yaml"], "not a lipbench speed baseline"),
]


def write_inputs(folder: Path) -> None:
    presets = {"augment": "budget: 2m\naugment: 'false'\n", "batch": "budget: 2m\nbatch_size: 1.5\n",
               "nan": "budget: 2m\nlr: .nan\n", "zero": "budget: 2m\nbatch_size: 0\n",
               "unknown": "budget: 2m\nlearning_rate: 0.1\n", "method": "budget: 2m\nmethods:\n  aol: {budget: 2h}\n",
               "broken": "budget: [2m\n"}
    for name, text in presets.items():
        (folder / f"{name}.yaml").write_text(text)
    (folder / "broken.json").write_text("{not json")
    np.savez(folder / "empty.npz")
    images = {"y_train": np.zeros(2, np.int64), "x_test": np.zeros((2, 4, 4), np.float32), "y_test": np.zeros(2, np.int64)}
    np.savez(folder / "objects.npz", x_train=np.array([object(), object()], dtype=object), **images)
    np.savez(folder / "nan.npz", x_train=np.full((2, 4, 4), np.nan, np.float32), **images)
    for split in ("train", "test"):
        (folder / "images" / split / "cat").mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / "images" / split / "cat" / "0.png")
    (folder / "images" / "test" / "cat" / "notes.txt").write_text("not an image")
    (folder / "escape").mkdir()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/../../escaped")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"boom"))
    (folder / "escape" / "cifar-10-python.tar.gz").write_bytes(buffer.getvalue())
    (folder / "nowhere-file").write_text("")
    (folder / "raising_plugin.py").write_text("raise RuntimeError('broken on purpose')\n")
    (folder / "clashing_plugin.py").write_text(textwrap.dedent("""
        import lipbench

        @lipbench.register_layer("aol", family="test", padding="zero", exact=True)
        def build(kind, in_channels, out_channels, kernel_size=3, stride=1):
            raise AssertionError
    """))
    (folder / "empty_results").mkdir()
    torch.save({}, folder / "loose.pt")


def write_results(out: Path) -> None:
    """A results folder holding a finished job and three broken ones, made by hand (nothing is trained)."""
    config = JobConfig(layer="aol", size="XS", dataset="synthetic", budget="2s", budget_s=2.0)
    for name, layer in (("corrupt", "aol"), ("incomplete", "aol"), ("plugin", "from-a-plugin")):
        folder = out / "jobs" / name
        job = JobConfig(**{**vars(config), "layer": layer})
        write_config(folder, job)
        write_json_atomic(folder / RECORD_NAME, {**vars(job), "job_id": name, "status": "ok", "cra_36": 0.5,
                                                 "clean_acc": 0.9, "lipschitz_bound": 1.0})
        torch.save({}, folder / MODEL_NAME)
    (out / "jobs" / "corrupt" / MODEL_NAME).write_bytes(b"PK\x03\x04 not really a zip")
    (out / "jobs" / "incomplete" / "config.json").write_text(json.dumps({"layer": "aol", "size": "XS"}))


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    inputs, results = tmp_path_factory.mktemp("inputs"), tmp_path_factory.mktemp("results")
    write_inputs(inputs)
    write_results(results)
    return {"inputs": inputs, "results": results}


@pytest.mark.parametrize("command, arguments, message", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_line_and_exit_2(command, arguments, message, places, capsys):
    arguments = [argument.format(**places) for argument in arguments]
    if command == "run":
        arguments += ["--out", str(places["results"])]
    before = snapshot(places["results"])
    with pytest.raises(SystemExit) as exited:
        main(arguments)
    output = capsys.readouterr()
    text = output.out + output.err
    assert exited.value.code == 2, text
    assert "Traceback" not in text, text
    assert message.lower() in " ".join(text.split()).lower(), text
    assert snapshot(places["results"]) == before, "the results folder changed"


def test_there_are_at_least_40_cases_across_every_command():
    assert len(CASES) >= 40
    assert {command for command, _, _ in CASES} == {"run", "report", "audit", "tune", "speed", "check"}
