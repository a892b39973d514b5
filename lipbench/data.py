"""Datasets, loaded offline from local files into tensors (float32 in [0, 1], N x C x H x W).

Sources, by the name given to ``--dataset``:
* ``fashion-mnist``: IDX files (optionally gzipped) from ``--data-dir``, ``$LIPBENCH_DATA`` (or its
  ``fashion-mnist/`` subfolder), or Debian's ``dataset-fashion-mnist`` package.
* ``cifar10`` / ``cifar100``: the python-pickle archives (``cifar-10-batches-py/``, ``cifar-100-python/``
  or the ``.tar.gz``); downloaded with checksum verification when missing.
* ``synthetic``: a small generated 10-class problem for fast tests.
* a path to an ``.npz`` file (``x_train, y_train, x_test, y_test``) or an image-folder tree
  (``train/<class>/*.png``, ``test/<class>/*.png``).
The certified radii (36/255, ...) are in this [0, 1] pixel scale; the only normalization applied
later is centering (subtracting the training mean), a translation that leaves every L2 distance
unchanged.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lipbench.errors import UserError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CIFAR_MIRROR_VARIABLE = "LIPBENCH_CIFAR_MIRROR"


@dataclass
class Dataset:
    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    n_classes: int

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]


@dataclass(frozen=True)
class Archive:
    """A downloadable archive: where it lives, its MD5, and the folder it unpacks to."""

    url: str
    md5: str
    folder: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


CIFAR_ARCHIVES = {
    "cifar10": Archive("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                       "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py"),
    "cifar100": Archive("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                        "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python"),
}
BUILTIN_DATASETS = ("fashion-mnist", "cifar10", "cifar100", "synthetic")


def load_dataset(name: str, data_dir: str | None = None, download: bool = True) -> Dataset:
    """Load ``name`` (a built-in name or a path); a :class:`UserError` says how to get missing data."""
    key = name.lower()
    if key in ("fashion-mnist", "fashion_mnist", "fmnist"):
        return load_fashion_mnist(data_dir)
    if key in CIFAR_ARCHIVES:
        return load_cifar(key, data_dir, download)
    if key == "synthetic":
        return make_synthetic()
    path = Path(name).expanduser()
    if path.suffix == ".npz":
        return load_npz(path)
    if path.is_dir():
        return load_image_folder(path)
    raise UserError(f"unknown dataset {name!r}: use one of {', '.join(BUILTIN_DATASETS)}, "
                    "a .npz file or an image folder with train/ and test/")


def search_dirs(data_dir: str | None, subfolder: str) -> list[Path]:
    dirs = []
    for base in (data_dir, os.environ.get("LIPBENCH_DATA")):
        if base:
            dirs += [Path(base).expanduser(), Path(base).expanduser() / subfolder]
    return dirs


# --- Fashion-MNIST (IDX) -------------------------------------------------------------------

IDX_FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (unsigned bytes), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as stream:
        raw = stream.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise UserError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise UserError(f"{path} is truncated: expected {int(np.prod(shape))} values, found {data.size}")
    return data.reshape(shape)


def find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_fashion_mnist(data_dir: str | None = None) -> Dataset:
    for directory in [*search_dirs(data_dir, "fashion-mnist"), DEBIAN_FASHION_MNIST]:
        paths = {key: find_idx(directory, stem) for key, stem in IDX_FILES.items()}
        if all(paths.values()):
            arrays = {key: read_idx(path) for key, path in paths.items()}  # type: ignore[arg-type]
            return from_arrays("fashion-mnist", **arrays)
    raise UserError("Fashion-MNIST not found: run `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), "
                    "or put its four IDX files in a folder and pass --data-dir (or set LIPBENCH_DATA)")


# --- CIFAR (python pickles) ----------------------------------------------------------------


def load_cifar(name: str, data_dir: str | None = None, download: bool = True) -> Dataset:
    archive = CIFAR_ARCHIVES[name]
    dirs = search_dirs(data_dir, name) or [Path(data_dir or "data")]
    for directory in dirs:
        if (directory / archive.folder).is_dir():
            return read_cifar_folder(name, directory / archive.folder)
        if (directory / archive.filename).is_file():
            extract(directory / archive.filename, archive, directory)
            return read_cifar_folder(name, directory / archive.folder)
    target = Path(data_dir or os.environ.get("LIPBENCH_DATA") or "data").expanduser()
    if not download:
        raise UserError(f"{name} not found under {target}: put {archive.filename} there or allow downloading")
    fetched = download_archive(archive, target)
    extract(fetched, archive, target)
    return read_cifar_folder(name, target / archive.folder)


def download_archive(archive: Archive, target: Path) -> Path:
    """Download ``archive`` into ``target``, verifying its MD5; $LIPBENCH_CIFAR_MIRROR replaces the host."""
    mirror = os.environ.get(CIFAR_MIRROR_VARIABLE)
    url = f"{mirror.rstrip('/')}/{archive.filename}" if mirror else archive.url
    target.mkdir(parents=True, exist_ok=True)
    destination = target / archive.filename
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=30) as response, \
                tempfile.NamedTemporaryFile(dir=target, delete=False) as partial:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                partial.write(chunk)
    except (urllib.error.URLError, OSError) as error:
        raise UserError(f"{archive.filename} is missing and downloading {url} failed ({error}); "
                        f"download it yourself into {target} or pass --data-dir") from None
    if digest.hexdigest() != archive.md5:
        os.unlink(partial.name)
        raise UserError(f"checksum mismatch for {url}: got md5 {digest.hexdigest()}, expected {archive.md5}; "
                        "the download is corrupt or not the official archive (nothing was kept)")
    os.replace(partial.name, destination)
    return destination


def extract(path: Path, archive: Archive, target: Path) -> None:
    with tarfile.open(path) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(archive.folder + "/") and m.isfile()]
        if not members:
            raise UserError(f"{path} does not contain {archive.folder}/: not a CIFAR archive")
        tar.extractall(target, members=members, filter="data")


def read_cifar_folder(name: str, folder: Path) -> Dataset:
    if name == "cifar10":
        train_files = [folder / f"data_batch_{i}" for i in range(1, 6)]
        test_files, label_key, n_classes = [folder / "test_batch"], b"labels", 10
    else:
        train_files, test_files, label_key, n_classes = [folder / "train"], [folder / "test"], b"fine_labels", 100

    def read(files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for file in files:
            if not file.is_file():
                raise UserError(f"{file} is missing: the CIFAR folder {folder} is incomplete")
            with open(file, "rb") as stream:
                batch = pickle.load(stream, encoding="bytes")
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch[label_key], dtype=np.int64))
        return np.concatenate(images), np.concatenate(labels)

    x_train, y_train = read(train_files)
    x_test, y_test = read(test_files)
    return from_arrays(name, x_train, y_train, x_test, y_test, n_classes=n_classes, channels_first=True)


# --- user data -----------------------------------------------------------------------------


def load_npz(path: Path) -> Dataset:
    if not path.is_file():
        raise UserError(f"dataset file {path} does not exist")
    try:
        arrays = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise UserError(f"cannot read {path} as .npz: {error}") from None
    missing = [key for key in IDX_FILES if key not in arrays.files]
    if missing:
        raise UserError(f"{path} lacks arrays {missing}; it needs x_train, y_train, x_test, y_test "
                        f"(found {arrays.files})")
    return from_arrays(path.stem, **{key: arrays[key] for key in IDX_FILES})


def load_image_folder(root: Path) -> Dataset:
    from PIL import Image  # matplotlib depends on pillow

    splits = {}
    for split in ("train", "test"):
        folder = root / split
        if not folder.is_dir():
            raise UserError(f"image folder {root} needs train/ and test/ subfolders (one folder per class in each)")
        splits[split] = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if splits["train"] != splits["test"] or not splits["train"]:
        raise UserError(f"{root}: train/ and test/ must hold the same class folders; "
                        f"train has {splits['train']}, test has {splits['test']}")
    classes = splits["train"]

    def read(split: str) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for label, cls in enumerate(classes):
            for file in sorted((root / split / cls).iterdir()):
                with Image.open(file) as image:
                    images.append(np.asarray(image.convert("RGB" if image.mode not in ("L", "1") else "L")))
                labels.append(label)
        shapes = {im.shape for im in images}
        if len(shapes) != 1:
            raise UserError(f"{root / split}: images differ in size or mode ({sorted(shapes)[:3]}...); resize them to one shape")
        return np.stack(images), np.asarray(labels)

    x_train, y_train = read("train")
    x_test, y_test = read("test")
    return from_arrays(root.name, x_train, y_train, x_test, y_test, n_classes=len(classes))


def make_synthetic(n_train: int = 2048, n_test: int = 512, n_classes: int = 10, size: int = 16,
                   seed: int = 0) -> Dataset:
    """Each class is a fixed random smooth template; samples add noise. Learnable in seconds."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n_classes, 1, size // 4, size // 4, generator=generator)
    templates = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)

    def sample(n: int) -> tuple[Tensor, Tensor]:
        labels = torch.randint(n_classes, (n,), generator=generator)
        noise = 0.15 * torch.randn(n, 1, size, size, generator=generator)
        return (templates[labels] + noise).clamp(0, 1), labels

    x_train, y_train = sample(n_train)
    x_test, y_test = sample(n_test)
    return Dataset("synthetic", x_train, y_train, x_test, y_test, n_classes)


