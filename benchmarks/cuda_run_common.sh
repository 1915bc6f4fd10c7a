# cuda_run_common.sh - the shared set-up of benchmarks/cuda_{attention,backward,gemm,torch}_run.sh
# (sourced by them, not run): log folder, environment, the summary table and the build step.
#
# The sourcing script sets STEPS first (its comma-separated steps). Provides:
#   OUT, PY, SUMMARY; row STEP STATUS DETAILS (a summary row); has STEP; last_line LOG (pytest's
#   result line); header [CMD...] (the date/commit/GPU/nvcc lines, plus CMD's output, into
#   $OUT/build.log, and the table head); build_step [PYTHON_CHECK] (when STEPS has build: build
#   in place with CUDA, then run the Python check, default "CUDA is available"; exits on failure);
#   pytest_step STEP LOG ARGS... (pytest -q -rs ARGS into $OUT/LOG, a row, failures listed).
set -u
OUT=${OUT:-./out}
mkdir -p "$OUT"
export SAMBA_EXT_CUDA_ARCHS=${SAMBA_EXT_CUDA_ARCHS:-90}
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}
SUMMARY="$OUT/summary.md"
: > "$SUMMARY"
row() { printf '| %-9s | %-7s | %s |\n' "$1" "$2" "$3" | tee -a "$SUMMARY"; }
has() { [[ ",$STEPS," == *",$1,"* ]]; }
last_line() { grep -E "passed|failed|error" "$1" | tail -1 | sed -e 's/=//g' -e 's/^ *//'; }

header() {
    {
        echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ) commit: ${GIT_COMMIT:-unknown}"
        nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
        nvcc --version | tail -1
        [ $# -gt 0 ] && "$@"
    } > "$OUT/build.log" 2>&1
    row step status details
    printf '|%s|%s|%s|\n' ----------- --------- ------- | tee -a "$SUMMARY"
}

build_step() {
    has build || return 0
    local check=${1:-"import samba_ext; assert samba_ext.cuda_available()"} t0
    t0=$(date +%s)
    if SAMBA_EXT_CUDA=1 $PY setup.py build_ext --inplace -j16 >> "$OUT/build.log" 2>&1 &&
        $PY -c "$check" >> "$OUT/build.log" 2>&1; then
        row build ok "$(( $(date +%s) - t0 )) s, sm_$SAMBA_EXT_CUDA_ARCHS"
    else
        row build FAILED "see build.log"; tail -40 "$OUT/build.log"; exit 1
    fi
}

pytest_step() {
    local step=$1 log=$2 t0 rc
    shift 2
    t0=$(date +%s)
    $PY -m pytest -q -rs -p no:cacheprovider "$@" > "$OUT/$log" 2>&1
    rc=$?
    row "$step" "$([ $rc = 0 ] && echo ok || echo FAILED)" \
        "$(last_line "$OUT/$log"), $(( $(date +%s) - t0 )) s"
    [ $rc = 0 ] || grep -E "^(FAILED|ERROR|E )" "$OUT/$log" | head -30
    return $rc
}
