"""The ConvNet of "1-Lipschitz Layers Compared" (Prach et al., CVPR 2024), built from any method.

Layout (w = width of the size):
    zero-pad the image to a multiple of 32 pixels and to w channels (both isometries),
    1x1 conv + activation,
    5 downsize blocks: 5 x (k x k conv + activation), keep the first c/2 channels,
        PixelUnshuffle(2) (c -> 2c channels, half the resolution); the last block uses k = 1,
    global max pool, a dense head (or 1x1 conv) of width 32w, the first n_classes outputs.
Every piece but the method's layers is 1-Lipschitz by construction (padding and PixelUnshuffle are
isometries, slicing and max pooling are non-expansive), so the model's bound is the product of its
method layers' bounds.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from lipbench.blocks import FirstChannels, MaxMin, PadTo
from lipbench.errors import UserError
from lipbench.models._layered import LayeredNetwork
from lipbench.registry import LayerMethod, create_layer, register_model

WIDTHS = {"XS": 16, "S": 32, "M": 64, "L": 128}
BLOCKS = 5
CONVS_PER_BLOCK = 5


class ConvNet(LayeredNetwork):
    """The comparison paper's ConvNet with every conv and the head taken from ``method``."""

    def __init__(self, method: LayerMethod, width: int, in_shape: tuple[int, int, int],
                 n_classes: int, kernel_size: int = 3, **options: Any):
        super().__init__(method, in_shape)
        if len(in_shape) != 3:
            raise UserError(f"the ConvNet takes images (channels, height, width), not inputs of shape {in_shape}")
        channels, _, _ = in_shape
        if channels > width:
            raise UserError(f"input has {channels} channels, more than the model width {width}")
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
        self.set_body(body, built)


@register_model("convnet", sizes=tuple(WIDTHS), kinds=("conv",),
                description="The ConvNet of Prach et al. (CVPR 2024): 27 layers of the method, widths 16-128",
                size_notes={size: f"width {width}" for size, width in WIDTHS.items()},
                features=lambda size: WIDTHS[size] * 2 ** BLOCKS)
def build_convnet(method: LayerMethod, size: str, in_shape: tuple[int, ...], n_classes: int,
                  **options: Any) -> ConvNet:
    return ConvNet(method, WIDTHS[size], in_shape, n_classes, **options)
