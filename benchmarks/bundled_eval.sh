#!/usr/bin/env bash
# The long-context evaluations of the bundled models, with the package's own CLI, on the CPU.
#
#   bash benchmarks/bundled_eval.sh [STEP...]      STEP: pk-samba pk-llama ppl phonebook (default: all)
#
# Writes JSON + PNG under benchmarks/results/bundled/ (override with RESULTS=...); THREADS (default 2)
# sets the CPU threads. Uses `samba-ext` when it is on PATH, else `python3 -m samba_ext.cli` on this checkout.
# The llama-tiny passkey grid stops at 32K on the CPU: full attention costs O(L^2), about 14 minutes per
# 256K trial on 2 cores. Its full 1K..256K grid
# is run on the GPU by benchmarks/cuda_bundled.sh.
set -eu
R=${RESULTS:-benchmarks/results/bundled}
T=${THREADS:-2}
if command -v samba-ext >/dev/null 2>&1 && samba-ext info >/dev/null 2>&1; then CLI=(samba-ext)
else CLI=(python3 -m samba_ext.cli); export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"; fi  # in-tree build
steps=("$@"); [ ${#steps[@]} -eq 0 ] && steps=(pk-samba pk-llama ppl phonebook)
GRID=(--lengths 1K,2K,4K,8K,16K,32K,64K,128K,256K --depths 0:1:0.1 --trials 5)
for s in "${steps[@]}"; do
    echo "== $s ($(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg))"
    case $s in
    pk-samba)  /usr/bin/time -f "wall %e s, max RSS %M KB" "${CLI[@]}" passkey --model samba-tiny "${GRID[@]}" \
                   --threads "$T" --no-progress --out "$R/passkey-samba-tiny" ;;
    pk-llama)  /usr/bin/time -f "wall %e s, max RSS %M KB" "${CLI[@]}" passkey --model llama-tiny \
                   --lengths 1K,2K,4K,8K,16K,32K --depths 0:1:0.1 --trials 5 \
                   --threads "$T" --no-progress --out "$R/passkey-llama-tiny-cpu" ;;
    ppl)       /usr/bin/time -f "wall %e s, max RSS %M KB" python3 benchmarks/bundled_ppl.py --threads "$T" \
                   --out "$R/ppl" ;;
    phonebook) for m in samba-tiny llama-tiny; do
                   /usr/bin/time -f "wall %e s, max RSS %M KB" "${CLI[@]}" phonebook --model $m \
                       --entries 5,10,15,20,30,40,80,160,320 --trials 20 --threads "$T" --no-progress --out "$R/phonebook-$m"
               done ;;
    *) echo "unknown step $s" >&2; exit 2 ;;
    esac
done
