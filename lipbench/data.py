"""Datasets: what a loaded dataset is, how its arrays are checked, and the registry of sources.

A :class:`Dataset` holds float32 images in [0, 1] (N x C x H x W) and integer labels. The certified
radii (36/255, ...) are in that pixel scale; the only normalization applied later is centering
(subtracting the training mean, :attr:`Dataset.mean`), a translation that leaves every L2 distance
unchanged.

Sources register with :func:`register_dataset`, the same decorator a plugin uses (built-ins live in
``lipbench.datasets``; plugins arrive through the entry-point group ``lipbench.datasets`` or
``--plugin``). A source is a function ``load(request) -> Dataset``; it is chosen by name (or alias),
or, when the user gives a path, by the first source whose ``claims_path(path)`` is true (an
``.npz`` file, an image folder). The ``--dataset`` help text and "unknown dataset" errors come from
the registry. Files from others never run code: archives are read as data (a restricted unpickler,
``np.load(allow_pickle=False)``, tar and zip members filtered), and every array is checked before use.

A dataset too large for memory (ImageNet) is a :class:`StreamingDataset`: its image files, decoded batch by
batch in worker processes (:mod:`lipbench.streaming`); both kinds give their image shape, class count and
mean, and their test set as batches. A source may take options, ``--dataset NAME:key=value:...`` (declared
at registration). Extra training images (``--extra-data``, :class:`ExtraData`) travel with either kind.
"""
from __future__ import annotations

import functools
import hashlib
import os
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Union

import numpy as np
import torch
from torch import Tensor

from lipbench.errors import UserError
from lipbench.registry import new_registry
from lipbench.streaming import ImageFiles, StreamingBatches, evaluation_batches

DATA_VARIABLE = "LIPBENCH_DATA"
WORKERS_VARIABLE = "LIPBENCH_DATA_WORKERS"


class DatasetMissing(UserError):
    """The dataset's files are not here, and downloading was not allowed."""


@dataclass
class ExtraData:
    """Extra (e.g. generated) training images mixed into every batch: ``ratio`` of each batch comes from here."""

    x: Tensor
    y: Tensor
    file: str
    sha256: str
    ratio: float

    def fields(self) -> dict[str, Any]:
        """What a record says about it."""
        return {"extra_file": self.file, "extra_size": len(self.x), "extra_sha256": self.sha256,
                "extra_ratio": self.ratio}


