"""Tiny-ImageNet-200 (Le & Yang 2015, the CS231n release): 64 x 64 colour images, 200 classes, 100,000 / 10,000.

Read from the release as unpacked (``tiny-imagenet-200/`` holding ``wnids.txt``, ``words.txt``,
``train/<wnid>/images/*.JPEG``, ``val/images/*.JPEG`` and ``val/val_annotations.txt``) or from its zip, in
``--data-dir`` or ``$LIPBENCH_DATA``; downloaded with MD5 verification when missing
(``$LIPBENCH_TINY_IMAGENET_MIRROR`` replaces the host). The labelled ``val`` split is the test set (the
release's ``test`` images carry no labels). Class k is the k-th wnid of ``wnids.txt`` in sorted order, so
the labels do not depend on the file's line order.

The JPEGs are decoded once (Pillow) into ``tiny-imagenet-200.lipbench.npz`` beside the folder; the cache
names the files and sizes it was made from, so a changed tree is decoded again. Later runs load the cache
(``allow_pickle=False``) in seconds. When the folder is read-only the cache is skipped.
"""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np

from lipbench.data import Dataset, DatasetMissing, DatasetRequest, from_arrays, register_dataset
from lipbench.datasets._images import read_rgb
from lipbench.download import Archive, download, extract_zip
from lipbench.errors import UserError

ARCHIVE = Archive("http://cs231n.stanford.edu/tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de",
                  "tiny-imagenet-200", "LIPBENCH_TINY_IMAGENET_MIRROR")
CACHE_SUFFIX = ".lipbench.npz"
CACHE_ARRAYS = ("x_train", "y_train", "x_test", "y_test", "source")


def read_wnids(root: Path) -> list[str]:
    path = root / "wnids.txt"
    if not path.is_file():
        raise UserError(f"{path} is missing: {root} is not the Tiny-ImageNet-200 release folder")
    wnids = sorted({line.strip() for line in path.read_text().splitlines() if line.strip()})
    if not wnids:
        raise UserError(f"{path} lists no classes")
    return wnids


def list_files(root: Path, wnids: list[str]) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """(file, label) of the training and the validation images, in a fixed order."""
    train = []
    for label, wnid in enumerate(wnids):
        folder = root / "train" / wnid / "images"
        if not folder.is_dir():
            raise UserError(f"{folder} is missing: every class of wnids.txt needs its train/<wnid>/images/ folder")
        train += [(file, label) for file in sorted(folder.glob("*.JPEG"))]
    annotations = root / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise UserError(f"{annotations} is missing: it gives the validation images' classes")
    index = {wnid: label for label, wnid in enumerate(wnids)}
    val = []
    for number, line in enumerate(annotations.read_text().splitlines(), 1):
        fields = line.split("\t")
        if not line.strip():
            continue
        if len(fields) < 2 or fields[1] not in index:
            raise UserError(f"{annotations}:{number}: expected 'FILE<TAB>WNID...' with a wnid of wnids.txt, got {line!r}")
        val.append((root / "val" / "images" / fields[0], index[fields[1]]))
    if not train or not val:
        raise UserError(f"{root}: no {'training' if not train else 'validation'} images found")
    return train, sorted(val)


def fingerprint(files: list[tuple[Path, int]], root: Path) -> str:
    """A hash of the files' names, sizes and labels: what the cache was made from."""
    digest = hashlib.sha256()
    for file, label in files:
        size = file.stat().st_size if file.is_file() else -1
        digest.update(f"{file.relative_to(root)} {size} {label}\n".encode())
    return digest.hexdigest()


def decode(files: list[tuple[Path, int]]) -> tuple[np.ndarray, np.ndarray]:
    images = [read_rgb(file) for file, _ in files]
    first = images[0].shape
    for image, (file, _) in zip(images, files):
        if image.shape != first:
            raise UserError(f"{file} is {image.shape[1]} x {image.shape[0]} pixels; the others are "
                            f"{first[1]} x {first[0]}: replace it with the release's file")
    return np.stack(images), np.asarray([label for _, label in files], dtype=np.int64)


def read_cache(path: Path, source: str) -> dict[str, np.ndarray] | None:
    """The cached arrays when the cache exists and was made from these files."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if set(CACHE_ARRAYS) <= set(arrays.files) and str(arrays["source"]) == source:
                return {key: arrays[key] for key in CACHE_ARRAYS[:4]}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        pass  # a broken or foreign cache is decoded again
    return None


def write_cache(path: Path, arrays: dict[str, np.ndarray], source: str) -> None:
    partial = path.with_name(f".{path.name}.partial.npz")
    try:
        np.savez(partial, **arrays, source=np.asarray(source))
        partial.replace(path)
    except OSError:
        partial.unlink(missing_ok=True)  # a read-only data folder: decode again next time


def read_release(root: Path) -> Dataset:
    wnids = read_wnids(root)
    train, val = list_files(root, wnids)
    source = fingerprint(train + val, root)
    cache = root.with_name(root.name + CACHE_SUFFIX)
    arrays = read_cache(cache, source)
    if arrays is None:
        (x_train, y_train), (x_test, y_test) = decode(train), decode(val)
        arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
        write_cache(cache, arrays, source)
    return from_arrays("tiny-imagenet", **arrays, n_classes=len(wnids))


def find_release(directory: Path) -> Path | None:
    for candidate in (directory / ARCHIVE.folder, directory):
        if (candidate / "wnids.txt").is_file():
            return candidate
    return None


@register_dataset("tiny-imagenet", "Tiny-ImageNet-200 (the release folder or zip; downloaded with MD5 check)",
                  aliases=("tiny-imagenet-200", "tinyimagenet"))
def load_tiny_imagenet(request: DatasetRequest) -> Dataset:
    folders = request.folders("tiny-imagenet") or [request.target()]
    for directory in folders:
        release = find_release(directory)
        if release is not None:
            return read_release(release)
    for directory in folders:
        if (directory / ARCHIVE.filename).is_file():
            return read_release(extract_zip(directory / ARCHIVE.filename, ARCHIVE, directory))
    target = request.target()
    if not request.download:
        raise DatasetMissing(f"tiny-imagenet not found under {target}: put {ARCHIVE.filename} or its unpacked "
                             f"{ARCHIVE.folder}/ there, or allow downloading")
    return read_release(extract_zip(download(ARCHIVE, target), ARCHIVE, target))
