"""One job, run in its own process: train under the budget, certify, measure, record.

``python -m lipbench.job JOB_DIR [--plugin MODULE ...]`` reads ``JOB_DIR/config.json`` and always
leaves ``JOB_DIR/record.json`` behind: with status ``ok``, or with the failure (``nan``, ``oom``,
``error``, ``timeout``) and whatever was measured before it. Training and evaluation points are
appended to ``JOB_DIR/events.jsonl`` as they happen (the parent's progress bar reads them).

Plugins come from the command line only (the sweep passes on the user's ``--plugin`` options),
never from a config file, so a results folder received from someone else runs no code of theirs.

The job holds ``JOB_DIR/running.lock`` while it runs, so two sweeps sharing a results folder never
run the same job at once, and once it holds the lock it reads the record again: a job another sweep
finished meanwhile is not run twice (exit ``DONE_EXIT``) unless the sweep asked to replace it
(``LIPBENCH_REPLACE=1``: the earlier record is kept in ``earlier/``). The job enforces its own time
limit, so it ends even when the sweep that started it was killed. Training checkpoints to
``JOB_DIR/checkpoint.pt``; a job started again resumes from it.

Several processes may train one job with DDP (:mod:`lipbench.distributed`): with ``LIPBENCH_NPROC=N``
(``lipbench run --nproc N``) this process starts N replicas; under ``torchrun -m lipbench.job
JOB_DIR`` each rank is one. Rank 0 holds the lock, logs, checkpoints, certifies and records; the
other ranks only train.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from lipbench.audit import audit_model
from lipbench.batches import input_throughput
from lipbench.certify import certify_and_measure
from lipbench.data import AnyDataset, Dataset, StreamingDataset, copy_to, holdout_split, load_dataset, with_extra_data
from lipbench.device import MIB, PeakMemory, resolve_device
from lipbench.distributed import World, launch, requested_processes
from lipbench.environment import fingerprint
from lipbench.errors import UserError
from lipbench.jobfolder import (ATTEMPT_VARIABLE, CHECKPOINT_NAME, DONE_EXIT, EVENTS_NAME, FINISHED, LOCKED_EXIT,
                                MODEL_NAME, RENDEZVOUS_NAME, REPLACE_VARIABLE, THREADS_VARIABLE, TIMEOUT_EXIT, WRITE_FAILED_EXIT, Status,
                                WriteError, acquire_lock, failure_record, keep_earlier_record, now_iso, read_config,
                                read_record, release_lock, time_limit, write_record)
from lipbench.contracts import count_parameters
from lipbench.registry import LayerMethod, create_model, get_method, load_plugin
from lipbench.settings import JobConfig
from lipbench.train import TrainingDiverged, save_weights, train

INPUT_SECONDS, STREAMED_INPUT_SECONDS = 0.5, 3.0  # timing the input pipeline alone, before the budget starts


class EventLog:
    """Append-only JSON lines, flushed at once, so a killed job still leaves its history."""

    def __init__(self, path: Path):
        self.stream = open(path, "a", buffering=1)

    def __call__(self, event: dict[str, Any]) -> None:
        self.stream.write(json.dumps({"time": time.time(), **event}) + "\n")


def build(config: JobConfig, device: torch.device) -> tuple[AnyDataset, torch.nn.Module]:
    """The job's data, on ``device``, and its freshly initialized model."""
    data = load_dataset(config.dataset, config.data_dir)
    if config.holdout:
        data = holdout_split(data, config.holdout, config.seed)
    if config.extra_data:
        data = with_extra_data(data, config.extra_data, config.extra_ratio)
    data = copy_to(data, device)
    model = create_model(config.layer, config.size, data.in_shape, data.n_classes, config.model or None,
                         config.head, **config.layer_options).to(device)
    return data, model


def dataset_bytes(data: AnyDataset) -> int:
    """What the dataset itself holds on the device (reported apart from the training peak); a streamed one holds
    only its extra data."""
    held = [data.extra.x, data.extra.y] if data.extra else []
    if not isinstance(data, StreamingDataset):
        held += [data.x_train, data.y_train, data.x_test, data.y_test]
    return sum(t.element_size() * t.nelement() for t in held)


def job_record(config: JobConfig, method: LayerMethod, world: World, device: torch.device) -> dict[str, Any]:
    """The record of a job that has just started: its settings, what its method promises, where it runs.
    Its status says ``error`` until the job replaces it."""
    return {**vars(config), "job_id": config.job_id, "status": Status.ERROR.value, "family": method.family,
            "padding": method.padding, "exact_bound": method.exact, "approximation": dict(method.approximation),
            "started_at": now_iso(), "environment": fingerprint(device), "world_size": world.size,
            "attempt": os.environ.get(ATTEMPT_VARIABLE)}


