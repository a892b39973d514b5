"""What RS-LMI's sketched penalty costs per training step, against the unconstrained `standard` ConvNet.

Each candidate is the XS benchmark model on a Fashion-MNIST-shaped batch, and one step is what
`lipbench run` does: forward, offset cross-entropy (plus the method's extra loss: for RS-LMI the
penalty of every layer on a fresh m-dimensional Gaussian subspace), backward, SGD step.
Candidates: ``standard`` and ``rslmi`` at each sketch dimension m. Times are interleaved (one round
runs every candidate once, in rotating order) and reported as the median over rounds of each
candidate's time divided by the `standard` step's time in the same round.

A full (unsketched) LMI would need the eigenvalues of an n x n matrix per layer and step, with n
the layer's input size (16 x 32 x 32 = 16384 for the first XS layer): that is the cost the sketch
removes, and it is not run here.

    python benchmarks/rslmi_step.py --sketch-dims 8,16,32,64,256 --rounds 20
"""
from __future__ import annotations

import argparse
from typing import Callable

import torch

from lipbench.registry import create_model
from lipbench.registry import get_method
from lipbench.train import offset_cross_entropy

from interleave import median_ratios  # benchmarks/interleave.py: the script's folder is on sys.path

IN_SHAPE, CLASSES = (1, 28, 28), 10


def training_step(layer: str, batch: int, **options: int) -> Callable[[], None]:
    """One benchmark training step of the XS model of ``layer`` on a fixed random batch."""
    torch.manual_seed(0)
    model = create_model(layer, "XS", IN_SHAPE, CLASSES, **options)
    extra_loss = get_method(layer).extra_loss
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    images, labels = torch.randn(batch, *IN_SHAPE), torch.randint(0, CLASSES, (batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = offset_cross_entropy(model(images), labels, offset=0.2, temperature=0.25)
        if extra_loss is not None:
            loss = loss + extra_loss(model)
        loss.backward()
        optimizer.step()
    return step


def measure(sketch_dims: list[int], batch: int, rounds: int) -> dict[str, float]:
    candidates = {"standard": training_step("standard", batch)}
    candidates.update({f"rslmi m={m}": training_step("rslmi", batch, sketch_dim=m) for m in sketch_dims})
    return median_ratios(candidates, "standard", rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sketch-dims", default="8,16,32,64")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ratios = measure([int(m) for m in args.sketch_dims.split(",")], args.batch, args.rounds)
    print("| model | training step / standard step |")
    print("|---|---|")
    for name, ratio in ratios.items():
        print(f"| {name} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
