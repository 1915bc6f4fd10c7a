"""pytest plugin for tests/sanitize/run.sh: refuse to run unless the sanitized build is the one imported.

Loaded with ``-p asan_guard`` from the assembled package copy (build-asan/pkg). It aborts the
session (pytest.UsageError -> non-zero exit) when

* ``samba_ext`` or ``samba_ext._core`` were imported from anywhere but that copy (e.g. an
  installed or in-place build shadowing it), or
* the extension was not compiled with ASan (no ``__asan_report`` symbols), or
* the ASan runtime is not mapped into the process (LD_PRELOAD missing).
"""
from __future__ import annotations

import os
import sys

import pytest


def _inside(path: str, root: str) -> bool:
    path, root = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([path, root]) == root


def pytest_configure(config: pytest.Config) -> None:
    # torch is a third-party C++ library with its own never-freed static allocations (e.g.
    # libtorch_cuda's CachingHostAllocator) that LSan would report; the sanitized job checks
    # samba_ext's C code, so torch is made unimportable here (importorskip("torch") skips, the
    # checkpoint reader takes its torch-free path). The torch parity tests run in the normal job.
    sys.modules["torch"] = None  # type: ignore[assignment]
    pkg = os.environ.get("SAMBA_SANITIZE_PKG")
    if not pkg:
        raise pytest.UsageError("asan_guard: SAMBA_SANITIZE_PKG is not set (run tests/sanitize/run.sh)")
    import samba_ext
    import samba_ext._core as core

    for mod in (samba_ext, core):
        if not _inside(mod.__file__, pkg):
            raise pytest.UsageError(f"asan_guard: {mod.__name__} imported from {mod.__file__}, "
                                    f"not from the sanitized copy {pkg}")
    with open(core.__file__, "rb") as f:
        if b"__asan_report" not in f.read():
            raise pytest.UsageError(f"asan_guard: {core.__file__} is not built with ASan")
    with open("/proc/self/maps") as f:
        if "libasan" not in f.read():
            raise pytest.UsageError("asan_guard: the ASan runtime is not loaded (LD_PRELOAD)")
    config.stash[_KEY] = core.__file__


_KEY = pytest.StashKey[str]()


def pytest_report_header(config: pytest.Config) -> str:
    return f"sanitized samba_ext._core: {config.stash.get(_KEY, '?')}"
