#!/usr/bin/env bash
# cuda_scan_bwd_run.sh - on a machine with a GPU: build samba_ext with CUDA (or reuse a build
# stamped for these sources), run the CUDA tests of the scan and conv backward
# (tests/test_cuda_grad_scan.py), compute-sanitizer memcheck and racecheck over
# benchmarks/cuda_scan_san.py (the scan forward and backward in their kernel configurations,
# segments along the sequence included), benchmarks/gpu_backward.py (the backward against the
# forward, every variant) and Nsight Compute on the backward at batch 8 and 1; print a short
# table.
#
# Usage (from the repository root):  bash benchmarks/cuda_scan_bwd_run.sh [steps]
#   steps: comma-separated subset of build,tests,memcheck,racecheck,bench,profile
#   (default: all but profile)
# Environment: OUT (log folder, default ./out), PYTEST_WORKERS (pytest-xdist workers, default 8),
#   SAMBA_EXT_CUDA_ARCHS (default 90), PYTHON, GIT_COMMIT (recorded in the logs),
#   SAN_TIMEOUT (seconds per sanitizer run, default 240).
# Files written to $OUT: build.log, tests.log, memcheck.log, racecheck.log, bench.log,
#   gpu_backward.md / .json (the benchmark's tables; benchmarks/results keeps the committed
#   ones), profile/ (cuda_profile_run.sh's files for scan_bwd_b8 and scan_bwd), summary.md
STEPS=${1:-build,tests,memcheck,racecheck,bench}
source "$(dirname "$0")/cuda_run_common.sh"
header
build_step

has tests && pytest_step tests tests.log -n "${PYTEST_WORKERS:-8}" tests/test_cuda_grad_scan.py
has memcheck && sanitizer_step memcheck $PY benchmarks/cuda_scan_san.py
has racecheck && sanitizer_step racecheck $PY benchmarks/cuda_scan_san.py
if has bench; then
    t0=$(date +%s)
    $PY benchmarks/gpu_backward.py --out "$OUT" > "$OUT/bench.log" 2>&1
    rc=$?
    row bench "$([ $rc = 0 ] && echo ok || echo "rc=$rc")" "gpu_backward.md, $(( $(date +%s) - t0 )) s"
fi
if has profile; then
    OUT="$OUT/profile" SASS=1 bash "$(dirname "$0")/cuda_profile_run.sh" profile scan_bwd_b8,scan_bwd \
        > "$OUT/profile.log" 2>&1
    row profile "rc=$?" "profile/summary.md"
fi
exit 0
