#!/usr/bin/env bash
# `make gpu-check`: GPU readiness in one script that can fail, within about 10 minutes on one CUDA GPU.
# Never needed for CI. Each step has its own time bound (GPU_CHECK_SCALE multiplies them all) and the
# script exits 1 at the first step that fails or runs out of time, naming it:
#   1. gradcheck on CUDA: Hopfield-ResNet13 1/16 width, CEP, beta 1e-2, in float64 (the bar: min cosine
#      >= MIN_COSINE, default 0.999, the CPU's float64 figure is 0.9997) and, reported only, float32
#      without and with TF32 and with a bf16 bulk of the free phase (ep.bf16_sweeps);
#   2. `ep-core bench` at batch 128, full width: eager vs chunks of 32 (ep.chunk_size) vs CUDA graphs vs
#      compiled vs 100 of the 120 free sweeps in bf16, and what an epoch of CIFAR-10 costs (391 steps of 128
#      at 120 + 2 x 50 sweeps);
#   3. peak memory of a step, EP (stacked, separate, chunked) vs backprop;
#   4. a short digits training on CUDA, authors' and fast recipes;
#   5. the gradient-fidelity monitor on a fast run and an ep.recipe: auto run on CUDA;
#   6. the tiny pipeline grid on CUDA, run in its own folder.
# Everything is written under $OUT (default results/benchmarks/gpu), nothing else: the pipeline's results/,
# logs/, .snakemake/ and MLflow store included. A summary is printed at the end.
set -euo pipefail
BIN=$(realpath "${BIN:-.venv/bin}")
OUT=$(realpath -m "${OUT:-results/benchmarks/gpu}")
MIN_COSINE=${MIN_COSINE:-0.999}
SCALE=${GPU_CHECK_SCALE:-1}
REPO=$PWD
mkdir -p "$OUT"
"$BIN/python" - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu-check: torch sees no CUDA device here (torch.cuda.is_available() is False); run it on a GPU node")
print(f"gpu-check on {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
PY
step() { echo; echo "== $1"; }
# bounded SECONDS NAME COMMAND...: run COMMAND for at most SECONDS x SCALE; a failure or a time-out ends the
# check with a line naming the step (timeout exits 124 when the bound is hit).
bounded() {
  local limit name status=0
  limit=$("$BIN/python" -c "import sys; print(max(1, round(float(sys.argv[1]) * float(sys.argv[2]))))" "$1" "$SCALE")
  name=$2
  shift 2
  timeout --kill-after=10 "$limit" "$@" || status=$?
  if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    echo "gpu-check: FAILED: $name ran past its bound of $limit s"; exit 1
  elif [ "$status" -ne 0 ]; then
    echo "gpu-check: FAILED: $name (exit $status)"; exit 1
  fi
}
cosine() { "$BIN/python" -c "import json,sys; print(sys.argv[2], 'min cosine', json.load(open(sys.argv[1]))['min_cosine'])" "$1" "$2"; }
ITER="--free-iterations 120 --nudge-iterations 50"
GRAD="--arch hopfield_resnet13 --width 0.0625 --beta 0.01 --device cuda --json"

step "1. gradcheck on CUDA: float64 must reach min cosine >= $MIN_COSINE; float32 variants reported"
bounded 120 "gradcheck float64" "$BIN/ep-core" gradcheck $GRAD --dtype float64 --min-cosine "$MIN_COSINE" \
  > "$OUT/gradcheck_fp64.json"
cosine "$OUT/gradcheck_fp64.json" gradcheck_fp64
for mode in "" "--tf32" "--bf16-sweeps 100"; do
  case $mode in "") name=gradcheck_fp32 ;; --tf32) name=gradcheck_fp32_tf32 ;; *) name=gradcheck_bf16_bulk ;; esac
  bounded 30 "$name" "$BIN/ep-core" gradcheck $GRAD --dtype float32 --tol 1e-6 $mode > "$OUT/$name.json"
  cosine "$OUT/$name.json" "$name"
done

