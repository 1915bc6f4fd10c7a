#!/usr/bin/env bash
# cuda_static_check.sh - what ptxas says about every CUDA kernel, without a GPU: compiles each
# csrc/cuda/*.cu for sm_90 (the wgmma files as sm_90a, as setup.py does) with -Xptxas -v and
# prints one line per kernel (registers, spill bytes, stack), then every ptxas warning. Exits 1
# when ptxas reports that it serialised wgmma instructions or waits for them where the source does
# not (C7514: accumulators read inside a pipeline stage; C7517: an injected warpgroup.wait; C7518:
# a wgmma batch in flight across a divergent path; C7520; printed as warnings or info: a pipelined
# Hopper kernel would silently lose its overlap) or when a kernel spills more than SPILL_LIMIT
# bytes (default 64).
#
# Usage (repository root, nvcc on PATH or in CUDA_HOME):  bash benchmarks/cuda_static_check.sh [FILE.cu ...]
# Environment: NVCC (default: $CUDA_HOME/bin/nvcc, else nvcc), SPILL_LIMIT, OUT (log folder, default
# a temporary one).
set -u
NVCC=${NVCC:-$([ -n "${CUDA_HOME:-}" ] && echo "$CUDA_HOME/bin/nvcc" || echo nvcc)}
SPILL_LIMIT=${SPILL_LIMIT:-64}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
files=("$@"); [ ${#files[@]} -eq 0 ] && files=(csrc/cuda/*.cu)
status=0
for f in "${files[@]}"; do
    base=$(basename "$f" .cu)
    if [ "$base" = attention_wgmma ] || [ "$base" = attention_bwd_wgmma ]; then
        arch=(-gencode=arch=compute_90a,code=sm_90a -DSAMBA_WGMMA_SM90A=1)
    else
        arch=(-gencode=arch=compute_90,code=sm_90)
    fi
    log="$OUT/$base.ptxas.txt"
    if ! "$NVCC" -cubin -o "$OUT/$base.cubin" "$f" -O3 -std=c++17 -I csrc -I csrc/cuda \
            --expt-relaxed-constexpr "${arch[@]}" -Xptxas -v > "$log" 2>&1; then
        echo "$f: nvcc failed (see $log)"; status=1; continue
    fi
    # one line per kernel: name (demangled by c++filt when present), registers, spills
    awk -v file="$base" -v lim="$SPILL_LIMIT" '
        /Compiling entry function/ { match($0, /\x27[^\x27]*\x27/); fn = substr($0, RSTART + 1, RLENGTH - 2) }
        /bytes spill stores/ { st = $5; ld = $9 }
        /Used [0-9]+ registers/ { for (i = 1; i <= NF; i++) if ($i == "Used") r = $(i + 1);
            printf "%s  %-4s regs  spill %s/%s B  %s\n", file, r, st, ld, fn;
            if (st + 0 > lim || ld + 0 > lim) bad = 1 }
        END { exit bad }' "$log" | { command -v c++filt >/dev/null && c++filt || cat; }
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "$f: a kernel spills more than $SPILL_LIMIT bytes"; status=1; }
    if grep -qE "C751[478]|C7520" "$log"; then
        echo "$f: ptxas serialised wgmma instructions (C7514 / C7517 / C7518 / C7520):"
        grep -E "C751[478]|C7520" "$log" | head -4
        status=1
    fi
    grep -i "warning" "$log" | grep -vE "C751[478]|C7520" | head -5
done
exit $status
