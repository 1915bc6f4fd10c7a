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
STEPS=${1:-build,tests,bench}
source "$(dirname "$0")/cuda_run_common.sh"
header
build_step

has tests && pytest_step tests tests.log tests/test_cuda_gemm_modes.py tests/test_mlp_padding.py tests/test_model_cuda.py

if has bench; then
    t0=$(date +%s)
    $PY benchmarks/gpu_gemm.py --out "$OUT" --commit "${GIT_COMMIT:-}" > "$OUT/bench.log" 2>&1
    rc=$?
    row bench "$([ $rc = 0 ] && echo ok || echo FAILED)" "$(( $(date +%s) - t0 )) s, see gpu_gemm.md"
    cat "$OUT/bench.log" | tail -80
fi
exit 0