step "2. bench at batch 128, full width: eager, chunks of 32, CUDA graphs, compiled, bf16 bulk"
for variant in eager chunk32 graphs compiled bf16_bulk; do
  case $variant in
    eager) flags="" ;; chunk32) flags="--chunk-size 32" ;; graphs) flags="--cuda-graphs" ;;
    compiled) flags="--compile" ;; bf16_bulk) flags="--bf16-sweeps 100" ;;
  esac
  bounded 60 "bench $variant" "$BIN/ep-core" bench --device cuda --arch hopfield_resnet13 --batch-size 128 \
    $ITER --repeats 2 --no-memory --no-schedules $flags --json --output "$OUT/bench_$variant.json"
  "$BIN/python" -c "import json,sys; r=json.load(open(sys.argv[1])); ms=r['ep']['step_ms']
print(f\"{sys.argv[2]:>9}: EP step {ms:.0f} ms -> CIFAR-10 epoch {391*ms/6e4:.1f} min; BP step {r['bp']['step_ms']:.1f} ms\")" \
    "$OUT/bench_$variant.json" "$variant"
done
# ep.chunk_size stays off by default until this ratio is known (docs/benchmarks.md, "Memory by default").
"$BIN/python" -c "import json,sys; t={v: json.load(open(f'{sys.argv[1]}/bench_{v}.json'))['ep']['step_ms'] for v in ('eager','chunk32')}
print(f\"chunks of 32 cost {100*(t['chunk32']/t['eager']-1):+.1f} % of the eager step's time\")" "$OUT"

step "3. peak memory of a step at batch 128 (5 nudged iterations), EP vs BP"
for flags in "" "--separate-phases" "--chunk-size 32"; do
  bounded 40 "memory ${flags:-stacked}" "$BIN/ep-core" bench --device cuda --arch hopfield_resnet13 \
    --batch-size 128 --free-iterations 5 --nudge-iterations 5 --memory-only $flags
done

step "4. digits on CUDA, 3 epochs, seeds 1 and 2: authors' and fast recipes under the time-to-accuracy protocol"
bounded 180 "bench-tta" "$BIN/ep-core" bench-tta --dataset digits --seeds 1,2 --epochs 3 --set train.device=cuda \
  --control none --workdir "$OUT/tta-runs" --out "$OUT/tta"

step "5. the gradient-fidelity monitor and ep.recipe: auto on CUDA (digits, 2 epochs, a probe every 10 steps)"
for recipe in fast auto; do
  bounded 90 "monitor $recipe" "$BIN/ep-core" train --set data.name=digits --set model.width=0.0625 \
    --set train.device=cuda --set train.epochs=2 --set train.batch_size=32 --set optim.lr=0.05 \
    --set ep.recipe=$recipe --set train.fidelity_every=10 --out "$OUT/monitor-$recipe"
  "$BIN/python" - "$OUT/monitor-$recipe" <<'PY'
import csv, json, math, sys
out = sys.argv[1]
f = json.load(open(f"{out}/metrics.json"))["fidelity"]
if not f or f["probes"] < 8 or not math.isfinite(f["cosine_last"]):
    sys.exit(f"gpu-check: FAILED: the monitor of {out} made fewer than 8 probes or a non-finite cosine: {f}")
auto = [r["auto/free_iterations"] for r in csv.DictReader(open(f"{out}/history.csv")) if r.get("auto/free_iterations")]
print(f"{out}: {f['probes']} probes, cosine first {f['cosine_first']:.3f}, last {f['cosine_last']:.3f}, "
      f"min {f['cosine_min']:.3f}; the monitor took {100 * f['share_of_training']:.1f} % of training"
      + (f"; auto's free sweeps per epoch {auto}" if auto else ""))
PY
done

step "6. the tiny pipeline grid on CUDA, in $OUT/pipeline"
mkdir -p "$OUT/pipeline"
printf 'settings:\n  all:\n    train.device: cuda\nprofiles:\n  device: cuda\n' > "$OUT/tiny-cuda.yaml"
# --directory: the pipeline's results/, logs/, .snakemake/ and MLflow store live under $OUT, not the repo.
export PATH="$BIN:$PATH"  # its jobs call ep-core from this environment
bounded 120 "the tiny pipeline (log: $OUT/pipeline.log)" "$BIN/snakemake" --cores 4 \
  --snakefile "$REPO/Snakefile" --directory "$OUT/pipeline" \
  --configfile "$REPO/tests/pipeline/tiny.yaml" "$OUT/tiny-cuda.yaml" >"$OUT/pipeline.log" 2>&1
echo "pipeline: ok ($OUT/pipeline.log)"
echo; echo "gpu-check: passed; figures under $OUT"
