"""LipNeXt: constraint-free, convolution-free 1-Lipschitz networks (Hu, Hu & Fredrikson, ICLR 2026, arXiv:2601.18513).

Block, on a feature map X (C channels, H x W tokens), with per-pixel C x C orthogonal R and M:

    Z = β-Abs( M Rᵀ S( R (X + p) ) + b )

* p: a learnable H x W positional embedding, broadcast over channels; b: a bias.
* S, the spatial shift: ⌈αC⌉ channels (α = 1/16 by default; at most C/4) each move up, down,
  left and right by one pixel, circularly; the rest stay. A permutation of coordinates.
* β-Abs: |x| on the first ⌊βC⌋ channels (β = 0.75), the identity on the rest.
Network: zero-pad the image to a multiple of the patch size P, cut it into P x P patches
(PixelUnshuffle), project each patch vector with a semi-orthogonal matrix to the width W (the
smaller side padded with zeros: an isometry or a co-isometry); L blocks; L2 spatial pooling
sqrt(Σ_hw x²) per channel; a semi-orthogonal dense head, whose first n_classes outputs are the logits.

Lipschitz bound. The shift, padding, PixelUnshuffle, |.|, slicing and L2 pooling are
1-Lipschitz exactly; p and b are translations. So the model's bound is the product of the exact
spectral norms of the matrices it applies (per block R and the product M Rᵀ): 1 for orthogonal
weights, and 1 + drift for the weights the optimizer actually produced. Certificates use that
product (SVDs in float64), never an assumed 1, so they stay sound when an optimizer leaves the
manifold. Training keeps the weights orthogonal with the Riemannian optimizer of
``lipbench.manifold`` (FastExp steps, periodic polar retraction, optional lookahead).

Choices where the paper leaves room (settings of :class:`LipNeXtConfig` where it matters):
* shift groups are rounded up, so α > 0 always shifts at least one channel per direction;
* the stem is one semi-orthogonal projection of non-overlapping P x P patches (P = 4), without p;
* M Rᵀ is applied as one matrix (one d³ product per step instead of a third per-pixel product),
  cached in eval mode; weights start Haar-random orthogonal, p and b at zero;
* the optimizer (``--optimizer``, ``--recipe lipnext``: Adam with Lookahead, as the paper trains) comes
  from the training settings; the retraction interval rides on the model (``--layer-option``); all
  groups share the lr;
* polar retraction runs every 100 steps, or every epoch when that is shorter (the paper: every
  epoch). Large early steps (FastExp order 3-4, ‖ηU‖_F up to ~1) drift by up to ~1e-2 per step,
  and an ImageNet epoch is 5000 steps; an SVD every 100 steps costs about 2-6 manifold steps.

Registered: ``lipnext`` (the block, with the model, optimizer and certificate hooks),
``lipnext-shift`` (the block's linear part M Rᵀ S R + b: an orthogonal stand-in for a 3 x 3 conv;
at kernel_size 1 the projection alone) and ``lipnext-orth`` (the semi-orthogonal 1 x 1 / dense
projection). All three declare ``orthogonal=True`` (the block too: β-Abs has a ±1 diagonal
Jacobian). That holds under the Riemannian optimizer (their hooks), and under optimizers that
know nothing of the manifold because these layers, unlike the LipNeXt model (which is trained by
its own hook and skips the cost), pass their weights' gradients through the tangent projection
(:func:`lipbench.manifold.with_tangent_gradient`): a plain SGD step X(I - ηA), A skew, never
shrinks a singular value and grows them by O(η²) only. Without it, 20 SGD steps at lr 0.1 on the
conformance suite's gain-maximizing loss blow M Rᵀ S R (cubic in the weights' scale) up to inf
within 8 steps; with it, σ stays in [1 - 5e-7, 1 + 4e-7] there. Momentum or Adam break the
σ_min >= 1 argument (the drift stays O(η²) per step); the bound is reported exactly either way.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipbench.blocks import PadTo
from lipbench.bounds import dense_norm
from lipbench.caching import eval_cached
from lipbench.errors import UserError
from lipbench.linalg import orthogonality_error
from lipbench.manifold import RiemannianOptimizer, with_tangent_gradient
from lipbench.registry import LayerMethod, OptimizerSettings, register_layer, register_model

ALPHA, BETA = 1 / 16, 0.75
SIZES = {"XS": (4, 64), "S": (8, 128), "M": (16, 256), "L": (32, 512)}  # (depth, width)
PAPER_SIZES = ("L32W1024", "L32W2048")
SIZE_PATTERN = re.compile(r"L(\d+)W(\d+)")
ROUNDING = 1e-9  # so that e.g. 0.29 * 100 counts as 29 channels


def channel_matmul(x: Tensor, matrix: Tensor, bias: Tensor | None = None) -> Tensor:
    """``matrix`` (out, in) times every pixel, plus ``bias``: (N, in, H, W) -> (N, out, H, W), or (N, in) -> (N, out).

    One GEMM over all pixels; the result is channels-last in memory, so the next call needs no copy.
    """
    return F.linear(x.movedim(1, -1), matrix, bias).movedim(-1, 1)


class OrthogonalLinear(nn.Module):
    """y = Q[:out, :in] x (+ b) per pixel, with Q a d x d orthogonal parameter, d = max(in, out).

    The input is zero-padded to d and the output cut to ``out``, so the map is an isometry
    (out >= in) or a co-isometry (out < in) while Q is orthogonal. With ``tangent_gradients``
    the gradient reaching Q is projected onto the manifold's tangent space, so that optimizers
    that know nothing of the manifold (plain SGD) follow it to first order; the Riemannian
    optimizer projects by itself and does not need it (two d x d products saved per step).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, tangent_gradients: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.tangent_gradients = tangent_gradients
        self.weight = nn.Parameter(torch.empty(max(in_features, out_features), max(in_features, out_features)))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        nn.init.orthogonal_(self.weight)

    def orthogonal(self) -> Tensor:
        """Q, the d x d orthogonal weight (with tangent gradients if asked)."""
        return with_tangent_gradient(self.weight) if self.tangent_gradients else self.weight

    def matrix(self) -> Tensor:
        return self.orthogonal()[: self.out_features, : self.in_features]

    def forward(self, x: Tensor) -> Tensor:
        return channel_matmul(x, self.matrix(), self.bias)

    def lipschitz_bound(self, input_shape: tuple[int, ...] = ()) -> float:
        return dense_norm(self.weight[: self.out_features, : self.in_features])


