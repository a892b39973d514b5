"""Fashion-MNIST (Xiao et al. 2017): 28 x 28 grey images, 10 classes, 60,000 / 10,000.

Read offline from its four IDX files (optionally gzipped) in ``--data-dir``, ``$LIPBENCH_DATA`` (or
their ``fashion-mnist/`` subfolder), or Debian's ``dataset-fashion-mnist`` package.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from lipbench.data import Dataset, DatasetRequest, from_arrays, register_dataset
from lipbench.errors import UserError

DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes, gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            raw = stream.read()
    except (OSError, EOFError) as error:
        raise UserError(f"cannot read {path}: {error}") from None
    if len(raw) < 4:
        raise UserError(f"{path} is not an IDX file (too short)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or len(raw) < 4 + 4 * ndim:
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


@register_dataset("fashion-mnist", "Fashion-MNIST (IDX files; Debian's dataset-fashion-mnist)",
                  aliases=("fashion_mnist", "fmnist"))
def load_fashion_mnist(request: DatasetRequest) -> Dataset:
    """From ``--data-dir`` when given (only there: a folder the user named never falls back silently),
    else ``$LIPBENCH_DATA``, else Debian's package."""
    folders = request.folders("fashion-mnist")
    for directory in folders if request.data_dir else [*folders, DEBIAN_FOLDER]:
        paths = {key: find_idx(directory, stem) for key, stem in IDX_FILES.items()}
        if all(paths.values()):
            return from_arrays("fashion-mnist", **{key: read_idx(path) for key, path in paths.items()})
    if request.data_dir:
        raise UserError(f"Fashion-MNIST's four IDX files are not in --data-dir {request.data_dir} (nor its "
                        "fashion-mnist/ subfolder); put them there, or leave --data-dir out to use "
                        "$LIPBENCH_DATA or Debian's dataset-fashion-mnist")
    raise UserError("Fashion-MNIST not found: run `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), "
                    "or put its four IDX files in a folder and pass --data-dir (or set LIPBENCH_DATA)")
