"""The residual form shared by CPL and SLL: ``x - W_out^T ReLU(W x + b)``.

W is a dense weight (m, n) or a convolution with kernel (m, n, k, k) and zero 'same'
padding (as in both papers); W^T is then ``conv_transpose2d`` with the same kernel and
padding, which is exactly the adjoint of the zero-padded convolution. Each method gives
``W_out``: W rescaled so that ``W_out^T D W`` has norm <= 2 for every diagonal D with entries
in [0, 1] (the ReLU's derivative). The Jacobian I - W_out^T D W is symmetric with
eigenvalues in [1 - 2, 1], hence norm <= 1. CPL rescales by 2 / ||W||^2, SLL per hidden
channel by 2 T^-1. The residual form needs n == m (square layers).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def check_square(name: str, in_channels: int, out_channels: int) -> None:
    if in_channels != out_channels:
        raise ValueError(f"{name} is a residual layer: in_channels ({in_channels}) must equal "
                         f"out_channels ({out_channels})")


class ResidualLayer(nn.Module):
    """``x - W_out^T ReLU(W x + b)``; dense for ``kernel_size=None``, else a k x k convolution.

    Subclasses define ``output_weight(size)``: W_out for inputs of spatial ``size`` (``()`` for
    dense inputs). Init: Xavier-normal W, uniform bias in +-1/sqrt(fan_in) (both papers).
    """

    def __init__(self, channels: int, kernel_size: int | None):
        super().__init__()
        shape = (channels, channels) if kernel_size is None else (channels, channels, kernel_size, kernel_size)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.empty(channels))
        nn.init.xavier_normal_(self.weight)
        fan_in = self.weight[0].numel()
        nn.init.uniform_(self.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    @property
    def padding(self) -> int:
        return self.weight.shape[-1] // 2

    def output_weight(self, size: tuple[int, ...]) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        negated = -self.output_weight(tuple(x.shape[2:]))  # x - W_out^T h as one in-place add
        if self.weight.dim() == 2:
            hidden = F.relu(F.linear(x, self.weight, self.bias), inplace=True)
            return F.linear(hidden, negated.T).add_(x)
        hidden = F.relu(F.conv2d(x, self.weight, self.bias, padding=self.padding), inplace=True)
        return F.conv_transpose2d(hidden, negated, padding=self.padding).add_(x)
