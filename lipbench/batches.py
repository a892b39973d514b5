"""Mini-batches for training, drawn on the data's own device.

:class:`InMemoryBatches` shuffles a dataset that is already on the device. Its random numbers (the
order of each epoch, the crop offsets and flips of augmentation) are drawn by a generator on that same
device, so drawing a batch never waits for the device or copies to it; the generator's state is
checkpointed with the position in the epoch, so a resumed run draws the batches an uninterrupted one
would. The last partial batch of an epoch is dropped.
"""
from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from lipbench.data import Dataset


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

    def __init__(self, data: Dataset, batch_size: int, augment: bool, seed: int):
        self.x, self.y, self.mean, self.augment = data.x_train, data.y_train, data.mean, augment
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
