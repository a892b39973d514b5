"""Sweeps survive crashes: kill -9 mid-sweep loses no finished job, and a rerun finishes the rest."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lipbench.budget import load_budget
from lipbench.jobfolder import FOREIGN_LOCK_STALE_S, LOCK_NAME, acquire_lock, lock_holder, lock_is_live
from lipbench.settings import JobConfig
from lipbench.sweep import RetryPolicy, retry_for

SWEEP = ["--budget", "3s", "--layers", "aol,standard", "--seeds", "0,1", "--dataset", "synthetic",
         "--batch-size", "16", "--no-save-model"]


def start(out, *extra):
    return subprocess.Popen([sys.executable, "-m", "lipbench", "run", *SWEEP, "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def records(out):
    return {p.parent.name: json.loads(p.read_text()) for p in Path(out).glob("jobs/*/record.json")}


def test_kill_9_mid_sweep_then_rerun_finishes_without_redoing(tmp_path):
    out = tmp_path / "results"
    sweep = start(out)
    deadline = time.time() + 300
    while not records(out) and time.time() < deadline:
        time.sleep(0.2)
    first = records(out)
    assert first, "no job finished in time"
    for lock in out.glob(f"jobs/*/{LOCK_NAME}"):  # the job running right now dies too, as in a power cut
        holder = lock_holder(lock.parent)
        if holder:
            os.kill(holder, signal.SIGKILL)
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()

    rerun = start(out)
    output, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, output
    assert f"{len(first)} already done" in output or f"{len(first) + 1} already done" in output
    final = records(out)
    assert len(final) == 4 and all(r["status"] == "ok" for r in final.values())
    for job_id, record in first.items():
        assert final[job_id]["finished_at"] == record["finished_at"]  # finished jobs were not redone


def test_a_live_lock_keeps_a_second_runner_out(tmp_path):
    assert acquire_lock(tmp_path)
    assert lock_holder(tmp_path) == os.getpid()
    assert not acquire_lock(tmp_path)
    (tmp_path / LOCK_NAME).write_text("999999999")  # a dead process: stale
    assert lock_holder(tmp_path) is None and acquire_lock(tmp_path)


def test_retries_change_seed_for_nan_and_halve_batch_for_oom():
    job = JobConfig(layer="aol", size="XS", dataset="synthetic", budget="1m", budget_s=60, batch_size=64)
    nan_retry = retry_for(job, {"status": "nan"}, RetryPolicy(), 0)
    assert nan_retry.seed != job.seed and nan_retry.retry_of == job.job_id and nan_retry.job_id != job.job_id
    assert retry_for(job, {"status": "oom"}, RetryPolicy(), 0).batch_size == 32
    assert retry_for(job, {"status": "nan"}, RetryPolicy(), 1) is None
    assert retry_for(job, {"status": "ok"}, RetryPolicy(), 0) is None


def test_tune_writes_a_usable_preset(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lipbench", "tune", "--layers", "aol", "--dataset", "synthetic",
                             "--budget", "2s", "--trials", "2", "--out", str(tmp_path)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    preset = load_budget(str(tmp_path / "tuned.yaml"))
    assert set(preset.per_method) == {"aol@XS"} and preset.seconds == 2
    trials = list(records(tmp_path).values())
    assert len(trials) == 2 and all(r["holdout"] == pytest.approx(0.1) for r in trials)
    assert preset.per_method["aol@XS"]["lr"] in [r["lr"] for r in trials]


def test_a_lock_from_another_host_is_live_until_its_job_goes_quiet(tmp_path):
    (tmp_path / LOCK_NAME).write_text("some-other-node 4242")  # a pid this host cannot check
    assert lock_holder(tmp_path) is None and lock_is_live(tmp_path) and not acquire_lock(tmp_path)
    quiet_since = time.time() - FOREIGN_LOCK_STALE_S - 60
    os.utime(tmp_path / LOCK_NAME, (quiet_since, quiet_since))
    assert not lock_is_live(tmp_path) and acquire_lock(tmp_path)
    assert (tmp_path / LOCK_NAME).read_text() == f"{socket.gethostname()} {os.getpid()}"
