"""Training under a wall-clock budget.

The loop knows layers only through the registry's contract (``LayerMethod``): the method may
supply its optimizer and an extra loss term. It

1. calibrates: times real, synchronized training steps, and plans how many steps fit in
   what is left of the budget (re-planned every few percent, so the schedule ends on time);
2. schedules the learning rate with OneCycle over the planned steps (as the paper does);
3. enforces the deadline: it never starts a step it expects to end past the budget.
All calibration steps are real training steps and count against the budget.

With a checkpoint path, the loop saves its whole state (model, optimizer, data order, plan,
seconds used) every ``checkpoint_every`` seconds, atomically, and a later call with the same
path resumes from it: a preempted or killed job loses at most that much training.

Given a distributed ``world`` (:mod:`lipbench.distributed`), every rank runs this loop on its slice
of the same global batches under DDP, the plan and the stop are agreed by all ranks, and rank 0
alone saves checkpoints.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipbench.data import Dataset
from lipbench.distributed import World
from lipbench.device import synchronize
from lipbench.jobfolder import load_tensors, save_tensors
from lipbench.registry import LayerMethod, OptimizerSettings
from lipbench.settings import TrainSettings

CALIBRATION_STEPS = 5
REPLAN_EVERY = 0.05  # of the plan
SYNC_EVERY = 10  # steps between device synchronizations (CUDA) for deadline checks


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""




@dataclass
class TrainReport:
    steps: int = 0
    steps_planned: int = 0
    steps_per_epoch: int = 1
    train_seconds: float = 0.0
    warmup_seconds: float = 0.0
    step_seconds: float = float("nan")
    data_seconds: float = 0.0
    images: int = 0
    stopped_by: str = "plan"
    final_loss: float = float("nan")
    resumed_at_step: int = 0

    @property
    def epochs_done(self) -> float:
        return self.steps / self.steps_per_epoch

    @property
    def epochs_planned(self) -> float:
        return self.steps_planned / self.steps_per_epoch

    @property
    def train_throughput(self) -> float:
        """Images per second of training compute after the first step (data preparation excluded)."""
        compute = self.train_seconds - self.warmup_seconds - self.data_seconds
        return self.images / compute if compute > 0 else float("nan")

    def fields(self) -> dict[str, Any]:
        """What training measured, as record fields."""
        return {**asdict(self), "epochs_done": self.epochs_done, "epochs_planned": self.epochs_planned,
                "train_throughput": self.train_throughput}


def offset_cross_entropy(logits: Tensor, labels: Tensor, offset: float, temperature: float) -> Tensor:
    """Cross-entropy after subtracting ``offset`` from the true logit, at ``temperature`` (Prach & Lampert 2022)."""
    shifted = logits - offset * F.one_hot(labels, logits.shape[-1]).to(logits.dtype)
    return F.cross_entropy(shifted / temperature, labels) * temperature


def one_cycle_lr(progress: float, max_lr: float, warmup: float = 0.3) -> float:
    """OneCycle (cosine) learning rate at ``progress`` in [0, 1], as torch's OneCycleLR defaults."""
    start, end = max_lr / 25, max_lr / 25 / 1e4
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup:
        return start + (max_lr - start) * (1 - math.cos(math.pi * progress / warmup)) / 2
    return end + (max_lr - end) * (1 + math.cos(math.pi * (progress - warmup) / (1 - warmup))) / 2


def make_optimizer(model: nn.Module, method: LayerMethod, settings: TrainSettings,
                   steps_per_epoch: int, total_steps: int) -> torch.optim.Optimizer:
    if method.optimizer is not None:
        return method.optimizer(model, OptimizerSettings(settings.lr, settings.momentum, settings.weight_decay,
                                                         steps_per_epoch, total_steps))
    return torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                           weight_decay=settings.weight_decay, nesterov=settings.momentum > 0)


def augment_batch(x: Tensor, generator: torch.Generator, pad: int = 4) -> Tensor:
    """Random crops (zero padding ``pad``) and horizontal flips, per sample, on the batch's device."""
    n, _, height, width = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    rows = (torch.arange(height, device=x.device)[None, :] + dy[:, None])[:, None, :, None]
    cols = (torch.arange(width, device=x.device)[None, :] + dx[:, None])[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    cropped = padded[batch, channel, rows, cols]
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)[:, None, None, None]
    return torch.where(flip, cropped.flip(-1), cropped)




