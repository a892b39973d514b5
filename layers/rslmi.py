"""RS-LMI: Lipschitz-constrained training with randomized-subspace LMI penalties.

Paper: Abdeen, Kekatos & Jin, "A Scalable Approach for Safe and Robust Learning via
Lipschitz-Constrained Networks", arXiv:2506.23977.

Math: every layer k is an ordinary convolution or dense layer W_k with a trainable
tau_k = exp(log_tau_k) > 0 and the constraint W_k^T W_k <= tau_k I (equivalently the LMI
[tau_k I, W_k^T; W_k, I] >= 0, by a Schur complement). With 1-Lipschitz activations the network
is then prod_k sqrt(tau_k)-Lipschitz. Instead of solving an SDP, each training step draws a
Gaussian S (n x m, m = sketch_dim << n = the layer's input size), orthonormalises it to Q, and
penalises the sketched matrix
    A_k = Q^T (tau_k I - W_k^T W_k) Q = tau_k I - (W_k Q)^T (W_k Q)      (m x m),
where W_k Q is the layer applied to m random images (never materialising W_k). Loss term:
    tau_weight * tau_k + penalty_weight * sum_i min(lambda_i(A_k), 0)^2,
the squared Frobenius distance of A_k to the PSD cone (C^1 and a spectral function, so its
gradient is defined even at repeated eigenvalues; it equals min(lambda_min, 0)^2 when one
eigenvalue is negative). A_k >= 0 iff the Rayleigh quotient ||W_k x||^2 / ||x||^2 is <= tau_k on
range(Q); A_k has the inertia of S^T (tau I - W^T W) S (Sylvester), so for m = n the sketched
constraint is the exact one. Orthonormalising only fixes the penalty's scale (Rayleigh units).
tau_weight (default 0.01) keeps sum_k tau_k (27 layers in the XS ConvNet) from swamping the
task loss; where tau is stationary, sum_i max(-lambda_i, 0) = tau_weight / (2 penalty_weight).
Init: tau = 1, Dirac kernels for square k x k convs, orthogonal otherwise (feasible, L = 1).

Approximation and its error: the constraint is enforced on m random directions per step, so
sqrt(tau_k) is only a *claimed* bound; sigma_max(W_k) may exceed it. For m << n a random
subspace rarely meets W_k's top singular directions: the sketched Rayleigh quotients sit near
the mean squared singular value ||W_k||_F^2 / n, so the penalty acts much like a Frobenius
penalty (tests: a 32 x 32 layer with sigma_max 3 and m = 4 ends near 1.4 for tau = 1, m = n ends
at 1.0). The certificate therefore never uses tau:
it multiplies the sound per-layer norms of the `standard` layers (exact SVD for dense layers,
the FFT bound of lipbench.bounds for zero-padded convolutions) and records the claim beside it,
with power iteration (a lower bound of each norm) to show how loose the sound bound is.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable
from weakref import WeakKeyDictionary

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipbench.bounds import power_iteration_norm
from lipbench.contracts import input_shapes
from lipbench.layers._unconstrained import UNCONSTRAINED_PROTOCOL, BoundedConv2d, BoundedLinear
from lipbench.linalg import dirac_or_orthogonal_init
from lipbench.registry import register_layer

ROUNDOFF = 1e-4  # a power-iteration norm must exceed sqrt(tau) by this much to prove a violation


@dataclass(frozen=True)
class SketchSettings:
    """How the sketched LMI penalty is formed (recorded with every certificate)."""

    sketch_dim: int = 16
    penalty_weight: float = 10.0
    tau_weight: float = 1e-2

    def __post_init__(self) -> None:
        if self.sketch_dim < 1:
            raise ValueError(f"sketch_dim must be >= 1, not {self.sketch_dim}")
        if self.penalty_weight < 0 or self.tau_weight < 0:
            raise ValueError("penalty_weight and tau_weight must be >= 0")


def orthonormal_sketch(input_shape: tuple[int, ...], sketch_dim: int, like: Tensor) -> Tensor:
    """m = min(sketch_dim, n) Gaussian inputs of ``input_shape``, orthonormalised: (m, *input_shape)."""
    size = math.prod(input_shape)
    gaussian = torch.randn(size, min(sketch_dim, size), dtype=like.dtype, device=like.device)
    basis, _ = torch.linalg.qr(gaussian)
    return basis.T.reshape(-1, *input_shape)


def sketched_lmi(linear_map: Callable[[Tensor], Tensor], sketch: Tensor, tau: Tensor) -> Tensor:
    """S^T (tau I - W^T W) S = tau S^T S - (W S)^T (W S) for a bias-free ``linear_map`` W.

    ``sketch`` holds S's columns as inputs of the layer: (m, *input_shape).
    """
    images = linear_map(sketch).flatten(1)  # rows: columns of W S
    dtype = torch.promote_types(images.dtype, torch.float32)  # under bf16 autocast: Gram and eigh in fp32
    with torch.autocast(images.device.type, enabled=False):
        inputs, images = sketch.flatten(1).to(dtype), images.to(dtype)
        return tau * (inputs @ inputs.T) - images @ images.T


def psd_violation(matrices: Tensor) -> Tensor:
    """Squared Frobenius distance of symmetric matrices (..., m, m) to the PSD cone: the sum of each one's
    negative eigenvalues squared; one batched eigenvalue call for all of them.

    Diverged weights make a matrix non-finite, where LAPACK's eigh fails with a misleading
    "ill-conditioned" error; its penalty is then NaN instead, so training reports the divergence.
    """
    finite = torch.isfinite(matrices)
    eigenvalues = torch.linalg.eigvalsh(torch.where(finite, matrices, 0.0).double())
    not_finite = torch.where(finite, 0.0, float("nan")).sum(dim=(-2, -1))  # NaN iff any entry is; no host read
    return eigenvalues.clamp(max=0).pow(2).sum(dim=-1).to(matrices.dtype) + not_finite


class SketchedLMI(nn.Module):
    """Mixin: a trainable tau > 0 and the RS-LMI penalty of the layer's bias-free map."""

    def __init__(self, *layer_arguments: int, settings: SketchSettings):
        super().__init__(*layer_arguments)
        self.settings = settings
        self.log_tau = nn.Parameter(torch.zeros(()))

    def apply_weight(self, x: Tensor, weight: Tensor) -> Tensor:
        """The layer's linear map with ``weight`` in place of its own, without bias."""
        raise NotImplementedError

    def weight_map(self, x: Tensor) -> Tensor:
        """The layer without its bias (a linear map)."""
        return self.apply_weight(x, self.weight)

    def tau(self) -> Tensor:
        return self.log_tau.exp()

    def sketched_constraint(self, input_shape: tuple[int, ...]) -> Tensor:
        """A_k = Q^T (tau I - W^T W) Q on a fresh random subspace Q."""
        basis = orthonormal_sketch(input_shape, self.settings.sketch_dim, self.weight)
        return sketched_lmi(self.weight_map, basis, self.tau())

    def constraint_loss(self, violation: Tensor) -> Tensor:
        """tau_weight * tau + penalty_weight * P(W, tau), given P (the PSD violation of the sketched constraint)."""
        return self.settings.tau_weight * self.tau() + self.settings.penalty_weight * violation

    def power_iteration_norm(self, input_shape: tuple[int, ...]) -> float:
        """A LOWER estimate of the operator norm, to show the sound bound's slack (never a certificate).

        It runs in the weight's dtype: float32 round-off moves a lower estimate by ~1e-6, far
        below the gaps it reports, at half the cost of float64.
        """
        weight = self.weight.detach()

        def linear_map(x: Tensor) -> Tensor:
            return self.apply_weight(x.to(weight), weight)

        def adjoint(y: Tensor) -> Tensor:
            x = weight.new_zeros(1, *input_shape, requires_grad=True)
            with torch.enable_grad():
                (image,) = torch.autograd.grad(linear_map(x), x, y.to(weight))
            return image

        return power_iteration_norm(linear_map, adjoint, input_shape)


