"""BRONet (Lai et al., ICML 2025, arXiv:2505.15174), built from any method with conv and dense layers.

Layout (the paper's LiResNet-style network; depth L, width W, dense width D, dense depth N):
    zero-pad the image to a multiple of 8 pixels (an isometry), PixelUnshuffle(2) (a permutation),
    stem: 3x3 conv (4 x channels -> W) + activation,
    backbone: L x (3x3 conv W -> W + activation),
    neck: PixelUnshuffle(4) (4 x 4 patches), 1x1 conv 16W -> W + activation, flatten,
        dense -> D + activation,
    N x (dense D -> D + activation), dense head D -> n_classes.
Every piece but the method's layers is 1-Lipschitz by construction, so the bound is the product of
the method layers' bounds. Where this differs from the reference (ntuaislab/BRONet): the stem is a
method conv after PixelUnshuffle instead of a power-iteration-normalized 5x5 stride-2 conv; the
neck's patch conv and dense layer and the N dense layers are the method's (the reference's CIFAR
configs use Cholesky-orthogonalized ones there); the head is the method's dense layer instead of a
row-normalized one (LLN); no batch centering of the backbone's biases (an affine shift); circular
instead of zero padding. Sizes: the paper's L<depth>W<width> (L12W512: BRONet-L of the CIFAR
configs, 8 dense layers of 2048; L6W512: Tiny-ImageNet's, 4 dense layers, BRO rank ratio 0.125,
pass ``--layer-option rank_ratio=0.125``), and XS-L, small members that train on a CPU.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from lipbench.blocks import FirstChannels, MaxMin, PadTo
from lipbench.errors import UserError
from lipbench.models._layered import LayeredNetwork
from lipbench.registry import LayerMethod, create_layer, register_model

PATCH = 4
SIZES = {  # name: (depth, width, dense width, dense depth)
    "XS": (4, 16, 64, 2), "S": (6, 32, 128, 2), "M": (8, 64, 256, 4), "L": (12, 128, 512, 4),
    "L12W512": (12, 512, 2048, 8), "L6W512": (6, 512, 2048, 4),
}


class BRONet(LayeredNetwork):
    """Stem, L convs of width W, a patch neck and N dense layers, every layer from ``method``."""

    def __init__(self, method: LayerMethod, depth: int, width: int, dense_width: int, dense_depth: int,
                 in_shape: tuple[int, ...], n_classes: int, **options: Any):
        super().__init__(method, in_shape)
        if len(in_shape) != 3:
            raise UserError(f"BRONet takes images (channels, height, width), not inputs of shape {in_shape}")
        if n_classes > dense_width:
            raise UserError(f"{n_classes} classes do not fit the dense width {dense_width}")
        channels, height, image_width = in_shape
        activation = method.activation or MaxMin
        grid = (-(-height // (2 * PATCH))) * (-(-image_width // (2 * PATCH)))
        built: list[nn.Module] = []

        def layer(kind: str, n_in: int, n_out: int, kernel: int | None = None) -> nn.Module:
            built.append(create_layer(method.name, kind, n_in, n_out, kernel, 1 if kernel else None, **options))
            return built[-1]

        body: list[nn.Module] = [PadTo(channels, 2 * PATCH), nn.PixelUnshuffle(2),
                                 layer("conv", 4 * channels, width, 3), activation()]
        for _ in range(depth):
            body += [layer("conv", width, width, 3), activation()]
        body += [nn.PixelUnshuffle(PATCH), layer("conv", PATCH ** 2 * width, width, 1), activation(), nn.Flatten(),
                 layer("linear", width * grid, dense_width), activation()]
        for _ in range(dense_depth):
            body += [layer("linear", dense_width, dense_width), activation()]
        body += [layer("linear", dense_width, n_classes), FirstChannels(n_classes)]
        self.set_body(body, built)


@register_model("bronet", sizes=tuple(SIZES), kinds=("conv", "linear"),
                description="BRONet (Lai et al. 2025): stem, L convs of width W, patch neck, N dense layers",
                size_notes={size: f"depth {d}, width {w}, dense {n} x {dw}" for size, (d, w, dw, n) in SIZES.items()})
def build_bronet(method: LayerMethod, size: str, in_shape: tuple[int, ...], n_classes: int,
                 **options: Any) -> BRONet:
    return BRONet(method, *SIZES[size], tuple(in_shape), n_classes, **options)
