"""Mini-batches for training, drawn on the data's own device.

:class:`InMemoryBatches` shuffles a dataset that is already on the device. Its random numbers (the
order of each epoch, the crop offsets and flips of augmentation) are drawn by a generator on that same
device, so drawing a batch never waits for the device or copies to it; the generator's state is
checkpointed with the position in the epoch, so a resumed run draws the batches an uninterrupted one
would. The last partial batch of an epoch is dropped.

With extra data (:class:`lipbench.data.ExtraData`, ratio r), every batch of B images holds exactly
round(r * B) extra images and the rest real ones (LiResNet++'s 1 real : 3 generated is r = 0.75), each
part drawn by its own shuffled source and interleaved evenly, so any slice of the batch (a DDP rank's)
keeps the ratio. An epoch is one pass over the real training set.
"""
from __future__ import annotations

import time
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from lipbench.data import AnyDataset, StreamingDataset
from lipbench.device import synchronize
from lipbench.errors import UserError

THROUGHPUT_SEED = 12345  # the throughput's own source, apart from the training order
SYNC_BATCHES = 10  # the device queues this many batches at most before the clock reads it


class BatchSource(Protocol):
    """What the training loop draws batches from."""

    batch_size: int
    per_epoch: int

    def next(self) -> tuple[Tensor, Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def augment_batch(x: Tensor, generator: torch.Generator, pad: int = 4) -> Tensor:
    """Random crops (zero padding ``pad``) and horizontal flips, per sample, drawn on the batch's device."""
    n, channels, height, width = x.shape
    device = x.device
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=device)
    rows = (torch.arange(height, device=device)[None, :] + dy[:, None])[:, None, :, None]
    cols = (torch.arange(width, device=device)[None, :] + dx[:, None])[:, None, None, :]
    batch = torch.arange(n, device=device)[:, None, None, None]
    channel = torch.arange(channels, device=device)[None, :, None, None]
    cropped = padded[batch, channel, rows, cols]
    flip = (torch.rand(n, generator=generator, device=device) < 0.5)[:, None, None, None]
    return torch.where(flip, cropped.flip(-1), cropped)


class InMemoryBatches:
    """Shuffled, centred (and optionally augmented) mini-batches of a dataset already on its device."""

    def __init__(self, data: AnyDataset, batch_size: int, augment: bool, seed: int,
                 images: tuple[Tensor, Tensor] | None = None):
        """Batches of ``data``'s training set, or of ``images`` (x, y) in its place, centred by ``data.mean``."""
        (self.x, self.y), self.mean, self.augment = images or (data.x_train, data.y_train), data.mean, augment
        self.batch_size = min(batch_size, len(self.x))
        self.per_epoch = len(self.x) // self.batch_size
        self.generator = torch.Generator(device=self.x.device).manual_seed(seed)
        self.order: Tensor = torch.empty(0, dtype=torch.long, device=self.x.device)
        self.position = self.per_epoch

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "order": self.order.cpu(), "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.position = state["order"].to(self.x.device), state["position"]

    def next(self) -> tuple[Tensor, Tensor]:
        if self.position >= self.per_epoch:
            self.order = torch.randperm(len(self.x), generator=self.generator, device=self.x.device)
            self.position = 0
        index = self.order[self.position * self.batch_size:(self.position + 1) * self.batch_size]
        self.position += 1
        x = self.x[index] - self.mean
        if self.augment:
            x = augment_batch(x, self.generator)
        return x, self.y[index]


def interleaving(n_first: int, n_second: int, device: torch.device) -> Tensor:
    """The order that spreads the second group's rows evenly among the first group's, after ``cat``."""
    keys = torch.cat([(torch.arange(n_first) + 0.5) / n_first, (torch.arange(n_second) + 0.5) / n_second])
    return torch.argsort(keys, stable=True).to(device)


class MixedBatches:
    """Batches of real and extra images in a fixed proportion (each part from its own :class:`BatchSource`)."""

    def __init__(self, real: BatchSource, extra: BatchSource, device: torch.device):
        self.real, self.extra = real, extra
        self.batch_size, self.per_epoch = real.batch_size + extra.batch_size, real.per_epoch
        self.order = interleaving(real.batch_size, extra.batch_size, device)

    def state_dict(self) -> dict[str, Any]:
        return {"real": self.real.state_dict(), "extra": self.extra.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.real.load_state_dict(state["real"])
        self.extra.load_state_dict(state["extra"])

    def next(self) -> tuple[Tensor, Tensor]:
        (x, y), (x_extra, y_extra) = self.real.next(), self.extra.next()
        return torch.cat([x, x_extra])[self.order], torch.cat([y, y_extra])[self.order]


def training_batches(data: AnyDataset, batch_size: int, augment: bool, seed: int) -> BatchSource:
    """The training loop's batches: in memory or streamed, with the extra data mixed in when there is some."""
    n_extra = round(data.extra.ratio * batch_size) if data.extra is not None else 0
    if n_extra >= batch_size:
        raise UserError(f"an extra-data ratio of {data.extra.ratio:g} leaves no real image in a batch of {batch_size}")
    real = data.train_batches(batch_size - n_extra, seed) if isinstance(data, StreamingDataset) \
        else InMemoryBatches(data, batch_size - n_extra, augment, seed)
    if not n_extra:
        return real
    extra = InMemoryBatches(data, n_extra, augment, seed + 1, images=(data.extra.x, data.extra.y))
    return MixedBatches(real, extra, data.mean.device)


def input_throughput(data: AnyDataset, batch_size: int, augment: bool, seconds: float) -> float:
    """Images per second of the input pipeline alone (drawing, decoding, augmenting, copying; no model), on a
    source of its own, timed for about ``seconds`` after its first batch (worker start-up, allocation)."""
    source = training_batches(data, batch_size, augment, seed=THROUGHPUT_SEED)
    device = data.mean.device
    source.next()
    synchronize(device)
    began, images = time.perf_counter(), 0
    while images < 3 * source.batch_size or time.perf_counter() - began < seconds:
        source.next()
        images += source.batch_size
        if images % (SYNC_BATCHES * source.batch_size) == 0:
            synchronize(device)
    synchronize(device)
    return images / (time.perf_counter() - began)