class RSLMIConv2d(SketchedLMI, BoundedConv2d):
    """Zero-padded 'same' convolution; lipschitz_bound (sound FFT bound) comes from BoundedConv2d."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, settings: SketchSettings):
        super().__init__(in_channels, out_channels, kernel_size, stride, settings=settings)
        dirac_or_orthogonal_init(self)

    def apply_weight(self, x: Tensor, weight: Tensor) -> Tensor:
        return self._conv_forward(x, weight, None)


class RSLMILinear(SketchedLMI, BoundedLinear):
    """Dense layer; orthogonal init and lipschitz_bound (exact SVD) come from BoundedLinear."""

    def __init__(self, in_features: int, out_features: int, settings: SketchSettings):
        super().__init__(in_features, out_features, settings=settings)

    def apply_weight(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.linear(x, weight)


_SHAPES: WeakKeyDictionary[nn.Module, list[tuple[nn.Module, tuple[int, ...]]]] = WeakKeyDictionary()


def sketched_layers(model: nn.Module) -> list[tuple[SketchedLMI, tuple[int, ...]]]:
    """(layer, input shape) of the model's RS-LMI layers, traced once per model."""
    if model not in _SHAPES:
        _SHAPES[model] = [(layer, shape) for layer, shape in input_shapes(model)
                          if isinstance(layer, SketchedLMI)]
    return _SHAPES[model]


