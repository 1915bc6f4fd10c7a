#!/usr/bin/env bash
# cuda_bundled.sh - the bundled models' evaluations through the CLI with --device cuda: generate and
# every evaluation on the GPU, and llama-tiny on the full passkey grid, which is too slow on the CPU
# because full attention is O(L^2).
#
# Usage (repository root, samba_ext built with CUDA, e.g. by benchmarks/cuda_run.sh build):
#   OUT=./out bash benchmarks/cuda_bundled.sh
# Writes $OUT/gpu-evals/<name>/results.json (+ PNG) and $OUT/gpu-evals.log; prints one line per run.
set -u
OUT=${OUT:-./out}
R="$OUT/gpu-evals"
mkdir -p "$R"
PY=${PYTHON:-python3}
GRID=(--lengths 1K,2K,4K,8K,16K,32K,64K,128K,256K --depths 0:1:0.1 --trials 5)
run() {  # name, then the CLI arguments (--out is added for the evaluations)
    local name=$1; shift
    local extra=()
    case $1 in passkey|perplexity|phonebook|throughput) extra=(--no-progress --out "$R/$name") ;; esac
    local t0=$SECONDS
    $PY -m samba_ext.cli "$@" --device cuda "${extra[@]}" > "$R/$name.log" 2>&1
    local rc=$?
    printf '%-22s rc=%s %5d s  %s\n' "$name" "$rc" "$(( SECONDS - t0 ))" \
        "$(grep -E 'overall|ppl|accuracy|error' "$R/$name.log" | tail -1)"
}
{
    run generate-samba       generate --model samba-tiny --max-new-tokens 64 "def main():"
    run passkey-samba-tiny   passkey --model samba-tiny "${GRID[@]}"
    run ppl-samba-tiny       perplexity --model samba-tiny --tokens 1M
    run ppl-llama-tiny       perplexity --model llama-tiny --tokens 64K
    run phonebook-samba-tiny phonebook --model samba-tiny --entries 10,20,40,80,160,320 --trials 10
    run phonebook-llama-tiny phonebook --model llama-tiny --entries 10,20,40,80,160,320 --trials 10
    run throughput-tiny      throughput --configs samba-tiny,samba-tiny:llama
    run passkey-llama-tiny   passkey --model llama-tiny "${GRID[@]}"
} 2>&1 | tee "$OUT/gpu-evals.log"
