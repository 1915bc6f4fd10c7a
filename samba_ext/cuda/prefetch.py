"""L2 prefetch of the GEMM weights in a recorded decode step (``SAMBA_EXT_L2_PREFETCH``).

A decode step at batch 1 reads every weight once, one small GEMM at a time, with element-wise
kernels (norms, the conv and scan steps, attention) in between. Each GEMM waits for its
launch and for DRAM to ramp up, and DRAM idles while the element-wise kernels run. With the
knob set, the step's CUDA graph gets a side branch: right after a GEMM finishes, a prefetch of
the *next* GEMM's weights (their first ``SAMBA_EXT_L2_PREFETCH_MB`` megabytes) starts on a
second stream, so they are on their way to the L2 cache while the kernels in between run. The
prefetch only reads; the step's results are bit for bit the same with or without it.

Settings: ``SAMBA_EXT_L2_PREFETCH`` = ``0`` (default, off), ``bulk`` (the copy engine's bulk L2
prefetch on sm_90, per-line prefetches before) or ``touch`` (a kernel that loads the bytes
through L2); ``SAMBA_EXT_L2_PREFETCH_MB`` = bytes per GEMM in MiB (default 24, at most half
of a 50 MB L2).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from .layout import DTYPES

MODES = {"0": 0, "bulk": 1, "touch": 2}
DEFAULT_MB = 24
MIN_BYTES = 1 << 20    # smaller operands are not worth a launch
SMALL_BYTES = 4 << 20  # a GEMM this small leaves room in L2: fork before it instead

_ITEMSIZE = {code: size for code, size, *_ in DTYPES.values()}


def mode() -> int:
    """0 (off), 1 (bulk) or 2 (touch), from ``SAMBA_EXT_L2_PREFETCH``; another value raises
    ValueError naming the variable (read at each capture, so a value set after the extension
    was loaded is checked too)."""
    v = os.environ.get("SAMBA_EXT_L2_PREFETCH") or "0"
    if v not in MODES:
        raise ValueError(f"SAMBA_EXT_L2_PREFETCH: expected one of {', '.join(MODES)} (or unset), "
                         f"got {v!r}")
    return MODES[v]


def cap_bytes() -> int:
    """``SAMBA_EXT_L2_PREFETCH_MB`` in bytes (default 24 MiB); ValueError names the variable."""
    v = os.environ.get("SAMBA_EXT_L2_PREFETCH_MB")
    if v in (None, ""):
        return DEFAULT_MB << 20
    try:
        mb = int(v)
    except ValueError:
        mb = -1
    if not 1 <= mb <= 4096:
        raise ValueError(f"SAMBA_EXT_L2_PREFETCH_MB: expected an integer 1..4096 (MiB), got {v!r}")
    return mb << 20


def _span(ld: int, rows: int, cols: int, batch: int, bstride: int) -> int:
    """Elements from the first to one past the last of a column-major rows x cols matrix with
    leading dimension ld, over batch matrices bstride elements apart (0: one matrix)."""
    if rows == 0 or cols == 0:
        return 0
    one = (cols - 1) * ld + rows
    return one + (batch - 1) * bstride if bstride and batch > 1 else one


def gemm_operands(args: Sequence[Any]) -> list[tuple[int, int]]:
    """(pointer, bytes) of the two inputs of a recorded ``gemm_batched`` call (its arguments:
    transa, transb, m, n, k, A, lda, sA, B, ldb, sB, C, ldc, sC, batch, beta, stream; the
    column-major C (m x n) = op(A) (m x k) op(B) (k x n))."""
    ta, tb, m, n, k, A, lda, sa, B, ldb, sb, _C, _ldc, _sc, batch = args[:15]
    ea, eb = _ITEMSIZE[A[1]], _ITEMSIZE[B[1]]
    span_a = _span(lda, k, m, batch, sa) if ta else _span(lda, m, k, batch, sa)
    span_b = _span(ldb, n, k, batch, sb) if tb else _span(ldb, k, n, batch, sb)
    return [(int(A[0]), span_a * ea), (int(B[0]), span_b * eb)]


def plan(calls: Sequence[tuple[Any, tuple]], is_gemm: Callable[[Any], bool],
         cap: int) -> dict[int, list[tuple[int, int]]]:
    """Where to fork which prefetch: {index of the call after which to fork (-1: before the
    first call): [(pointer, bytes), ...]}.

    For every GEMM, its larger input (the weight at decode) is prefetched, at most ``cap``
    bytes, when it has at least MIN_BYTES. The fork follows the latest earlier GEMM whose own
    larger input exceeds SMALL_BYTES (smaller GEMMs in between leave room in L2), or the start
    of the step."""
    out: dict[int, list[tuple[int, int]]] = {}
    gemms = [(i, max(gemm_operands(args), key=lambda pb: pb[1]))
             for i, (fn, args) in enumerate(calls) if is_gemm(fn)]
    for j, (i, (ptr, nbytes)) in enumerate(gemms):
        if nbytes < MIN_BYTES or ptr == 0:
            continue
        fork = -1
        for i_prev, (_, b_prev) in reversed(gemms[:j]):
            if b_prev > SMALL_BYTES:
                fork = i_prev
                break
        out.setdefault(fork, []).append((ptr, min(nbytes, cap)))
    return out


def capture(cu: Any, calls: Sequence[tuple[Any, tuple]], stream: int, side: int, sm_count: int,
            how: int, cap: int) -> int:
    """Issue ``calls`` in order on ``stream`` (being captured), with the prefetches of
    :func:`plan` forked onto ``side`` and joined back at the end. Returns the number of
    prefetches issued."""
    g = cu.gemm_batched
    forks = plan(calls, lambda fn: fn == g, cap)

    def fork(at: int) -> None:
        for ptr, nbytes in forks.get(at, ()):
            cu.stream_wait(side, stream)
            cu.l2_prefetch(ptr, nbytes, how, sm_count, side)

    fork(-1)
    for i, (fn, args) in enumerate(calls):
        fn(*args)
        fork(i)
    n = sum(len(v) for v in forks.values())
    if n:
        cu.stream_wait(stream, side)  # join: a capture ends with every forked stream rejoined
    return n
