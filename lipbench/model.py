"""The ConvNet of "1-Lipschitz Layers Compared" (Prach et al., CVPR 2024), built from any method.

Layout (w = width of the size):
    zero-pad the image to a multiple of 32 pixels and to w channels (both isometries),
    1x1 conv + activation,
    5 downsize blocks: 5 x (k x k conv + activation), keep the first c/2 channels,
        PixelUnshuffle(2) (c -> 2c channels, half the resolution); the last block uses k = 1,
    global max pool, a dense head (or 1x1 conv) of width 32w, the first n_classes outputs.
Every piece but the method's layers is 1-Lipschitz by construction (padding and
PixelUnshuffle are isometries, slicing and max pooling are non-expansive), so the model's
bound is the product of its method layers' bounds.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipbench.errors import UserError
from lipbench.registry import LayerMethod, create_layer, get_method

SIZES = {"XS": 16, "S": 32, "M": 64, "L": 128}
BLOCKS = 5
CONVS_PER_BLOCK = 5


class MaxMin(nn.Module):
    """MaxMin activation (Anil et al. 2019): pairs channel i with channel i + C/2 and sorts each pair.

    It only permutes coordinates per input, so it is 1-Lipschitz and gradient-norm preserving.
    Speed matters (it follows every conv). Measured on 2 CPU threads, batch 64 x 64 x 16 x 16,
    median of interleaved ratios to ReLU: for training, sorting the pairs costs 2.2x ReLU
    against 7.5x for torch.maximum/minimum (their backward is slow); for inference,
    torch.aminmax costs 3.2x against 4.0x for the sort. So each path uses its fastest form.
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


class ConvNet(nn.Module):
    """The comparison paper's ConvNet with every conv and the head taken from ``method``."""

    def __init__(self, method: LayerMethod, width: int, in_shape: tuple[int, int, int],
                 n_classes: int, kernel_size: int = 3, **options: Any):
        super().__init__()
        channels, _, _ = in_shape
        if channels > width:
            raise UserError(f"input has {channels} channels, more than the model width {width}")
        self.method, self.in_shape = method, tuple(in_shape)
        activation = method.activation or MaxMin

        built: list[nn.Module] = []

        def conv(c: int, k: int) -> nn.Module:
            built.append(create_layer(method.name, "conv", c, c, k, 1, **options))
            return built[-1]

        body: list[nn.Module] = [PadTo(width, 2 ** BLOCKS), conv(width, 1), activation()]
        for block in range(BLOCKS):
            c = width * 2 ** block
            k = 1 if block == BLOCKS - 1 else kernel_size
            for _ in range(CONVS_PER_BLOCK):
                body += [conv(c, k), activation()]
            body += [FirstChannels(c // 2), nn.PixelUnshuffle(2)]
        head_width = width * 2 ** BLOCKS
        if n_classes > head_width:
            raise UserError(f"{n_classes} classes do not fit the head width {head_width}")
        if "linear" in method.kinds:
            built.append(create_layer(method.name, "linear", head_width, head_width, **options))
            body += [nn.AdaptiveMaxPool2d(1), nn.Flatten(), built[-1]]
        else:
            body += [nn.AdaptiveMaxPool2d(1), conv(head_width, 1), nn.Flatten()]
        body.append(FirstChannels(n_classes))
        self.body = nn.Sequential(*body)
        self.method_layer_positions = [i for i, m in enumerate(body) if any(m is b for b in built)]

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)

    def method_layers(self) -> list[nn.Module]:
        """The layers built by the method, in order (everything else is 1-Lipschitz by construction)."""
        return [self.body[i] for i in self.method_layer_positions]

    def layer_bounds(self) -> list[float]:
        """Each method layer's Lipschitz bound on the input shape it actually sees."""
        return [layer_bound(layer, shape, self.method) for layer, shape in input_shapes(self, self.in_shape)]

    def lipschitz_bound(self) -> float:
        return math.prod(self.layer_bounds())


def layer_bound(layer: nn.Module, input_shape: tuple[int, ...], method: LayerMethod) -> float:
    """A layer's own ``lipschitz_bound(input_shape)`` if it has one, else the method's declared bound."""
    own = getattr(layer, "lipschitz_bound", None)
    return float(own(input_shape)) if callable(own) else method.bound


def input_shapes(model: nn.Module, in_shape: tuple[int, ...]) -> list[tuple[nn.Module, tuple[int, ...]]]:
    """(layer, input shape without batch) for each of ``model.method_layers()``, traced with one forward pass."""
    layers = model.method_layers()
    shapes: dict[int, tuple[int, ...]] = {}

    def record(module: nn.Module, args: tuple) -> None:
        shapes.setdefault(id(module), tuple(args[0].shape[1:]))

    hooks = [layer.register_forward_pre_hook(record) for layer in layers]
    parameter = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *in_shape, dtype=parameter.dtype, device=parameter.device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return [(layer, shapes[id(layer)]) for layer in layers]


def create_model(layer: str, size: str = "XS", in_shape: tuple[int, int, int] = (3, 32, 32),
                 n_classes: int = 10, **options: Any) -> nn.Module:
    """Build the benchmark model of ``size`` from method ``layer`` (the method's own model if it has one)."""
    method = get_method(layer)
    if method.model is not None:
        return method.model(size=size, in_shape=in_shape, n_classes=n_classes, **options)
    if size not in SIZES:
        raise UserError(f"unknown size {size!r} for layer {layer!r}; choose one of {', '.join(SIZES)}")
    return ConvNet(method, SIZES[size], in_shape, n_classes, **options)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
