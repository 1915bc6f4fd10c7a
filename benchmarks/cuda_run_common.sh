# cuda_run_common.sh - the shared set-up of benchmarks/cuda_{attention,backward,gemm,torch}_run.sh
# (sourced by them, not run): log folder, environment, the summary table and the build step.
#
# The sourcing script sets STEPS first (its comma-separated steps). Provides:
#   OUT, PY, SUMMARY; row STEP STATUS DETAILS (a summary row); has STEP; last_line LOG (pytest's
#   result line); header [CMD...] (the date/commit/GPU/nvcc lines, plus CMD's output, into
#   $OUT/build.log, and the table head); build_step [PYTHON_CHECK] (when STEPS has build: build
#   in place with CUDA unless build/cuda_sources.sha256 matches sources_hash, then run the Python
#   check, default "CUDA is available"; exits on failure);
#   pytest_step STEP LOG ARGS... (pytest -q -rs ARGS into $OUT/LOG, a row, failures listed);
#   sanitizer_step TOOL CMD... (compute-sanitizer --tool TOOL, memcheck or racecheck, on CMD
#   within $SAN_TIMEOUT s into $OUT/TOOL.log, and a row with the tool's summary line).
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

# sha256 of the sources a build depends on (csrc/, setup.py) and of the build's settings
sources_hash() {
    { find csrc -type f | LC_ALL=C sort | xargs sha256sum; sha256sum setup.py
      echo "archs=$SAMBA_EXT_CUDA_ARCHS python=$($PY -c 'import sys; print(sys.version_info[:2])')"
    } | sha256sum | cut -d' ' -f1
}

# An in-place build whose stamp (build/cuda_sources.sha256) matches the sources, and that
# passes the check, is used as it is (a warm machine, or extension files carried over);
# anything else is rebuilt.
build_step() {
    has build || return 0
    local check=${1:-"import samba_ext; assert samba_ext.cuda_available()"} t0 h
    t0=$(date +%s)
    h=$(sources_hash)
    if [ "$(cat build/cuda_sources.sha256 2>/dev/null)" = "$h" ] &&
        $PY -c "$check" >> "$OUT/build.log" 2>&1; then
        row build ok "already built for these sources (stamp $h), check passed"
        return 0
    fi
    if SAMBA_EXT_CUDA=1 $PY setup.py build_ext --inplace -j16 >> "$OUT/build.log" 2>&1 &&
        $PY -c "$check" >> "$OUT/build.log" 2>&1; then
        mkdir -p build && echo "$h" > build/cuda_sources.sha256
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

sanitizer_step() {
    local tool=$1 t0 rc summary
    shift
    local opts=(--leak-check no)
    [ "$tool" = racecheck ] && opts=(--racecheck-report all)
    t0=$(date +%s)
    timeout "${SAN_TIMEOUT:-240}" compute-sanitizer --tool "$tool" "${opts[@]}" --error-exitcode 9 \
        "$@" > "$OUT/$tool.log" 2>&1
    rc=$?
    summary=$(grep -E "RACECHECK SUMMARY|ERROR SUMMARY" "$OUT/$tool.log" | tail -1)
    row "$tool" "$([ $rc = 0 ] && echo clean || echo "rc=$rc")" \
        "$summary; $(last_line "$OUT/$tool.log"), $(( $(date +%s) - t0 )) s"
}