def shift_group_size(channels: int, alpha: float) -> int:
    return min(math.ceil(alpha * channels - ROUNDING), channels // 4)


@functools.lru_cache(maxsize=32)
def shift_sources(channels: int, height: int, width: int, group: int, device: torch.device) -> Tensor:
    """Index (1, H*W, C): output pixel p of channel c reads input pixel ``index[0, p, c]`` of channel c."""
    row = torch.arange(height, device=device)[:, None]
    column = torch.arange(width, device=device)[None, :]
    sources = [((row + dh) % height) * width + (column + dw) % width for dh, dw in ((1, 0), (-1, 0), (0, 1), (0, -1))]
    sources.append(row * width + column)
    counts = torch.tensor([group] * 4 + [channels - 4 * group], device=device)
    per_channel = torch.stack(sources, dim=-1).repeat_interleave(counts, dim=-1)  # (H, W, C)
    return per_channel.reshape(1, height * width, channels)


class SpatialShift(nn.Module):
    """Shift ⌈αC⌉ channels each up, down, left and right by one pixel (circularly): a permutation.

    One gather over the channels-last view (a channel split plus rolls and a concatenation is
    several times slower on the channels-last tensors that :func:`channel_matmul` produces).
    """

    def __init__(self, alpha: float = ALPHA):
        super().__init__()
        if not 0 <= alpha <= 0.25:
            raise ValueError(f"shift fraction alpha must be in [0, 1/4] (four directions), not {alpha}")
        self.alpha = alpha

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        group = shift_group_size(channels, self.alpha)
        if group == 0:
            return x
        index = shift_sources(channels, height, width, group, x.device).expand(batch, -1, -1)
        pixels = x.movedim(1, -1).reshape(batch, height * width, channels)
        return pixels.gather(1, index).view(batch, height, width, channels).movedim(-1, 1)


class BetaAbs(nn.Module):
    """|x| on the first ⌊βC⌋ channels, the identity on the rest (1-Lipschitz coordinate-wise).

    Computed as x * s with s = sign(x) there and 1 elsewhere, s outside autograd (it is piecewise
    constant): the backward is then one product instead of the five passes of where/abs.
    """

    def __init__(self, beta: float = BETA):
        super().__init__()
        if not 0 <= beta <= 1:
            raise ValueError(f"beta must be in [0, 1], not {beta}")
        self.beta = beta

    def forward(self, x: Tensor) -> Tensor:
        count = math.floor(self.beta * x.shape[1] + ROUNDING)
        with torch.no_grad():
            signs = x.sign()
            signs[:, count:] = 1
        return x * signs


def l2_pool(x: Tensor) -> Tensor:
    """sqrt(Σ_hw x²) per channel, in at least float32: (N, C, H, W) -> (N, C). Preserves ‖x‖, 1-Lipschitz."""
    return torch.linalg.vector_norm(x.to(torch.promote_types(x.dtype, torch.float32)), dim=(-2, -1))


class ShiftedMixing(nn.Module):
    """x -> M Rᵀ S(R x) + b: orthogonal (a product of orthogonal maps) with a one-pixel cross reach."""

    def __init__(self, channels: int, alpha: float = ALPHA, tangent_gradients: bool = True):
        super().__init__()
        self.rotation = OrthogonalLinear(channels, channels, bias=False, tangent_gradients=tangent_gradients)
        self.shift = SpatialShift(alpha)
        self.projection = OrthogonalLinear(channels, channels, bias=False, tangent_gradients=tangent_gradients)
        self.bias = nn.Parameter(torch.zeros(channels))

    @eval_cached
    def output_matrix(self) -> Tensor:
        """M Rᵀ, applied after the shift."""
        return self.projection.orthogonal() @ self.rotation.orthogonal().mT

    def forward(self, x: Tensor) -> Tensor:
        return channel_matmul(self.shift(self.rotation(x)), self.output_matrix(), self.bias)

    def lipschitz_bound(self, input_shape: tuple[int, ...] = ()) -> float:
        """‖R‖ ‖M Rᵀ‖ of the two matrices the forward applies (the shift is a permutation)."""
        return self.rotation.lipschitz_bound() * dense_norm(self.output_matrix())


class LipNeXtBlock(nn.Module):
    """Z = β-Abs(M Rᵀ S(R(X + p)) + b); without ``image_size`` there is no positional embedding p."""

    def __init__(self, channels: int, alpha: float = ALPHA, beta: float = BETA,
                 image_size: tuple[int, int] | None = None, tangent_gradients: bool = True):
        super().__init__()
        position = None if image_size is None else nn.Parameter(torch.zeros(1, 1, *image_size))
        self.register_parameter("position", position)
        self.mixing = ShiftedMixing(channels, alpha, tangent_gradients)
        self.activation = BetaAbs(beta)

    def forward(self, x: Tensor) -> Tensor:
        if self.position is not None:
            x = x + self.position
        return self.activation(self.mixing(x))

    def lipschitz_bound(self, input_shape: tuple[int, ...] = ()) -> float:
        return self.mixing.lipschitz_bound()


@dataclass(frozen=True)
class LipNeXtConfig:
    depth: int
    width: int
    patch_size: int = 4
    alpha: float = ALPHA
    beta: float = BETA
    positional: bool = True
    retraction_interval: int = 100  # polar retraction every this many steps, and at least once per epoch
    tangent_gradients: bool = False  # only for optimizers other than the Riemannian one (see OrthogonalLinear)


class LipNeXt(nn.Module):
    """Patch stem, ``depth`` LipNeXt blocks, L2 spatial pooling, semi-orthogonal head."""

    def __init__(self, config: LipNeXtConfig, in_shape: tuple[int, int, int], n_classes: int):
        super().__init__()
        channels, height, width = in_shape
        patch = config.patch_size
        self.config, self.in_shape = config, tuple(in_shape)
        self.patchify = nn.Sequential(PadTo(channels, patch), nn.PixelUnshuffle(patch))
        tangent = config.tangent_gradients
        self.stem = OrthogonalLinear(channels * patch ** 2, config.width, bias=False, tangent_gradients=tangent)
        tokens = (math.ceil(height / patch), math.ceil(width / patch)) if config.positional else None
        self.blocks = nn.Sequential(*(LipNeXtBlock(config.width, config.alpha, config.beta, tokens, tangent)
                                      for _ in range(config.depth)))
        self.head = OrthogonalLinear(config.width, n_classes, tangent_gradients=tangent)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(l2_pool(self.blocks(self.stem(self.patchify(x)))))

    def method_layers(self) -> list[nn.Module]:
        """The linear maps, in order: stem, each block's mixing, head (the audit bounds each one).
        Everything else (patching, p, β-Abs, L2 pooling) is 1-Lipschitz by construction."""
        return [self.stem, *(block.mixing for block in self.blocks), self.head]

    def lipschitz_bound(self) -> float:
        return math.prod(layer.lipschitz_bound() for layer in self.method_layers())


def parse_size(size: str) -> tuple[int, int]:
    """(depth, width) of a size name: XS, S, M, L, or the paper's L<depth>W<width> (e.g. L32W1024)."""
    if size in SIZES:
        return SIZES[size]
    match = SIZE_PATTERN.fullmatch(size)
    if match is None:
        raise UserError(f"unknown lipnext size {size!r}; use {', '.join(SIZES)} or L<depth>W<width>, e.g. L32W1024")
    return int(match[1]), int(match[2])


def coerce(value: Any, like: Any) -> Any:
    """``value`` (possibly a command-line string) as the type of the default ``like``."""
    if isinstance(like, bool) and isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise UserError(f"expected a boolean, got {value!r}")
        return value.lower() in ("true", "1", "yes")
    try:
        return type(like)(value)
    except (TypeError, ValueError):
        raise UserError(f"expected a {type(like).__name__}, got {value!r}") from None


def make_config(size: str, **options: Any) -> LipNeXtConfig:
    depth, width = parse_size(size)
    defaults = LipNeXtConfig(depth, width)
    known = {f.name for f in dataclasses.fields(LipNeXtConfig)} - {"depth", "width"}
    unknown = set(options) - known
    if unknown:
        raise UserError(f"unknown lipnext options {sorted(unknown)}; known: {sorted(known)}")
    return dataclasses.replace(defaults, **{k: coerce(v, getattr(defaults, k)) for k, v in options.items()})


@register_model("lipnext", sizes=(*SIZES, *PAPER_SIZES), methods=("lipnext",), size_pattern=SIZE_PATTERN.pattern,
                features=lambda size: parse_size(size)[1],
                description="LipNeXt (Hu et al. 2026): patch stem, LipNeXt blocks, L2 pooling, orthogonal head")
def build_model(method: LayerMethod, size: str, in_shape: tuple[int, int, int], n_classes: int,
                **options: Any) -> LipNeXt:
    config = make_config(size, **options)
    counts = dict(depth=config.depth, width=config.width, patch_size=config.patch_size,
                  retraction_interval=config.retraction_interval)
    if min(counts.values()) < 1:
        raise UserError(f"lipnext needs positive {', '.join(counts)}: got {config}")
    return LipNeXt(config, in_shape, n_classes)


def orthogonal_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [module.weight for module in model.modules() if isinstance(module, OrthogonalLinear)]


def build_optimizer(model: nn.Module, settings: OptimizerSettings) -> RiemannianOptimizer:
    """Manifold steps for every orthogonal matrix, the same method (SGD, Adam or NAdam) for the rest; polar
    retraction every ``retraction_interval`` steps or every epoch, whichever comes first. Lookahead, when
    the settings ask for it, runs here in the tangent space for the orthogonal matrices (the training loop's
    Lookahead takes the other parameters).

    The retraction interval comes from ``model.config`` (a LipNeXt), else the default (e.g. a ConvNet built
    from lipnext-shift layers).
    """
    config = getattr(model, "config", LipNeXtConfig(depth=0, width=0))
    orthogonal = orthogonal_parameters(model)
    orthogonal_ids = {id(p) for p in orthogonal}
    others = [p for p in model.parameters() if id(p) not in orthogonal_ids]
    groups = [{"params": orthogonal, "orthogonal": True, "weight_decay": 0.0,
               "retraction_interval": max(1, min(settings.steps_per_epoch, config.retraction_interval)),
               "lookahead_steps": settings.lookahead_steps, "lookahead_alpha": settings.lookahead_alpha},
              {"params": others}]
    return RiemannianOptimizer([g for g in groups if g["params"]], lr=settings.lr, method=settings.method,
                               momentum=settings.momentum, nesterov=settings.momentum > 0,
                               weight_decay=settings.weight_decay)


def certify(model: nn.Module) -> dict[str, float]:
    """The sound bound (product of exact norms) and the worst ‖XᵀX - I‖_2 of the model's orthogonal matrices."""
    errors = [orthogonality_error(p) for p in orthogonal_parameters(model)]
    return {"lipschitz_bound": float(model.lipschitz_bound()), "lipschitz_bound_claimed": 1.0,
            "orthogonality_error": max(errors, default=0.0)}


HOOKS = dict(optimizer=build_optimizer, certificate=certify)


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@register_layer("lipnext", family="orthogonal", padding="circular", exact=True, orthogonal=True, kinds=("conv",),
                model="lipnext", **HOOKS,
                description="LipNeXt block β-Abs(M Rᵀ S(R(x+p)) + b), manifold-trained (Hu et al. 2026)")
def build_block(kind: str, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                alpha: float = ALPHA, beta: float = BETA, image_size: tuple[int, int] | None = None) -> nn.Module:
    require(in_channels == out_channels, f"a lipnext block keeps its width: in_channels {in_channels} "
                                         f"!= out_channels {out_channels}")
    require(kernel_size == 3, f"a lipnext block reaches one pixel (kernel_size 3), not kernel_size {kernel_size}")
    return LipNeXtBlock(in_channels, alpha, beta, image_size)


@register_layer("lipnext-shift", family="orthogonal", padding="circular", exact=True, orthogonal=True, kinds=("conv",),
                **HOOKS,
                description="LipNeXt shifted mixing M Rᵀ S(R x) + b (3x3 reach; 1x1: orthogonal projection)")
def build_shifted_mixing(kind: str, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                         alpha: float = ALPHA) -> nn.Module:
    require(kernel_size in (1, 3), f"lipnext-shift reaches one pixel (kernel_size 3) or none (1), "
                                   f"not kernel_size {kernel_size}")
    if kernel_size == 1:
        return OrthogonalLinear(in_channels, out_channels)
    require(in_channels == out_channels, f"lipnext-shift keeps its width: in_channels {in_channels} "
                                         f"!= out_channels {out_channels}")
    return ShiftedMixing(in_channels, alpha)


@register_layer("lipnext-orth", family="orthogonal", padding="none", exact=True, orthogonal=True, **HOOKS,
                description="LipNeXt's semi-orthogonal 1x1 / dense projection, manifold-trained")
def build_projection(kind: str, in_channels: int, out_channels: int, kernel_size: int = 1,
                     stride: int = 1) -> nn.Module:
    require(kind == "linear" or kernel_size == 1, f"lipnext-orth is a 1x1 projection, not kernel_size {kernel_size}")
    return OrthogonalLinear(in_channels, out_channels)
