"""A small generated 10-class problem for fast tests: each class is a fixed random smooth template,
each sample the template plus noise. Learnable in seconds."""
from __future__ import annotations

import torch
from torch import Tensor

from lipbench.data import Dataset, DatasetRequest, register_dataset


def make_synthetic(n_train: int = 2048, n_test: int = 512, n_classes: int = 10, size: int = 16,
                   seed: int = 0) -> Dataset:
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


@register_dataset("synthetic", "a small generated 10-class problem (16 x 16, seconds to learn)")
def load_synthetic(request: DatasetRequest) -> Dataset:
    return make_synthetic()
