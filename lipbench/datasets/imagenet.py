"""ImageNet (ILSVRC-2012, Russakovsky et al. 2015) in the usual ImageFolder layout, streamed from its files.

``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` (the validation images sorted into class folders, as
the common preparation scripts do) under ``--data-dir`` or ``$LIPBENCH_DATA`` (or their ``imagenet/``
subfolder). About 1.3 M images are far beyond memory as floats, so the dataset is never loaded: the
batches are decoded by worker processes (:mod:`lipbench.streaming`). Options, written
``--dataset imagenet:size=64:classes=400``: ``size``, the square resolution of the crops (default 224,
the LiResNet and LipNeXt ImageNet setting); ``classes``, keep the first N wnids in sorted order (a
subset like the ImageNet-400 of LipNeXt's scaling study; the paper's own list of classes is not
reproduced). ``imagenet-400`` is ``imagenet:classes=400``. Class k is the k-th wnid in sorted order;
train/ and val/ must hold the same class folders. Workers: ``$LIPBENCH_DATA_WORKERS``.

The inputs are centred by the usual published ImageNet channel mean (0.485, 0.456, 0.406), not a pass
over the files; centring is a translation, so it changes no certified radius.
"""
from __future__ import annotations

from pathlib import Path

import torch

from lipbench.data import DatasetRequest, StreamingDataset, register_dataset
from lipbench.errors import UserError
from lipbench.streaming import image_files

MEAN = (0.485, 0.456, 0.406)
DEFAULT_SIZE = 224


def find_root(request: DatasetRequest) -> Path:
    for directory in request.folders("imagenet"):
        if (directory / "train").is_dir() and (directory / "val").is_dir():
            return directory
    where = request.data_dir or "$LIPBENCH_DATA"
    raise UserError(f"ImageNet not found: pass --data-dir (or set LIPBENCH_DATA) to a folder with train/<wnid>/ "
                    f"and val/<wnid>/ of JPEGs (looked in {where} and its imagenet/ subfolder)")


def load(request: DatasetRequest, default_classes: int | None) -> StreamingDataset:
    root = find_root(request)
    splits = {split: sorted(p.name for p in (root / split).iterdir() if p.is_dir()) for split in ("train", "val")}
    if splits["train"] != splits["val"] or not splits["train"]:
        missing = sorted(set(splits["train"]) ^ set(splits["val"]))[:3]
        raise UserError(f"{root}: train/ and val/ must hold the same class folders (differing: {missing or 'none'})")
    classes = splits["train"]
    wanted = request.option("classes", default_classes or len(classes))
    if wanted > len(classes):
        raise UserError(f"{root} has {len(classes)} classes, fewer than the {wanted} asked for")
    classes, size = classes[:wanted], request.option("size", DEFAULT_SIZE)
    name = "imagenet" + (f"-{wanted}" if wanted != len(splits["train"]) or default_classes else "")
    return StreamingDataset(f"{name}@{size}px", image_files(root / "train", classes, size),
                            image_files(root / "val", classes, size), len(classes),
                            torch.tensor(MEAN).reshape(1, 3, 1, 1))


@register_dataset("imagenet", "ImageNet (train/<wnid>/, val/<wnid>/ JPEGs; streamed; options size=, classes=)",
                  aliases=("ilsvrc2012",), options=("size", "classes"))
def load_imagenet(request: DatasetRequest) -> StreamingDataset:
    return load(request, None)


@register_dataset("imagenet-400", "ImageNet's first 400 classes (sorted wnids; streamed; option size=)",
                  options=("size",))
def load_imagenet_400(request: DatasetRequest) -> StreamingDataset:
    return load(request, 400)
