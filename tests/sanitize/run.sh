#!/usr/bin/env bash
# tests/sanitize/run.sh - run the kernel and model tests against an ASan+UBSan build of _core.
#
# 1. builds samba_ext._core with SAMBA_EXT_SANITIZE=1 SAMBA_EXT_CUDA=0 into build-asan/
#    (never touches the in-place build of the source tree);
# 2. assembles an importable copy of the package there (build-asan/pkg: samba_ext/ with the
#    sanitized _core, tests/, pyproject.toml) and runs pytest from inside it, so sys.path[0]
#    is that copy; tests/sanitize/asan_guard.py aborts the run unless samba_ext._core is the
#    sanitized build and the ASan runtime is loaded;
# 3. first checks that the preloaded runtime catches a planted heap overflow (else the job
#    would pass vacuously);
# 4. runs the test files with LD_PRELOAD=libasan, PYTHONMALLOC=malloc (so LeakSanitizer sees
#    and scans every Python object instead of pymalloc arenas), detect_leaks=1, halt on the
#    first error, and the suppressions in tests/sanitize/lsan.supp.
# --capture=sys leaves fd 2 alone so that a report is printed even when it kills the process.
# Any ASan/UBSan/LSan report, failing test or missing test file makes the exit status non-zero.
#
# Usage: bash tests/sanitize/run.sh [test files...]   (default: the kernel + model test files)
#        extra pytest options: SANITIZE_PYTEST_ARGS="--durations=10 -x"
# Env:   SANITIZE_BUILD_DIR (default <repo>/build-asan), PYTHON (default python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD="${SANITIZE_BUILD_DIR:-$ROOT/build-asan}"
PKG="$BUILD/pkg"
HERE="$ROOT/tests/sanitize"
# The real interpreter (not a pyenv/venv shell shim: the ASan runtime must not be preloaded into bash).
PY="$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')"
CC_BIN="${CC:-gcc}"
ASAN_RT="$($CC_BIN -print-file-name=libasan.so)"
# libstdc++ is preloaded too: ASan resolves the real __cxa_throw at start-up, and C++ libraries
# loaded later by the tests (torch) would otherwise hit "CHECK failed: real___cxa_throw != 0".
CXX_RT="$($CC_BIN -print-file-name=libstdc++.so)"
PRELOAD="$ASAN_RT"
[[ -e "$CXX_RT" ]] && PRELOAD="$ASAN_RT $CXX_RT"
if [[ ! -e "$ASAN_RT" ]]; then
    echo "sanitize: cannot find the ASan runtime ($CC_BIN -print-file-name=libasan.so -> $ASAN_RT)" >&2
    exit 2
fi
t0=$SECONDS

# Test files run under the sanitizers: every kernel and model test file (whatever exists of them
# must be there: a missing one is an error, so a rename cannot silently drop it).
KERNEL_TESTS=(test_scan.py test_conv.py test_elementwise.py test_attention.py test_properties.py
              test_grad_scan.py test_grad_conv.py test_grad_small.py test_grad_attention.py
              test_grad_api.py test_grad_attention_tiles.py test_grad_attention_alibi.py
              test_conv_seq_idx.py)
MODEL_TESTS=(test_model.py test_checkpoint.py)

echo "sanitize: building _core with -fsanitize=address,undefined into $BUILD"
mkdir -p "$BUILD"
(cd "$ROOT" && SAMBA_EXT_SANITIZE=1 SAMBA_EXT_CUDA=0 "$PY" setup.py -q build_ext \
    --build-lib "$BUILD/lib" --build-temp "$BUILD/tmp" >"$BUILD/build.log" 2>&1) || {
    cat "$BUILD/build.log" >&2; echo "sanitize: build failed" >&2; exit 1; }
SO="$(ls "$BUILD"/lib/samba_ext/_core*.so | head -n1)"
grep -q "__asan_report" "$SO" || { echo "sanitize: $SO is not instrumented" >&2; exit 1; }

echo "sanitize: assembling $PKG"
rm -rf "$PKG"
mkdir -p "$PKG"
cp -R "$ROOT/samba_ext" "$ROOT/tests" "$PKG/"
cp "$ROOT/pyproject.toml" "$PKG/"
find "$PKG" \( -name '*.so' -o -name '__pycache__' -o -name '.hypothesis' \) -prune -exec rm -rf {} +
cp "$SO" "$PKG/samba_ext/"
cp "$HERE/asan_guard.py" "$PKG/"
export SAMBA_SANITIZE_PKG="$PKG"

export PYTHONMALLOC=malloc
export PYTHONDONTWRITEBYTECODE=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
# allocator_may_return_null=1: an absurd request must reach our MemoryError path, not an ASan abort.
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:abort_on_error=0:exitcode=86:allocator_may_return_null=1:strict_init_order=1:detect_stack_use_after_return=0"
export LSAN_OPTIONS="suppressions=$HERE/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"

echo "sanitize: self-test (the preloaded runtime must catch a planted heap overflow)"
if (cd "$PKG" && LD_PRELOAD="$ASAN_RT" "$PY" -c '
import ctypes
b = ctypes.create_string_buffer(32)
ctypes.memset(ctypes.addressof(b), 1, 48)   # 16 bytes past the end: ASan must stop here
' >"$BUILD/selftest.log" 2>&1); then
    cat "$BUILD/selftest.log" >&2
    echo "sanitize: FAIL: the ASan runtime did not catch the planted overflow" >&2
    exit 1
fi
grep -q "heap-buffer-overflow" "$BUILD/selftest.log" || {
    cat "$BUILD/selftest.log" >&2; echo "sanitize: FAIL: self-test died for another reason" >&2; exit 1; }

if [[ $# -gt 0 ]]; then
    ARGS=("$@")
else
    ARGS=()
    for f in "${KERNEL_TESTS[@]}" "${MODEL_TESTS[@]}"; do
        if [[ -f "$PKG/tests/$f" ]]; then ARGS+=("tests/$f"); else echo "sanitize: note: tests/$f not present, skipped"; fi
    done
    [[ ${#ARGS[@]} -gt 0 ]] || { echo "sanitize: no test file to run" >&2; exit 1; }
fi

echo "sanitize: running pytest ${ARGS[*]}"
LOG="$BUILD/pytest.log"
set +e
(cd "$PKG" && LD_PRELOAD="$PRELOAD" "$PY" -m pytest -q -p no:cacheprovider -p asan_guard \
    --capture=sys -m "not cuda" ${SANITIZE_PYTEST_ARGS:-} "${ARGS[@]}") 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
set -e
# Belt and braces: a report printed by a child process or a swallowed exit status still fails.
if grep -qE "ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|SUMMARY: (AddressSanitizer|UndefinedBehaviorSanitizer)" "$LOG"; then
    echo "sanitize: FAIL: sanitizer report(s) in $LOG" >&2
    [[ $rc -ne 0 ]] || rc=1
fi
if [[ $rc -ne 0 ]]; then
    echo "sanitize: FAIL (exit $rc; 86 = a sanitizer report, see above) after $((SECONDS - t0)) s" >&2
    exit "$rc"
fi
echo "sanitize: OK, no ASan/UBSan/LSan report ($((SECONDS - t0)) s)"
