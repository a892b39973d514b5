"""Training under a wall-clock budget, or for a number of epochs.

The loop knows layers only through the registry's contract (``LayerMethod``): the method may supply its
optimizer and an extra loss term. The loss, the optimizer (and Lookahead), gradient clipping and the
schedule are the settings' (a recipe's: :mod:`lipbench.recipes`). It

1. calibrates: times real, synchronized training steps, and plans how many steps fit in what is left
   of the budget (re-planned every few percent, so the schedule ends on time); in epoch mode
   (``epochs > 0``) the plan is that many epochs and the budget only caps the time;
2. schedules the learning rate (and, with ``momentum_cycle``, the momentum) over the planned steps:
   OneCycle as the paper does, or warm-up then cosine; and a margin loss's radius (``loss_radius``);
3. enforces the deadline: it never starts a step it expects to end past the budget.
All calibration steps are real training steps and count against the budget.

A training step (:class:`TrainStep`) reads nothing back from the device: drawing the batch, the
forward and backward passes and the optimizer step are queued without waiting. The loop reads the
loss once every ``SYNC_EVERY`` steps (and at each of the first calibration steps), after a
synchronization; that read also times the window of whole steps since the last one, so the training
throughput is images over the synchronized wall time of whole steps (data drawing included), never
a host-side estimate. Under DDP the plan and the stop are agreed at those reads only.

TF32 is one explicit setting (``tf32``, off by default), applied to every method alike for the
length of training and restored after; certification always runs in strict fp32.

With a checkpoint path, the loop saves its whole state (model, optimizer, data order, plan, seconds
used) every ``checkpoint_every`` seconds, atomically, and a later call with the same path resumes from
it: a preempted or killed job loses at most that much training. Given a distributed ``world``
(:mod:`lipbench.distributed`), every rank runs this loop on its slice of the same global batches, and
rank 0 alone saves checkpoints.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from lipbench.batches import BatchSource, training_batches
from lipbench.data import AnyDataset
from lipbench.device import synchronize, tf32_enabled
from lipbench.distributed import World
from lipbench.jobfolder import load_tensors, save_tensors
from lipbench.contracts import PairwiseCertifiable
from lipbench.losses import LossContext, get_loss
from lipbench.optimizers import make_optimizer
from lipbench.registry import LayerMethod
from lipbench.schedules import one_cycle_lr, one_cycle_momentum, warmup_cosine_lr
from lipbench.settings import TrainSettings

CALIBRATION_STEPS = 5
REPLAN_EVERY = 0.05  # of the plan
SYNC_EVERY = 10  # steps between the loop's reads of the device (loss, timing, plan, deadline)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainReport:
    steps: int = 0
    steps_planned: int = 0
    steps_per_epoch: int = 1
    train_seconds: float = 0.0
    warmup_seconds: float = 0.0  # the first step (allocation, lazy initialization): not timed
    timed_seconds: float = 0.0  # synchronized wall time of the whole steps after the first
    images: int = 0  # images of the timed steps, all ranks
    step_seconds: float = float("nan")
    stopped_by: str = "plan"  # plan (the budget's), epochs, max_steps, or deadline
    bounded_by: str = "time"  # the mode: time (the budget) or epochs
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
        """Images per second of whole training steps after the first, from synchronized wall time."""
        return self.images / self.timed_seconds if self.timed_seconds > 0 else float("nan")

    def fields(self) -> dict[str, Any]:
        """What training measured, as record fields."""
        return {**asdict(self), "epochs_done": self.epochs_done, "epochs_planned": self.epochs_planned,
                "train_throughput": self.train_throughput}


def schedule(optimizer: torch.optim.Optimizer, settings: TrainSettings, progress: float) -> None:
    """Write the lr (and the cycled momentum) of ``progress`` into every param group (plain floats)."""
    if settings.schedule == "cosine":
        lr, momentum = warmup_cosine_lr(progress, settings.lr, settings.warmup), None
    else:
        lr = one_cycle_lr(progress, settings.lr)
        momentum = one_cycle_momentum(progress) if settings.momentum_cycle else None
    for group in optimizer.param_groups:
        group["lr"] = lr
        if momentum is not None and "momentum" in group:
            group["momentum"] = momentum


def loss_radius(settings: TrainSettings, progress: float) -> float:
    """The radius a margin loss trains for at ``progress``: from eps_start to eps_end times loss_eps,
    linearly over the first eps_ramp of the run (the authors' code of LiResNet and BRONet ramps it so)."""
    ramp = min(1.0, progress / settings.eps_ramp) if settings.eps_ramp else 1.0
    return settings.loss_eps * (settings.eps_start + (settings.eps_end - settings.eps_start) * ramp)


class TrainStep:
    """One optimizer step on a batch: forward (under autocast for bf16), loss, backward, clipping, update.

    It returns the loss as a device tensor and reads nothing back from the device (the gradient norm of
    clipping stays on the device too).
    """

    def __init__(self, network: nn.Module, model: nn.Module, method: LayerMethod, optimizer: torch.optim.Optimizer,
                 settings: TrainSettings, device: torch.device):
        self.network, self.model, self.method, self.optimizer, self.settings = network, model, method, optimizer, settings
        self.loss = get_loss(settings.loss).compute
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.precision == "bf16")
        self.margin_pairs = torch.tensor(math.sqrt(2), device=device)

    def pair_lipschitz(self, classes: int) -> Tensor:
        """What the loss takes as the Lipschitz constants of the logit differences (module doc of losses)."""
        if isinstance(self.model, PairwiseCertifiable):
            return self.model.pair_lipschitz(exact=False)
        return self.margin_pairs.expand(classes, classes)

    def __call__(self, x: Tensor, y: Tensor, epsilon: float = 0.0) -> Tensor:
        settings = self.settings
        with self.autocast:
            logits = self.network(x).float()
            context = LossContext(settings.offset, settings.temperature, epsilon,
                                  self.pair_lipschitz(logits.shape[-1]), settings.focal_gamma)
            loss = self.loss(logits, y, context)
            if self.method.extra_loss is not None:
                loss = loss + self.method.extra_loss(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), settings.grad_clip, foreach=True)
        self.optimizer.step()
        return loss.detach()


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, batches: BatchSource,
                    report: TrainReport, elapsed: float) -> None:
    save_tensors(path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "batches": batches.state_dict(), "report": asdict(report), "elapsed": elapsed})


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, batches: BatchSource,
                    report: TrainReport) -> float:
    """Restore a checkpoint in place; returns the seconds of the budget already used."""
    state = load_tensors(path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    batches.load_state_dict(state["batches"])
    known = {f.name for f in fields(TrainReport)}
    for key, value in state["report"].items():
        if key in known:
            setattr(report, key, value)
    report.resumed_at_step = report.steps
    return float(state["elapsed"])


class Clock:
    """The loop's view of time: the deadline, the planned steps, and the synchronized windows it times."""

    def __init__(self, settings: TrainSettings, report: TrainReport, world: World, used: float, batch_images: int):
        self.settings, self.report, self.world, self.batch_images = settings, report, world, batch_images
        self.started = time.perf_counter() - used
        self.deadline = self.started + settings.budget_s
        self.last_sync, self.last_sync_step = time.perf_counter(), report.steps
        self.first_step = report.steps + 1  # allocation and lazy initialization: warm-up, not timed
        self.allowed = 1  # steps that may start before the next read: one, to measure a step
        self.next_replan = report.steps
        if settings.epochs:
            report.steps_planned, report.bounded_by = round(settings.epochs * report.steps_per_epoch), "epochs"

    def limit(self) -> tuple[int, str]:
        """The step count to stop at (0: not known yet) and the name of what set it."""
        report, settings = self.report, self.settings
        if settings.epochs:
            return report.steps_planned, "epochs"
        if settings.max_steps and report.steps_planned in (0, settings.max_steps):
            return settings.max_steps, "max_steps"
        return report.steps_planned, "plan"

    def read(self, now: float) -> None:
        """After a synchronized read: time the window of whole steps, re-plan, and agree how many steps may
        start before the next read without ending past the deadline."""
        report, steps = self.report, self.report.steps - self.last_sync_step
        if report.steps == self.first_step:
            report.warmup_seconds += now - self.last_sync
        elif steps > 0:
            window = (now - self.last_sync) / steps
            report.timed_seconds += now - self.last_sync
            report.images += steps * self.batch_images
            report.step_seconds = window if not math.isfinite(report.step_seconds) else \
                0.7 * report.step_seconds + 0.3 * window
        self.last_sync, self.last_sync_step = now, report.steps
        if not math.isfinite(report.step_seconds):
            self.allowed = self.world.least(int(now < self.deadline))
            return
        fit = max(0, int((self.deadline - now) / report.step_seconds))
        if not self.settings.epochs and report.steps >= CALIBRATION_STEPS + 1 and report.steps >= self.next_replan:
            planned = report.steps + fit
            report.steps_planned = self.world.least(min(planned, self.settings.max_steps) if self.settings.max_steps
                                                    else planned)
            self.next_replan = report.steps + max(1, int(REPLAN_EVERY * report.steps_planned))
        self.allowed = self.world.least(fit)


def periodic_read(world: World, loss: Tensor, step: int) -> float:
    """The loop's one read of the device: the loss (averaged over ranks), checked for divergence."""
    value = world.mean(loss)
    if not math.isfinite(value):
        raise TrainingDiverged(f"loss became {value} at step {step}")
    return value


def train(model: nn.Module, method: LayerMethod, data: AnyDataset, settings: TrainSettings, device: torch.device,
          seed: int = 0, on_event: Callable[[dict[str, Any]], None] | None = None,
          checkpoint: Path | None = None, checkpoint_every: float = 600.0,
          world: World | None = None) -> TrainReport:
    """Train ``model`` in place until its plan is done or the budget is spent; returns what happened."""
    world = world or World()
    batches = training_batches(data, settings.batch_size, settings.augment, seed)
    report = TrainReport(steps_per_epoch=batches.per_epoch)
    optimizer = make_optimizer(model, method, settings, batches.per_epoch, max(1, batches.per_epoch))
    used = load_checkpoint(checkpoint, model, optimizer, batches, report) \
        if checkpoint is not None and checkpoint.is_file() else 0.0
    step = TrainStep(world.wrap(model), model, method, optimizer, settings, device)
    clock = Clock(settings, report, world, used, batches.batch_size)
    model.train()
    last_event = last_checkpoint = time.perf_counter()
    with tf32_enabled(settings.tf32):
        while True:
            limit, reason = clock.limit()
            if limit and report.steps >= limit:
                report.stopped_by = reason
                break
            if clock.allowed <= 0:
                report.stopped_by = "deadline"
                break
            x, y = world.shard(*batches.next())
            progress = report.steps / report.steps_planned if report.steps_planned else 0.0
            schedule(optimizer, settings, progress)
            loss = step(x, y, loss_radius(settings, progress))
            report.steps += 1
            clock.allowed -= 1
            if report.steps % SYNC_EVERY and report.steps > CALIBRATION_STEPS + 1 and clock.allowed > 0 \
                    and report.steps != limit:
                continue
            synchronize(device)
            report.final_loss = periodic_read(world, loss, report.steps)
            now = time.perf_counter()
            clock.read(now)
            if checkpoint is not None and world.main and now - last_checkpoint > checkpoint_every:
                save_checkpoint(checkpoint, model, optimizer, batches, report, now - clock.started)
                last_checkpoint = now
            if on_event is not None and (now - last_event > 1.0 or report.steps == 1):
                last_event = now
                on_event({"phase": "train", "step": report.steps, "steps_planned": report.steps_planned,
                          "epoch": report.epochs_done, "loss": report.final_loss,
                          "lr": optimizer.param_groups[0]["lr"], "elapsed": now - clock.started,
                          "budget": settings.budget_s})
    synchronize(device)
    report.train_seconds = time.perf_counter() - clock.started
    report.steps_planned = report.steps_planned or report.steps
    if on_event is not None:
        on_event({"phase": "trained", "step": report.steps, "steps_planned": report.steps_planned,
                  "epoch": report.epochs_done, "loss": report.final_loss, "elapsed": report.train_seconds,
                  "budget": settings.budget_s, "stopped_by": report.stopped_by})
    return report


def save_weights(model: nn.Module, path: Path) -> None:
    """The trained weights, atomically (audits rebuild the model from config.json and these)."""
    save_tensors(path, model.state_dict())