def from_arrays(name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                n_classes: int | None = None, channels_first: bool = False) -> Dataset:
    """Validate and convert arrays (N x H x W or N x H x W x C; uint8 or floats in [0, 1]) to a Dataset."""
    x_train, x_test = (as_images(x, split, name, channels_first) for x, split in ((x_train, "x_train"), (x_test, "x_test")))
    if x_train.shape[1:] != x_test.shape[1:]:
        raise UserError(f"{name}: train images are {tuple(x_train.shape[1:])}, test images {tuple(x_test.shape[1:])}")
    y_train, y_test = (as_labels(y, x, split, name) for y, x, split in ((y_train, x_train, "y_train"), (y_test, x_test, "y_test")))
    n_classes = n_classes or int(max(y_train.max(), y_test.max())) + 1
    if y_train.max() >= n_classes or y_test.max() >= n_classes:
        raise UserError(f"{name}: labels reach {int(max(y_train.max(), y_test.max()))} but there are {n_classes} classes")
    return Dataset(name, x_train, y_train, x_test, y_test, n_classes)


def as_images(x: np.ndarray, split: str, name: str, channels_first: bool) -> Tensor:
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and not channels_first:
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4:
        raise UserError(f"{name}: {split} has shape {x.shape}; expected N x H x W or N x H x W x C")
    if x.dtype == np.uint8:
        return torch.from_numpy(np.array(x, copy=True)).float().div_(255)
    if not np.issubdtype(x.dtype, np.floating):
        raise UserError(f"{name}: {split} has dtype {x.dtype}; use uint8 (0-255) or floats in [0, 1]")
    if x.size and (x.min() < 0 or x.max() > 1):
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


def holdout_split(dataset: Dataset, fraction: float, seed: int = 0) -> Dataset:
    """Train on part of the training set and evaluate on the rest (``fraction`` of it); the test set is not used."""
    order = torch.randperm(len(dataset.x_train), generator=torch.Generator().manual_seed(seed))
    n_held = max(1, int(fraction * len(order)))
    held, kept = order[:n_held], order[n_held:]
    return Dataset(f"{dataset.name}[holdout {fraction:g}]", dataset.x_train[kept], dataset.y_train[kept],
                   dataset.x_train[held], dataset.y_train[held], dataset.n_classes)


def copy_to(dataset: Dataset, device: torch.device) -> Dataset:
    return Dataset(dataset.name, dataset.x_train.to(device), dataset.y_train.to(device),
                   dataset.x_test.to(device), dataset.y_test.to(device), dataset.n_classes)

