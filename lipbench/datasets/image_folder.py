"""A dataset of your own as an image-folder tree: ``train/<class>/*.png`` and ``test/<class>/*.png``
(the same class folders in both; every image of one size). Decoded with Pillow."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lipbench.data import Dataset, DatasetRequest, from_arrays, register_dataset
from lipbench.errors import UserError


def is_image_folder(path: Path) -> bool:
    return path.is_dir()


def read_image(file: Path) -> np.ndarray:
    try:
        with Image.open(file) as image:
            return np.asarray(image.convert("RGB" if image.mode not in ("L", "1") else "L"))
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise UserError(f"{file} is not an image lipbench can read ({type(error).__name__}); remove it or "
                        "convert it to PNG or JPEG") from None


@register_dataset("image-folder", "an image folder with train/<class>/ and test/<class>/",
                  claims_path=is_image_folder)
def load_image_folder(request: DatasetRequest) -> Dataset:
    root = Path(request.name).expanduser()
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
            for file in sorted(p for p in (root / split / cls).iterdir() if p.is_file()):
                images.append(read_image(file))
                labels.append(label)
        shapes = {im.shape for im in images}
        if len(shapes) != 1:
            raise UserError(f"{root / split}: images differ in size or mode ({sorted(shapes)[:3]}...); "
                            "resize them to one shape")
        return np.stack(images), np.asarray(labels)

    return from_arrays(root.name, *read("train"), *read("test"), n_classes=len(classes))
