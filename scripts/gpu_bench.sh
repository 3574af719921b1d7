#!/usr/bin/env bash
# The GPU rows of README's Speed section, in one run on a CUDA machine (H100 / H200): the engine's reference,
# eager-fast and compiled timings with cold start and warm-restart compile, then training steps. Raw outputs go to
# OUT (default gpu_bench/). A cold compile takes one to two minutes per batch size: BATCHES trims the list.
#   scripts/gpu_bench.sh [OUT]        PYTHON=.venv/bin/python BATCHES=1,4,8,auto REPEATS=20
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-gpu_bench}
BATCHES=${BATCHES:-1,4,8,auto}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'this torch sees no CUDA GPU'; print(torch.__version__)"
"$PY" -m engine bench --random-weights --size 512 --batch "$BATCHES" --repeats "${REPEATS:-20}" --json \
  > "$OUT/engine_bench.json"
"$PY" -c "import json, sys; from engine.benches.speed import print_report; print_report(json.load(open(sys.argv[1])))" \
  "$OUT/engine_bench.json" | tee "$OUT/engine_bench.txt"
"$PY" -m training bench-step --batches 1,4 --device cuda | tee "$OUT/training_bench_step.txt"
