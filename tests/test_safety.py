"""Files from others run no code, and no result is lost: crafted files, overlapping sweeps, write failures
(a read-only folder, a full disk) and a job whose parent died."""
from __future__ import annotations

import io
import json
import os
import pickle
import re
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lipbench.jobfolder import (EARLIER_FOLDER, RECORD_NAME, TIMEOUT_EXIT, WriteError, read_record, write_config,
                                write_json_atomic)
from lipbench.settings import JobConfig

SWEEP = ["--budget", "3s", "--layers", "lipnext", "--dataset", "synthetic", "--batch-size", "16", "--no-save-model"]


class Payload:
    """Unpickling this object runs ``touch MARKER``: what a crafted file from someone else would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def lipbench(*arguments, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "lipbench", *map(str, arguments)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200", **(env or {})})


def one_line_exit_2(result, expected: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], output


# --- files from others run no code --------------------------------------------------------------------


def test_a_crafted_cifar_batch_runs_nothing(tmp_path):
    marker = tmp_path / "MARKER"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": Payload(marker), b"labels": [0]}))
    one_line_exit_2(lipbench("run", "--dry-run", "--dataset", "cifar10", "--data-dir", tmp_path, "--out", tmp_path / "r"),
                    "is not a CIFAR batch lipbench can read safely")
    assert not marker.exists()


def test_a_crafted_cifar_archive_runs_nothing(tmp_path):
    marker = tmp_path / "MARKER"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            payload = pickle.dumps({b"data": Payload(marker), b"labels": [0]})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(buffer.getvalue())
    one_line_exit_2(lipbench("run", "--dry-run", "--dataset", "cifar10", "--data-dir", tmp_path, "--out", tmp_path / "r"),
                    "refused to load posix.system")
    assert not marker.exists()


def test_a_planted_checkpoint_runs_nothing(tmp_path):
    marker, out = tmp_path / "MARKER", tmp_path / "results"
    planned = lipbench("run", *SWEEP, "--out", out, "--dry-run")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    (job_id,) = re.findall(r"\b[0-9a-f]{12}\b", planned.stdout)
    folder = out / "jobs" / job_id
    folder.mkdir(parents=True)
    torch.save({"model": Payload(marker)}, folder / "checkpoint.pt")
    one_line_exit_2(lipbench("run", *SWEEP, "--out", out), "cannot be loaded safely as tensors")
    assert not marker.exists() and not (folder / RECORD_NAME).exists()


def test_audit_never_imports_a_plugin_a_results_folder_names(tmp_path):
    marker, out = tmp_path / "MARKER", tmp_path / "results"
    plugin = out / "evil.py"
    out.mkdir()
    plugin.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    config = JobConfig(layer="evil-layer", size="XS", dataset="synthetic", budget="1s", budget_s=1.0,
                       plugins=(str(plugin),))
    folder = out / "jobs" / config.job_id
    write_config(folder, config)
    write_json_atomic(folder / RECORD_NAME, {**vars(config), "status": "ok", "job_id": config.job_id})
    torch.save({}, folder / "model.pt")
    one_line_exit_2(lipbench("audit", folder), f"pass the plugin that defines it with --plugin (the job was run with: "
                                               f"{plugin})")
    assert not marker.exists()


# --- two sweeps on one folder train each job once ------------------------------------------------------


def training_starts(out: Path) -> dict[str, int]:
    """Job id -> how many times a job process started training it (its events.jsonl keeps every attempt)."""
    starts = {}
    for events in out.glob("jobs/*/events.jsonl"):
        lines = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
        starts[events.parent.name] = sum(event.get("phase") == "start" for event in lines)
    return starts


def test_overlapping_sweeps_train_every_job_once(tmp_path):
    out = tmp_path / "results"
    command = [sys.executable, "-m", "lipbench", "run", *SWEEP, "--out", str(out)]
    first = subprocess.Popen([*command, "--seeds", "0,1,2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(2)
    second = subprocess.Popen([*command, "--seeds", "2,1,0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    outputs = [process.communicate(timeout=600)[0] for process in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    starts = training_starts(out)
    assert len(starts) == 3 and set(starts.values()) == {1}, (starts, outputs)
    assert all(read_record(out / "jobs" / job_id)["status"] == "ok" for job_id in starts)


def test_the_same_job_twice_in_one_sweep_is_planned_once(tmp_path):
    result = lipbench("run", *SWEEP, "--seeds", "0,0", "--out", tmp_path / "results")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 jobs, 0 already done" in result.stdout
    assert list(training_starts(tmp_path / "results").values()) == [1]


def test_a_forced_rerun_keeps_the_earlier_record(tmp_path):
    out = tmp_path / "results"
    assert lipbench("run", *SWEEP, "--out", out).returncode == 0
    (folder,) = out.glob("jobs/*")
    first = read_record(folder)
    assert lipbench("run", *SWEEP, "--out", out, "--force").returncode == 0
    (kept,) = (folder / EARLIER_FOLDER).glob("*.json")
    assert json.loads(kept.read_text())["finished_at"] == first["finished_at"]
    assert read_record(folder)["attempt"] != first["attempt"]


# --- write failures: one line, nothing lost, a rerun resumes ------------------------------------------

FAULTS = textwrap.dedent('''
    """Test-only fault injection (loaded as sitecustomize): os.replace into the results folder fails with
    the errno in $LIPBENCH_TEST_ERRNO while the file $LIPBENCH_TEST_FAULT exists."""
    import errno, os
    _replace = os.replace

    def replace(source, target, *arguments, **keywords):
        flag, folder = os.environ.get("LIPBENCH_TEST_FAULT"), os.environ.get("LIPBENCH_TEST_FOLDER", "")
        if flag and os.path.exists(flag) and os.fspath(target).startswith(folder):
            code = getattr(errno, os.environ.get("LIPBENCH_TEST_ERRNO", "ENOSPC"))
            raise OSError(code, os.strerror(code), os.fspath(target))
        return _replace(source, target, *arguments, **keywords)

    os.replace = replace
''')


@pytest.fixture
def faulty_disk(tmp_path):
    """An environment whose processes (the sweep and its job processes) fail to write into OUT on demand."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(FAULTS)
    out, flag = tmp_path / "results", tmp_path / "disk-is-full"
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")])),
           "LIPBENCH_TEST_FAULT": str(flag), "LIPBENCH_TEST_FOLDER": str(out)}
    return out, flag, env


