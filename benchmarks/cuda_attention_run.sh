#!/usr/bin/env bash
# cuda_attention_run.sh - on a machine with a GPU: build samba_ext with CUDA, run the CUDA
# attention tests (every tensor-core variant), compute-sanitizer (memcheck on the small
# attention tests, racecheck on small prefill and decode calls of every variant) and
# benchmarks/gpu_attention.py (all variants against the peers); print a short table.
#
# Usage (from the repository root):  bash benchmarks/cuda_attention_run.sh [steps]
#   steps: comma-separated subset of build,tests,memcheck,racecheck,bench,bench16,bench32
#   (default: the first five; bench16 / bench32 re-time the v1 prefill with 16 / 32 rows per
#   warp everywhere, SAMBA_EXT_ATTN_ROWS, without peers, and append it to bench.log)
# Environment: OUT (log folder, default ./out), SAMBA_EXT_CUDA_ARCHS (default 90),
#   BENCH_ARGS (extra arguments for gpu_attention.py; default --variants v2,v3,v4,v4skew),
#   GIT_COMMIT (recorded in the logs),
#   SAN_TIMEOUT (seconds per sanitizer run, default 240), BENCH_TIMEOUT (default 330; the
#   benchmark rewrites its report after every case, so a cut-short run keeps what it measured).
# Files written to $OUT (8 at most): build.log, tests.log, memcheck.log, racecheck.log,
#   bench.log, gpu_attention.md, gpu_attention.json, summary.md
STEPS=${1:-build,tests,memcheck,racecheck,bench}
source "$(dirname "$0")/cuda_run_common.sh"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
SAN_TIMEOUT=${SAN_TIMEOUT:-240}
header
build_step

has tests && pytest_step tests tests.log --maxfail=5 tests/test_cuda_attention.py tests/test_cuda_kernels.py -k "attention or swa or decode or errors or fault"

has memcheck && sanitizer_step memcheck $PY -m pytest -q -p no:cacheprovider tests/test_cuda_attention.py -k "not real_sizes and not 128K and not 32K and not prefill_last_row"

if has racecheck; then
    cat > /tmp/attn_race.py <<'EOF'
import os, numpy as np, samba_ext
from samba_ext import cuda as _gpu
from samba_ext.cuda import runtime
cu = runtime.require()
rng = np.random.default_rng(0)
def prefill(hd, W, dt):
    q = _gpu.to_device(rng.standard_normal((1, 300, 4, hd)).astype(np.float32), dt)
    k = _gpu.to_device(rng.standard_normal((1, 300, 2, hd)).astype(np.float32), dt)
    samba_ext.swa_attention(q, k, k, W).to_numpy()
for dt in ("bfloat16", "float16"):
    for var in (1, 2, 3):
        cu._attn_variant(0, var)
        for hd, W in ((64, 50), (96, None), (128, 70), (256, 40)):
            prefill(hd, W, dt)
    # v4 (Hopper): each ring depth and schedule, the alternating default among them
    cu._attn_variant(0, 4)
    try:
        for bk, stages, skew, tma in (("64", "2", "0", "0"), ("64", "4", "1", "0"),
                                      ("64", "3", "1", "0"), ("128", "3", "1", "0"),
                                      ("128", "2", "0", "0"), ("64", "4", "2", "0"),
                                      ("128", "3", "2", "0"), ("64", "4", "2", "1"),
                                      ("128", "3", "2", "1")):
            os.environ.update(SAMBA_EXT_ATTN_V4_BK=bk, SAMBA_EXT_ATTN_V4_STAGES=stages,
                              SAMBA_EXT_ATTN_V4_SKEW=skew, SAMBA_EXT_ATTN_V4_TMA=tma)
            for hd, W in ((64, 50), (128, 70), (64, None)):
                prefill(hd, W, dt)
    except ValueError as e:  # no sm_90a code in the build, or not a compute capability 9.0 GPU
        print(f"v4 not run: {e}")
    for key in ("BK", "STAGES", "SKEW", "TMA"):
        os.environ.pop(f"SAMBA_EXT_ATTN_V4_{key}", None)
    for var, align in ((1, "0"), (2, "0"), (2, "1")):  # align: SAMBA_EXT_ATTN_DECODE_ALIGN
        cu._attn_variant(1, var)
        os.environ["SAMBA_EXT_ATTN_DECODE_ALIGN"] = align
        for B, hd, G, C in ((2, 64, 8, 3000), (2, 128, 1, 3000), (2, 256, 3, 3000), (9, 64, 2, 300)):
            q = _gpu.to_device(rng.standard_normal((B, 2 * G, hd)).astype(np.float32), dt)
            c = _gpu.to_device(rng.standard_normal((B, C, 2, hd)).astype(np.float32), dt)
            pos, nv = rng.integers(0, 3 * C, B), rng.integers(1, C + 1, B)
            samba_ext.swa_decode(q, c, c, pos, nv).to_numpy()
print("racecheck script done")
EOF
    sanitizer_step racecheck $PY /tmp/attn_race.py
fi

if has bench; then
    t0=$(date +%s)
    timeout "${BENCH_TIMEOUT:-330}" $PY benchmarks/gpu_attention.py --out "$OUT" \
        ${BENCH_ARGS:---variants v2,v3,v4,v4skew} \
        > "$OUT/bench.log" 2>&1
    rc=$?
    row bench "$([ $rc = 0 ] && echo ok || echo "rc=$rc")" "$(( $(date +%s) - t0 )) s"
    [ $rc = 0 ] || tail -30 "$OUT/bench.log"
fi
for rows in 16 32; do
    has "bench$rows" || continue
    echo "== SAMBA_EXT_ATTN_ROWS=$rows ==" >> "$OUT/bench.log"
    SAMBA_EXT_ATTN_ROWS=$rows $PY benchmarks/gpu_attention.py --out "/tmp/bench$rows" --quick \
        --no-flex --prefill-only --variants v1 >> "$OUT/bench.log" 2>&1
    echo "$rows rows per warp (prefill, no peers):"
    grep -E "^\| (swa|causal) " "/tmp/bench$rows/gpu_attention.md"
done
echo
[ -f "$OUT/gpu_attention.md" ] && sed -n '5,100p' "$OUT/gpu_attention.md"
exit 0
