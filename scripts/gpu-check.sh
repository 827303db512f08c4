#!/usr/bin/env bash
# `make gpu-check`: GPU readiness in one script, about 10 minutes on one CUDA GPU. Never needed for CI.
#   1. gradcheck on CUDA: Hopfield-ResNet13 1/16 width, CEP, beta 1e-2, float32 without and with TF32,
#      and with a bf16 bulk of the free phase (ep.bf16_sweeps);
#   2. `ep-core bench` at batch 128, full width: eager vs CUDA graphs vs compiled vs 100 of the 120 free
#      sweeps in bf16, and what an epoch of CIFAR-10 costs (391 steps of 128 at 120 + 2 x 50 sweeps);
#   3. peak memory of a step, EP (stacked, separate, chunked) vs backprop;
#   4. a short digits training on CUDA, authors' and fast recipes;
#   5. the tiny pipeline grid on CUDA.
# Everything lands in $OUT (default results/benchmarks/gpu) and a summary is printed at the end.
set -euo pipefail
BIN=${BIN:-.venv/bin}
OUT=${OUT:-results/benchmarks/gpu}
mkdir -p "$OUT"
"$BIN/python" - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu-check: torch sees no CUDA device here (torch.cuda.is_available() is False); run it on a GPU node")
print(f"gpu-check on {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
PY
step() { echo; echo "== $1"; }
ITER="--free-iterations 120 --nudge-iterations 50"

step "1. gradcheck on CUDA (min cosine must stay >= 0.999)"
for mode in "" "--tf32" "--bf16-sweeps 100"; do
  case $mode in "") name=gradcheck_fp32 ;; --tf32) name=gradcheck_fp32_tf32 ;; *) name=gradcheck_bf16_bulk ;; esac
  "$BIN/ep-core" gradcheck --arch hopfield_resnet13 --width 0.0625 --beta 0.01 --dtype float32 --tol 1e-6 \
    --device cuda $mode --json > "$OUT/$name.json"
  "$BIN/python" -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], 'min cosine', r['min_cosine'])" \
    "$OUT/$name.json" "$name"
done

step "2. bench at batch 128, full width: eager, CUDA graphs, compiled, bf16 bulk"
for variant in eager graphs compiled bf16_bulk; do
  case $variant in
    eager) flags="" ;; graphs) flags="--cuda-graphs" ;; compiled) flags="--compile" ;;
    bf16_bulk) flags="--bf16-sweeps 100" ;;
  esac
  "$BIN/ep-core" bench --device cuda --arch hopfield_resnet13 --batch-size 128 $ITER --repeats 3 \
    --no-memory --no-schedules $flags --json > "$OUT/bench_$variant.json"
  "$BIN/python" -c "import json,sys; r=json.load(open(sys.argv[1])); ms=r['ep']['step_ms']
print(f\"{sys.argv[2]:>9}: EP step {ms:.0f} ms -> CIFAR-10 epoch {391*ms/6e4:.1f} min; BP step {r['bp']['step_ms']:.1f} ms\")" \
    "$OUT/bench_$variant.json" "$variant"
done

step "3. peak memory of a step at batch 128 (5 nudged iterations), EP vs BP"
for flags in "" "--separate-phases" "--chunk-size 32"; do
  "$BIN/ep-core" bench --device cuda --arch hopfield_resnet13 --batch-size 128 --free-iterations 5 \
    --nudge-iterations 5 --memory-only $flags
done

step "4. digits on CUDA, 3 epochs: authors' and fast recipes"
"$BIN/ep-core" bench-tta --seeds 0 --epochs 3 --set train.device=cuda --workdir "$OUT/tta-runs" \
  --out "$OUT/tta.json"

step "5. the tiny pipeline grid on CUDA"
printf 'settings:\n  all:\n    train.device: cuda\nprofiles:\n  device: cuda\n' > "$OUT/tiny-cuda.yaml"
PATH="$PWD/$BIN:$PATH" "$BIN/snakemake" --cores 4 --configfile tests/pipeline/tiny.yaml "$OUT/tiny-cuda.yaml" \
  >"$OUT/pipeline.log" 2>&1 \
  && echo "pipeline: ok ($OUT/pipeline.log)" || { echo "pipeline: FAILED, see $OUT/pipeline.log"; exit 1; }
echo; echo "gpu-check: done; figures under $OUT"
