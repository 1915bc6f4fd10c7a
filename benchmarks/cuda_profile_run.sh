#!/usr/bin/env bash
# cuda_profile_run.sh - on a CUDA GPU with Nsight Compute: build samba_ext (or reuse a build
# stamped for these sources), then profile one call of each case of benchmarks/gpu_profile.py
# with ncu (clocks left alone), one report per case, and print a summary table: duration,
# registers, achieved occupancy, SM / memory throughput, issue activity and the stall advice.
#
# Usage (from the repository root):  bash benchmarks/cuda_profile_run.sh [steps] [cases]
#   steps: comma-separated subset of build,profile (default both)
#   cases: comma-separated gpu_profile.py cases (default: every case)
# Environment: OUT (log folder, default ./out), NCU (default ncu), NCU_TIMEOUT (seconds per
#   case, default 120), GIT_COMMIT, SAMBA_EXT_CUDA_ARCHS (default 90), SASS=1 (a second ncu
#   pass per case with the SourceCounters section: per-instruction stall samples and execution
#   counts, exported as sass_CASE.csv and summarised by benchmarks/ncu_sass_summary.py into
#   sass_CASE.txt).
# Files written to $OUT: build.log, ncu_CASE.txt per case (with SASS=1 also sass_CASE.csv and
#   sass_CASE.txt), summary.md
STEPS=${1:-build,profile}
CASES=${2:-$(python3 benchmarks/gpu_profile.py --list)}
source "$(dirname "$0")/cuda_run_common.sh"
header
build_step

if has profile; then
    NCU=${NCU:-ncu}
    for c in ${CASES//,/ }; do
        t0=$(date +%s)
        log="$OUT/ncu_$c.txt"
        timeout "${NCU_TIMEOUT:-120}" "$NCU" --clock-control none --profile-from-start off \
            --section SpeedOfLight --section LaunchStats --section Occupancy \
            --section SchedulerStats --section WarpStateStats --section ComputeWorkloadAnalysis \
            --section MemoryWorkloadAnalysis --section InstructionStats --print-details all \
            $PY benchmarks/gpu_profile.py "$c" > "$log" 2>&1
        rc=$?
        if [ $rc = 0 ] && grep -q "gpu_profile: $c done" "$log"; then
            dur=$(grep -E "^ +Duration " "$log" | awk '{print $(NF-1) $NF}' | paste -sd+ -)
            regs=$(grep -E "^ +Registers Per Thread " "$log" | awk '{print $NF}' | paste -sd/ -)
            occ=$(grep -E "^ +Achieved Occupancy " "$log" | awk '{print $NF}' | paste -sd/ -)
            sm=$(grep -E "^ +Compute \(SM\) Throughput " "$log" | awk '{print $NF}' | paste -sd/ -)
            mem=$(grep -E "^ +Memory Throughput +%" "$log" | awk '{print $NF}' | paste -sd/ -)
            iss=$(grep -E "^ +Issue Slots Busy " "$log" | awk '{print $NF}' | paste -sd/ -)
            row "$c" ok "$(( $(date +%s) - t0 )) s; time $dur; regs $regs; occupancy % $occ; SM % $sm; mem % $mem; issue % $iss"
        else
            row "$c" "rc=$rc" "see ncu_$c.txt"
            tail -5 "$log"
        fi
        if [ "${SASS:-0}" = 1 ]; then
            rep="$OUT/sass_$c"
            timeout "${NCU_TIMEOUT:-120}" "$NCU" --clock-control none --profile-from-start off \
                --section SourceCounters --import-source no -f -o "$rep" \
                $PY benchmarks/gpu_profile.py "$c" > "$rep.log" 2>&1 &&
                "$NCU" -i "$rep.ncu-rep" --page source --csv --print-source sass > "$rep.csv" 2>&1 &&
                $PY benchmarks/ncu_sass_summary.py "$rep.csv" > "$rep.txt" 2>&1
            src=$?
            row "$c sass" "$([ $src = 0 ] && echo ok || echo "rc=$src")" "sass_$c.csv, sass_$c.txt"
            rm -f "$rep.ncu-rep"
        fi
    done
fi
echo
cat "$SUMMARY"
exit 0
