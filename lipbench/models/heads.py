"""The normalized last layer of LiResNet++ and BRONet (Hu et al., ICLR 2024; Lai et al., ICML 2025).

z = Ŵ f(x) + b with every class row ŵ_c = w_c / ||w_c|| of unit norm. Then z_i - z_j = (ŵ_i - ŵ_j)·f(x)
+ b_i - b_j is ||ŵ_i - ŵ_j|| L_f-Lipschitz, L_f the body's bound, so a point of class y is certified at
radius ε when (z_y - z_j) / (L_f ||ŵ_y - ŵ_j||) > ε for every j != y. Since ||ŵ_i - ŵ_j|| <= 2 and the
logit vector's margin bound is sqrt(2) ||Ŵ|| L_f, neither certificate dominates the other in general;
the per-pair one is exact for this layer, and trained with a margin loss it is the tighter one.

``--head normalized`` builds the family with as many outputs as it offers a head (``features``,
e.g. the ConvNet's 32w) and puts this layer after them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipbench.registry import register_head


class NormalizedHead(nn.Linear):
    def normalized_weight(self) -> Tensor:
        return F.normalize(self.weight, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.normalized_weight(), self.bias)

    def pair_norms(self, exact: bool = True) -> Tensor:
        """||ŵ_i - ŵ_j|| for every pair of classes: for a certificate (``exact``) from the differences
        themselves in float64; for a loss from the Gram matrix, differentiable (the clamp keeps the
        gradient finite on the diagonal, where the norm is 0)."""
        if not exact:
            weight = self.normalized_weight()
            return (2 - 2 * weight @ weight.T).clamp_min(1e-12).sqrt()
        with torch.no_grad():
            weight = F.normalize(self.weight.double(), dim=1)
            return torch.stack([(weight - row).norm(dim=1) for row in weight])


class WithNormalizedHead(nn.Module):
    """``features`` (a certifiable network) followed by a :class:`NormalizedHead`."""

    def __init__(self, features: nn.Module, width: int, n_classes: int):
        super().__init__()
        self.features, self.head = features, NormalizedHead(width, n_classes)
        self.in_shape = features.in_shape

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))

    def method_layers(self) -> list[nn.Module]:
        return self.features.method_layers()

    def pair_lipschitz(self, exact: bool = True) -> Tensor:
        return self.head.pair_norms(exact)

    def lipschitz_bound(self) -> float:
        """The whole network's bound: the features' times the normalized matrix's spectral norm."""
        with torch.no_grad():
            head_norm = torch.linalg.matrix_norm(self.head.normalized_weight().double(), ord=2)
        return float(self.features.lipschitz_bound()) * float(head_norm)


@register_head("normalized", "unit-norm class rows, certified per class pair (LiResNet++, BRONet)")
def attach_normalized_head(features: nn.Module, width: int, n_classes: int) -> nn.Module:
    return WithNormalizedHead(features, width, n_classes)
