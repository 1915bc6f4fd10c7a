#!/usr/bin/env bash
# cuda_torch_run.sh - on a machine with a GPU and a CUDA build of torch: build samba_ext with
# CUDA, run samba_ext.torch's CUDA tests (tests/test_torch_cuda.py, test_torch_cuda_decode.py)
# and, as a regression check on the same machine, its CPU tests; print a short table.
#
# Usage (from the repository root):  bash benchmarks/cuda_torch_run.sh [steps]
#   steps: comma-separated subset of build,cuda,cpu (default: all three)
# Environment: OUT (log folder, default ./out), SAMBA_EXT_CUDA_ARCHS (default 90), PYTHON
#   (default python3; needs torch with CUDA), GIT_COMMIT (recorded in the logs).
# Files written to $OUT: build.log, torch_cuda.log, torch_cpu.log, summary.md
set -u
OUT=${OUT:-./out}
mkdir -p "$OUT"
STEPS=${1:-build,cuda,cpu}
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
    $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
} > "$OUT/build.log" 2>&1
printf '| %-6s | %-7s | %s |\n' step status details | tee -a "$SUMMARY"
printf '|%s|%s|%s|\n' -------- --------- ------- | tee -a "$SUMMARY"

if has build; then
    t0=$(date +%s)
    if SAMBA_EXT_CUDA=1 $PY setup.py build_ext --inplace -j16 >> "$OUT/build.log" 2>&1 &&
        $PY -c "import samba_ext, torch; assert samba_ext.cuda_available() and torch.cuda.is_available()" \
            >> "$OUT/build.log" 2>&1; then
        row build ok "$(( $(date +%s) - t0 )) s, sm_$SAMBA_EXT_CUDA_ARCHS"
    else
        row build FAILED "see build.log"; tail -40 "$OUT/build.log"; exit 1
    fi
fi

run() {  # run <step> <log> <test files...>
    local step=$1 log=$2 t0 rc
    shift 2
    t0=$(date +%s)
    $PY -m pytest -q -rs -p no:cacheprovider "$@" > "$log" 2>&1
    rc=$?
    row "$step" "$([ $rc = 0 ] && echo ok || echo FAILED)" "$(last_line "$log"), $(( $(date +%s) - t0 )) s"
    [ $rc = 0 ] || grep -E "^(FAILED|ERROR|E )" "$log" | head -30
}

has cuda && run cuda "$OUT/torch_cuda.log" tests/test_torch_cuda.py tests/test_torch_cuda_decode.py
has cpu && run cpu "$OUT/torch_cpu.log" tests/test_grad_torch.py tests/test_torch_inference.py \
    tests/test_torch_kvcache.py tests/test_torch_mamba_inner.py tests/test_torch_parity.py
exit 0
