#!/usr/bin/env bash
# cuda_backward_run.sh - on a machine with a GPU: build samba_ext with CUDA, run the CUDA
# backward tests of attention / RMSNorm / SwiGLU / rotary (and the forward attention tests, the
# tensor-core prefill being shared), compute-sanitizer (memcheck on the small backward tests,
# racecheck on one small call per kernel configuration, the wgmma kernel's included) and
# benchmarks/gpu_backward_attention.py (the mma and wgmma kernels in one run, each kernel's device
# time traced, and 5 calls queued back to back besides single calls) and
# benchmarks/gpu_host_overhead.py (the host's time per call); print a short table.
#
# Usage (from the repository root):  bash benchmarks/cuda_backward_run.sh [steps]
#   steps: comma-separated subset of build,tests,memcheck,racecheck,bench,host,order,knobs
#   (default: the first six; host appends gpu_host_overhead.py --profile to bench.log and
#   prints it; order times the block order picked per shape against both orders forced;
#   knobs re-times samba_ext's backward alone with
#   SAMBA_EXT_ATTN_BWD_WARPS=4 and with SAMBA_EXT_ATTN_BWD_SPLIT=1 / 8, appended to bench.log)
# Environment: OUT (log folder, default ./out), SAMBA_EXT_CUDA_ARCHS (default 90),
#   GIT_COMMIT (recorded in the logs), SAN_TIMEOUT (seconds per sanitizer run, default 300),
#   BENCH_TIMEOUT (default 400).
# Files written to $OUT (8 at most): build.log, tests.log, memcheck.log, racecheck.log,
#   bench.log, gpu_backward_attention.md, gpu_backward_attention.json, summary.md
STEPS=${1:-build,tests,memcheck,racecheck,bench,host}
source "$(dirname "$0")/cuda_run_common.sh"
SAN_TIMEOUT=${SAN_TIMEOUT:-300}
header
build_step

has tests && pytest_step tests tests.log tests/test_cuda_grad_attention.py tests/test_cuda_grad_small.py tests/test_cuda_attention.py

has memcheck && sanitizer_step memcheck $PY -m pytest -q -p no:cacheprovider tests/test_cuda_grad_attention.py tests/test_cuda_grad_small.py -k "not real_sizes and not shared and not 4096"

if has racecheck; then
    cat > /tmp/bwd_race.py <<'EOF'
import os
import numpy as np
from samba_ext import cuda as _gpu, grad
rng = np.random.default_rng(0)
def dev(shape, dt):
    return _gpu.to_device(rng.standard_normal(shape).astype(np.float32), dt)
# the mma.sync kernel, then the wgmma one (one and two warpgroups) where it applies (sm_90a)
for wg, nwg in (("0", "1"), ("1", "1"), ("1", "2")):
    os.environ["SAMBA_EXT_ATTN_BWD_WGMMA"] = wg
    os.environ["SAMBA_EXT_ATTN_BWD_WGMMA_WG"] = nwg
    for dt in ("bfloat16", "float16", "float32"):
        for hd, ws, cap in ((64, (50, 0), 0.0), (96, (-1, -1), 0.0), (128, (30, 20), 5.0), (256, (40, 0), 0.0)):
            q, k, do = dev((1, 150, 4, hd), dt), dev((1, 170, 2, hd), dt), dev((1, 150, 4, hd), dt)
            out, lse = grad.attention_fwd(q, k, k, None, False, ws, cap)
            [g.to_numpy() for g in grad.attention_bwd(q, k, k, None, False, ws, cap, dout=do, out=out, lse=lse)]
x = dev((40, 300), "bfloat16")
grad.rms_norm_bwd(x, dev((300,), "bfloat16"), 1e-5, x, dy=x).dx.to_numpy()
print("racecheck script done")
EOF
    sanitizer_step racecheck $PY /tmp/bwd_race.py
fi

if has bench; then
    t0=$(date +%s)
    timeout "${BENCH_TIMEOUT:-400}" $PY benchmarks/gpu_backward_attention.py --trace --queued 5 \
        --out "$OUT" \
        > "$OUT/bench.log" 2>&1
    rc=$?
    row bench "$([ $rc = 0 ] && echo ok || echo "rc=$rc")" "$(( $(date +%s) - t0 )) s"
    [ $rc = 0 ] || tail -30 "$OUT/bench.log"
fi
if has host; then
    echo "== gpu_host_overhead.py --profile ==" >> "$OUT/bench.log"
    (cd benchmarks && timeout 120 $PY gpu_host_overhead.py --profile) > /tmp/host_overhead.log 2>&1
    row host "rc=$?" "bench.log"
    cat /tmp/host_overhead.log >> "$OUT/bench.log"
    cat /tmp/host_overhead.log
fi
if has order; then
    # the block order of the tensor-core backward: the per-shape pick against both orders forced
    # (SAMBA_EXT_ATTN_BWD_ORDER through the wgmma2-keys / wgmma2-heavy variants), in one run
    echo "== block order: wgmma2 (picked), wgmma2-keys, wgmma2-heavy ==" >> "$OUT/bench.log"
    $PY benchmarks/gpu_backward_attention.py --out /tmp/order --no-flex --trace --queued 5 \
        --variants wgmma2,wgmma2-keys,wgmma2-heavy >> "$OUT/bench.log" 2>&1
    row order "rc=$?" "bench.log"
    grep -E "^\| (swa|causal) " /tmp/order/gpu_backward_attention.md
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
