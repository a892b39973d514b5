"""One job, run in its own process: train under the budget, certify, measure, record.

``python -m lipbench.job JOB_DIR`` reads ``JOB_DIR/config.json`` and always leaves
``JOB_DIR/record.json`` behind: with status ``ok``, or with the failure (``nan``, ``oom``,
``error``) and whatever was measured before it. Training and evaluation points go to
``JOB_DIR/events.jsonl`` as they happen (the parent's progress bar reads them).

The job holds ``JOB_DIR/running.lock`` (its pid) while it runs, so two sweeps sharing a
results folder never run the same job at once: the second exits with ``LOCKED_EXIT``.
Training checkpoints to ``JOB_DIR/checkpoint.pt``; a job started again resumes from it.

Several processes may train one job with DDP (:mod:`lipbench.distributed`): with
``LIPBENCH_NPROC=N`` (``lipbench run --nproc N``) this process starts N replicas; under
``torchrun -m lipbench.job JOB_DIR`` each rank is one. Rank 0 holds the lock, logs, checkpoints,
certifies and records; the other ranks only train.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from lipbench.certify import certificate, certified_accuracy, evaluate
from lipbench.contracts import count_parameters
from lipbench.data import Dataset, copy_to, holdout_split, load_dataset
from lipbench.distributed import World, launch, requested_processes
from lipbench.device import peak_memory_mb, reset_peak_memory, resolve_device
from lipbench.plan import JobConfig
from lipbench.records import RECORD_NAME, clean_numbers, environment, write_json_atomic
from lipbench.registry import LayerMethod, create_model, get_method, load_plugin
from lipbench.train import TrainingDiverged, train

CONFIG_NAME, EVENTS_NAME, MODEL_NAME = "config.json", "events.jsonl", "model.pt"
LOCK_NAME, CHECKPOINT_NAME, RENDEZVOUS_NAME = "running.lock", "checkpoint.pt", "rendezvous"
LOCKED_EXIT = 75
FOREIGN_LOCK_STALE_S = 1800  # a lock from another host whose job logged nothing for this long is stale




def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class EventLog:
    """Append-only JSON lines, flushed at once, so a killed job still leaves its history."""

    def __init__(self, path: Path):
        self.stream = open(path, "a", buffering=1)

    def __call__(self, event: dict[str, Any]) -> None:
        self.stream.write(json.dumps({"time": time.time(), **event}) + "\n")


def build(config: JobConfig, device: torch.device) -> tuple[Dataset, torch.nn.Module]:
    """The job's data, on ``device``, and its freshly initialized model."""
    data = load_dataset(config.dataset, config.data_dir)
    if config.holdout:
        data = holdout_split(data, config.holdout, config.seed)
    data = copy_to(data, device)
    model = create_model(config.layer, config.size, data.in_shape, data.n_classes, config.model or None,
                         **config.layer_options).to(device)
    return data, model


