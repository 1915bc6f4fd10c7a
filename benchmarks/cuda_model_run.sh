#!/usr/bin/env bash
# cuda_model_run.sh - on a GPU machine: build for sm_90, reproduce the batch-16 decode fault
# (with an older backend_cuda.py, when BEFORE names one) and check its fix, run the CUDA
# model and kernel tests, the throughput command that faulted, and the kernel
# microbenchmarks (benchmarks/gpu_kernels.py). Logs under $OUT; a short table last.
#
# Usage (repository root): OUT=dir GIT_COMMIT=abc1234 [BEFORE=old/backend_cuda.py] \
#     bash benchmarks/cuda_model_run.sh [steps]
#   steps: comma-separated subset of build,repro,tests,throughput,bench (default: all)
# Environment: TESTS (pytest files; default below), BENCH_ONLY (gpu_kernels.py --only),
#   REPRO_LAYERS (default 2), PYTEST_WORKERS (pytest-xdist workers, default 4).
set -u
OUT=${OUT:-./out}
mkdir -p "$OUT"
STEPS=${1:-build,repro,tests,throughput,bench}
export SAMBA_EXT_CUDA_ARCHS=${SAMBA_EXT_CUDA_ARCHS:-90}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=$PWD
PY=${PYTHON:-python3}
has() { [[ ",$STEPS," == *",$1,"* ]]; }
SUMMARY="$OUT/summary.md"
: > "$SUMMARY"
row() { printf '| %-22s | %s |\n' "$1" "$2" | tee -a "$SUMMARY"; }
TESTS=${TESTS:-$(ls tests/test_cuda_*.py tests/test_model_cuda*.py tests/test_scan.py \
    tests/test_conv.py tests/test_elementwise.py tests/test_model.py 2>/dev/null | tr '\n' ' ')}
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: ${GIT_COMMIT:-unknown}"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
    nvcc --version | tail -1
    $PY -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if has build; then
    t0=$(date +%s)
    if SAMBA_EXT_CUDA=1 $PY setup.py build_ext --inplace -j 16 > "$OUT/build.log" 2>&1 &&
        $PY -c "import samba_ext; assert samba_ext.cuda_available()" >> "$OUT/build.log" 2>&1; then
        row build "ok, $(( $(date +%s) - t0 )) s, sm_$SAMBA_EXT_CUDA_ARCHS"
    else
        row build "FAILED (build.log)"; tail -40 "$OUT/build.log"; exit 1
    fi
fi

if has throughput; then  # the command of the fault report, full samba-1.7b (background)
    $PY -c "
from samba_ext.eval.throughput import throughput
r = throughput(configs=['samba-1.7b'], prompt_lengths=[], gen_lengths=[256], batch_size=16,
               device='cuda', progress=False)
c = r.cells[0]
print('THROUGHPUT ok: samba-1.7b batch 16, 256 steps, %.1f ms/step, %.0f tokens/s'
      % (c['ms_per_step'], c['tokens_per_s']))
" > "$OUT/throughput.log" 2>&1 &
    TPID=$!
fi

if has repro; then  # each scenario in its own process (a fault leaves the context unusable)
    L=${REPRO_LAYERS:-2}
    pids=()
    for sc in batch-change two-models llama; do
        if [ -n "${BEFORE:-}" ]; then
            rm -rf "/tmp/before_$sc" && mkdir -p "/tmp/before_$sc" &&
                cp -r samba_ext "/tmp/before_$sc/" && cp "$BEFORE" "/tmp/before_$sc/samba_ext/backend_cuda.py"
            PYTHONPATH="/tmp/before_$sc" $PY benchmarks/cuda_fault_repro.py $sc --layers $L \
                > "$OUT/repro_before_$sc.log" 2>&1 &
            pids+=($!)
        fi
        PYTHONPATH=$PWD $PY benchmarks/cuda_fault_repro.py $sc --layers $L \
            > "$OUT/repro_after_$sc.log" 2>&1 &
        pids+=($!)
    done
    wait "${pids[@]}"
    for f in "$OUT"/repro_*.log; do
        row "$(basename "$f" .log)" "$(grep -E '(ok|WRONG|FAULT)' "$f" | tail -1 | cut -c1-150)"
    done
fi

if has tests; then
    t0=$(date +%s)
    $PY -m pytest -q -rs -p no:cacheprovider -n "${PYTEST_WORKERS:-4}" $TESTS > "$OUT/tests.log" 2>&1
    rc=$?
    row tests "rc=$rc, $(tail -1 "$OUT/tests.log" | sed 's/=//g'), $(( $(date +%s) - t0 )) s"
    grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -20
fi

if has throughput; then
    wait $TPID
    row throughput "$(grep -E 'THROUGHPUT|Error' "$OUT/throughput.log" | tail -1 | cut -c1-150)"
fi

if has bench; then
    PYTHONPATH=$PWD $PY benchmarks/gpu_kernels.py --out "$OUT/gpu_kernels.json" \
        --only "${BENCH_ONLY:-scan,rms,swiglu,conv}" > "$OUT/bench.log" 2>&1
    row bench "rc=$?"
    cat "$OUT/bench.log" | tail -30
fi
echo
cat "$SUMMARY"
