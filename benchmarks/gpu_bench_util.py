"""Shared helpers of the GPU benchmarks: CUDA-event timing and the commit being measured.
torch is imported when a timing runs, so the scripts' pure-Python parts import without it."""
from __future__ import annotations

import os
import statistics
import subprocess
from typing import Any, Callable, Optional


def median_ms(fn: Callable[[], Any], warmup: int = 3, reps: int = 15, calls: int = 1) -> float:
    """Median over ``reps`` samples of the milliseconds per call of fn(), each sample
    ``calls`` calls between two CUDA events on torch's current stream, after ``warmup``
    calls and a device synchronisation."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(calls):
            fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / calls)
    return statistics.median(times)


def git_commit(given: Optional[str] = None) -> str:
    """``given`` when set, else the checkout's short HEAD, else "unknown" (the device copy of
    a tree has no git history: pass the commit explicitly there)."""
    if given:
        return given
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except Exception:  # noqa: BLE001 - no git: the commit is unknown
        return "unknown"


def write_atomic(path: str, text: str) -> None:
    """samba_ext.atomic.write_text_atomic into a folder that is made if missing."""
    from samba_ext.atomic import write_text_atomic

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_text_atomic(path, text)

