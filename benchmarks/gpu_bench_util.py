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
    return median_ms_rounds({"fn": fn}, warmup=warmup, reps=reps, calls=calls)["fn"]


def median_ms_rounds(fns: dict[str, Callable[[], Any]], warmup: int = 3, reps: int = 15,
                     calls: int = 1,
                     before: Optional[Callable[[str], None]] = None) -> dict[str, float]:
    """median_ms for several implementations of one case, their samples interleaved: round r
    takes sample r of every implementation in turn, so that a drift of the clocks during the
    run (or a pause, e.g. a compile, before one of them) weighs on all alike. ``before(name)``
    runs ahead of each implementation's warm-up and samples (outside the timed span); it
    selects a variant that is switched by a setting rather than by the function."""
    import torch

    for name, fn in fns.items():
        if before is not None:
            before(name)
        for _ in range(warmup):
            fn()
    torch.cuda.synchronize()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            if before is not None:
                before(name)
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(calls):
                fn()
            b.record()
            b.synchronize()
            times[name].append(a.elapsed_time(b) / calls)
    return {name: statistics.median(t) for name, t in times.items()}


def command_line(script: str, argv: list[str]) -> str:
    """`python3 benchmarks/SCRIPT ARGS` for a report, without --out DIR (a machine path, not
    part of the method)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--out":
            skip = True
        elif not a.startswith("--out="):
            out.append(a)
    return " ".join([f"python3 benchmarks/{script}", *out])


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



def write_marked(path: str, script: str, block: str) -> str:
    """Writes ``block`` into the markdown file ``path`` between the lines
    ``<!-- SCRIPT: begin -->`` and ``<!-- SCRIPT: end -->``. Text outside the markers (notes
    written by hand) is kept; in a file without them (or a new one) the marked block is added at
    the end, so nothing already there is lost. Atomic; returns the text."""
    begin, end = f"<!-- {script}: begin -->\n", f"<!-- {script}: end -->\n"
    body = block if block.endswith("\n") else block + "\n"
    old = ""
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
    if begin in old and end in old[old.index(begin):]:
        i = old.index(begin)
        text = old[:i] + begin + body + old[old.index(end, i):]
    else:
        text = old + ("\n" if old and not old.endswith("\n") else "") + begin + body + end
    write_atomic(path, text)
    return text


def profile_calls(fn: Callable[[], Any], calls: int, warmup: int, host: bool = False) -> Any:
    """torch.profiler over ``calls`` calls of fn() after ``warmup``: the device activity, and
    with ``host`` the host's too (the CUDA runtime calls among it)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    acts = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if host else [ProfilerActivity.CUDA]
    with profile(activities=acts) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return prof


def device_ms(fn: Callable[[], Any], calls: int = 10, warmup: int = 3) -> Optional[float]:
    """Milliseconds of device time (kernels, copies, fills) per call of fn(), summed from the
    torch profiler (CUPTI) over ``calls`` calls after ``warmup``, so that the host-side cost of
    a Python call does not count; None where the profiler gives no device times."""
    try:
        prof = profile_calls(fn, calls, warmup)
        tot = sum(float(getattr(e, "self_device_time_total", 0.0)) for e in prof.key_averages())
        return tot / calls / 1000.0 if tot > 0 else None
    except (RuntimeError, ImportError, AttributeError):
        return None


def kernel_us(fn: Callable[[], Any], calls: int = 5, warmup: int = 1) -> dict[str, float]:
    """Device microseconds per call of each kernel (or copy, fill) fn() runs, by name (first
    60 characters), from the torch profiler; the key "(all kernels)" holds their sum."""
    prof = profile_calls(fn, calls, warmup)
    agg: dict[str, float] = {}
    for ev in prof.events():
        if str(getattr(ev, "device_type", "")) != "DeviceType.CUDA":
            continue
        t = ev.device_time if hasattr(ev, "device_time") else ev.cuda_time
        agg[ev.name[:60]] = agg.get(ev.name[:60], 0.0) + t / calls
    agg["(all kernels)"] = sum(agg.values())
    return agg


def copy_bandwidth_Bps(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy of ``nbytes``: bytes read + written per second (median of
    CUDA-event timings); the buffers are freed before returning."""
    import torch

    a = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_()
    b = torch.empty_like(a)
    t = median_ms(lambda: b.copy_(a), warmup=3, reps=10)
    a = b = None  # noqa: F841 - freed before the caller allocates
    torch.cuda.empty_cache()
    return 2 * nbytes / (t * 1e-3)


def rel(a: Any, b: Any) -> float:
    """Relative Frobenius-norm difference |a - b| / |b| in float64 (torch tensors, NumPy
    arrays, or anything with ``to_numpy()`` / ``__dlpack__``)."""
    import numpy as np

    def f64(x: Any) -> "np.ndarray":
        if hasattr(x, "detach"):
            return x.detach().double().cpu().numpy()
        if hasattr(x, "to_numpy"):
            return np.asarray(x.to_numpy(), np.float64)
        return np.asarray(x, np.float64)

    x, y = f64(a), f64(b)
    return float(np.linalg.norm(x - y) / max(float(np.linalg.norm(y)), 1e-30))
