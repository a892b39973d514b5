"""The GPU check: what only a GPU can show, for every registered method, in one short offline run.

For each method (in its own model family, smallest size, on synthetic CIFAR-shaped data with
augmentation) and each precision (fp32, bf16):
* host syncs per training step, counted by ``torch.cuda.set_sync_debug_mode`` over steps after the
  warm-up (the loop's own periodic read lies outside the step): 0 allowed;
* the recorded training throughput against an independent synchronized timing of the same run;
* the certificate: finite;
* the logits against a float64 copy on the CPU, with TF32 off: within 1e-4 (relative to their scale);
* checkpoint and resume on the GPU: the resumed run continues from the saved step.
Then writes one JSON summary (``--out``). On a machine without CUDA it runs on the CPU (syncs are then
not counted), which checks the script itself.

    python benchmarks/gpu_check.py --out gpu_check.json        (benchmarks/gpu_check.sh runs it, then a
                                                                 15 s `lipbench run --device cuda`)
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch

import lipbench
from lipbench.batches import InMemoryBatches
from lipbench.certify import certify_and_measure
from lipbench.data import Dataset, copy_to
from lipbench.device import strict_fp32, synchronize
from lipbench.registry import model_family
from lipbench.settings import TrainSettings
from lipbench.train import TrainStep, make_optimizer, schedule, train

STEPS = 30


def cifar_shaped(n_train: int = 2048, n_test: int = 256, seed: int = 0) -> Dataset:
    """Random 3 x 32 x 32 images in [0, 1] with 10 learnable classes (a colour template per class plus noise)."""
    generator = torch.Generator().manual_seed(seed)
    templates = torch.rand(10, 3, 32, 32, generator=generator)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(10, (n,), generator=generator)
        return (0.7 * templates[labels] + 0.3 * torch.rand(n, 3, 32, 32, generator=generator)).clamp(0, 1), labels

    return Dataset("cifar-shaped", *sample(n_train), *sample(n_test), 10)


def build(name: str, data: Dataset, device: torch.device) -> tuple[lipbench.LayerMethod, torch.nn.Module]:
    torch.manual_seed(0)
    family = model_family(name)
    model = lipbench.create_model(name, family.sizes[0], data.in_shape, data.n_classes).to(device)
    return lipbench.get_method(name), model


def syncs_per_step(name: str, data: Dataset, settings: TrainSettings, device: torch.device) -> float | None:
    """Host syncs per training step after two warm-up steps (None on a CPU, which has none to count)."""
    if device.type != "cuda":
        return None
    method, model = build(name, data, device)
    batches = InMemoryBatches(data, settings.batch_size, settings.augment, seed=0)
    optimizer = make_optimizer(model, method, settings, batches.per_epoch, 100)
    step = TrainStep(model, model, method, optimizer, settings, device)
    model.train()
    for _ in range(2):
        step(*batches.next())
    synchronize(device)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for index in range(5):
                schedule(optimizer, settings, index / 10)
                step(*batches.next())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(warning.message).lower() for warning in caught) / 5


def check(name: str, precision: str, data: Dataset, device: torch.device) -> dict:
    settings = TrainSettings(budget_s=600, batch_size=64, lr=0.01, augment=True, precision=precision, max_steps=STEPS)
    result: dict = {"layer": name, "precision": precision, "syncs_per_step": syncs_per_step(name, data, settings, device)}
    method, model = build(name, data, device)
    first: list[float] = []
    report = train(model, method, data, settings, device,
                   on_event=lambda event: first.append(time.perf_counter()) if event.get("step") == 1 else None)
    synchronize(device)
    independent = (report.steps - 1) * settings.batch_size / (time.perf_counter() - first[0])
    result.update(steps=report.steps, throughput=report.train_throughput,
                  throughput_vs_independent=report.train_throughput / independent)
    measured, _ = certify_and_measure(model, method, data, 256, device)
    result.update(lipschitz_bound=measured["lipschitz_bound"], certificate_finite=math.isfinite(measured["lipschitz_bound"]),
                  clean_acc=measured["clean_acc"], cra_36=measured["cra_36"])
    reference = copy.deepcopy(model).double().cpu().eval()
    x = data.x_test[:64] - data.mean
    with torch.no_grad(), strict_fp32():
        logits = model(x).double().cpu()
        exact = reference(x.double().cpu())
    result["logits_relative_error"] = float((logits - exact).abs().max() / exact.abs().max().clamp_min(1e-12))
    result["logits_ok"] = result["logits_relative_error"] <= 1e-4
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "checkpoint.pt"
        _, first_half = build(name, data, device)
        train(first_half, method, data, TrainSettings(**{**vars(settings), "max_steps": 20}), device,
              checkpoint=path, checkpoint_every=0.0)
        _, resumed = build(name, data, device)
        again = train(resumed, method, data, settings, device, checkpoint=path)
        result.update(resumed_at_step=again.resumed_at_step, resumed_steps=again.steps)
    result["resume_ok"] = result["resumed_at_step"] > 0 and result["resumed_steps"] == STEPS
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--layers", default="*")
    arguments = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = copy_to(cifar_shaped(), device)
    results = []
    for name in lipbench.registry.resolve_layers(arguments.layers):
        for precision in ("fp32", "bf16"):
            started = time.perf_counter()
            try:
                result = check(name, precision, data, device)
            except Exception as error:  # one method that fails spoils no other; the summary says what failed
                result = {"layer": name, "precision": precision, "error": f"{type(error).__name__}: {error}",
                          "trace": traceback.format_exc(limit=3)}
            result["seconds"] = time.perf_counter() - started
            results.append(result)
            print(json.dumps({k: v for k, v in result.items() if k != "trace"}), flush=True)
    passed = [r for r in results if "error" not in r and r["certificate_finite"] and r["logits_ok"] and r["resume_ok"]
              and (r["syncs_per_step"] in (None, 0)) and abs(r["throughput_vs_independent"] - 1) <= 0.10]
    summary = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "cuda": torch.version.cuda,
               "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
               "checks": len(results), "passed": len(passed),
               "failed": [f"{r['layer']}/{r['precision']}" for r in results if r not in passed], "results": results}
    arguments.out.write_text(json.dumps(summary, indent=2))
    print(f"{len(passed)}/{len(results)} checks passed; summary in {arguments.out}")


if __name__ == "__main__":
    main()
