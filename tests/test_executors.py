"""Executors: parallel local jobs pinned to GPUs, and sweeps through submitit (its local, debug and SLURM paths)."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lipbench.errors import UserError
from lipbench.executors import create_executor, worker_environments
from lipbench.executors.slurm import SlurmSettings, SubmititExecutor, load_slurm_settings, parent_of
from lipbench.jobfolder import LOCK_NAME, lock_holder
from lipbench.sweep import run_sweep
from lipbench.settings import JobConfig

LAYER = "lipnext"  # the fastest model to train and certify on CPU
needs_submitit = pytest.mark.skipif(importlib.util.find_spec("submitit") is None,
                                    reason="submitit is not installed (pip install -e '.[dev]')")


@pytest.fixture
def tiny_dataset(tmp_path):
    """64 training and 16 test images of 8 x 8 pixels: each job certifies one batch."""
    generator = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=generator.random((64, 8, 8), dtype=np.float32), y_train=generator.integers(0, 4, 64),
             x_test=generator.random((16, 8, 8), dtype=np.float32), y_test=generator.integers(0, 4, 16))
    return path


def sweep_command(out, dataset, seeds, *extra):
    return [sys.executable, "-m", "lipbench", "run", "--budget", "3s", "--layers", LAYER, "--seeds", seeds,
            "--dataset", str(dataset), "--batch-size", "16", "--no-save-model", "--out", str(out), *extra]


def records(out):
    return {p.parent.name: json.loads(p.read_text()) for p in Path(out).glob("jobs/*/record.json")}


def read_events(folder):
    path = folder / "events.jsonl"
    return path.read_text() if path.is_file() else ""


def running_jobs(out):
    """Job folder -> the pid of its live training process."""
    return {lock.parent: pid for lock in Path(out).glob(f"jobs/*/{LOCK_NAME}") if (pid := lock_holder(lock.parent))}


def test_each_worker_gets_its_own_gpus():
    assert worker_environments(1, 1, []) == ({},)
    share = {"LIPBENCH_THREADS": "2", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}  # 4 cores, 2 workers
    assert worker_environments(2, 1, [], cpus=4) == (share, share)
    assert worker_environments(3, 1, ["0", "1"], cpus=3) == tuple(
        {"CUDA_VISIBLE_DEVICES": g, "LIPBENCH_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        for g in ("0", "1", "0"))
    pairs = worker_environments(2, 2, ["4", "5", "6", "7"], cpus=4)
    assert pairs == ({**share, "CUDA_VISIBLE_DEVICES": "4,5", "LIPBENCH_NPROC": "2"},
                     {**share, "CUDA_VISIBLE_DEVICES": "6,7", "LIPBENCH_NPROC": "2"})
    assert len(create_executor("local", "cpu").environments) == 1  # no GPU: one job at a time by default
    assert len(create_executor("local", "cpu", max_parallel=3).environments) == 3
    with pytest.raises(UserError, match="--executor must be local or slurm"):
        create_executor("kubernetes", "cpu")


def test_slurm_settings_come_from_yaml_then_the_command_line(tmp_path):
    path = tmp_path / "slurm.yaml"
    path.write_text("partition: gpu\naccount: lab\nmem_gb: 32\nsetup: [source ~/venv/bin/activate]\n")
    settings = load_slurm_settings(path, {"partition": "long", "gpus_per_job": 2})
    assert (settings.partition, settings.account, settings.mem_gb, settings.gpus_per_job) == ("long", "lab", 32, 2)
    assert settings.setup == ("source ~/venv/bin/activate",)
    with pytest.raises(UserError, match="unknown SLURM setting 'partiton'"):
        load_slurm_settings(None, {"partiton": "gpu"})
    path.write_text("partition: [gpu\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_slurm_settings(path, {})


def test_without_submitit_slurm_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit now raises ImportError
    with pytest.raises(UserError, match=r"pip install 'lipbench\[slurm\]'"):
        create_executor("slurm", "auto")


@needs_submitit
def test_the_sbatch_script_asks_slurm_for_what_the_settings_say(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"  # stand-ins for SLURM's commands: submitit only writes and submits the script
    bin_dir.mkdir()
    for name, text in (("srun", "exit 0"), ("sbatch", "echo Submitted batch job 4242")):
        (bin_dir / name).write_text(f"#!/bin/sh\n{text}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    settings = SlurmSettings(partition="gpu", account="lab", constraint="a100", mem_gb=32, cpus_per_job=8,
                             setup=("source ~/venv/bin/activate",), sbatch={"exclude": "node7"})
    jobs = [JobConfig(layer="aol", size="XS", dataset="synthetic", budget="2h", budget_s=7200, seed=seed)
            for seed in range(4)]
    handles = SubmititExecutor(settings, max_parallel=2, nproc=2, announce=lambda text: None).submit(tmp_path, jobs)
    assert [handle.job_id for handle in handles] == [f"4242_{index}" for index in range(4)]
    (script,) = (tmp_path / "slurm").rglob("*submission.sh")
    text = script.read_text()
    minutes = (7200 * 1.25 + 600) / 60 + 10  # the job's own limit, plus the margin
    for line in ("--partition=gpu", "--account=lab", "--constraint=a100", "--mem=32GB", "--cpus-per-task=8",
                 "--gpus-per-node=2", "--array=0-3%2", f"--time={minutes:.0f}", "--signal=USR2@90",
                 "--exclude=node7", "source ~/venv/bin/activate"):
        assert line in text, line


def test_local_executor_runs_jobs_side_by_side_and_ctrl_c_stops_them_all(tmp_path, tiny_dataset):
    out = tmp_path / "results"
    command = sweep_command(out, tiny_dataset, "0,1,2", "--max-parallel", "2", "--budget", "60s")
    sweep = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while len(running_jobs(out)) < 2 and sweep.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    running = running_jobs(out)
    assert len(running) == 2  # two jobs train at once
    while not all('"train"' in read_events(folder) for folder in running) and time.time() < deadline:
        time.sleep(0.1)  # both are training (a Ctrl-C within a job's first instant is a separate race)
    sweep.send_signal(signal.SIGINT)
    output, _ = sweep.communicate(timeout=120)
    assert sweep.returncode != 0 and not running_jobs(out), output
    for pid in running.values():
        with pytest.raises(ProcessLookupError):  # no job is left running behind the sweep
            os.kill(pid, 0)
    stopped = records(out)
    assert {folder.name for folder in running} == set(stopped), output  # the third never started
    assert all(r["status"] == "interrupted" for r in stopped.values())


@needs_submitit
def test_debug_executor_runs_a_job_in_this_process(tmp_path, tiny_dataset):
    job = JobConfig(layer=LAYER, size="XS", dataset=str(tiny_dataset), budget="2s", budget_s=2, batch_size=16,
                    save_model=False)
    executor = SubmititExecutor(SlurmSettings(cluster="debug"), max_parallel=1, announce=lambda text: None)
    seen = []

    class Observer:
        def started(self, job, number, total): seen.append(("started", number, total))
        def event(self, job, event): seen.append(event["phase"])
        def finished(self, job, record): seen.append(("finished", record["status"]))

    (record,) = run_sweep(tmp_path, [job], executor, Observer())
    assert record["status"] == "ok" and records(tmp_path)[job.job_id]["status"] == "ok"
    assert seen[0] == ("started", 1, 1) and "trained" in seen and seen[-1] == ("finished", "ok")


@needs_submitit
def test_submitit_sweep_survives_a_killed_and_a_preempted_job_and_resumes(tmp_path, tiny_dataset):
    out = tmp_path / "results"
    command = sweep_command(out, tiny_dataset, "0,1,2,3", "--executor", "slurm", "--slurm", "cluster=local",
                            "--max-parallel", "2")
    sweep = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = preempted = None
    most_at_once, deadline = 0, time.time() + 500
    while sweep.poll() is None and time.time() < deadline:
        running = running_jobs(out)
        most_at_once = max(most_at_once, len(running))
        for folder, pid in running.items():
            wrapper = parent_of(pid)  # the submitted job (submitit's task), which runs the training process
            if killed is None:  # the cluster kills the whole job: wrapper first, so it cannot write a record
                os.kill(wrapper, signal.SIGKILL)
                os.killpg(pid, signal.SIGKILL)
                killed = folder.name
            elif preempted is None and folder.name != killed:  # SLURM's warning before preemption / time limit
                os.kill(wrapper, signal.SIGUSR2)
                preempted = folder.name
        time.sleep(0.1)
    output, _ = sweep.communicate(timeout=60)
    assert sweep.returncode == 0, output
    assert killed and preempted and most_at_once <= 2
    assert "interrupted" in output  # the sweep reports the killed job as failed
    final = records(out)
    assert len(final) == 4
    assert final[killed]["status"] == "interrupted" and "run the sweep again" in final[killed]["error"]
    assert all(r["status"] == "ok" for name, r in final.items() if name != killed), final
    logs = "".join(p.read_text() for p in (out / "slurm").rglob("*.out"))
    assert "Requeued" in logs  # submitit requeued the preempted job, which then finished

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "3 already done" in rerun.stdout
    assert records(out)[killed]["status"] == "ok"
    for name, record in records(out).items():
        if name != killed:
            assert record["finished_at"] == final[name]["finished_at"]  # finished jobs were not redone