def rslmi_loss(model: nn.Module) -> Tensor:
    """sum_k [tau_weight * tau_k + penalty_weight * P_k], added to the task loss every step; the P_k of all
    layers whose sketches have one size come from one batched eigenvalue call."""
    layers = sketched_layers(model)
    constraints = [layer.sketched_constraint(shape) for layer, shape in layers]
    violations: list[Tensor | None] = [None] * len(layers)
    sizes: dict[int, list[int]] = {}
    for index, matrix in enumerate(constraints):
        sizes.setdefault(matrix.shape[-1], []).append(index)
    for indices in sizes.values():
        for index, violation in zip(indices, psd_violation(torch.stack([constraints[i] for i in indices]))):
            violations[index] = violation
    return sum(layer.constraint_loss(violation) for (layer, _), violation in zip(layers, violations))


def rslmi_certificate(model: nn.Module) -> dict:
    """The sound bound (product of sound layer norms), the claimed prod sqrt(tau_k), and their gap."""
    layers = sketched_layers(model)
    sound = [layer.lipschitz_bound(shape) for layer, shape in layers]
    claimed = [float(layer.tau().detach()) ** 0.5 for layer, _ in layers]
    lower = [layer.power_iteration_norm(shape) for layer, shape in layers]
    sound_bound, claimed_bound = math.prod(sound), math.prod(claimed)
    return {
        "lipschitz_bound": sound_bound,
        "lipschitz_bound_claimed": claimed_bound,
        "claim_exceeded": claimed_bound < sound_bound,
        "sound_over_claimed": sound_bound / claimed_bound,
        "lipschitz_bound_power_iteration": math.prod(lower),
        "sound_over_power_iteration": sound_bound / math.prod(lower),
        "layers_violating_claim": sum(norm > bound * (1 + ROUNDOFF) for norm, bound in zip(lower, claimed)),
        "worst_layer_norm_over_sqrt_tau": max(norm / bound for norm, bound in zip(sound, claimed)),
        **asdict(layers[0][0].settings),
    }


@register_layer("rslmi", family="lmi", padding="zero", exact=True, bound=float("inf"), strides=(1, 2),
                protocol=UNCONSTRAINED_PROTOCOL, extra_loss=rslmi_loss, certificate=rslmi_certificate,
                description="Randomized-subspace LMI penalty (Abdeen et al. 2025); certificate = sound layer norms")
def build_rslmi(kind: str, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                sketch_dim: int = SketchSettings.sketch_dim, penalty_weight: float = SketchSettings.penalty_weight,
                tau_weight: float = SketchSettings.tau_weight) -> nn.Module:
    settings = SketchSettings(int(sketch_dim), float(penalty_weight), float(tau_weight))
    if kind == "linear":
        return RSLMILinear(in_channels, out_channels, settings)
    return RSLMIConv2d(in_channels, out_channels, kernel_size, stride, settings)
