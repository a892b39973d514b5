"""1-Lipschitz pieces that model families and layers share: activations, padding, projections."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MaxMin(nn.Module):
    """MaxMin activation (Anil et al. 2019): pairs channel i with channel i + C/2 and sorts each pair.

    It only permutes coordinates per input, so it is 1-Lipschitz and gradient-norm preserving. It
    follows every layer, so each path uses its fastest form: a sort of the pairs for training (the
    backward of torch.maximum/minimum is slow), torch.aminmax for inference.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] % 2:
            raise ValueError(f"MaxMin needs an even number of channels, got {x.shape[1]}")
        pairs = x.unflatten(1, (2, -1))  # (N, 2, C/2, ...): channel i with channel i + C/2
        if torch.is_grad_enabled() and x.requires_grad:
            return pairs.sort(dim=1, descending=True).values.flatten(1, 2)
        low, high = torch.aminmax(pairs, dim=1)
        return torch.cat((high, low), dim=1)


class PadTo(nn.Module):
    """Zero-pad channels up to ``channels`` and spatial dims up to a multiple of ``multiple`` (an isometry)."""

    def __init__(self, channels: int, multiple: int):
        super().__init__()
        self.channels, self.multiple = channels, multiple

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        pad_h = -height % self.multiple
        pad_w = -width % self.multiple
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        return F.pad(x, (0, 0, 0, 0, 0, self.channels - x.shape[1]))


class FirstChannels(nn.Module):
    """Keep the first ``channels`` channels (a projection: 1-Lipschitz)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        return x[:, : self.channels]
