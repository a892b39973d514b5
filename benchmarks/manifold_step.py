"""How much one update of a d x d orthogonal weight costs: LipNeXt's manifold step against the alternatives.

Each candidate receives the same Euclidean gradient G of the weight (as backpropagation would leave it) and
does all the work a training step needs to turn it into a new orthogonal weight:

* ``sgd``: a plain SGD step on a free d x d matrix (the floor: no orthogonality at all);
* ``manifold``: LipNeXt's step on X itself (skew(XᵀG), momentum, X <- X FastExp(-ηA)), lipbench.manifold;
* ``matrix_exp``: the re-parameterization W = exp(A - Aᵀ): forward, backward through it, SGD on A;
* ``cayley``: W = (I - S)(I + S)^-1 with S = A - Aᵀ: forward, backward, SGD on A.

Times are interleaved (one round runs every candidate once, in rotating order) and reported as the median
over rounds of each candidate's time divided by the SGD step's time in the same round.

    python benchmarks/manifold_step.py --sizes 64,256,512 --rounds 30
"""
from __future__ import annotations

import argparse
from typing import Callable

import torch

from lipbench.manifold import RiemannianOptimizer, polar

from interleave import median_ratios  # benchmarks/interleave.py: the script's folder is on sys.path


def direct_update(weight: torch.nn.Parameter, optimizer: torch.optim.Optimizer) -> Callable[[torch.Tensor], None]:
    """The weight is the parameter: hand it the gradient and step."""
    def update(grad: torch.Tensor) -> None:
        weight.grad = grad
        optimizer.step()
    return update


def sgd_update(d: int) -> Callable[[torch.Tensor], None]:
    weight = torch.nn.Parameter(torch.randn(d, d) / d**0.5)
    return direct_update(weight, torch.optim.SGD([weight], lr=1e-3, momentum=0.9))


def manifold_update(d: int) -> Callable[[torch.Tensor], None]:
    weight = torch.nn.Parameter(polar(torch.randn(d, d)))
    return direct_update(weight, RiemannianOptimizer([weight], lr=1e-3, momentum=0.9, orthogonal=True))


def reparameterized_update(d: int, orthogonal_map: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], None]:
    free = torch.nn.Parameter(torch.randn(d, d) * 0.01)
    optimizer = torch.optim.SGD([free], lr=1e-3, momentum=0.9)

    def update(grad: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        (orthogonal_map(free - free.mT) * grad).sum().backward()
        optimizer.step()
    return update


def cayley(skew_matrix: torch.Tensor) -> torch.Tensor:
    identity = torch.eye(skew_matrix.shape[-1])
    return torch.linalg.solve(identity + skew_matrix, identity - skew_matrix, left=False)


def measure(d: int, rounds: int) -> dict[str, float]:
    grad = torch.randn(d, d) * 1e-2
    updates = {"sgd": sgd_update(d), "manifold": manifold_update(d),
               "matrix_exp": reparameterized_update(d, torch.linalg.matrix_exp),
               "cayley": reparameterized_update(d, cayley)}
    return median_ratios({name: lambda update=update: update(grad) for name, update in updates.items()}, "sgd",
                         rounds, warmup_rounds=3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,256,512")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print("| d | manifold / SGD | matrix_exp / SGD | Cayley / SGD | matrix_exp / manifold | Cayley / manifold |")
    print("|---|---|---|---|---|---|")
    for d in map(int, args.sizes.split(",")):
        r = measure(d, args.rounds)
        print(f"| {d} | {r['manifold']:.2f} | {r['matrix_exp']:.2f} | {r['cayley']:.2f} | "
              f"{r['matrix_exp'] / r['manifold']:.2f} | {r['cayley'] / r['manifold']:.2f} |")


if __name__ == "__main__":
    main()
