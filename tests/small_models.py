"""The smallest network of each registered method, for tests that train or certify every method."""
from __future__ import annotations

from typing import NoReturn

import pytest
import torch

import lipbench
from lipbench.errors import UserError


def skip_without_extra(error: UserError) -> NoReturn:
    """Skip a method whose optional dependency is not installed (its error names the pip extra); any
    other user error fails the test."""
    if "pip install" not in str(error):
        raise error
    pytest.skip(str(error))


def smallest_model(name: str, in_shape: tuple[int, ...], n_classes: int, model: str | None = None) -> torch.nn.Module:
    """``name`` in its own family (or ``model``) at the family's first size; a method that offers only 1x1
    kernels (e.g. lipnext-orth) builds the ConvNet with 1x1 kernels."""
    family = lipbench.registry.MODELS.get(model) if model else lipbench.registry.model_family(name)
    torch.manual_seed(0)
    try:
        return lipbench.create_model(name, family.sizes[0], in_shape, n_classes, model=model)
    except UserError as error:
        skip_without_extra(error)
    except ValueError as error:
        if "kernel_size" not in str(error):
            raise
        return lipbench.create_model(name, family.sizes[0], in_shape, n_classes, model=model, kernel_size=1)
