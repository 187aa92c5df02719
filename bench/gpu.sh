#!/usr/bin/env bash
# The GPU benchmarks in one command, for a machine with an NVIDIA GPU and its CUDA driver:
#
#   1. a generated dataset and a paper-preset QIN checkpoint (one short epoch on the GPU: latency
#      does not depend on how well the weights fit), exported and parity-checked like any model;
#   2. model only: python -m bench.model_latency --presets paper --provider cuda
#      (PyTorch eager, the direct and the serving graph, IO binding);
#   3. end to end: python -m bench.service_load --provider cuda --candidates 200, the open-loop
#      generator on the same machine, at fixed rates up to saturation (target: p99 <= 5 ms for
#      1 user x 200 candidates at 1,000 requests/s or more).
#
# Results (json, md, png) go to $OUT (bench/results; $WORK/results with PROVIDER=cpu), with an
# nvidia-smi snapshot and this script's log.
#
# What the machine needs (the first step checks it and says what is missing):
#   * a CUDA build of PyTorch that sees the GPU, and onnxruntime-gpu (the CUDA execution
#     provider) in place of the CPU onnxruntime;
#   * the project's other packages: onnx, onnxscript, fastapi, uvicorn, pydantic-settings,
#     redis, prometheus-client, pyarrow, safetensors, plus matplotlib and tqdm for the
#     benchmarks (the train and serve extras of pyproject.toml);
#   * redis-server on PATH.
# Run from a checkout or a copy of the tree; a copy without .git names its commit in the result
# files with BENCH_COMMIT=<hash> bash bench/gpu.sh. The defaults are sized to finish within
# about 10 minutes (not yet timed on a GPU; on a 2-core CPU machine, PROVIDER=cpu with
# ITEMS=2000 TRAIN_ROWS=8000 RATES=20,40 DURATION=4 took 3.7 minutes).
#
# Environment: PROVIDER (cuda; cpu runs the same steps on the CPU, to try the script without a
# GPU), WORK (/tmp/qin-gpu), ITEMS (20000), TRAIN_ROWS (100000), RATES (comma-separated),
# CANDIDATES (200), DURATION (8 s per rate), PYTHON (python3).
set -euo pipefail
cd "$(dirname "$0")/.."

PROVIDER=${PROVIDER:-cuda}
WORK=${WORK:-/tmp/qin-gpu}
# A CPU trial writes beside its work files: in bench/results it would replace the CPU results the
# README quotes (service_load.*, model_latency.*) with this script's paper-preset ones.
if [ "$PROVIDER" = cuda ]; then OUT=${OUT:-bench/results}; else OUT=${OUT:-$WORK/results}; fi
ITEMS=${ITEMS:-20000}
TRAIN_ROWS=${TRAIN_ROWS:-100000}
CANDIDATES=${CANDIDATES:-200}
RATES=${RATES:-250,500,1000,1500,2000,3000,4000}
DURATION=${DURATION:-8}
PYTHON=${PYTHON:-python3}
case "$PROVIDER" in
  cuda) DEVICE=cuda ;;
  cpu) DEVICE=cpu ;;
  *) echo "gpu.sh: PROVIDER must be cuda or cpu, got '$PROVIDER'" >&2; exit 2 ;;
esac

mkdir -p "$OUT" "$WORK"
LOG="$OUT/gpu_run.log"
exec > >(tee "$LOG") 2>&1
step() { printf '\n== [%4ss] %s\n' "$SECONDS" "$*"; }

step "checks"
"$PYTHON" - "$PROVIDER" <<'EOF'
import importlib, sys
provider = sys.argv[1]
missing = []
for name in ("torch", "onnx", "onnxscript", "onnxruntime", "fastapi", "uvicorn", "pydantic_settings",
             "redis", "prometheus_client", "pyarrow", "safetensors", "matplotlib", "tqdm"):
    try:
        importlib.import_module(name)
    except ImportError:
        missing.append(name)
if missing:
    sys.exit(f"gpu.sh: missing Python packages: {', '.join(missing)}")
import onnxruntime as ort
print("onnxruntime", ort.__version__, ort.__file__, ort.get_available_providers())
if provider == "cuda":
    import torch
    if not torch.cuda.is_available():
        sys.exit("gpu.sh: torch sees no CUDA device")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        sys.exit("gpu.sh: this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    print("torch", torch.__version__, torch.cuda.get_device_name(0))
EOF
command -v redis-server >/dev/null || { echo "gpu.sh: redis-server is not on PATH" >&2; exit 1; }
if command -v nvidia-smi >/dev/null; then nvidia-smi > "$OUT/nvidia_smi.txt" || true; fi

step "data: $ITEMS items, $TRAIN_ROWS train rows"
if [ ! -f "$WORK/data/meta.json" ]; then
  "$PYTHON" -m model.synth --out "$WORK/data" --items "$ITEMS" --users 20000 \
    --train-rows "$TRAIN_ROWS" --valid-rows 10000 --test-rows 10000 --seed 2025
fi

step "paper-preset checkpoint (one epoch on $DEVICE)"
"$PYTHON" -m model.train --data "$WORK/data" --out "$WORK/checkpoint" --preset paper \
  --epochs 1 --device "$DEVICE" --no-progress

step "export (serving graph, parity-checked against PyTorch)"
"$PYTHON" -m export --checkpoint "$WORK/checkpoint" --out "$WORK/model.onnx" \
  --verify-data "$WORK/data"

step "model only"
"$PYTHON" -m bench.model_latency --presets paper --provider "$PROVIDER" --budget 1 --out-dir "$OUT"

step "end to end: service on $PROVIDER, 1 user x $CANDIDATES candidates, rates $RATES"
"$PYTHON" -m bench.service_load --only service --provider "$PROVIDER" \
  --candidates "$CANDIDATES" --rates "$RATES" --duration "$DURATION" \
  --model "$WORK/model.onnx" --checkpoint "$WORK/checkpoint" --data "$WORK/data" \
  --service-command "$PYTHON -m service" --out-dir "$OUT"

step "done: results in $OUT"
ls -l "$OUT"
