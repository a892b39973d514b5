"""Plain convolutions and dense layers that report a sound bound of their own operator norm.

Shared by the unconstrained baseline (``standard``) and RS-LMI, whose layers are unconstrained
between their penalties: nothing bounds them, so the certificate multiplies these per-layer norms
(``lipbench.bounds``: the exact SVD for dense layers; the FFT norm of the zero-padded convolution
embedded in a circular one, an upper bound) and never assumes L = 1.
"""
from __future__ import annotations

from torch import nn

from lipbench.bounds import conv_norm, dense_norm
from lipbench.linalg import orthogonal_init

# Nothing bounds the gradient of a deep unconstrained network: at the default peak lr 0.05 both
# methods diverge within the first epoch, at 0.01 they train (the lr scan is in the README).
UNCONSTRAINED_PROTOCOL = {"lr": 0.01}


class BoundedConv2d(nn.Conv2d):
    """nn.Conv2d with zero 'same' padding that reports a sound bound of its operator norm.

    Init: orthogonal, zero bias, so that the signal keeps its scale through a deep network
    (PyTorch's default init shrinks it by about 0.58 per layer).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)

    def reset_parameters(self) -> None:
        orthogonal_init(self)

    def lipschitz_bound(self, input_shape: tuple[int, ...]) -> float:
        return conv_norm(self.weight, tuple(input_shape[-2:]), self.padding_mode)


class BoundedLinear(nn.Linear):
    """nn.Linear that reports its exact spectral norm; orthogonal init, zero bias."""

    def reset_parameters(self) -> None:
        orthogonal_init(self)

    def lipschitz_bound(self, input_shape: tuple[int, ...] = ()) -> float:
        return dense_norm(self.weight)
