"""Executors: where the jobs of a sweep run. All of them fill the same results folder
(:mod:`lipbench.jobfolder`), so resume and report work the same on a laptop, a workstation and a cluster.

* :class:`~lipbench.executors.local.LocalExecutor`: each job is a child process of this one, up to one
  per worker at once, each worker pinned to its own GPU(s) (``lipbench.executors.local``).
* :class:`~lipbench.executors.slurm.SubmititExecutor`: each job is submitted through submitit (SLURM, or
  submitit's local and debug executors on this machine; ``lipbench.executors.slurm``).
"""
from __future__ import annotations

from typing import Callable

from lipbench.errors import UserError
from lipbench.executors.local import LocalExecutor, visible_gpus, worker_environments
from lipbench.executors.slurm import DEFAULT_ARRAY_PARALLELISM, SlurmSettings, SubmititExecutor


def create_executor(kind: str, device: str, nproc: int = 1, max_parallel: int | None = None,
                    slurm: SlurmSettings | None = None, announce: Callable[[str], None] = print,
                    share_gpus: bool = False, replace: bool = False) -> LocalExecutor | SubmititExecutor:
    """The executor ``lipbench run --executor KIND`` asks for, checked.

    Locally, more jobs at once than GPU groups would put two jobs on one GPU, which makes both jobs'
    throughput and memory wrong: refused unless ``share_gpus``."""
    if nproc < 1:
        raise UserError(f"--nproc must be at least 1, not {nproc}")
    if max_parallel is not None and max_parallel < 1:
        raise UserError(f"--max-parallel must be at least 1, not {max_parallel}")
    if kind == "local":
        gpus = visible_gpus(device)
        if gpus and nproc > len(gpus):
            raise UserError(f"--nproc {nproc} needs {nproc} GPUs per job, but {len(gpus)} are visible")
        groups = len(gpus) // nproc
        if gpus and max_parallel and max_parallel > groups and not share_gpus:
            raise UserError(f"--max-parallel {max_parallel} would put several jobs on one GPU ({len(gpus)} visible, "
                            f"{nproc} per job), which skews their speed and memory; use --max-parallel {groups} or "
                            "pass --share-gpus")
        return LocalExecutor(worker_environments(max_parallel or max(1, groups), nproc, gpus), replace)
    if kind == "slurm":
        return SubmititExecutor(slurm or SlurmSettings(), max_parallel or DEFAULT_ARRAY_PARALLELISM, nproc, announce,
                                replace)
    raise UserError(f"--executor must be local or slurm, not {kind!r}")
