"""The LiResNet network (Hu et al., NeurIPS 2023; LiResNet++: Hu et al., ICLR 2024), as in github.com/hukkai/liresnet.

Layout (depth L, width W, neck width N, D dense layers; every layer from ``lipbench.layers.liresnet``):
    zero-pad the image to a multiple of 8 pixels (an isometry);
    stem: a 5 x 5 stride-2 convolution to W channels, or for images of 128 pixels and more the
        reference's patch stem (PixelUnshuffle by p = round(sqrt(W / 3)), then a 1 x 1 convolution);
    L linear residual blocks x + conv(x), each followed by MinMax, residual scale L^-1/2;
    neck: PixelUnshuffle(4), a Cholesky-orthogonal 1 x 1 convolution 16W -> W (the reference's 4 x 4
        stride-4 convolution), flatten, a Cholesky-orthogonal dense layer to N, MinMax;
    D Cholesky-orthogonal residual dense layers N -> N (residual scale D^-1/2), each followed by MinMax;
    head: a Cholesky-orthogonal dense layer N -> n_classes (rows nearly orthonormal).
Everything between the method layers is 1-Lipschitz by construction (padding, PixelUnshuffle and
flattening are isometries, MinMax permutes coordinates), so the bound is the product of the layers'.
The reference's head is a last-layer-normalized dense layer with GloRo's per-pair margins; here the
head is the family's ``head`` attribute, the one place a normalized head plugs in.
Sizes: XS-L train on a CPU; L<depth>W<width> are the papers' (L12W512 for CIFAR, L12W588 for ImageNet,
both with N = 2048 and D = 8 as in the reference's LiResNet++).
"""
from __future__ import annotations

import math
import re
from typing import Any

from torch import Tensor, nn

from lipbench.blocks import MaxMin, PadTo
from lipbench.contracts import product_of_layer_bounds
from lipbench.errors import UserError
from lipbench.layers.liresnet import CholeskyLinear, LiResConv2d
from lipbench.registry import LayerMethod, register_model

SIZES = {"XS": (4, 32, 256, 2), "S": (6, 64, 512, 4), "M": (8, 128, 1024, 4), "L": (12, 256, 1024, 8)}
PAPER_SIZES = ("L12W512", "L12W588")
SIZE_PATTERN = re.compile(r"L(\d+)W(\d+)")
PAPER_NECK, PAPER_DENSE = 2048, 8
PATCH_STEM_FROM = 128  # image side from which the stem cuts patches, as the reference does for ImageNet
NECK_PATCH = 4


class LiResNet(nn.Module):
    """Stem, ``depth`` linear residual blocks, Cholesky neck and dense layers, head (module docstring)."""

    def __init__(self, depth: int, width: int, neck_width: int, dense_layers: int,
                 in_shape: tuple[int, int, int], n_classes: int):
        super().__init__()
        if len(in_shape) != 3:
            raise UserError(f"liresnet takes images (channels, height, width), not inputs of shape {in_shape}")
        if min(depth, width, neck_width) < 1 or dense_layers < 0:
            raise UserError(f"liresnet needs positive depth, width and neck_width, got L{depth}W{width}, "
                            f"neck_width {neck_width}, dense_layers {dense_layers}")
        channels, height, image_width = in_shape
        self.in_shape = tuple(in_shape)
        if max(height, image_width) >= PATCH_STEM_FROM:
            patch = max(1, round(math.sqrt(width / channels)))
            stem: list[nn.Module] = [PadTo(channels, patch * NECK_PATCH), nn.PixelUnshuffle(patch),
                                     LiResConv2d(channels * patch ** 2, width, 1)]
            reduction = patch
        else:
            stem, reduction = [PadTo(channels, 2 * NECK_PATCH), LiResConv2d(channels, width, 5, stride=2)], 2
        features = (math.ceil(height / reduction / NECK_PATCH), math.ceil(image_width / reduction / NECK_PATCH))
        self.stem = nn.Sequential(*stem, MaxMin())
        self.blocks = nn.Sequential(*(nn.Sequential(LiResConv2d(width, width, 3, residual_scale=depth ** -0.5),
                                                    MaxMin()) for _ in range(depth)))
        self.neck = nn.Sequential(nn.PixelUnshuffle(NECK_PATCH), CholeskyLinear(width * NECK_PATCH ** 2, width),
                                  nn.Flatten(), CholeskyLinear(width * math.prod(features), neck_width), MaxMin())
        self.dense = nn.Sequential(*(nn.Sequential(CholeskyLinear(neck_width, neck_width, dense_layers ** -0.5),
                                                   MaxMin()) for _ in range(dense_layers)))
        if n_classes > neck_width:
            raise UserError(f"{n_classes} classes do not fit the neck width {neck_width}")
        self.head = CholeskyLinear(neck_width, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dense(self.neck(self.blocks(self.stem(x)))))

    def method_layers(self) -> list[nn.Module]:
        """Every LiResNet layer in order (the audit bounds each one by itself)."""
        return [m for m in self.modules() if isinstance(m, (LiResConv2d, CholeskyLinear))]

    def lipschitz_bound(self) -> float:
        return product_of_layer_bounds(self, 1.0)


def parse_size(size: str) -> tuple[int, int, int, int]:
    """(depth, width, neck width, dense layers) of XS-L or L<depth>W<width>."""
    if size in SIZES:
        return SIZES[size]
    match = SIZE_PATTERN.fullmatch(size)
    if match is None:
        raise UserError(f"unknown liresnet size {size!r}; use {', '.join(SIZES)} or L<depth>W<width>, e.g. L12W512")
    return int(match[1]), int(match[2]), PAPER_NECK, PAPER_DENSE


@register_model("liresnet", sizes=(*SIZES, *PAPER_SIZES), methods=("liresnet",), size_pattern=SIZE_PATTERN.pattern,
                description="LiResNet++ (Hu et al. 2023/2024): stem, linear residual blocks, Cholesky neck and dense",
                size_notes={size: f"L{d}W{w}, neck {n}, {k} dense" for size, (d, w, n, k) in SIZES.items()})
def build_liresnet(method: LayerMethod, size: str, in_shape: tuple[int, ...], n_classes: int,
                   **options: Any) -> LiResNet:
    depth, width, neck_width, dense_layers = parse_size(size)
    known = {"neck_width": neck_width, "dense_layers": dense_layers}
    unknown = set(options) - set(known)
    if unknown:
        raise UserError(f"unknown liresnet options {sorted(unknown)}; known: {sorted(known)}")
    try:
        chosen = {key: int(options.get(key, default)) for key, default in known.items()}
    except (TypeError, ValueError):
        raise UserError(f"liresnet options {sorted(known)} take integers, got {options}") from None
    return LiResNet(depth, width, chosen["neck_width"], chosen["dense_layers"], tuple(in_shape), n_classes)
