#!/usr/bin/env bash
# run.sh - run the peers' own test files over samba_ext, unmodified, through the shims in
# benchmarks/peer_tests/shims (mamba_ssm, causal_conv1d and flash_attn module paths over
# samba_ext.torch; the peers' references come from the peers' own source files), and write
# benchmarks/results/peer_tests.md and .json (report.py).
#
# The upstream files are not stored in this repository. Lay them out under one folder,
# PEER_UPSTREAM (default .gpu/peer_upstream), as <dir>/<path in the upstream repository>:
#   mamba/          GitHub state-spaces/mamba          @ e9594ce1c732d97440f0332fdc43170a2294dbfa
#       tests/ops/test_selective_scan.py, tests/ops/triton/test_selective_state_update.py
#       mamba_ssm/ops/selective_scan_interface.py, mamba_ssm/ops/triton/selective_state_update.py
#   causal-conv1d/  GitHub Dao-AILab/causal-conv1d     @ 0d2252d161f25f7907bbd05985c08ab98d255874
#       tests/test_causal_conv1d.py
#       causal_conv1d/causal_conv1d_interface.py, causal_conv1d/causal_conv1d_varlen.py
#   flash-attention/ GitHub Dao-AILab/flash-attention @ 0251105a2fb19d2957484b7f023cd8c115286ced
#       tests/test_flash_attn.py
#       flash_attn/bert_padding.py, flash_attn/layers/rotary.py, flash_attn/ops/triton/rotary.py
#   COMMITS         one line per repository: "<dir> <owner/name> <commit>"
# The non-test files hold the references and helpers the tests import (see the shims).
# `bash benchmarks/peer_tests/run.sh layout CLONES` writes that folder from git clones of the
# three repositories at CLONES/mamba, CLONES/causal-conv1d and CLONES/flash-attention, at the
# commits above (git show COMMIT:PATH; set PEER_AT_HEAD=1 for each clone's HEAD instead).
#
# Usage (repository root, a machine with a CUDA GPU, samba_ext built in place):
#   bash benchmarks/peer_tests/run.sh [RUNS]     RUNS: comma list of scan,state,conv,flash
#                                                (default all), or `layout CLONES`
# No test file is edited: the shims folder is first on PYTHONPATH. The flash-attention file
# has about 509k cases: a run keeps at most PEER_MAX_<RUN> evenly spaced cases of each test
# function (0 = all) and skips, as "not run", cases that would start after PEER_BUDGET_<RUN>
# seconds (collection included); the report gives the fractions.
# Environment: PYTHON (python3), PEER_UPSTREAM, PEER_OUT (summaries and logs, default
#   out/peer_tests), PEER_RESULTS (report folder, default benchmarks/results), PEER_WORKERS
#   (pytest-xdist workers, default 8; 0 = none), PEER_CASE_TIMEOUT (seconds per case through
#   pytest-timeout when installed, default 45), PEER_BUDGET_SCAN/STATE/CONV/FLASH (default
#   40/30/100/200), PEER_MAX_SCAN/STATE/CONV/FLASH (default 0/0/500/200), PEER_TOTAL_S (the
#   whole script's time, build included, default 520: each run's budget is cut to what is
#   left, so the script ends within about PEER_TOTAL_S + 30 s), PEER_BUILD=1 (build samba_ext
#   with CUDA in place first), PEER_PYTEST_ARGS (more pytest arguments, word-split;
#   e.g. "--peer-fake-cuda-capability 9.0 --collect-only" to count the cases on a machine
#   without a GPU), GIT_COMMIT (recorded; the device copy has no git).
# Output: $PEER_OUT/<run>.json (one summary per file), $PEER_OUT/logs.tar.gz, and the report.
set -u
cd "$(dirname "$0")/../.."
REPO=$PWD
PY=${PYTHON:-python3}
UP=${PEER_UPSTREAM:-.gpu/peer_upstream}
SHIMS=$REPO/benchmarks/peer_tests/shims
C_MAMBA=e9594ce1c732d97440f0332fdc43170a2294dbfa
C_CONV=0d2252d161f25f7907bbd05985c08ab98d255874
C_FLASH=0251105a2fb19d2957484b7f023cd8c115286ced

# run name | upstream dir | test file | default budget s | default max cases per function
RUNS_TABLE="scan|mamba|tests/ops/test_selective_scan.py|40|0
state|mamba|tests/ops/triton/test_selective_state_update.py|30|0
conv|causal-conv1d|tests/test_causal_conv1d.py|100|500
flash|flash-attention|tests/test_flash_attn.py|200|200"

if [ "${1:-}" = layout ]; then
    CLONES=${2:?usage: run.sh layout CLONES (folder with mamba, causal-conv1d, flash-attention clones)}
    mkdir -p "$UP"
    : > "$UP/COMMITS"
    while read -r dir repo commit files; do
        [ "${PEER_AT_HEAD:-0}" = 1 ] && commit=$(git -C "$CLONES/$dir" rev-parse HEAD)
        for p in $files; do
            mkdir -p "$UP/$dir/$(dirname "$p")"
            git -C "$CLONES/$dir" show "$commit:$p" > "$UP/$dir/$p" || exit 1
        done
        echo "$dir $repo $commit" >> "$UP/COMMITS"
    done <<EOF