def leftovers(out: Path) -> list[Path]:
    return [path for path in out.rglob(".*") if path.is_file() and ".calibration.lock" not in path.name]


def test_a_full_disk_stops_the_sweep_cleanly_and_a_rerun_resumes(faulty_disk):
    out, flag, env = faulty_disk
    command = [sys.executable, "-m", "lipbench", "run", *SWEEP, "--seeds", "0,1,2", "--out", str(out)]
    sweep = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, **env})
    deadline = time.time() + 300
    while not list(out.glob("jobs/*/record.json")) and time.time() < deadline:
        time.sleep(0.1)
    flag.touch()  # the disk fills up after the first job recorded its result
    output, _ = sweep.communicate(timeout=600)
    first = {path.parent.name: json.loads(path.read_text()) for path in out.glob("jobs/*/record.json")}
    assert sweep.returncode == 1, output
    assert "no space left on the device" in output and "Traceback" not in output, output
    assert len(first) == 1 and all(record["status"] == "ok" for record in first.values()), output
    assert not leftovers(out), leftovers(out)
    flag.unlink()  # space was freed
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, **env})
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "1 already done" in rerun.stdout
    final = {path.parent.name: json.loads(path.read_text()) for path in out.glob("jobs/*/record.json")}
    assert len(final) == 3 and all(record["status"] == "ok" for record in final.values())
    for job_id, record in first.items():
        assert final[job_id]["finished_at"] == record["finished_at"]


