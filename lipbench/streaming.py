"""Streaming mini-batches of image files too many to hold in memory (ImageNet), decoded in worker processes.

A :class:`torch.utils.data.DataLoader` decodes the JPEGs (Pillow) in ``workers`` processes and keeps
``prefetch`` batches per worker ready, as uint8, so the device waits as little as the CPUs allow; the
batch becomes float, scaled to [0, 1] and centred on the device. Training images get a random-resized
crop (area 8-100 %, aspect 3/4-4/3, as Szegedy et al. 2015) and a horizontal flip; evaluation images are
resized so that the shorter side is ``size / 0.875`` and centre-cropped to ``size``.

The data order is a function of (seed, epoch, position): the epoch's permutation comes from a generator
seeded by (seed, epoch), and every image's crop and flip from a seed of (seed, epoch, position in the
epoch), never from a worker's state. So the batches do not depend on the number of workers, and a
resumed run (the checkpoint holds only the epoch and the position) draws the same batches as an
uninterrupted one. The last partial batch of an epoch is dropped, as in memory.

JPEG decoding uses Pillow's draft mode: the decoder scales down by up to 8 while the region to be
resized keeps at least the target's pixels, which makes small resolutions much cheaper to decode.
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from lipbench.errors import UserError

EVAL_CROP = 0.875  # the centre crop's share of the resized shorter side
SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)
Box = tuple[float, float, float, float]


def random_box(width: int, height: int, rng: random.Random) -> Box:
    """A random-resized-crop region (left, top, right, bottom): ten tries at a random area and aspect,
    then the centred largest region of an allowed aspect."""
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*SCALE)
        aspect = math.exp(rng.uniform(math.log(RATIO[0]), math.log(RATIO[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return left, top, left + w, top + h
    aspect = min(max(width / height, RATIO[0]), RATIO[1])
    w, h = (width, round(width / aspect)) if width / height < aspect else (round(height * aspect), height)
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def centre_box(width: int, height: int) -> Box:
    """The centred square that a resize to ``size / 0.875`` then a centre crop to ``size`` keep."""
    side = EVAL_CROP * min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def load_region(file: str, size: int, rng: random.Random | None) -> Image.Image:
    """Decode ``file``, take its training (``rng`` given) or evaluation region, resized to size x size."""
    try:
        with Image.open(file) as image:
            width, height = image.size
            box = random_box(width, height, rng) if rng is not None else centre_box(width, height)
            scale = max(size / (box[2] - box[0]), size / (box[3] - box[1]))
            image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
            (drafted_width, drafted_height), (left, top, right, bottom) = image.size, box
            sx, sy = drafted_width / width, drafted_height / height
            region = image.convert("RGB").resize((size, size), Image.BILINEAR, box=(
                left * sx, top * sy, min(right * sx, drafted_width), min(bottom * sy, drafted_height)))
    except FileNotFoundError:
        raise UserError(f"{file} is missing: the dataset's folder changed while it was read") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise UserError(f"{file} is not an image lipbench can decode ({type(error).__name__}: {error}); "
                        "replace or remove it") from None
    if rng is not None and rng.random() < 0.5:
        region = region.transpose(Image.FLIP_LEFT_RIGHT)
    return region


class ImageFiles(torch.utils.data.Dataset):
    """Image files and labels, decoded one at a time; an item is (index, seed of its augmentation or None)."""

    def __init__(self, files: list[str], labels: list[int], size: int):
        self.files, self.labels, self.size = files, labels, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int | None]) -> tuple[Tensor, int]:
        index, seed = item
        region = load_region(self.files[index], self.size, None if seed is None else random.Random(seed))
        return torch.from_numpy(np.asarray(region).transpose(2, 0, 1).copy()), self.labels[index]


class EpochOrder(Sampler):
    """The batches of one epoch from ``start`` on: lists of (index, augmentation seed)."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, start: int):
        self.n, self.batch_size, self.seed, self.epoch, self.start = n, batch_size, seed, epoch, start

    def __len__(self) -> int:
        return self.n // self.batch_size - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch))
        for batch in range(self.start, self.n // self.batch_size):
            first = batch * self.batch_size
            yield [(int(index), hash((self.seed, self.epoch, first + offset)))
                   for offset, index in enumerate(order[first:first + self.batch_size])]


def loader(files: ImageFiles, batches: Sampler | list[list[tuple[int, None]]], workers: int, prefetch: int,
           device: torch.device) -> DataLoader:
    return DataLoader(files, batch_sampler=batches, num_workers=workers, pin_memory=device.type == "cuda",
                      prefetch_factor=prefetch if workers else None)


def to_device(x: Tensor, y: Tensor, mean: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    """A decoded uint8 batch as centred floats in the pixel scale [0, 1], on ``device``."""
    x = x.to(device, non_blocking=True).float().div_(255) - mean
    return x, y.to(device, non_blocking=True)


class StreamingBatches:
    """The training batches of image files, decoded by worker processes (a :class:`~lipbench.batches.BatchSource`)."""

    def __init__(self, files: ImageFiles, batch_size: int, seed: int, mean: Tensor, workers: int, prefetch: int):
        if len(files) < batch_size:
            raise UserError(f"the training set has {len(files)} images, fewer than one batch of {batch_size}")
        self.files, self.batch_size, self.seed, self.mean = files, batch_size, seed, mean
        self.workers, self.prefetch = workers, prefetch
        self.per_epoch = len(files) // batch_size
        self.epoch, self.position = 0, 0
        self.iterator: Iterator | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position, self.iterator = int(state["epoch"]), int(state["position"]), None

    def next(self) -> tuple[Tensor, Tensor]:
        if self.position >= self.per_epoch:
            self.epoch, self.position, self.iterator = self.epoch + 1, 0, None
        if self.iterator is None:
            order = EpochOrder(len(self.files), self.batch_size, self.seed, self.epoch, self.position)
            self.iterator = iter(loader(self.files, order, self.workers, self.prefetch, self.mean.device))
        x, y = next(self.iterator)
        self.position += 1
        return to_device(x, y, self.mean, self.mean.device)


def evaluation_batches(files: ImageFiles, batch_size: int, mean: Tensor, workers: int,
                       prefetch: int) -> Iterator[tuple[Tensor, Tensor]]:
    """The evaluation images in order, centre-cropped, centred, on ``mean``'s device."""
    batches = [[(i, None) for i in range(start, min(start + batch_size, len(files)))]
               for start in range(0, len(files), batch_size)]
    for x, y in loader(files, batches, workers, prefetch, mean.device):
        yield to_device(x, y, mean, mean.device)


def image_files(folder: Path, classes: list[str], size: int) -> ImageFiles:
    """The ``*.JPEG`` (any case of .jpeg/.jpg/.png) files of ``folder/<class>/``, labelled by ``classes``' order."""
    files, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
        files += [str(p) for p in found]
        labels += [label] * len(found)
    if not files:
        raise UserError(f"{folder} holds no images in its class folders")
    return ImageFiles(files, labels, size)
