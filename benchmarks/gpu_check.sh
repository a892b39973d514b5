#!/usr/bin/env bash
# The prepared GPU check (offline, under 8 minutes on one GPU): every registered method in fp32 and bf16
# (benchmarks/gpu_check.py: host syncs per step, throughput against an independent timing, certificate,
# logits against float64, checkpoint and resume), then a 15-second `lipbench run --device cuda` of two
# methods. Writes OUT/gpu_check.json and OUT/gpu_run.log (OUT: $OUT, else ./gpu-check).
# Run from the checkout:  bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-check}"
mkdir -p "$out"
python="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
timeout 420 "$python" benchmarks/gpu_check.py --out "$out/gpu_check.json"
timeout 120 "$python" -m lipbench run --device cuda --budget 15s --layers aol,lipnext --dataset synthetic \
    --out "$out/run" --no-save-model 2>&1 | tee "$out/gpu_run.log"
"$python" - "$out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
summary = json.loads((out / "gpu_check.json").read_text())
records = [json.loads(p.read_text()) for p in (out / "run").glob("jobs/*/record.json")]
summary["run"] = [{k: r.get(k) for k in ("layer", "status", "clean_acc", "cra_36", "train_throughput",
                                          "peak_memory_mb", "dataset_memory_mb", "tf32", "bounded_by")} for r in records]
(out / "gpu_check.json").write_text(json.dumps(summary, indent=2))
print(json.dumps({k: summary[k] for k in ("device", "checks", "passed", "failed")}, indent=2))
print(json.dumps(summary["run"], indent=2))
PY
