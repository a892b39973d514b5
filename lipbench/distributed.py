"""One job trained by several processes at once (DistributedDataParallel), under one time budget.

Two ways in: ``lipbench run --nproc N`` (the job process starts N replicas, which meet through a
file in the job folder: :func:`launch`), or ``torchrun --nproc-per-node N -m lipbench.job JOB_DIR``
(each rank reads RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT: :meth:`World.from_environment`).
Every replica

* draws the same global batch (same data order, same augmentation) and trains on its own slice of
  it, rows r·B/n to (r+1)·B/n for rank r of n; DDP averages the gradients, which is the gradient of
  the mean loss over the global batch, as one process would compute it (up to float summation order);
* starts from the same weights (same seed; DDP also broadcasts rank 0's) and applies the same
  optimizer step to the same averaged gradient, so the weights stay identical on all ranks, the
  orthogonal ones of a Riemannian optimizer included;
* agrees with the others on every decision the clock makes: the planned number of steps (the
  smallest plan wins) and how many steps may start before the deadline (the fewest wins), at the loop's
  periodic reads only, through a small CPU (gloo) group, so no rank waits forever in a collective the
  others have left.

Collectives run on nccl on CUDA, gloo on CPU. Throughput counts the images of all ranks. Rank 0 alone
logs events, writes checkpoints and the record, and certifies (see :mod:`lipbench.job`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lipbench.errors import UserError

NPROC_VARIABLE = "LIPBENCH_NPROC"  # set by the executors for `--nproc`: the job process starts that many replicas


def requested_processes() -> int:
    """How many processes ``--nproc`` asked this job process to train with (1: just itself)."""
    return int(os.environ.get(NPROC_VARIABLE, "1"))


def check_batch_sizes(batch_sizes: list[int], processes: int) -> None:
    """Every global batch must split evenly over the processes (each takes an equal slice)."""
    uneven = sorted({size for size in batch_sizes if size % processes})
    if uneven:
        raise UserError(f"--nproc {processes} splits each batch over {processes} processes, so batch sizes must be "
                        f"multiples of {processes}; {', '.join(map(str, uneven))} are not (see --batch-size)")


@dataclass
class World:
    """The processes training one job: this one is ``rank`` of ``size`` (size 1: it trains alone).

    Every method is the identity (or plain Python) when the job trains alone, so the
    single-process path runs exactly the code it always did.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    rendezvous: str = "env://"  # torch.distributed init_method: torchrun's variables, or a shared file
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    control: Any = None  # the process group for CPU-side agreement (None: the default group)

    @classmethod
    def from_environment(cls) -> "World":
        """This process's place in a ``torchrun`` launch, or a world of one without it."""
        return cls(rank=int(os.environ.get("RANK", "0")), size=int(os.environ.get("WORLD_SIZE", "1")),
                   local_rank=int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def join(self, device: torch.device) -> torch.device:
        """Join the job's process group; returns the device this rank trains on (its own GPU on CUDA)."""
        if not self.distributed:
            return device
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        else:  # the replicas share the cores
            torch.set_num_threads(max(1, torch.get_num_threads() // self.size))
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=self.rendezvous, rank=self.rank, world_size=self.size)
        self.control = dist.new_group(backend="gloo") if backend != "gloo" else None
        self.device = device
        return device

    def leave(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to train with: DDP around ``model`` (averaging gradients in backward), or ``model``."""
        if not self.distributed:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def shard(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """This rank's equal slice of a global batch."""
        if not self.distributed:
            return x, y
        if len(x) % self.size:
            raise ValueError(f"a batch of {len(x)} does not split evenly over {self.size} processes")
        rows = slice(self.rank * len(x) // self.size, (self.rank + 1) * len(x) // self.size)
        return x[rows], y[rows]

    def mean(self, value: Tensor) -> float:
        """The mean of a scalar over the ranks (the global batch's loss), the same number on every rank."""
        if not self.distributed:
            return float(value.detach())
        total = value.detach().clone()
        dist.all_reduce(total)
        return float(total) / self.size

    def least(self, value: int) -> int:
        """The smallest of the ranks' values, on every rank."""
        return self.agree(value, dist.ReduceOp.MIN)

    def agree(self, value: int, op: Any) -> int:
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(tensor, op=op, group=self.control)
        return int(tensor.item())


def launch(processes: int, rendezvous: Path, target: Callable[..., Any], *args: Any) -> None:
    """Run ``target(*args, world=World(rank, processes, ...))`` in ``processes`` new processes of one group.

    They meet through the file ``rendezvous`` (no network port to pick). Returns when all are done;
    if one fails the others are stopped and the error is raised here.
    """
    rendezvous.unlink(missing_ok=True)  # a file left by a killed run would confuse the new group
    torch.multiprocessing.start_processes(_replica, args=(processes, rendezvous.resolve().as_uri(), target, args),
                                          nprocs=processes, start_method="spawn")


def _replica(rank: int, size: int, rendezvous: str, target: Callable[..., Any], args: tuple[Any, ...]) -> None:
    target(*args, world=World(rank=rank, size=size, local_rank=rank, rendezvous=rendezvous))