def run_job(config: JobConfig, job_dir: Path, world: World | None = None) -> dict[str, Any]:
    """Run ``config`` in this process and write its record into ``job_dir``; returns the record.

    In a distributed ``world`` this is rank 0: it trains beside the other ranks (:func:`train_replica`).
    """
    world = world or World()
    for plugin in config.plugins:
        load_plugin(plugin)
    method = get_method(config.layer)
    device = world.join(resolve_device(config.device))
    torch.manual_seed(config.seed)
    log = EventLog(job_dir / EVENTS_NAME)
    record: dict[str, Any] = {
        **{k: v for k, v in vars(config).items()}, "job_id": config.job_id, "status": "error",
        "family": method.family, "padding": method.padding, "exact_bound": method.exact,
        "approximation": dict(method.approximation), "started_at": now_iso(), "environment": environment(device),
        "world_size": world.size,
    }
    try:
        data, model = build(config, device)
        record["params"], record["n_classes"] = count_parameters(model), data.n_classes
        reset_peak_memory(device)
        report = train(model, method, data, config, device, config.seed, log,
                       checkpoint=job_dir / CHECKPOINT_NAME, world=world)
        record.update(train_seconds=report.train_seconds, epochs_planned=report.epochs_planned,
                      resumed_at_step=report.resumed_at_step, step_seconds=report.step_seconds,
                      steps_per_epoch=report.steps_per_epoch,
                      epochs_done=report.epochs_done, steps=report.steps, steps_planned=report.steps_planned,
                      train_throughput=report.train_throughput, data_seconds=report.data_seconds,
                      warmup_seconds=report.warmup_seconds, stopped_by=report.stopped_by, final_loss=report.final_loss)
        record["peak_memory_mb"], record["memory_counter"] = peak_memory_mb(device)
        if config.save_model:
            save_model(model, job_dir / MODEL_NAME)
        log({"phase": "certify"})
        model.eval()
        record.update(certificate(model, method))
        mean = data.x_train.mean(dim=(0, 2, 3), keepdim=True)
        reset_peak_memory(device)
        margin, timing = evaluate(model, data.x_test, data.y_test, mean, config.batch_size, device)
        record.update(timing)
        record.update(certified_accuracy(margin.cpu(), record["lipschitz_bound"]))
        record["infer_peak_memory_mb"] = peak_memory_mb(device)[0]
        record["status"] = "ok"
        if config.with_audit:
            log({"phase": "audit"})
            record["audit"] = audit_or_error(model, method, data, mean, record, device, margin)
        log({"phase": "done", **{k: record[k] for k in ("clean_acc", "cra_36")}})
    except TrainingDiverged as error:
        record.update(status="nan", error=str(error))
    except torch.OutOfMemoryError as error:
        record.update(status="oom", error=str(error).splitlines()[0])
    except MemoryError:
        record.update(status="oom", error="host out of memory")
    except Exception as error:  # any other failure is still a row, with its traceback in the log
        record.update(status="error", error=f"{type(error).__name__}: {error}")
        traceback.print_exc()
    record["finished_at"] = now_iso()
    write_json_atomic(job_dir / RECORD_NAME, clean_numbers(record))
    (job_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
    return record


def audit_or_error(model: torch.nn.Module, method: LayerMethod, data: Dataset, mean: torch.Tensor,
                   record: dict[str, Any], device: torch.device, margin: torch.Tensor) -> dict[str, Any]:
    """The audit of the finished model (lipbench.audit); a failing audit is recorded, the run stays ok."""
    from lipbench.audit import audit_model  # lipbench.audit reads jobs from disk through this module

    try:
        return audit_model(model, method, data, mean, record, device, margins_all=margin)
    except Exception as error:
        traceback.print_exc()
        return {"error": f"{type(error).__name__}: {error}", "verdict": "audit failed"}


def train_replica(config: JobConfig, job_dir: Path, world: World) -> None:
    """Rank > 0 of a distributed job: train beside rank 0, which logs, checkpoints, certifies and records."""
    for plugin in config.plugins:
        load_plugin(plugin)
    device = world.join(resolve_device(config.device))
    torch.manual_seed(config.seed)
    data, model = build(config, device)
    try:
        train(model, get_method(config.layer), data, config, device, config.seed,
              checkpoint=job_dir / CHECKPOINT_NAME, world=world)
    except TrainingDiverged:
        pass  # all ranks see the same (averaged) loss, so rank 0 diverged too and records it


def replica(config: JobConfig, job_dir: Path, world: World) -> dict[str, Any] | None:
    """This process's part of the job: all of it when alone; rank 0's record, or None on the other ranks."""
    try:
        if world.main:
            return run_job(config, job_dir, world)
        train_replica(config, job_dir, world)
        return None
    finally:
        world.leave()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_lock(job_dir: Path) -> tuple[str, int] | None:
    """(host, pid) written in the job's lock, or None; a bare pid (older locks) means this host."""
    try:
        text = (job_dir / LOCK_NAME).read_text().strip()
    except OSError:
        return None
    host, _, pid = text.rpartition(" ")
    return (host or socket.gethostname(), int(pid)) if pid.isdigit() and int(pid) > 0 else None


def lock_holder(job_dir: Path) -> int | None:
    """The pid of a live process on this host holding the job's lock, if any."""
    lock = read_lock(job_dir)
    return lock[1] if lock and lock[0] == socket.gethostname() and pid_alive(lock[1]) else None


def lock_is_live(job_dir: Path) -> bool:
    """Someone runs this job now: a live local holder, or (on a shared filesystem) a holder on another host
    whose job wrote its event log or lock within ``FOREIGN_LOCK_STALE_S`` (its pid cannot be checked from here)."""
    lock = read_lock(job_dir)
    if lock is None:
        return False
    if lock[0] == socket.gethostname():
        return pid_alive(lock[1])
    touched = [path.stat().st_mtime for path in (job_dir / LOCK_NAME, job_dir / EVENTS_NAME) if path.exists()]
    return bool(touched) and time.time() - max(touched) < FOREIGN_LOCK_STALE_S


def acquire_lock(job_dir: Path) -> bool:
    """Take the job's lock ("host pid"), replacing a stale one; False if a live process holds it."""
    path = job_dir / LOCK_NAME
    for _ in range(2):
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if lock_is_live(job_dir):
                return False
            path.unlink(missing_ok=True)  # stale: its process is gone (crash, kill -9)
            continue
        with os.fdopen(descriptor, "w") as stream:
            stream.write(f"{socket.gethostname()} {os.getpid()}")
        return True
    return False


def save_model(model: torch.nn.Module, path: Path) -> None:
    """Save the trained weights atomically (audits rebuild the model from config.json and these)."""
    partial = path.with_suffix(".partial")
    torch.save(model.state_dict(), partial)
    partial.replace(path)


def main(argv: list[str] | None = None) -> None:
    job_dir = Path((argv or sys.argv[1:])[0])
    config = JobConfig.from_dict(json.loads((job_dir / CONFIG_NAME).read_text()))
    world = World.from_environment()  # one rank under torchrun; a world of one otherwise
    if not world.main:
        replica(config, job_dir, world)
        return
    if not acquire_lock(job_dir):
        sys.exit(LOCKED_EXIT)
    try:
        processes = requested_processes()
        if processes > 1 and not world.distributed:  # --nproc: start the replicas; rank 0 writes the record
            launch(processes, job_dir / RENDEZVOUS_NAME, replica, config, job_dir)
            record = json.loads((job_dir / RECORD_NAME).read_text())
        else:
            record = replica(config, job_dir, world)
    finally:
        (job_dir / LOCK_NAME).unlink(missing_ok=True)
    sys.exit(0 if record["status"] == "ok" else 3)


if __name__ == "__main__":
    main()