class Batches:
    """Shuffled mini-batches of a dataset already on the device; the last partial batch is dropped."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, mean: Tensor, augment: bool, seed: int):
        self.x, self.y, self.mean, self.augment = x, y, mean, augment
        self.batch_size = min(batch_size, len(x))
        self.per_epoch = len(x) // self.batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order: Tensor = torch.empty(0, dtype=torch.long)
        self.position = self.per_epoch

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "order": self.order.cpu(), "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.position = state["order"].to(self.x.device), state["position"]

    def next(self) -> tuple[Tensor, Tensor]:
        if self.position >= self.per_epoch:
            self.order = torch.randperm(len(self.x), generator=self.generator).to(self.x.device)
            self.position = 0
        index = self.order[self.position * self.batch_size:(self.position + 1) * self.batch_size]
        self.position += 1
        x = self.x[index] - self.mean
        if self.augment:
            x = augment_batch(x, self.generator)
        return x, self.y[index]


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, batches: Batches,
                    report: TrainReport, elapsed: float, step_time: float) -> None:
    save_tensors(path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "batches": batches.state_dict(), "report": asdict(report), "elapsed": elapsed,
                        "step_time": step_time})


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, batches: Batches,
                    report: TrainReport) -> tuple[float, float]:
    """Restore a checkpoint in place; returns (seconds already used, step time)."""
    state = load_tensors(path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    batches.load_state_dict(state["batches"])
    for key, value in state["report"].items():
        setattr(report, key, value)
    report.resumed_at_step = report.steps
    return state["elapsed"], state["step_time"]


def train(model: nn.Module, method: LayerMethod, data: Dataset, settings: TrainSettings, device: torch.device,
          seed: int = 0, on_event: Callable[[dict[str, Any]], None] | None = None,
          checkpoint: Path | None = None, checkpoint_every: float = 600.0,
          world: World | None = None) -> TrainReport:
    """Train ``model`` in place until its plan is done or the budget is spent; returns what happened."""
    world = world or World()
    mean = data.x_train.mean(dim=(0, 2, 3), keepdim=True)
    batches = Batches(data.x_train, data.y_train, settings.batch_size, mean, settings.augment, seed)
    report = TrainReport(steps_per_epoch=batches.per_epoch)
    rough_total = max(1, batches.per_epoch)  # replaced by the calibrated plan below
    optimizer = make_optimizer(model, method, settings, batches.per_epoch, rough_total)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.precision == "bf16")
    used, step_time = (0.0, float("inf"))
    if checkpoint is not None and checkpoint.is_file():
        used, step_time = load_checkpoint(checkpoint, model, optimizer, batches, report)
    network = world.wrap(model)
    started = time.perf_counter() - used
    deadline = started + settings.budget_s
    model.train()
    next_replan, last_sync, last_sync_step, last_event = report.steps, time.perf_counter(), report.steps, started
    last_checkpoint = time.perf_counter()
    while True:
        now = time.perf_counter()
        if report.steps >= CALIBRATION_STEPS + 1 and report.steps >= next_replan:
            fit = report.steps + max(0, int((deadline - now) / step_time))
            report.steps_planned = world.least(min(fit, settings.max_steps) if settings.max_steps else fit)
            next_replan = report.steps + max(1, int(REPLAN_EVERY * report.steps_planned))
        limit = report.steps_planned or settings.max_steps  # before the first plan, max_steps alone caps the run
        if limit and report.steps >= limit:
            break
        if world.any(now + (step_time if math.isfinite(step_time) else 0.0) > deadline):
            report.stopped_by = "deadline"
            break
        data_start = time.perf_counter()
        x, y = world.shard(*batches.next())
        report.data_seconds += time.perf_counter() - data_start
        progress = report.steps / report.steps_planned if report.steps_planned else 0.0
        for group in optimizer.param_groups:
            group["lr"] = one_cycle_lr(progress, settings.lr)
        with autocast:
            loss = offset_cross_entropy(network(x).float(), y, settings.offset, settings.temperature)
            if method.extra_loss is not None:
                loss = loss + method.extra_loss(model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        report.steps += 1
        report.images += len(x) * world.size
        if report.steps == 1 or report.steps % SYNC_EVERY == 0 or report.steps <= CALIBRATION_STEPS + 1:
            synchronize(device)
            value = world.mean(loss)
            if not math.isfinite(value):
                raise TrainingDiverged(f"loss became {value} at step {report.steps}")
            report.final_loss = value
            now = time.perf_counter()
            if report.steps == 1:  # the first step (allocation, lazy init) is warm-up, not measured
                report.warmup_seconds, report.images, report.data_seconds = now - started, 0, 0.0
            else:
                window = (now - last_sync) / (report.steps - last_sync_step)
                step_time = window if math.isinf(step_time) else 0.7 * step_time + 0.3 * window
            last_sync, last_sync_step = now, report.steps
            if checkpoint is not None and world.main and now - last_checkpoint > checkpoint_every:
                save_checkpoint(checkpoint, model, optimizer, batches, report, now - started, step_time)
                last_checkpoint = now
            if on_event is not None and (now - last_event > 1.0 or report.steps == 1):
                last_event = now
                on_event({"phase": "train", "step": report.steps, "steps_planned": report.steps_planned,
                          "epoch": report.epochs_done, "loss": value, "lr": optimizer.param_groups[0]["lr"],
                          "elapsed": now - started, "budget": settings.budget_s})
    synchronize(device)
    report.train_seconds = time.perf_counter() - started
    report.step_seconds = step_time
    report.steps_planned = report.steps_planned or report.steps
    if on_event is not None:
        on_event({"phase": "trained", "step": report.steps, "steps_planned": report.steps_planned,
                  "epoch": report.epochs_done, "loss": report.final_loss, "elapsed": report.train_seconds,
                  "budget": settings.budget_s, "stopped_by": report.stopped_by})
    return report


def save_weights(model: nn.Module, path: Path) -> None:
    """The trained weights, atomically (audits rebuild the model from config.json and these)."""
    save_tensors(path, model.state_dict())
