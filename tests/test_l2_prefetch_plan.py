"""Where a recorded decode step forks its L2 prefetches (samba_ext/cuda/prefetch.py): host
logic over a recorded call list, on any machine. The GPU side (the kernels, and a decode with
the prefetches that must match one without bit for bit) is in tests/test_cuda_l2_prefetch.py."""
from __future__ import annotations

import pytest

from samba_ext.cuda import prefetch
from samba_ext.cuda.layout import DTYPES

BF16 = DTYPES["bfloat16"][0]
MB = 1 << 20


def _gemm(fn, ptr, N, K, M=1):
    """The gemm_batched call samba_ext.cuda.blas.matmul records for y = x @ W^T with x (M, K)
    and a row-major weight W (N, K): column-major C^T (N x M) = op(W) op(x), W transposed
    with leading dimension K."""
    return (fn, (1, 0, N, M, K, (ptr, BF16), K, 0, (0xA0, BF16), K, 0, (0xC0, BF16), N, M * N,
                 1, 0.0, 0))


def gemm():
    pass


def other():
    pass


def test_operands_of_a_decode_gemm_are_the_weight_and_the_activation():
    _, args = _gemm(gemm, 0x1000, N=2560, K=2048)
    (pw, bw), (px, bx) = prefetch.gemm_operands(args)
    assert (pw, bw) == (0x1000, 2560 * 2048 * 2)
    assert (px, bx) == (0xA0, 2048 * 2)


def test_span_follows_the_leading_dimension_and_the_batch():
    # a (rows x cols) column-major block with ld > rows ends at (cols - 1) ld + rows
    assert prefetch._span(ld=100, rows=10, cols=3, batch=1, bstride=0) == 210
    assert prefetch._span(ld=100, rows=10, cols=3, batch=4, bstride=1000) == 3210
    assert prefetch._span(ld=100, rows=0, cols=3, batch=4, bstride=1000) == 0


def test_forks_follow_the_previous_large_gemm():
    # one Mamba layer and one MLP of samba-1.7b's sizes, with element-wise kernels between
    calls = [(other, ()),
             _gemm(gemm, 0x1, N=8192, K=2048),    # 1: in_proj, 32 MiB
             (other, ()),
             _gemm(gemm, 0x2, N=160, K=4096),     # 3: x_proj, 1.25 MiB
             _gemm(gemm, 0x3, N=4096, K=128),     # 4: dt_proj, 1 MiB
             (other, ()),
             _gemm(gemm, 0x4, N=2048, K=4096),    # 6: out_proj, 16 MiB
             (other, ()),
             _gemm(gemm, 0x5, N=16512, K=2048),   # 8: gate + up, 64.5 MiB
             (other, ()),
             _gemm(gemm, 0x6, N=2048, K=8256),    # 10: down, 32.25 MiB
             _gemm(gemm, 0x7, N=8, K=8)]          # 11: too small to prefetch
    plan = prefetch.plan(calls, lambda fn: fn is gemm, cap=24 * MB)
    assert plan == {
        -1: [(0x1, 24 * MB)],                     # the first GEMM: at the start of the step
        1: [(0x2, 160 * 4096 * 2), (0x3, 4096 * 128 * 2), (0x4, 16 * MB)],  # small ones skipped
        6: [(0x5, 24 * MB)],
        8: [(0x6, 24 * MB)]}
    # the cap bounds every prefetch
    small = prefetch.plan(calls, lambda fn: fn is gemm, cap=MB)
    assert all(n <= MB for v in small.values() for _, n in v)


def test_capture_forks_after_the_planned_calls_and_joins_at_the_end():
    log = []

    class Cu:
        def gemm_batched(self, *a):
            log.append(("gemm", a[5][0]))

        def stream_wait(self, waiter, producer):
            log.append(("wait", waiter, producer))

        def l2_prefetch(self, ptr, n, how, sms, stream):
            log.append(("prefetch", ptr, n, how, sms, stream))

    cu = Cu()
    g = cu.gemm_batched
    calls = [_gemm(g, 0x1, N=8192, K=2048), (lambda: log.append(("norm",)), ()),
             _gemm(g, 0x2, N=2048, K=2048)]
    n = prefetch.capture(cu, calls, stream=5, side=6, sm_count=132, how=1, cap=4 * MB)
    assert n == 2
    assert log == [("wait", 6, 5), ("prefetch", 0x1, 4 * MB, 1, 132, 6), ("gemm", 0x1),
                   ("wait", 6, 5), ("prefetch", 0x2, 4 * MB, 1, 132, 6), ("norm",),
                   ("gemm", 0x2), ("wait", 5, 6)]


def test_settings_are_checked(monkeypatch):
    monkeypatch.delenv("SAMBA_EXT_L2_PREFETCH", raising=False)
    monkeypatch.delenv("SAMBA_EXT_L2_PREFETCH_MB", raising=False)
    assert prefetch.mode() == 0 and prefetch.cap_bytes() == prefetch.DEFAULT_MB * MB
    monkeypatch.setenv("SAMBA_EXT_L2_PREFETCH", "touch")
    monkeypatch.setenv("SAMBA_EXT_L2_PREFETCH_MB", "8")
    assert prefetch.mode() == 2 and prefetch.cap_bytes() == 8 * MB
    for bad in ("0", "x", "-3", "1.5"):
        monkeypatch.setenv("SAMBA_EXT_L2_PREFETCH_MB", bad)
        with pytest.raises(ValueError, match="SAMBA_EXT_L2_PREFETCH_MB"):
            prefetch.cap_bytes()
    monkeypatch.setenv("SAMBA_EXT_L2_PREFETCH", "Bulk")
    with pytest.raises(ValueError, match="SAMBA_EXT_L2_PREFETCH: expected one of 0, bulk, touch"):
        prefetch.mode()