@dataclass
class Dataset:
    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    n_classes: int
    extra: ExtraData | None = None

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def sizes(self) -> tuple[int, int]:
        """(training images, test images)."""
        return len(self.x_train), len(self.x_test)

    @functools.cached_property
    def mean(self) -> Tensor:
        """The per-channel mean of the training images (1 x C x 1 x 1): the inputs are centred by it."""
        return self.x_train.mean(dim=(0, 2, 3), keepdim=True)


    def test_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The test set in order, centred, in batches (on the data's device)."""
        for start in range(0, len(self.x_test), batch_size):
            yield self.x_test[start:start + batch_size] - self.mean, self.y_test[start:start + batch_size]


def default_workers() -> int:
    """Decoding processes of a streamed dataset: ``$LIPBENCH_DATA_WORKERS``, else all cores but one (at most 8)."""
    if os.environ.get(WORKERS_VARIABLE):
        return int(os.environ[WORKERS_VARIABLE])
    return max(1, min(8, (os.cpu_count() or 2) - 1))


@dataclass
class StreamingDataset:
    """A dataset read from its image files batch by batch (:mod:`lipbench.streaming`), never all in memory.

    ``mean`` (1 x C x 1 x 1, in [0, 1]) is the dataset's published channel mean, not a pass over the files.
    """

    name: str
    train_files: ImageFiles
    test_files: ImageFiles
    n_classes: int
    mean: Tensor
    workers: int = field(default_factory=default_workers)
    prefetch: int = 4
    extra: ExtraData | None = None

    @property
    def in_shape(self) -> tuple[int, ...]:
        return (3, self.train_files.size, self.train_files.size)

    @property
    def sizes(self) -> tuple[int, int]:
        return len(self.train_files), len(self.test_files)

    @property
    def y_test(self) -> Tensor:
        return torch.tensor(self.test_files.labels, device=self.mean.device)

    def train_batches(self, batch_size: int, seed: int) -> StreamingBatches:
        return StreamingBatches(self.train_files, batch_size, seed, self.mean, self.workers, self.prefetch)

    def test_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        return evaluation_batches(self.test_files, batch_size, self.mean, self.workers, self.prefetch)


@dataclass(frozen=True)
class DatasetRequest:
    """What the user asked for: a name (or a path) and where to look for its files."""

    name: str
    data_dir: str | None = None
    download: bool = True
    options: tuple[tuple[str, str], ...] = ()  # NAME:key=value:... (only for sources that declare the keys)

    def option(self, key: str, default: int) -> int:
        """The integer option ``key`` (``--dataset NAME:key=value``), else ``default``."""
        value = dict(self.options).get(key)
        if value is None:
            return default
        if not value.isdigit() or int(value) < 1:
            raise UserError(f"dataset option {key}={value!r} must be a positive integer")
        return int(value)

    def folders(self, subfolder: str) -> list[Path]:
        """Folders to search, in order: ``--data-dir`` and ``$LIPBENCH_DATA``, each also with ``subfolder``."""
        found = []
        for base in (self.data_dir, os.environ.get(DATA_VARIABLE)):
            if base:
                found += [Path(base).expanduser(), Path(base).expanduser() / subfolder]
        return found

    def target(self) -> Path:
        """Where a download goes: ``--data-dir``, else ``$LIPBENCH_DATA``, else ./data."""
        return Path(self.data_dir or os.environ.get(DATA_VARIABLE) or "data").expanduser()


AnyDataset = Union[Dataset, StreamingDataset]


@dataclass(frozen=True)
class DatasetSource:
    name: str
    load: Callable[[DatasetRequest], "AnyDataset"]
    description: str
    aliases: tuple[str, ...] = ()
    claims_path: Callable[[Path], bool] | None = None
    options: tuple[str, ...] = ()


DATASETS = new_registry("dataset", "run --help")


def register_dataset(name: str, description: str, aliases: tuple[str, ...] = (),
                     claims_path: Callable[[Path], bool] | None = None, options: tuple[str, ...] = ()
                     ) -> Callable[[Callable[[DatasetRequest], AnyDataset]], Callable[[DatasetRequest], AnyDataset]]:
    """Register ``load(request) -> Dataset`` under ``name`` (and ``aliases``); returns ``load`` unchanged.
    ``options`` are the keys ``--dataset NAME:key=value:...`` may set (read by ``request.option``)."""

    def decorator(load: Callable[[DatasetRequest], AnyDataset]) -> Callable[[DatasetRequest], AnyDataset]:
        DATASETS.add(name, DatasetSource(name, load, description, aliases, claims_path, options))
        return load

    return decorator


def dataset_names() -> list[str]:
    """The registered dataset names, for help texts (path-based sources are described, not named)."""
    return [name for name in DATASETS.names() if DATASETS.get(name).claims_path is None]


def describe_datasets() -> str:
    """One phrase per registered source, for ``--dataset``'s help and for errors."""
    named = ", ".join(dataset_names())
    paths = "; ".join(source.description for source in map(DATASETS.get, DATASETS.names()) if source.claims_path)
    return f"{named}; or a path: {paths}" if paths else named


def find_source(name: str) -> DatasetSource:
    key = name.lower()
    for candidate in DATASETS.names():
        source = DATASETS.get(candidate)
        if key == source.name or key in source.aliases:
            return source
    path = Path(name).expanduser()
    for candidate in DATASETS.names():
        source = DATASETS.get(candidate)
        if source.claims_path is not None and source.claims_path(path):
            return source
    raise UserError(f"unknown dataset {name!r}: use one of {describe_datasets()}")


def split_options(name: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``NAME:key=value:...`` as the name and its options (a name without ``:`` has none)."""
    base, colon, text = name.partition(":")
    if not colon or Path(name).expanduser().exists():
        return name, ()
    pairs = [item.partition("=") for item in text.split(":") if item]
    if any(not sign or not key for key, sign, _ in pairs):
        raise UserError(f"dataset {name!r}: write options as NAME:key=value:key=value")
    return base, tuple((key.strip(), value.strip()) for key, _, value in pairs)


def load_dataset(name: str, data_dir: str | None = None, download: bool = True) -> AnyDataset:
    """Load ``name`` (a registered name or a path, with ``:key=value:...`` options where the source takes
    them); a :class:`UserError` says how to get missing data."""
    base, options = split_options(name)
    source = find_source(base)
    unknown = [key for key, _ in options if key not in source.options]
    if unknown:
        allowed = ", ".join(source.options) or "none"
        raise UserError(f"dataset {source.name} has no option {unknown[0]!r} (its options: {allowed})")
    return source.load(DatasetRequest(base, data_dir, download, options))


# --- arrays to a dataset, checked ------------------------------------------------------------------


def from_arrays(name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                n_classes: int | None = None, channels_first: bool = False) -> Dataset:
    """Validate and convert arrays (N x H x W or N x H x W x C; uint8 or floats in [0, 1]) to a Dataset."""
    x_train, x_test = (as_images(x, split, name, channels_first) for x, split in ((x_train, "x_train"), (x_test, "x_test")))
    if x_train.shape[1:] != x_test.shape[1:]:
        raise UserError(f"{name}: train images are {tuple(x_train.shape[1:])}, test images {tuple(x_test.shape[1:])}")
    y_train, y_test = (as_labels(y, x, split, name) for y, x, split in ((y_train, x_train, "y_train"), (y_test, x_test, "y_test")))
    largest = int(max(y_train.max(), y_test.max()))
    n_classes = n_classes or largest + 1
    if largest >= n_classes:
        raise UserError(f"{name}: labels reach {largest} but there are {n_classes} classes")
    return Dataset(name, x_train, y_train, x_test, y_test, n_classes)


def as_images(x: np.ndarray, split: str, name: str, channels_first: bool) -> Tensor:
    x = np.asarray(x)
    if x.dtype == object:
        raise UserError(f"{name}: {split} holds Python objects; images must be uint8 or float arrays")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and not channels_first:
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4:
        raise UserError(f"{name}: {split} has shape {x.shape}; expected N x H x W or N x H x W x C")
    if len(x) == 0:
        raise UserError(f"{name}: {split} holds no images")
    if x.dtype == np.uint8:
        return torch.from_numpy(np.array(x, copy=True)).float().div_(255)
    if not np.issubdtype(x.dtype, np.floating):
        raise UserError(f"{name}: {split} has dtype {x.dtype}; use uint8 (0-255) or floats in [0, 1]")
    if not np.isfinite(x).all():
        raise UserError(f"{name}: {split} contains NaN or infinite values; images must be finite, in [0, 1]")
    if x.min() < 0 or x.max() > 1:
        raise UserError(f"{name}: {split} values span [{x.min():.3g}, {x.max():.3g}]; float images must lie in [0, 1] "
                        "(certified radii are measured in that scale)")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def as_labels(y: np.ndarray, x: Tensor, split: str, name: str) -> Tensor:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    if y.ndim != 1 or len(y) != len(x):
        raise UserError(f"{name}: {split} has shape {y.shape}; expected one label per image ({len(x)})")
    if not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
        raise UserError(f"{name}: {split} must hold non-negative integer class labels (dtype {y.dtype})")
    return torch.from_numpy(y.astype(np.int64))


def holdout_split(dataset: AnyDataset, fraction: float, seed: int = 0) -> Dataset:
    """Train on part of the training set and evaluate on the rest (``fraction`` of it); the test set is not used."""
    if isinstance(dataset, StreamingDataset):
        raise UserError(f"{dataset.name} is streamed from its files: a holdout split needs an in-memory dataset")
    order = torch.randperm(len(dataset.x_train), generator=torch.Generator().manual_seed(seed))
    n_held = max(1, int(fraction * len(order)))
    held, kept = order[:n_held], order[n_held:]
    return Dataset(f"{dataset.name}[holdout {fraction:g}]", dataset.x_train[kept], dataset.y_train[kept],
                   dataset.x_train[held], dataset.y_train[held], dataset.n_classes)


def copy_to(dataset: AnyDataset, device: torch.device) -> AnyDataset:
    extra = dataset.extra and replace(dataset.extra, x=dataset.extra.x.to(device), y=dataset.extra.y.to(device))
    if isinstance(dataset, StreamingDataset):
        return replace(dataset, mean=dataset.mean.to(device), extra=extra)
    return replace(dataset, x_train=dataset.x_train.to(device), y_train=dataset.y_train.to(device),
                   x_test=dataset.x_test.to(device), y_test=dataset.y_test.to(device), extra=extra)


def with_extra_data(dataset: AnyDataset, path: str, ratio: float) -> AnyDataset:
    """``dataset`` with the extra training images of the ``.npz`` at ``path`` (arrays ``x`` and ``y``, images in
    the dataset's shape), to make up ``ratio`` of every training batch."""
    file = Path(path).expanduser()
    if not 0 < ratio < 1:
        raise UserError(f"--extra-ratio must be in (0, 1): the share of each batch taken from {file.name}, got {ratio:g}")
    try:
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        with np.load(file, allow_pickle=False) as arrays:
            if not {"x", "y"} <= set(arrays.files):
                raise UserError(f"{file} must hold arrays x (images) and y (labels); it has {arrays.files}")
            x, y = arrays["x"], arrays["y"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise UserError(f"cannot read the extra data {file} as .npz of plain arrays: {error}") from None
    images = as_images(x, "x", file.name, channels_first=tuple(x.shape[1:]) == tuple(dataset.in_shape))
    if tuple(images.shape[1:]) != tuple(dataset.in_shape):
        raise UserError(f"{file}: its images are {tuple(images.shape[1:])}, the dataset's {tuple(dataset.in_shape)}")
    labels = as_labels(y, images, "y", file.name)
    if int(labels.max()) >= dataset.n_classes:
        raise UserError(f"{file}: labels reach {int(labels.max())} but {dataset.name} has {dataset.n_classes} classes")
    return replace(dataset, extra=ExtraData(images, labels, file.name, digest, ratio))
