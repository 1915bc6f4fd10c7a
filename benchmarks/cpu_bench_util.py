"""Shared helpers of the CPU benchmarks (cpu_kernels.py, cpu_backward.py): timing, machine
description, relative errors. Importing it puts the repository root on sys.path, so the
benchmarks run from a checkout with an in-place build."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import samba_ext  # noqa: E402
from samba_ext import _core  # noqa: E402


def best_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Best wall-clock seconds of `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def interleaved_times(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Best wall-clock seconds of each function, calling them in turn `repeats` times after
    one warm-up round, so that all of them see the same machine load (for baselines that
    leave no threads behind, such as a NumPy copy; see block_times for BLAS baselines)."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def block_times(fns: list[Callable[[], object]], repeats: int,
                settle: float = 0.3, rounds: int = 2) -> list[float]:
    """Best seconds of each function over ``rounds`` rounds of blocks (default two): in each
    round every function runs max(2, ceil(repeats / 2)) times in a row, after one warm-up call
    each. More rounds give each side more chances to meet a quiet moment of a shared machine.

    Blocks rather than strict alternation: after a NumPy call OpenBLAS's threads spin for a
    while (about 0.1 s) and take the 2 cores from the OpenMP threads of the next C call, which
    made an alternated C call up to about 2x slower here. Each block starts after a pause of
    ``settle`` seconds (not timed), so the other library's threads are idle again even when a
    whole block is shorter than their spin time; two rounds still spread slow drifts of the
    machine's load over both sides."""
    for fn in fns:
        fn()
    per = max(2, -(-repeats // 2))
    best = [float("inf")] * len(fns)
    for _ in range(max(1, rounds)):
        for i, fn in enumerate(fns):
            time.sleep(settle)
            for _ in range(per):
                t0 = time.perf_counter()
                fn()
                best[i] = min(best[i], time.perf_counter() - t0)
    return best


def rel_err(got, ref) -> float:
    """Relative-norm difference ||got - ref|| / ||ref|| in float64."""
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))


def sh(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=ROOT,
                              check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info() -> dict[str, str]:
    """date (UTC), commit, machine, python, numpy (+ BLAS), threads (+ compiler), load."""
    model = ""
    for line in sh(["lscpu"]).splitlines():
        if line.startswith("Model name:"):
            model = line.split(":", 1)[1].strip()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    blas = "unknown"
    try:
        b = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{b.get('name', '?')} {b.get('version', '')}".strip()
    except Exception:
        pass
    commit = sh(["git", "rev-parse", "--short", "HEAD"]) or "unknown"
    dirty = sh(["git", "status", "--porcelain", "--untracked-files=no"])
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    bi = _core.build_info()
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit + (" (+ uncommitted changes)" if dirty else ""),
        "machine": f"{model or platform.processor() or '?'}, {os.cpu_count()} logical CPUs "
                   f"({usable} usable)",
        "python": platform.python_version(),
        "numpy": f"{np.__version__}, BLAS: {blas}",
        "threads": f"samba_ext {samba_ext.get_num_threads()} (OpenMP "
                   f"{'on' if bi.get('openmp') else 'off'}), compiler {bi.get('compiler')}",
        "load": load,
    }
