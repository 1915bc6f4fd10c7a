#!/usr/bin/env bash
# cuda_elementwise_run.sh - on a machine with a GPU: build samba_ext with CUDA, run the tests of
# the decode GEMV (tests/test_cuda_gemv.py), the vectorised element-wise kernels
# (tests/test_cuda_elementwise.py) and the 32/64-bit index switch (tests/test_cuda_index64.py,
# ~13 GB of device memory), then compute-sanitizer memcheck over the GEMV and element-wise cases
# and racecheck over the kernels with shared memory (gemv.cu's x slice, norm.cu's block sum,
# rotary.cu's angle table); print a short table.
#
# Usage (from the repository root):  bash benchmarks/cuda_elementwise_run.sh [steps]
#   steps: comma-separated subset of build,tests,memcheck,racecheck (default: all four)
# Environment: OUT (log folder, default ./out), SAMBA_EXT_CUDA_ARCHS (default 90), PYTHON,
#   SAN_TIMEOUT (seconds per sanitizer run, default 240), GIT_COMMIT (recorded in the logs).
# Files written to $OUT: build.log, tests.log, memcheck.log, racecheck.log, summary.md
STEPS=${1:-build,tests,memcheck,racecheck}
source "$(dirname "$0")/cuda_run_common.sh"
header
build_step

has tests && pytest_step tests tests.log tests/test_cuda_gemv.py tests/test_cuda_elementwise.py \
    tests/test_cuda_index64.py

# memcheck: every GEMV path (split-K, 8-byte rows, tails, fallbacks, graphs) and the element-wise
# cases but the slow ones (the model decode, the fresh-process environment checks, long rows).
has memcheck && sanitizer_step memcheck $PY -m pytest -q -p no:cacheprovider \
    tests/test_cuda_gemv.py tests/test_cuda_elementwise.py \
    -k "not model_decode and not environment and not model_sizes and not long_rows"

# racecheck: a few launches of each kernel with shared memory (slow under the tool).
has racecheck && sanitizer_step racecheck $PY -m pytest -q -p no:cacheprovider \
    tests/test_cuda_gemv.py tests/test_cuda_elementwise.py \
    -k "8byte_rows_with_tail or rms_norm_decode_last_token_rows or rms_norm_long_rows or apply_rotary_device_positions or apply_rotary_misaligned"
exit 0
