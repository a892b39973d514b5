"""Reuse a re-parameterized weight in eval mode until a parameter changes.

Many 1-Lipschitz layers compute their effective weight from free parameters (a rescaling,
an orthogonalization, a matrix exponential). In training that must run every step; at
inference it is wasted work. ``eval_cached`` memoizes a module method while the module is
in eval mode. The memo is keyed by every parameter's and buffer's storage, dtype and
version counter, so an optimizer step, ``load_state_dict``, ``.to()`` or ``.double()``
invalidates it, and so does switching back to training mode. (Writing through ``.data``
bypasses version counters; torch's optimizers and ``load_state_dict`` do not do that.)
"""
from __future__ import annotations

import functools
import itertools
from typing import Callable, TypeVar

import torch
from torch import nn

T = TypeVar("T")


def _state_key(module: nn.Module) -> tuple:
    tensors = itertools.chain(module.parameters(), module.buffers())
    return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)


def eval_cached(compute: Callable[[nn.Module], T]) -> Callable[[nn.Module], T]:
    """Decorate ``compute(module)``: recomputed in training mode, memoized (without grad) in eval mode."""
    slot = f"_eval_cache_{compute.__name__}"

    @functools.wraps(compute)
    def cached(module: nn.Module) -> T:
        if module.training:
            module.__dict__.pop(slot, None)
            return compute(module)
        key = _state_key(module)
        memo = module.__dict__.get(slot)
        if memo is not None and memo[0] == key:
            return memo[1]
        with torch.no_grad():
            value = compute(module)
        module.__dict__[slot] = (_state_key(module), value)
        return value

    return cached


def eval_cached_per_shape(compute: Callable[[nn.Module, tuple[int, ...]], T]) -> Callable[[nn.Module, tuple[int, ...]], T]:
    """Decorate ``compute(module, shape)``: recomputed in training mode; in eval mode memoized per shape
    (without grad) until a parameter or buffer changes, as :func:`eval_cached` does."""

    def table(module: nn.Module) -> dict[tuple[int, ...], T]:
        return {}

    table.__name__ = f"{compute.__name__}_per_shape"
    table = eval_cached(table)

    @functools.wraps(compute)
    def cached(module: nn.Module, shape: tuple[int, ...]) -> T:
        if module.training:
            return compute(module, shape)
        memo, shape = table(module), tuple(shape)
        if shape not in memo:
            with torch.no_grad():
                memo[shape] = compute(module, shape)
        return memo[shape]

    return cached
