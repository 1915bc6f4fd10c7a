#!/usr/bin/env bash
# cuda_run.sh - build samba_ext with CUDA, run the CUDA test suite and compute-sanitizer
# (memcheck, racecheck, initcheck) over it, and print a short table.
#
# Usage (from the repository root, on a machine with a GPU):
#   bash benchmarks/cuda_run.sh [steps]        steps: any of build,tests,memcheck,racecheck,
#                                              initcheck (comma separated; default: all)
# Environment: OUT (log folder, default ./out), SAMBA_EXT_CUDA_ARCHS (default 90),
#   CUDA_TESTS (test files, default: the CUDA files + the backend-parametrised CPU files, see TESTS),
#   SAN_TIMEOUT (seconds per sanitizer run, default 150), GIT_COMMIT (recorded in env.txt;
#   the device copy of the tree has no git history).
# Logs: $OUT/build.log, $OUT/tests.log, $OUT/memcheck.log, $OUT/racecheck.log,
#   $OUT/initcheck.log, $OUT/summary.md
set -u
OUT=${OUT:-./out}
mkdir -p "$OUT"
STEPS=${1:-build,tests,memcheck,racecheck,initcheck}
export SAMBA_EXT_CUDA_ARCHS=${SAMBA_EXT_CUDA_ARCHS:-90}
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # jax must not take 75% of the GPU
SAN_TIMEOUT=${SAN_TIMEOUT:-150}
PY=${PYTHON:-python3}
# Default: the CUDA files, the CPU kernel files parametrised over backends (their cuda cases),
# the model suite (with the MLP padding), the bundled-model checks, the torch layer on CUDA
# tensors, the training kernel paths and the torch parity tests.
TESTS=${CUDA_TESTS:-$(ls tests/test_cuda_*.py tests/test_model_cuda*.py tests/test_scan.py \
    tests/test_conv.py tests/test_attention.py tests/test_elementwise.py tests/test_model.py \
    tests/test_mlp_padding.py tests/test_bundled_models.py tests/test_torch_cuda*.py \
    tests/test_train_kernels.py tests/test_torch_parity.py 2>/dev/null | tr '\n' ' ')}
SUMMARY="$OUT/summary.md"
: > "$SUMMARY"
row() { printf '| %-10s | %-8s | %s |\n' "$1" "$2" "$3" | tee -a "$SUMMARY"; }
has() { [[ ",$STEPS," == *",$1,"* ]]; }
counts() {  # pytest's last summary line
    grep -E "^(=+ )?[0-9]+ (passed|failed|error)|no tests ran|passed|failed" "$1" | tail -1 \
        | sed -e 's/=//g' -e 's/^ *//' -e 's/ *$//'
}

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: ${GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
    nvcc --version | tail -1
    $PY -c "import sys, numpy; print('python', sys.version.split()[0], 'numpy', numpy.__version__)"
    $PY -c "import torch; print('torch', torch.__version__)" 2>&1 | tail -1
    $PY -c "import cupy; print('cupy', cupy.__version__)" 2>&1 | tail -1
    compute-sanitizer --version 2>&1 | tail -1
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
echo
printf '| %-10s | %-8s | %s |\n' step status details | tee -a "$SUMMARY"
printf '|%s|%s|%s|\n' ------------ ---------- -------- | tee -a "$SUMMARY"

if has build; then
    t0=$(date +%s)
    if SAMBA_EXT_CUDA=1 $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1 &&
        $PY -c "import samba_ext; samba_ext.show_config(); assert samba_ext.cuda_available()" \
            >> "$OUT/build.log" 2>&1; then
        row build ok "$(( $(date +%s) - t0 )) s, archs $SAMBA_EXT_CUDA_ARCHS"
    else
        row build FAILED "see build.log"; tail -30 "$OUT/build.log"; exit 1
    fi
fi

if has tests; then
    t0=$(date +%s)
    $PY -m pytest -q -rs -p no:cacheprovider $TESTS > "$OUT/tests.log" 2>&1
    rc=$?
    row tests "rc=$rc" "$(counts "$OUT/tests.log"), $(( $(date +%s) - t0 )) s"
    grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -20
fi

# Sanitizers: memcheck over the CUDA kernel, interop and model tests; racecheck and
# initcheck over the kernel tests (the kernels with shared memory). Left out: the planted
# fault (its subprocess faults on purpose), the planted out-of-memory API error, and jax.
SAN_SEL='not fault and not jax and not errors_are_exceptions'
SAN_FILES_memcheck="tests/test_cuda_kernels.py tests/test_cuda_interop.py $(ls tests/test_model_cuda*.py 2>/dev/null | tr '\n' ' ')"
SAN_FILES_racecheck="tests/test_cuda_kernels.py"
SAN_FILES_initcheck="tests/test_cuda_kernels.py"
san() {
    local tool=$1; shift
    local t0=$(date +%s)
    local files_var="SAN_FILES_$tool"
    timeout "$SAN_TIMEOUT" compute-sanitizer --tool "$tool" "$@" --error-exitcode 99 \
        --print-limit 20 $PY -m pytest -q -x -p no:cacheprovider -k "$SAN_SEL" \
        ${!files_var} > "$OUT/$tool.log" 2>&1
    local rc=$?
    local errs
    errs=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/$tool.log" | tail -1)
    local status=ok
    [ $rc -eq 124 ] && status=TIMEOUT
    [ $rc -ne 0 ] && [ $rc -ne 124 ] && status="rc=$rc"
    row "$tool" "$status" "${errs:-no summary}; $(counts "$OUT/$tool.log"); $(( $(date +%s) - t0 )) s"
    grep -E "^========= (Invalid|Error|Race|Uninit|Warning)" "$OUT/$tool.log" | sort | uniq -c \
        | head -10
}
has memcheck && san memcheck --leak-check no
has racecheck && san racecheck
has initcheck && san initcheck
echo
cat "$SUMMARY"
