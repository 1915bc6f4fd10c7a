#!/usr/bin/env bash
# Train several samba-tiny / llama-tiny variants at once, one process per GPU (round robin; with more
# variants than GPUs, several processes share a GPU).
#
#   OUT=/tmp/sweep MINUTES=7.5 bash training/sweep.sh variants.txt
#
# variants.txt: one variant per line, "NAME  ARGS..." (ARGS are passed to training/train.py after
# --minutes/--seed/--threads/--eval-long/--out/--eval-json; '#' lines are skipped). Each variant writes
# $OUT/NAME.safetensors, $OUT/NAME.log and $OUT/NAME.json; at the end one line per variant is printed
# with its torch-side passkey accuracy by length. Needs torch (the "train" extra) and, for speed, GPUs.
set -u
spec=${1:?usage: train_sweep.sh VARIANTS_FILE}
OUT=${OUT:-./sweep-out}
MINUTES=${MINUTES:-7.5}
SEED=${SEED:-0}
mkdir -p "$OUT"
ngpu=$(python3 -c 'import torch; print(max(1, torch.cuda.device_count()))')
ncpu=$(nproc)
nvar=$(grep -cvE '^[[:space:]]*(#|$)' "$spec")
per=$(( nvar > ngpu ? nvar : ngpu ))   # processes sharing the machine's cores
threads=$(( ncpu / per > 1 ? ncpu / per : 1 ))
i=0
names=()
while read -r name args; do
    [[ -z "$name" || "$name" == \#* ]] && continue
    gpu=$(( i % ngpu ))
    names+=("$name")
    # shellcheck disable=SC2086
    CUDA_VISIBLE_DEVICES=$gpu python3 training/train.py --minutes "$MINUTES" --seed "$SEED" \
        --threads "$threads" --eval-long --log-every 100 $args \
        --eval-json "$OUT/$name.json" --out "$OUT/$name.safetensors" >"$OUT/$name.log" 2>&1 &
    echo "started $name on gpu $gpu: $args"
    i=$(( i + 1 ))
done <"$spec"
wait
for n in "${names[@]}"; do
    python3 - "$OUT/$n.json" "$n" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception as e:  # the run died: show why from the log
    print(f"{sys.argv[2]:>12}: no result ({e})"); sys.exit()
pk = r.get("eval", {}).get("passkey", {})
pb = r.get("eval", {}).get("phonebook", {})
last = r["log"][-1] if r.get("log") else {}
print(f"{sys.argv[2]:>12}: steps {r['steps']} far_exact {last.get('far_exact')} pb_exact {last.get('pb_exact')} "
      f"ans_acc {last.get('ans_acc')} | passkey "
      + " ".join(f"{int(k)//1024}K:{v:.1f}" for k, v in pk.items())
      + " | phonebook " + " ".join(f"{k}:{v:.1f}" for k, v in pb.items()))
PY
done
