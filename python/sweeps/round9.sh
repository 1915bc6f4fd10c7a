#!/usr/bin/env bash
# Round 9 on one H200 (see benchmarks/results/train_tiny.md "Round 9"): samba-tiny learns the phonebook
# lookup first, from scratch, then passkey + text are added with the phonebook kept.
#   1. pb5:  phonebook only, books of <= 5 entries, rows of 192 tokens (the toy run's curriculum, round 8)
#   2. pb14: from pb5, books of <= 14 entries (~470 tokens: they fit the 512-token window), rows of 512
#   3. pk:   from pb14, the passkey recipe of the bundled samba-tiny (stages to 4096) with phonebook rows kept
#
#   OUT=/tmp/r9 M1=1.6 M2=1.4 M3=4.8 bash python/sweeps/round9.sh
set -u
OUT=${OUT:-/tmp/r9}
mkdir -p "$OUT"
T=(python3 python/train_tiny.py --seed 0 --threads "$(nproc)" --log-every 100 --model samba-tiny)
PB=(--p-passkey 0 --p-phonebook 1.0 --pb-fewshot-loss --lm-weight 0.1)
"${T[@]}" --minutes "${M1:-1.6}" --window 512 "${PB[@]}" --pb-max-entries 5 --lr 3e-3 --warmup 100 \
    --max-len 192 --stages 1:192 --out "$OUT/pb5.safetensors" >"$OUT/pb5.log" 2>&1
tail -2 "$OUT/pb5.log"
"${T[@]}" --minutes "${M2:-1.4}" --init "$OUT/pb5.safetensors" "${PB[@]}" --pb-max-entries 14 --lr 2e-3 \
    --warmup 50 --max-len 512 --stages 1:512 --eval-long --eval-json "$OUT/pb14.json" \
    --out "$OUT/pb14.safetensors" >"$OUT/pb14.log" 2>&1
tail -4 "$OUT/pb14.log"
"${T[@]}" --minutes "${M3:-4.8}" --init "$OUT/pb14.safetensors" --p-passkey 0.6 --p-phonebook 0.25 \
    --pb-max-entries 14 --pb-fewshot-loss --pk-far 0.8 --lm-weight 0.1 --dt-aug 0.5 --dt-aug-mode decay \
    --dt-aug-rows no-phonebook --stages 0.45:1024,0.75:2048,1:4096 --eval-long --eval-json "$OUT/pk.json" \
    --out "$OUT/pk.safetensors" >"$OUT/pk.log" 2>&1
tail -4 "$OUT/pk.log"
# 4. (second call) pk2: from pk (copied to .sw/r9pk.safetensors, carried), more passkey, phonebook kept:
#   python3 python/train_tiny.py --seed 0 --threads 16 --log-every 100 --model samba-tiny --minutes 8.8 \
#     --init .sw/r9pk.safetensors --p-passkey 0.7 --p-phonebook 0.2 --pb-max-entries 14 --pb-fewshot-loss \
#     --pk-far 0.8 --lm-weight 0.1 --dt-aug 0.5 --dt-aug-mode decay --dt-aug-rows no-phonebook \
#     --stages 0.5:1024,0.8:2048,1:4096 --eval-long --eval-json $OUT/pk2.json --out $OUT/pk2.safetensors
# 5. (third call) pk3: from pk2 (.sw/r9pk2.safetensors), every passkey row far, fewer phonebook rows:
#   python3 python/train_tiny.py --seed 0 --threads 16 --log-every 100 --model samba-tiny --minutes 9.1 \
#     --init .sw/r9pk2.safetensors --p-passkey 0.8 --p-phonebook 0.15 --pb-max-entries 14 --pb-fewshot-loss \
#     --pk-far 1.0 --lm-weight 0.1 --dt-aug 0.3 --dt-aug-mode decay --dt-aug-rows no-phonebook --lr 1.5e-3 \
#     --warmup 50 --stages 0.6:1024,0.85:2048,1:4096 --eval-long --eval-json $OUT/pk3.json --out $OUT/pk3.safetensors
