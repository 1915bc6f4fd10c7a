#!/usr/bin/env bash
# cuda_gpu_model_run.sh - on a GPU machine: build for sm_90, then run benchmarks/gpu_model.py
# (the Samba paper's Figure 3 protocol: samba-1.7b, llama3-1.6b, mistral-1.6b and transformers'
# LlamaForCausalLM; prefill 4K/32K/128K, batch-16 decode at 4K..64K, batch-1 decode against the
# weight-read floor). Logs and results under $OUT; a short table last.
#
# Usage (repository root): OUT=dir GIT_COMMIT=abc1234 bash benchmarks/cuda_gpu_model_run.sh \
#     [steps] [-- extra gpu_model.py arguments]
#   steps: comma-separated subset of build,smoke,bench (default: build,bench)
#     smoke: gpu_model.py --quick (small lengths; 1-2 min, mostly building the models) into $OUT/smoke
#     bench: the full default run into $OUT/results (estimated 4-6 min on an H200)
# Environment: CAP_S (skip a prefill point estimated longer, default 90), MODELS (default all).
# Copy $OUT/results/gpu_model.json, gpu_model_figure3.md and the two PNGs to benchmarks/results/.
set -u
OUT=${OUT:-./out}
mkdir -p "$OUT"
STEPS=${1:-build,bench}
shift $(( $# > 0 ? 1 : 0 ))
[ "${1:-}" = "--" ] && shift
export SAMBA_EXT_CUDA_ARCHS=${SAMBA_EXT_CUDA_ARCHS:-90}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
PY=${PYTHON:-python3}
has() { [[ ",$STEPS," == *",$1,"* ]]; }
SUMMARY="$OUT/summary.md"
: > "$SUMMARY"
row() { printf '| %-10s | %s |\n' "$1" "$2" | tee -a "$SUMMARY"; }
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: ${GIT_COMMIT:-unknown}"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
    nvcc --version | tail -1
    $PY -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__)"
    $PY -c "import transformers; print('transformers', transformers.__version__)" ||
        echo "transformers: not installed (its row will say so)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
ARGS=(--cap-s "${CAP_S:-90}")
[ -n "${MODELS:-}" ] && ARGS+=(--models "$MODELS")

if has build; then
    t0=$(date +%s)
    if SAMBA_EXT_CUDA=1 $PY setup.py build_ext --inplace -j 16 > "$OUT/build.log" 2>&1 &&
        $PY -c "import samba_ext; assert samba_ext.cuda_available()" >> "$OUT/build.log" 2>&1; then
        row build "ok, $(( $(date +%s) - t0 )) s, sm_$SAMBA_EXT_CUDA_ARCHS"
    else
        row build "FAILED (build.log)"; tail -40 "$OUT/build.log"; exit 1
    fi
fi

if has smoke; then
    t0=$(date +%s)
    mkdir -p "$OUT/smoke"
    $PY benchmarks/gpu_model.py --quick --out "$OUT/smoke" "${ARGS[@]}" "$@" \
        > "$OUT/smoke.log" 2>&1
    row smoke "rc=$?, $(( $(date +%s) - t0 )) s (smoke.log)"
fi

if has bench; then
    t0=$(date +%s)
    mkdir -p "$OUT/results"
    $PY benchmarks/gpu_model.py --out "$OUT/results" "${ARGS[@]}" "$@" > "$OUT/bench.log" 2>&1
    rc=$?
    row bench "rc=$rc, $(( $(date +%s) - t0 )) s (bench.log)"
    [ $rc -ne 0 ] && tail -30 "$OUT/bench.log"
    # the tables (from the first table's title to the end of the log)
    sed -n '/^Prefill, /,$p' "$OUT/bench.log" | tail -60
fi
echo
cat "$SUMMARY"
