#!/usr/bin/env bash
# cuda_backward_run.sh - on a machine with a GPU: build samba_ext with CUDA, run the CUDA
# backward tests of attention / RMSNorm / SwiGLU / rotary (and the forward attention tests, the
# tensor-core prefill being shared), compute-sanitizer (memcheck on the small backward tests,
# racecheck on one small call per kernel configuration) and benchmarks/gpu_backward_attention.py;
# print a short table.
#
# Usage (from the repository root):  bash benchmarks/cuda_backward_run.sh [steps]
#   steps: comma-separated subset of build,tests,memcheck,racecheck,bench,knobs
#   (default: the first five; knobs re-times samba_ext's backward alone with
#   SAMBA_EXT_ATTN_BWD_WARPS=4 and with SAMBA_EXT_ATTN_BWD_SPLIT=1 / 8, appended to bench.log)
# Environment: OUT (log folder, default ./out), SAMBA_EXT_CUDA_ARCHS (default 90),
#   GIT_COMMIT (recorded in the logs), SAN_TIMEOUT (seconds per sanitizer run, default 300),
#   BENCH_TIMEOUT (default 400).
# Files written to $OUT (8 at most): build.log, tests.log, memcheck.log, racecheck.log,
#   bench.log, gpu_backward_attention.md, gpu_backward_attention.json, summary.md
set -u
OUT=${OUT:-./out}
mkdir -p "$OUT"
STEPS=${1:-build,tests,memcheck,racecheck,bench}
export SAMBA_EXT_CUDA_ARCHS=${SAMBA_EXT_CUDA_ARCHS:-90}
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
SAN_TIMEOUT=${SAN_TIMEOUT:-300}
PY=${PYTHON:-python3}
SUMMARY="$OUT/summary.md"
: > "$SUMMARY"
row() { printf '| %-9s | %-7s | %s |\n' "$1" "$2" "$3" | tee -a "$SUMMARY"; }
has() { [[ ",$STEPS," == *",$1,"* ]]; }
last_line() { grep -E "passed|failed|error" "$1" | tail -1 | sed -e 's/=//g' -e 's/^ *//'; }

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ) commit: ${GIT_COMMIT:-unknown}"
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    nvcc --version | tail -1
} > "$OUT/build.log" 2>&1
printf '| %-9s | %-7s | %s |\n' step status details | tee -a "$SUMMARY"
printf '|%s|%s|%s|\n' ----------- --------- ------- | tee -a "$SUMMARY"

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
    $PY -m pytest -q -rs -p no:cacheprovider tests/test_cuda_grad_attention.py \
        tests/test_cuda_grad_small.py tests/test_cuda_attention.py > "$OUT/tests.log" 2>&1
    rc=$?
    row tests "$([ $rc = 0 ] && echo ok || echo FAILED)" "$(last_line "$OUT/tests.log"), $(( $(date +%s) - t0 )) s"
    [ $rc = 0 ] || grep -E "^(FAILED|ERROR|E )" "$OUT/tests.log" | head -30
fi

if has memcheck; then
    t0=$(date +%s)
    timeout "$SAN_TIMEOUT" compute-sanitizer --tool memcheck --leak-check no --error-exitcode 9 \
        $PY -m pytest -q -p no:cacheprovider tests/test_cuda_grad_attention.py \
        tests/test_cuda_grad_small.py -k "not real_sizes and not shared and not 4096" \
        > "$OUT/memcheck.log" 2>&1
    rc=$?
    row memcheck "$([ $rc = 0 ] && echo clean || echo "rc=$rc")" \
        "$(grep -E "ERROR SUMMARY" "$OUT/memcheck.log" | tail -1); $(last_line "$OUT/memcheck.log"), $(( $(date +%s) - t0 )) s"
fi

if has racecheck; then
    t0=$(date +%s)
    cat > /tmp/bwd_race.py <<'EOF'
import os
import numpy as np
from samba_ext import cuda as _gpu, grad
rng = np.random.default_rng(0)
def dev(shape, dt):
    return _gpu.to_device(rng.standard_normal(shape).astype(np.float32), dt)
for dt in ("bfloat16", "float16", "float32"):
    for hd, ws, cap in ((64, (50, 0), 0.0), (96, (-1, -1), 0.0), (128, (30, 20), 5.0), (256, (40, 0), 0.0)):
        q, k, do = dev((1, 150, 4, hd), dt), dev((1, 170, 2, hd), dt), dev((1, 150, 4, hd), dt)
        out, lse = grad.attention_fwd(q, k, k, None, False, ws, cap)
        [g.to_numpy() for g in grad.attention_bwd(q, k, k, None, False, ws, cap, dout=do, out=out, lse=lse)]
x = dev((40, 300), "bfloat16")
grad.rms_norm_bwd(x, dev((300,), "bfloat16"), 1e-5, x, dy=x).dx.to_numpy()
print("racecheck script done")
EOF
    timeout "$SAN_TIMEOUT" compute-sanitizer --tool racecheck --racecheck-report all \
        --error-exitcode 9 $PY /tmp/bwd_race.py > "$OUT/racecheck.log" 2>&1
    rc=$?
    row racecheck "$([ $rc = 0 ] && echo clean || echo "rc=$rc")" \
        "$(grep -E "RACECHECK SUMMARY|ERROR SUMMARY" "$OUT/racecheck.log" | tail -1), $(( $(date +%s) - t0 )) s"
fi

if has bench; then
    t0=$(date +%s)
    timeout "${BENCH_TIMEOUT:-400}" $PY benchmarks/gpu_backward_attention.py --out "$OUT" \
        > "$OUT/bench.log" 2>&1
    rc=$?
    row bench "$([ $rc = 0 ] && echo ok || echo "rc=$rc")" "$(( $(date +%s) - t0 )) s"
    [ $rc = 0 ] || tail -30 "$OUT/bench.log"
fi
if has knobs; then
    for kv in SAMBA_EXT_ATTN_BWD_WARPS=4 SAMBA_EXT_ATTN_BWD_SPLIT=1 SAMBA_EXT_ATTN_BWD_SPLIT=8; do
        echo "== $kv ==" >> "$OUT/bench.log"
        env "$kv" $PY benchmarks/gpu_backward_attention.py --out "/tmp/knob" --no-flex \
            >> "$OUT/bench.log" 2>&1
        echo "$kv:"; grep -E "^\| (swa|causal) " /tmp/knob/gpu_backward_attention.md
    done
fi
echo
[ -f "$OUT/gpu_backward_attention.md" ] && sed -n '5,100p' "$OUT/gpu_backward_attention.md"
exit 0
