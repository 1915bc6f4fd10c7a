"""Streams of the CUDA backends, reused across backend objects.

A :class:`samba_ext.backend_cuda.CUDABackend` runs on a non-blocking stream of its own, and
the C side keeps per-stream resources for it (the GEMM workspace of ``csrc/cuda/gemm.cu``,
32 MiB, for at most 16 streams per device; the decode attention's workspace). A stream is
never destroyed, since arrays allocated on it may outlive the backend, so a process that made
a new backend for every model (a notebook cell run again and again) would add a stream and a
workspace each time, and past 16 streams its products would run without a workspace of their
own (no split-K one-row products). Instead, a backend takes a stream that no live backend holds
from this pool, and gives its streams back when it is garbage-collected; work still queued on a
stream that is given back stays ordered before the next holder's.

The CUDA graphs of a collected backend are freed here too, but not from the finalizer (which
may run while another stream is being captured): they wait until the next :func:`take`.
"""
from __future__ import annotations

import threading
from typing import Any, Iterable

__all__ = ["take", "give_back", "pooled"]

_LOCK = threading.Lock()
_FREE: dict[int, list[int]] = {}    # device index -> streams that no live backend holds
_GRAPHS: list[int] = []             # graphs of collected backends, freed at the next take


def take(cu: Any, index: int) -> int:
    """A stream of device ``index`` that no live backend holds (made when none is free).
    ``cu``: the samba_ext._cuda module. The caller makes ``index`` the current device."""
    with _LOCK:
        graphs = _GRAPHS[:]
        _GRAPHS.clear()
        free = _FREE.get(index)
        stream = free.pop() if free else None
    for g in graphs:
        cu.graph_free(g)
    return int(cu.stream_create()) if stream is None else stream


def give_back(index: int, streams: Iterable[int], graphs: Iterable[int]) -> None:
    """Return a collected backend's streams of device ``index`` to the pool and queue its
    graphs for freeing. Makes no CUDA call (safe in a finalizer)."""
    with _LOCK:
        _FREE.setdefault(index, []).extend(int(s) for s in streams)
        _GRAPHS.extend(int(g) for g in graphs)


def pooled(index: int) -> list[int]:
    """The free streams of device ``index`` (a copy; for tests and diagnostics)."""
    with _LOCK:
        return list(_FREE.get(index, ()))
