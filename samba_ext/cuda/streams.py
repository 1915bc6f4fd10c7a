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

Streams and graphs are kept per extension module object (``cu``), so that handles made by one
module (a test's stand-in) never reach another. No lock: the finalizer may run inside
:func:`take` itself (garbage collection starts on any allocation), so the pool uses only
deque appends and pops, which are atomic.
"""
from __future__ import annotations

import collections
from typing import Any, Iterable

__all__ = ["take", "give_back", "pooled"]

# (id(cu), device index) -> (cu, streams that no live backend holds); cu kept so its id stays
_FREE: dict[tuple[int, int], tuple[Any, collections.deque]] = {}
# (cu, graph) of collected backends, freed at the next take with the same cu
_GRAPHS: collections.deque = collections.deque()


def _free_list(cu: Any, index: int) -> collections.deque:
    entry = _FREE.get((id(cu), index))
    if entry is None:
        entry = _FREE.setdefault((id(cu), index), (cu, collections.deque()))
    return entry[1]


def take(cu: Any, index: int) -> int:
    """A stream of device ``index`` that no live backend holds (made when none is free).
    ``cu``: the samba_ext._cuda module the backend runs on. First frees the graphs that
    collected backends of ``cu`` left. The caller makes ``index`` the current device."""
    for _ in range(len(_GRAPHS)):
        try:
            owner, g = _GRAPHS.popleft()
        except IndexError:
            break
        if owner is cu:
            try:
                cu.graph_free(g)
            except Exception:  # noqa: BLE001 - a dead backend's graph; never stop a new one
                pass
        else:
            _GRAPHS.append((owner, g))
    try:
        return _free_list(cu, index).pop()
    except IndexError:
        return int(cu.stream_create())


def give_back(cu: Any, index: int, streams: Iterable[int], graphs: Iterable[int]) -> None:
    """Return a collected backend's streams of device ``index`` to the pool and queue its
    graphs for freeing. Makes no CUDA call (safe in a finalizer)."""
    _free_list(cu, index).extend([int(s) for s in streams])
    _GRAPHS.extend([(cu, int(g)) for g in graphs])


def pooled(cu: Any, index: int) -> list[int]:
    """The free streams of ``cu``'s device ``index`` (a copy; for tests and diagnostics)."""
    entry = _FREE.get((id(cu), index))
    return list(entry[1]) if entry is not None else []
