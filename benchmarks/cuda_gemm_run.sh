#!/usr/bin/env bash
# cuda_gemm_run.sh - on a machine with a GPU and a CUDA build of torch: build samba_ext with
# CUDA, run the GEMM-path and MLP-padding CUDA tests (tests/test_cuda_gemm_modes.py,
# tests/test_mlp_padding.py, tests/test_model_cuda.py) and benchmarks/gpu_gemm.py; print a
# short table.
#
# Usage (from the repository root):  bash benchmarks/cuda_gemm_run.sh [steps]
#   steps: comma-separated subset of build,tests,bench (default: all three)
# Environment: OUT (log folder, default ./out), SAMBA_EXT_CUDA_ARCHS (default 90), PYTHON
#   (default python3; needs torch with CUDA for bench), GIT_COMMIT (recorded in the logs).
# Files written to $OUT: build.log, tests.log, bench.log, gpu_gemm.md/.json, summary.md
set -u
OUT=${OUT:-./out}
mkdir -p "$OUT"
STEPS=${1:-build,tests,bench}
export SAMBA_EXT_CUDA_ARCHS=${SAMBA_EXT_CUDA_ARCHS:-90}
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}
SUMMARY="$OUT/summary.md"
: > "$SUMMARY"
row() { printf '| %-6s | %-7s | %s |\n' "$1" "$2" "$3" | tee -a "$SUMMARY"; }
has() { [[ ",$STEPS," == *",$1,"* ]]; }
last_line() { grep -E "passed|failed|error" "$1" | tail -1 | sed -e 's/=//g' -e 's/^ *//'; }

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ) commit: ${GIT_COMMIT:-unknown}"
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    nvcc --version | tail -1
} > "$OUT/build.log" 2>&1
printf '| %-6s | %-7s | %s |\n' step status details | tee -a "$SUMMARY"
printf '|%s|%s|%s|\n' -------- --------- ------- | tee -a "$SUMMARY"

if has build; then
    t0=$(date +%s)
    if SAMBA_EXT_CUDA=1 $PY setup.py build_ext --inplace -j16 >> "$OUT/build.log" 2>&1 &&
        $PY -c "import samba_ext; assert samba_ext.cuda_available()" >> "$OUT/build.log" 2>&1; then
        row build ok "$(( $(date +%s) - t0 )) s, sm_$SAMBA_EXT_CUDA_ARCHS"
    else
        row build FAILED "see build.log"; tail -40 "$OUT/build.log"; exit 1
    fi
fi

if has tests; then
    t0=$(date +%s)
    $PY -m pytest -q -rs -p no:cacheprovider tests/test_cuda_gemm_modes.py \
        tests/test_mlp_padding.py tests/test_model_cuda.py > "$OUT/tests.log" 2>&1
    rc=$?
    row tests "$([ $rc = 0 ] && echo ok || echo FAILED)" "$(last_line "$OUT/tests.log"), $(( $(date +%s) - t0 )) s"
    [ $rc = 0 ] || grep -E "^(FAILED|ERROR|E )" "$OUT/tests.log" | head -30
fi

if has bench; then
    t0=$(date +%s)
    $PY benchmarks/gpu_gemm.py --out "$OUT" --commit "${GIT_COMMIT:-}" > "$OUT/bench.log" 2>&1
    rc=$?
    row bench "$([ $rc = 0 ] && echo ok || echo FAILED)" "$(( $(date +%s) - t0 )) s, see gpu_gemm.md"
    cat "$OUT/bench.log" | tail -80
fi
exit 0
