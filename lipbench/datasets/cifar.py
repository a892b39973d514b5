"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009): 32 x 32 colour images, 50,000 / 10,000.

Read from the python archives (``cifar-10-batches-py/``, ``cifar-100-python/`` or the ``.tar.gz``) in
``--data-dir`` or ``$LIPBENCH_DATA``; downloaded with MD5 verification when missing
(``$LIPBENCH_CIFAR_MIRROR`` replaces the host). The batches are Python pickles: they are read by
:class:`BatchUnpickler`, which builds nothing but the dicts, lists, bytes, strings, numbers and uint8
numpy arrays the format holds, so a crafted file runs no code.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from lipbench.data import Dataset, DatasetMissing, DatasetRequest, from_arrays, register_dataset
from lipbench.download import Archive, download, extract
from lipbench.errors import UserError

MIRROR_VARIABLE = "LIPBENCH_CIFAR_MIRROR"
ARCHIVES = {
    "cifar10": Archive("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                       "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py", MIRROR_VARIABLE),
    "cifar100": Archive("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                        "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python", MIRROR_VARIABLE),
}
# numpy's own array reconstruction; an object dtype is refused after loading, so these build only raw numbers
NUMPY_ARRAY_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                       ("numpy", "ndarray"), ("numpy", "dtype")}


class BatchUnpickler(pickle.Unpickler):
    """Refuses every global but numpy's array reconstruction: builtin containers and scalars need none."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in NUMPY_ARRAY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}")


def read_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(images N x 3 x 32 x 32 uint8, labels) of one CIFAR batch file, checked."""
    try:
        with open(path, "rb") as stream:
            batch = BatchUnpickler(stream, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, OSError) as error:
        raise UserError(f"{path} is not a CIFAR batch lipbench can read safely ({error})") from None
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise UserError(f"{path} is not a CIFAR batch: it lacks {b'data'!r} or {label_key!r}")
    images, labels = np.asarray(batch[b"data"]), np.asarray(batch[label_key])
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3 * 32 * 32:
        raise UserError(f"{path}: 'data' must be uint8 rows of 3072 pixels, not {images.dtype} {images.shape}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (len(images),):
        raise UserError(f"{path}: labels must be one integer per image")
    return images.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def read_folder(name: str, folder: Path) -> Dataset:
    if name == "cifar10":
        train_files = [folder / f"data_batch_{i}" for i in range(1, 6)]
        test_files, label_key, n_classes = [folder / "test_batch"], b"labels", 10
    else:
        train_files, test_files, label_key, n_classes = [folder / "train"], [folder / "test"], b"fine_labels", 100

    def read(files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        missing = [file for file in files if not file.is_file()]
        if missing:
            raise UserError(f"{missing[0]} is missing: the CIFAR folder {folder} is incomplete")
        images, labels = zip(*(read_batch(file, label_key) for file in files))
        return np.concatenate(images), np.concatenate(labels)

    return from_arrays(name, *read(train_files), *read(test_files), n_classes=n_classes, channels_first=True)


def load(name: str, request: DatasetRequest) -> Dataset:
    archive = ARCHIVES[name]
    for directory in request.folders(name) or [request.target()]:
        if (directory / archive.folder).is_dir():
            return read_folder(name, directory / archive.folder)
        if (directory / archive.filename).is_file():
            return read_folder(name, extract(directory / archive.filename, archive, directory))
    target = request.target()
    if not request.download:
        raise DatasetMissing(f"{name} not found under {target}: put {archive.filename} there or allow downloading")
    return read_folder(name, extract(download(archive, target), archive, target))


@register_dataset("cifar10", "CIFAR-10 (python archive; downloaded with MD5 check)", aliases=("cifar-10",))
def load_cifar10(request: DatasetRequest) -> Dataset:
    return load("cifar10", request)


@register_dataset("cifar100", "CIFAR-100 (python archive; downloaded with MD5 check)", aliases=("cifar-100",))
def load_cifar100(request: DatasetRequest) -> Dataset:
    return load("cifar100", request)
