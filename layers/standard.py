"""Unconstrained baseline: plain convolutions and dense layers.

Nothing constrains the weights, so the certificate may not assume L = 1. Each layer reports
a sound upper bound of its own operator norm on the input it sees (``lipbench.bounds``:
exact SVD for dense layers; the FFT norm of the zero-padded convolution embedded in a
circular one, an upper bound), and the model's bound is their product. That product is
loose for deep networks, which is exactly what the baseline is there to show.

Init: orthogonal (rows of the flattened kernel orthonormal) and zero bias, so that the signal keeps
its scale through the 27 layers of the ConvNet. PyTorch's default (Kaiming-uniform, gain 1/sqrt 3)
shrinks it by about 0.58 per layer, 1e-7 over the network: the logits were the biases alone and a
2-minute Fashion-MNIST run stayed at chance (10.0%).
"""
from __future__ import annotations

from torch import nn

from lipbench.bounds import conv_norm, dense_norm
from lipbench.registry import register_layer

# Nothing bounds the 27-layer network's gradient. 60 OneCycle steps of the XS ConvNet on Fashion-MNIST
# (batch 256, momentum 0.9), test accuracy by peak lr:
#   lr        0.005   0.01    0.02    0.05
#   standard  -       50.5%   39.9%   NaN at step 33
#   rslmi     75.8%   79.7%   71.2%   NaN at step 16 (its penalty barely acts this early)
# A budget preset may still set its own lr for either.
UNCONSTRAINED_PROTOCOL = {"lr": 0.01}


def orthogonal_init(layer: nn.Conv2d | nn.Linear) -> None:
    nn.init.orthogonal_(layer.weight)
    nn.init.zeros_(layer.bias)


class BoundedConv2d(nn.Conv2d):
    """nn.Conv2d with zero 'same' padding that reports a sound bound of its operator norm."""

    def reset_parameters(self) -> None:
        orthogonal_init(self)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)

    def lipschitz_bound(self, input_shape: tuple[int, ...]) -> float:
        return conv_norm(self.weight, tuple(input_shape[-2:]), self.padding_mode)


class BoundedLinear(nn.Linear):
    """nn.Linear that reports its exact spectral norm."""

    def reset_parameters(self) -> None:
        orthogonal_init(self)

    def lipschitz_bound(self, input_shape: tuple[int, ...] = ()) -> float:
        return dense_norm(self.weight)


@register_layer("standard", family="unconstrained", padding="zero", exact=True, bound=float("inf"),
                strides=(1, 2), protocol=UNCONSTRAINED_PROTOCOL,
                description="Plain conv; certificate = product of sound per-layer norms")
def build_standard(kind: str, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Module:
    if kind == "linear":
        return BoundedLinear(in_channels, out_channels)
    return BoundedConv2d(in_channels, out_channels, kernel_size, stride)
