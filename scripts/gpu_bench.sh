#!/usr/bin/env bash
# The GPU rows of README's Speed section, in one run on a CUDA machine (H100 / H200): the engine's reference,
# eager-fast and compiled timings with cold start and warm-restart compile, then training steps. Raw outputs go to
# OUT (default gpu_bench/). A cold compile takes one to two minutes per batch size: BATCHES trims the list.
#   scripts/gpu_bench.sh [OUT]        PYTHON=.venv/bin/python BATCHES=1,4,8,auto REPEATS=20
# STEPS picks the steps, run in the order given (default engine,training):
#   engine     python -m engine bench (BATCHES)
#   training   python -m training bench-step
#   variants   python -m engine.benches.compile_variants: compile options (freezing, conv_1x1_as_mm, coordinate
#              descent, fused QKV) against the engine's compile, and the SDPA kernel of each attention; about 8 min
#              at batch 1 on an H200. VARIANTS picks them (default: the module's), VARIANT_BATCH (1), BUDGET_S (480).
#   pipeline   python -m engine bench-pipeline: end-to-end 1920x1080 frames/s with FACES moving faces (1) and
#              --temporal, pipelined and serial, each stage's own rate, tracking vs detecting every frame
#              (SD-Turbo-size random weights, compiled; about 3 min with the compile). FRAMES (48).
# e.g. STEPS=variants VARIANTS=baseline,freezing scripts/gpu_bench.sh
# The issue-26 device run: STEPS=pipeline,variants BUDGET_S=330 scripts/gpu_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-gpu_bench}
BATCHES=${BATCHES:-1,4,8,auto}
STEPS=${STEPS:-engine,training}
for step in ${STEPS//,/ }; do  # checked before the first step: a typo must not cost a device run's minutes
  case "$step" in
    engine|training|variants|pipeline) ;;
    *) echo "unknown step '$step' in STEPS=$STEPS (engine, training, variants, pipeline)" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'this torch sees no CUDA GPU'; print(torch.__version__)"
for step in ${STEPS//,/ }; do
  case "$step" in
    engine)
      "$PY" -m engine bench --random-weights --size 512 --batch "$BATCHES" --repeats "${REPEATS:-20}" --json \
        > "$OUT/engine_bench.json"
      "$PY" -c "import json, sys; from engine.benches.speed import print_report; print_report(json.load(open(sys.argv[1])))" \
        "$OUT/engine_bench.json" | tee "$OUT/engine_bench.txt"
      ;;
    training)
      "$PY" -m training bench-step --batches 1,4 --device cuda | tee "$OUT/training_bench_step.txt"
      ;;
    pipeline)
      "$PY" -m engine bench-pipeline --random-weights --size 1920x1080 --faces "${FACES:-1}" \
        --frames "${FRAMES:-48}" --temporal --json > "$OUT/bench_pipeline.json"
      "$PY" -c "import json, sys; from engine.benches.pipeline import print_table; print_table(json.load(open(sys.argv[1])))" \
        "$OUT/bench_pipeline.json" | tee "$OUT/bench_pipeline.txt"
      ;;
    variants)
      # the table is printed and the JSON written as each variant finishes: a run cut short keeps what it measured
      "$PY" -m engine.benches.compile_variants --random-weights --size 512 --batch "${VARIANT_BATCH:-1}" \
        --repeats "${REPEATS:-20}" ${VARIANTS:+--variants "$VARIANTS"} --budget-s "${BUDGET_S:-480}" \
        --out "$OUT/compile_variants.json" | tee "$OUT/compile_variants.txt"
      ;;
  esac
done