def test_a_read_only_results_folder_is_one_line(faulty_disk):
    out, flag, env = faulty_disk
    flag.touch()
    result = lipbench("run", *SWEEP, "--out", out, env={**env, "LIPBENCH_TEST_ERRNO": "EROFS"})
    one_line_exit_2(result, "the file system is read-only; choose another folder (--out)")
    assert not leftovers(out)


def test_report_audit_and_speed_into_a_read_only_folder_are_one_line_each(faulty_disk, tmp_path):
    out, flag, env = faulty_disk
    assert lipbench("run", *SWEEP, "--out", out, "--save-model").returncode == 0
    (folder,) = out.glob("jobs/*")
    before = (folder / RECORD_NAME).read_text()
    flag.touch()
    read_only = {**env, "LIPBENCH_TEST_ERRNO": "EROFS"}
    one_line_exit_2(lipbench("report", out, env=read_only), "read-only")
    one_line_exit_2(lipbench("audit", folder, "--samples", "1", "--steps", "2", env=read_only), "read-only")
    one_line_exit_2(lipbench("speed", "--layers", "aol", "--processes", "1", "--pairs", "2", "--save",
                             out / "speed.json", env=read_only), "read-only")
    assert (folder / RECORD_NAME).read_text() == before


def test_a_failed_write_removes_its_temporary_file(tmp_path, monkeypatch):
    def full(*arguments, **keywords):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(WriteError, match="no space left on the device"):
        write_json_atomic(tmp_path / "record.json", {"status": "ok"})
    assert list(tmp_path.iterdir()) == []


def test_a_real_full_file_system_if_this_machine_can_mount_one(tmp_path):
    """A results folder on a file system with no space left: one line, exit 2, nothing half-written (a tmpfs
    filled to the brim; mounting needs root, elsewhere this is skipped and the simulated disk above covers it)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (the simulated full disk above covers the same path)")
    try:
        ballast = os.open(mount / "ballast", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(ballast, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(ballast)
        result = lipbench("run", *SWEEP, "--out", mount)
        output = result.stdout + result.stderr
        assert result.returncode == 2 and "no space left on the device" in output, output
        assert "Traceback" not in output and not leftovers(mount), output
    finally:
        subprocess.run(["umount", str(mount)], check=False)


# --- a job ends at its own deadline --------------------------------------------------------------------


def test_a_job_process_ends_itself_at_its_time_limit(tmp_path):
    config = JobConfig(layer="aol", size="XS", dataset="synthetic", budget="1s", budget_s=1.0)
    folder = tmp_path / "job"
    write_config(folder, config)
    script = textwrap.dedent(f"""
        import time
        import lipbench.job as job
        job.time_limit = lambda config: 1.0  # the real limit is the budget x 1.25 + 10 minutes
        job.enforce_deadline(job.read_config(job.Path({str(folder)!r})), job.Path({str(folder)!r}))
        time.sleep(60)  # a job stuck past its limit, whose parent was killed
    """)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == TIMEOUT_EXIT, done.stderr
    assert time.monotonic() - started < 30
    record = read_record(folder)
    assert record["status"] == "timeout" and "time limit" in record["error"]


def test_an_audited_npz_is_data_only(tmp_path):
    """An .npz holding a pickled object array is refused, not unpickled."""
    marker = tmp_path / "MARKER"
    arrays = {"x_train": np.array([Payload(marker)], dtype=object), "y_train": np.zeros(1, dtype=np.int64),
              "x_test": np.zeros((1, 4, 4), dtype=np.float32), "y_test": np.zeros(1, dtype=np.int64)}
    np.savez(tmp_path / "crafted.npz", **arrays)
    one_line_exit_2(lipbench("run", "--dry-run", "--dataset", tmp_path / "crafted.npz", "--out", tmp_path / "r"),
                    "cannot read")
    assert not marker.exists()
