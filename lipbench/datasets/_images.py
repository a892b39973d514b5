"""Decoding image files (Pillow, which matplotlib already requires), with one clear line per bad file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lipbench.errors import UserError


def read_rgb(file: Path) -> np.ndarray:
    """The image at ``file`` as H x W x 3 uint8 (grey images are repeated to three channels)."""
    try:
        with Image.open(file) as image:
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise UserError(f"{file} is missing: the dataset's folder is incomplete") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise UserError(f"{file} is not an image lipbench can decode ({type(error).__name__}: {error}); "
                        "replace it with the release's file") from None
