"""GEMMs on CUDA through cuBLAS: :func:`linear` (y = x @ W^T) and :func:`matmul` (batched,
broadcast, strided operands read in place where cuBLAS can). cublasGemmEx /
cublasGemmStridedBatchedEx with CUBLAS_COMPUTE_32F: float32 accumulation, no TF32.

The environment variable ``SAMBA_EXT_GEMM`` (read once per process, csrc/cuda/gemm.cu)
selects the cuBLAS path: ``gemmex`` (the default, the calls above), ``lt`` (cuBLASLt with its
heuristic's first algorithm per shape) or ``lt-tune`` (cuBLASLt, the fastest of up to 16
candidates timed on each shape's first eager call); the maths (float32 accumulation, no TF32)
is the same. ``samba_ext._cuda.gemm_mode()`` reports it (0, 1, 2) and ``gemm_mode(m)`` sets it.

These are not kernel ops of samba_ext.kernels (no contract there): the checks here are the
whole argument check.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .call import Call
from .interop import ArrayView
from .layout import DTYPES, check_dtype
from .runtime import keeps_device, launch

__all__ = ["linear", "matmul", "rms_norm_linear", "swiglu_linear"]


def product_dtype(out_dtype: Optional[str], dtype: str, name: str = "out_dtype") -> str:
    """The output dtype of a product whose inputs are ``dtype``: ``out_dtype`` when it is
    float32 or ``dtype``, ``dtype`` when None; TypeError naming ``name`` otherwise."""
    try:
        od = check_dtype(out_dtype) if out_dtype else dtype
    except (TypeError, ValueError):
        od = repr(out_dtype)
    if od not in ("float32", dtype):
        raise TypeError(f"{name}: expected float32 or {dtype}, got {od}")
    return od


@keeps_device
def linear(x: Any, weight: Any, *, out: Any = None, out_dtype: Optional[str] = None,
           stream: Any = None) -> Any:
    """y (..., N) = x (..., K) @ weight (N, K)^T through cuBLAS (cublasGemmEx,
    CUBLAS_COMPUTE_32F: float32 accumulation, no TF32). x and weight must share a dtype
    (float32, float16 or bfloat16); y is ``out_dtype`` (float32 or x's dtype, default x's)."""
    c = Call("linear", dict(x=x, weight=weight, out=out), stream)
    xa = c.contig(c.arr(x, "x"))
    wa = c.contig(c.arr(weight, "weight", (2,)))
    if xa.ndim < 1 or xa.shape[-1] != wa.shape[1]:
        raise ValueError(f"x: last dimension must equal weight.shape[1] ({wa.shape[1]}), got "
                         f"shape {xa.shape}")
    if xa.dtype != wa.dtype:
        raise TypeError(f"x and weight: dtypes differ ({xa.dtype} vs {wa.dtype})")
    K, N = wa.shape[1], wa.shape[0]
    M = int(np.prod(xa.shape[:-1], dtype=np.int64))
    od = product_dtype(out_dtype, xa.dtype)
    ya, yres = c.output(xa.shape[:-1] + (N,), od, out)
    launch(c.cu.gemm, M, N, K, xa.ref, K, wa.ref, K, ya.ref, N, 0.0, c.stream)
    return c.finish(yres)


@keeps_device
def rms_norm_linear(x: Any, norm_weight: Any, weight: Any, residual: Any = None, *,
                    eps: float = 1e-5, out_dtype: Optional[str] = None,
                    stream: Any = None) -> Any:
    """y (..., N) = rms_norm(x, norm_weight, eps, residual) (..., K) @ weight (N, K)^T: the
    pre-norm of a block and the product that reads it (csrc/cuda/fused_gemm.cu). The
    normalised rows are rounded to weight's dtype (float16 or bfloat16) before the product, as
    :func:`samba_ext.cuda.ops.rms_norm` into that dtype followed by :func:`linear` computes
    them, bit for bit; one row (a batch-1 decode step) runs as one kernel where the GEMV runs
    (``samba_ext._cuda.gemv_mode``). x: float32, float16 or bfloat16; residual: None or x's
    shape. Returns y, or (y, x + residual) in residual's dtype when residual is given. y is
    ``out_dtype`` (float32 or weight's dtype, default weight's)."""
    eps = float(eps)
    c = Call("rms_norm_linear", dict(x=x, norm_weight=norm_weight, residual=residual,
                                     weight=weight), stream)
    xa = c.arr(x, "x")
    wa = c.contig(c.arr(weight, "weight", (2,)))
    if xa.ndim < 1 or xa.shape[-1] != wa.shape[1]:
        raise ValueError(f"x: last dimension must equal weight.shape[1] ({wa.shape[1]}), got "
                         f"shape {xa.shape}")
    if wa.dtype not in ("float16", "bfloat16"):
        raise TypeError(f"weight: expected float16 or bfloat16, got {wa.dtype}")
    K, N = wa.shape[1], wa.shape[0]
    M = int(np.prod(xa.shape[:-1], dtype=np.int64))
    xa, ldx = c.rows(xa)
    na = c.contig(c.arr(norm_weight, "norm_weight", (1,)))
    c.fit(na, "norm_weight", K)
    ra = c.arr(residual, "residual")
    c.fit(ra, "residual", *xa.shape)
    od = product_dtype(out_dtype, wa.dtype)
    ya, yres = c.output(xa.shape[:-1] + (N,), od, None)
    xn = c.new((M, K), wa.dtype)
    c.keep.append(xn)
    if ra is not None:
        ra, ldr = c.rows(ra)
        ro = c.new(xa.shape, "float32" if c.host else ra.dtype)
        launch(c.cu.rms_norm_gemm, M, N, K, xa.ref, ldx, ra.ref, ldr,
               (ro.ptr, DTYPES[ro.dtype][0]), na.ref, eps, (xn.ptr, DTYPES[xn.dtype][0]),
               wa.ref, K, ya.ref, N, c.stream)
        return c.finish((yres, ro))
    launch(c.cu.rms_norm_gemm, M, N, K, xa.ref, ldx, None, 0, None, na.ref, eps,
           (xn.ptr, DTYPES[xn.dtype][0]), wa.ref, K, ya.ref, N, c.stream)
    return c.finish(yres)


@keeps_device
def swiglu_linear(gate: Any, up: Any, weight: Any, *, out_dtype: Optional[str] = None,
                  stream: Any = None) -> Any:
    """y (..., N) = (silu(gate) * up) (..., K) @ weight (N, K)^T: an MLP's down projection
    (csrc/cuda/fused_gemm.cu). silu(gate) * up is rounded to weight's dtype (float16 or
    bfloat16) before the product, as :func:`samba_ext.cuda.ops.swiglu` into that dtype followed
    by :func:`linear` computes it, bit for bit; one row runs as one kernel where the GEMV runs.
    y is ``out_dtype`` (float32 or weight's dtype, default weight's)."""
    c = Call("swiglu_linear", dict(gate=gate, up=up, weight=weight), stream)
    ga = c.arr(gate, "gate")
    ua = c.arr(up, "up")
    wa = c.contig(c.arr(weight, "weight", (2,)))
    if ga.ndim < 1 or ga.shape[-1] != wa.shape[1]:
        raise ValueError(f"gate: last dimension must equal weight.shape[1] ({wa.shape[1]}), "
                         f"got shape {ga.shape}")
    c.fit(ua, "up", *ga.shape)
    if wa.dtype not in ("float16", "bfloat16"):
        raise TypeError(f"weight: expected float16 or bfloat16, got {wa.dtype}")
    K, N = wa.shape[1], wa.shape[0]
    M = int(np.prod(ga.shape[:-1], dtype=np.int64))
    ga, ldg = c.rows(ga)
    ua, ldu = c.rows(ua)
    od = product_dtype(out_dtype, wa.dtype)
    ya, yres = c.output(ga.shape[:-1] + (N,), od, None)
    h = c.new((M, K), wa.dtype)
    c.keep.append(h)
    launch(c.cu.swiglu_gemm, M, N, K, ga.ref, ldg, ua.ref, ldu, (h.ptr, DTYPES[h.dtype][0]),
           wa.ref, K, ya.ref, N, c.stream)
    return c.finish(yres)


def _blas_layout(r: int, c: int, sr: int, sc: int) -> Optional[tuple[str, int]]:
    """How cuBLAS can read an (r, c) matrix with element strides (sr, sc): ("row", ld),
    ("col", ld) or None (needs a copy)."""
    if (c == 1 or sc == 1) and (r == 1 or sr >= max(c, 1)):
        return "row", (sr if r > 1 else max(c, 1))
    if (r == 1 or sr == 1) and (c == 1 or sc >= max(r, 1)):
        return "col", (sc if c > 1 else max(r, 1))
    return None


def _batch_stride(shape: tuple, strides: tuple, bshape: tuple) -> Optional[int]:
    """One stride covering the (broadcast) batch axes of an operand, or None."""
    nb = len(bshape)
    pad = nb - len(shape)
    full = [(1, 0)] * pad + list(zip(shape, strides))
    eff = [(n, st if n == bn else 0) for (n, st), bn in zip(full, bshape)]
    nz = [(bn, st) for (n, st), bn in zip(eff, bshape) if bn != 1]
    if not nz:
        return 0
    if all(st == 0 for _, st in nz):
        return 0
    st = nz[-1][1]
    for k in range(len(nz) - 2, -1, -1):
        if nz[k][1] != nz[k + 1][0] * nz[k + 1][1]:
            return None
    return st


@keeps_device
def matmul(a: Any, b: Any, trans_a: bool = False, trans_b: bool = False, *,
           out_dtype: str = "float32", out: Any = None, stream: Any = None) -> Any:
    """``op(a) @ op(b)`` over the last two axes (op = swap of the last two axes when the flag
    is set), leading axes broadcast as in ``numpy.matmul``; strided views are read in place
    where cuBLAS can (one unit stride per matrix), else copied. cuBLAS
    cublasGemmStridedBatchedEx with CUBLAS_COMPUTE_32F (float32 accumulation, no TF32).
    Operands of different dtypes run in the lower precision one (a float32 activation times a
    bfloat16 weight is rounded to bfloat16 first). Output ``out_dtype`` (float32 default)."""
    c = Call("matmul", dict(a=a, b=b, out=out), stream)
    A = c.arr(a, "a")
    B = c.arr(b, "b")
    if A.ndim < 2 or B.ndim < 2:
        raise ValueError(f"matmul: operands need >= 2 dimensions, got {A.shape} and {B.shape}")

    def op(x: ArrayView, t: bool) -> ArrayView:
        if not t:
            return x
        sh, st = list(x.shape), list(x.strides)
        sh[-1], sh[-2], st[-1], st[-2] = sh[-2], sh[-1], st[-2], st[-1]
        return ArrayView(x.ptr, tuple(sh), tuple(st), x.dtype, x.device, x.keep, x.readonly)

    if A.dtype != B.dtype:
        low = "bfloat16" if "bfloat16" in (A.dtype, B.dtype) else "float16"
        A = A if A.dtype == low else c.convert(A, low)
        B = B if B.dtype == low else c.convert(B, low)
    A, B = op(A, trans_a), op(B, trans_b)
    M, K = A.shape[-2:]
    K2, N = B.shape[-2:]
    if K != K2:
        raise ValueError(f"matmul: inner dimensions differ: op(a) {A.shape} @ op(b) {B.shape}")
    try:
        bshape = tuple(np.broadcast_shapes(A.shape[:-2], B.shape[:-2]))
    except ValueError:
        raise ValueError(f"matmul: batch dimensions {A.shape[:-2]} and {B.shape[:-2]} do not "
                         f"broadcast") from None
    od = check_dtype(out_dtype)
    ya, yres = c.output(bshape + (M, N), od, out)
    nb = int(np.prod(bshape, dtype=np.int64))
    if M * N * nb == 0:
        return c.finish(yres)
    if K == 0:
        launch(c.cu.memset, ya.ptr, 0, M * N * nb * DTYPES[ya.dtype][1], c.stream)
        return c.finish(yres)

    def prep(x: ArrayView) -> tuple[ArrayView, tuple, int]:
        for attempt in (0, 1):
            lay = _blas_layout(x.shape[-2], x.shape[-1], x.strides[-2], x.strides[-1])
            sb = _batch_stride(x.shape[:-2], x.strides[:-2], bshape)
            if lay is not None and sb is not None:
                return x, lay, sb
            x = c.convert(x)
        raise AssertionError("unreachable")  # a C-contiguous copy always qualifies

    A, la, sa = prep(A)
    B, lb, sbt = prep(B)
    # Column-major: C^T (N x M) = op(X) op(Y) with X from B, Y from A.
    tx, ldx = (0, lb[1]) if lb[0] == "row" else (1, lb[1])
    ty, ldy = (0, la[1]) if la[0] == "row" else (1, la[1])
    launch(c.cu.gemm_batched, tx, ty, N, M, K, B.ref, ldx, sbt if nb > 1 else 0, A.ref, ldy,
            sa if nb > 1 else 0, ya.ref, N, M * N, nb, 0.0, c.stream)
    return c.finish(yres)