mamba state-spaces/mamba $C_MAMBA tests/ops/test_selective_scan.py tests/ops/triton/test_selective_state_update.py mamba_ssm/ops/selective_scan_interface.py mamba_ssm/ops/triton/selective_state_update.py
causal-conv1d Dao-AILab/causal-conv1d $C_CONV tests/test_causal_conv1d.py causal_conv1d/causal_conv1d_interface.py causal_conv1d/causal_conv1d_varlen.py
flash-attention Dao-AILab/flash-attention $C_FLASH tests/test_flash_attn.py flash_attn/bert_padding.py flash_attn/layers/rotary.py flash_attn/ops/triton/rotary.py
EOF
    echo "wrote $UP"; cat "$UP/COMMITS"; exit 0
fi

START=$(date +%s)
TOTAL=${PEER_TOTAL_S:-520}
SELECT=${1:-scan,state,conv,flash}
OUTD=${PEER_OUT:-out/peer_tests}
RESULTS=${PEER_RESULTS:-benchmarks/results}
WORKERS=${PEER_WORKERS:-8}
CASE_TIMEOUT=${PEER_CASE_TIMEOUT:-45}
mkdir -p "$OUTD"
UP=$(cd "$UP" && pwd) || { echo "PEER_UPSTREAM: $UP is missing (see the top of run.sh)"; exit 1; }
[ -f "$UP/COMMITS" ] || { echo "$UP/COMMITS is missing (see the top of run.sh)"; exit 1; }

export PYTHONPATH=$SHIMS:$REPO${PYTHONPATH:+:$PYTHONPATH}
export PEER_UPSTREAM=$UP PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export GIT_COMMIT=${GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}

if [ "${PEER_BUILD:-0}" = 1 ]; then
    echo "building samba_ext with CUDA in place ..."
    SAMBA_EXT_CUDA=1 SAMBA_EXT_CUDA_ARCHS=${SAMBA_EXT_CUDA_ARCHS:-90} \
        $PY setup.py build_ext --inplace -j"$(nproc)" > "$OUTD/build.log" 2>&1 \
        || { tail -30 "$OUTD/build.log"; exit 1; }
fi
$PY - <<'EOF' || exit 1
import torch, samba_ext, samba_ext.torch  # noqa: F401 - the shims import these
print("torch", torch.__version__, "| cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("samba_ext cuda extension:", samba_ext.cuda_available())
EOF

XDIST=()
if [ "$WORKERS" -gt 0 ] && $PY -c "import xdist" 2>/dev/null; then XDIST=(-n "$WORKERS"); fi
TIMEOUT=()
if [ "$CASE_TIMEOUT" -gt 0 ] && $PY -c "import pytest_timeout" 2>/dev/null; then
    TIMEOUT=(--timeout "$CASE_TIMEOUT")
fi
echo "xdist: ${XDIST[*]:-none} | per-case timeout: ${TIMEOUT[*]:-none}"

while IFS='|' read -r name dir path budget cap; do
    [[ ",$SELECT," == *",$name,"* ]] || continue
    up_name=$(echo "$name" | tr '[:lower:]' '[:upper:]')
    b_var=PEER_BUDGET_$up_name; m_var=PEER_MAX_$up_name
    budget=${!b_var:-$budget}; cap=${!m_var:-$cap}
    file=$UP/$dir/$path
    [ -f "$file" ] || { echo "$name: $file is missing"; continue; }
    left=$(( TOTAL - ($(date +%s) - START) - CASE_TIMEOUT - 20 ))
    [ "$left" -lt "$budget" ] && budget=$left
    [ "$budget" -lt 20 ] && { echo "== $name: not run, PEER_TOTAL_S=${TOTAL} used up"; continue; }
    echo "== $name: $dir/$path (budget ${budget}s, at most ${cap:-0} cases per function)"
    t0=$(date +%s)
    # the outer timeout only guards against a hang past the budget and the last case
    timeout $(( budget + CASE_TIMEOUT + 60 )) $PY -m pytest -c "$SHIMS/pytest.ini" \
        --rootdir "$UP" -p peer_plugin -q --tb=short -rN "${XDIST[@]}" "${TIMEOUT[@]}" \
        --peer-label "$name" --peer-summary "$OUTD/$name.json" --peer-budget "$budget" \
        --peer-max-per-function "$cap" ${PEER_PYTEST_ARGS:-} "$file" > "$OUTD/$name.log" 2>&1
    echo "   exit $?, $(( $(date +%s) - t0 )) s: $(tail -1 "$OUTD/$name.log")"
done <<< "$RUNS_TABLE"

$PY benchmarks/peer_tests/report.py --summaries "$OUTD" --upstream "$UP" --out "$RESULTS"
(cd "$OUTD" && ls ./*.log > /dev/null 2>&1 && tar czf logs.tar.gz ./*.log && rm -f ./*.log)
exit 0