def run_job(config: JobConfig, job_dir: Path, world: World | None = None) -> dict[str, Any]:
    """Run ``config`` in this process and write its record into ``job_dir``; returns the record.

    In a distributed ``world`` this is rank 0: it trains beside the other ranks (:func:`train_replica`).
    """
    world = world or World()
    method = get_method(config.layer)
    device = world.join(resolve_device(config.device))
    torch.manual_seed(config.seed)
    log = EventLog(job_dir / EVENTS_NAME)
    log({"phase": "start", "attempt": os.environ.get(ATTEMPT_VARIABLE)})
    record = job_record(config, method, world, device)
    try:
        data, model = build(config, device)
        record.update(dataset_memory_mb=dataset_bytes(data) / MIB, n_test=len(data.y_test),
                      **(data.extra.fields() if data.extra else {}))
        seconds = STREAMED_INPUT_SECONDS if isinstance(data, StreamingDataset) else INPUT_SECONDS
        record["input_throughput"] = input_throughput(data, config.batch_size, config.augment, seconds)
        with PeakMemory(device) as memory:
            report = train(model, method, data, config, device, config.seed, log,
                           checkpoint=job_dir / CHECKPOINT_NAME, world=world)
        record.update(report.fields(), params=count_parameters(model), n_classes=data.n_classes,
                      peak_memory_mb=memory.peak_mb, memory_counter=memory.counter)
        if config.save_model:
            save_weights(model, job_dir / MODEL_NAME)
        log({"phase": "certify"})
        measured, logits = certify_and_measure(model, method, data, config.batch_size, device)
        record.update(measured, status=Status.OK.value)
        if config.with_audit:
            log({"phase": "audit"})
            record["audit"] = audit_or_error(model, method, data, record, device, logits)
        log({"phase": "done", **{k: record[k] for k in ("clean_acc", "cra_36")}})
    except WriteError:
        raise
    except TrainingDiverged as error:
        record.update(status=Status.NAN.value, error=str(error))
    except torch.OutOfMemoryError as error:
        record.update(status=Status.OOM.value, error=str(error).splitlines()[0])
    except MemoryError:
        record.update(status=Status.OOM.value, error="host out of memory")
    except Exception as error:  # any other failure is still a row, with its traceback in the log
        record.update(status=Status.ERROR.value, error=f"{type(error).__name__}: {error}")
        traceback.print_exc()
    record["finished_at"] = now_iso()
    write_record(job_dir, record)
    (job_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
    return record


def audit_or_error(model: torch.nn.Module, method: LayerMethod, data: Dataset, record: dict[str, Any],
                   device: torch.device, logits: torch.Tensor) -> dict[str, Any]:
    """The audit of the finished model (:mod:`lipbench.audit`); a failing audit is recorded, the run stays ok."""
    try:
        return audit_model(model, method, data, record, device, logits_all=logits)
    except Exception as error:
        traceback.print_exc()
        return {"error": f"{type(error).__name__}: {error}", "verdict": "audit failed"}


def train_replica(config: JobConfig, job_dir: Path, world: World) -> None:
    """Rank > 0 of a distributed job: train beside rank 0, which logs, checkpoints, certifies and records."""
    device = world.join(resolve_device(config.device))
    torch.manual_seed(config.seed)
    data, model = build(config, device)
    try:
        train(model, get_method(config.layer), data, config, device, config.seed,
              checkpoint=job_dir / CHECKPOINT_NAME, world=world)
    except TrainingDiverged:
        pass  # all ranks see the same (averaged) loss, so rank 0 diverged too and records it


def replica(config: JobConfig, job_dir: Path, plugins: list[str], world: World) -> dict[str, Any] | None:
    """This process's part of the job: all of it when alone; rank 0's record, or None on the other ranks."""
    for plugin in plugins:
        load_plugin(plugin)
    try:
        if world.main:
            return run_job(config, job_dir, world)
        train_replica(config, job_dir, world)
        return None
    finally:
        world.leave()


def enforce_deadline(config: JobConfig, job_dir: Path) -> threading.Timer:
    """End this process at its time limit with a ``timeout`` record, even when no parent watches it."""

    def expire() -> None:
        record = failure_record(config, Status.TIMEOUT, f"stopped itself after its time limit of "
                                f"{time_limit(config):.0f} s", attempt=os.environ.get(ATTEMPT_VARIABLE))
        try:
            write_record(job_dir, record)
        finally:
            os._exit(TIMEOUT_EXIT)

    timer = threading.Timer(time_limit(config), expire)
    timer.daemon = True
    timer.start()
    return timer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lipbench.job", description="Run one planned lipbench job.")
    parser.add_argument("job_dir", type=Path)
    parser.add_argument("--plugin", action="append", default=[], help="module or .py file that registers layers")
    arguments = parser.parse_args(argv)
    job_dir = arguments.job_dir
    try:
        config = read_config(job_dir)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if os.environ.get(THREADS_VARIABLE):  # a share of the cores, when the sweep runs several jobs at once
        torch.set_num_threads(int(os.environ[THREADS_VARIABLE]))
    world = World.from_environment()  # one rank under torchrun; a world of one otherwise
    if not world.main:
        replica(config, job_dir, arguments.plugin, world)
        return
    try:
        if not acquire_lock(job_dir):
            sys.exit(LOCKED_EXIT)
        try:
            earlier = read_record(job_dir)
            if earlier is not None and earlier.get("status") in FINISHED:
                if os.environ.get(REPLACE_VARIABLE) != "1":
                    sys.exit(DONE_EXIT)
                keep_earlier_record(job_dir)
            enforce_deadline(config, job_dir)
            processes = requested_processes()
            if processes > 1 and not world.distributed:  # --nproc: start the replicas; rank 0 writes the record
                launch(processes, job_dir / RENDEZVOUS_NAME, replica, config, job_dir, arguments.plugin)
                record = read_record(job_dir) or {"status": Status.ERROR.value}
            else:
                record = replica(config, job_dir, arguments.plugin, world)
        finally:
            release_lock(job_dir)
    except WriteError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(WRITE_FAILED_EXIT)
    sys.exit(0 if record["status"] == Status.OK.value else 3)


if __name__ == "__main__":
    main()
