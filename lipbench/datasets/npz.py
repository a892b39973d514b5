"""A dataset of your own as one ``.npz`` file holding ``x_train, y_train, x_test, y_test``
(images N x H x W or N x H x W x C, uint8 or floats in [0, 1]). Loaded with ``allow_pickle=False``."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from lipbench.data import Dataset, DatasetRequest, from_arrays, register_dataset
from lipbench.errors import UserError

ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def is_npz(path: Path) -> bool:
    return path.suffix == ".npz"


@register_dataset("npz", "a .npz file with x_train, y_train, x_test, y_test", claims_path=is_npz)
def load_npz(request: DatasetRequest) -> Dataset:
    path = Path(request.name).expanduser()
    if not path.is_file():
        raise UserError(f"dataset file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [key for key in ARRAYS if key not in arrays.files]
            if missing:
                raise UserError(f"{path} lacks arrays {missing}; it needs {', '.join(ARRAYS)} (found {arrays.files})")
            loaded = {key: arrays[key] for key in ARRAYS}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise UserError(f"cannot read {path} as .npz of plain arrays: {error}") from None
    return from_arrays(path.stem, **loaded)
