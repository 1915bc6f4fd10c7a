"""Two compositions of a decode step in fewer launches, with the composition's bits:
``rotary_write_kv``, the rotary with its K/V cache write in one kernel (csrc/cuda/rotary.cu,
``rotary_kv_kernel``): what ``apply_rotary`` on the q and k heads followed by two row writes into
the caches computes (the CUDA rotary kernels share their arithmetic, csrc/cuda/rotary_math.cuh),
in one launch instead of three; and ``dt_state_update``, Mamba's dt projection with the state
update (csrc/cuda/fused_gemm.cu), one launch instead of two at batch 1.

Not a kernel op of samba_ext.kernels (no contract there): the checks here are the whole
argument check.
"""
from __future__ import annotations

from typing import Any, Optional

from .call import Call
from .interop import is_cuda_array
from .blas import product_dtype
from .layout import DTYPES
from .ops import StepArgs, _int_vector
from .runtime import keeps_device, launch

__all__ = ["dt_state_update", "rotary_write_kv"]


@keeps_device
def rotary_write_kv(qkv: Any, n_head: int, n_kv_head: int, pos: Any, k_cache: Any,
                    v_cache: Any, slots: Any, *, base: float = 10000.0,
                    stream: Any = None) -> Any:
    """q (B, H, hd) from qkv (B, (H + 2G) hd) = [q | k | v] heads of width hd: q and k rotated
    at positions ``pos`` (B,) (NeoX half split, angles in float64), k written into
    ``k_cache[b, slots[b]]`` and v (unrotated) into ``v_cache[b, slots[b]]``. The caches
    (B, C, G, hd) are CUDA arrays updated in place (their last axis contiguous); pos and slots are
    int32 / int64 (host values are checked; device values are the caller's). q has qkv's
    dtype."""
    c = Call("rotary_write_kv", dict(qkv=qkv, pos=pos, k_cache=k_cache, v_cache=v_cache,
                                     slots=slots), stream)
    H, G = int(n_head), int(n_kv_head)
    qa = c.arr(qkv, "qkv", (2,))
    B, width = qa.shape
    c.need(H >= 1 and G >= 1 and width % (H + 2 * G) == 0, "qkv",
           f"width {width} is not (n_head + 2 n_kv_head) = {H + 2 * G} heads")
    hd = width // (H + 2 * G)
    c.need(hd % 2 == 0, "qkv", f"head width {hd} must be even")
    qa, ld = c.rows(qa)
    caches = []
    for name, x in (("k_cache", k_cache), ("v_cache", v_cache)):
        if not is_cuda_array(x):
            raise TypeError(f"{name}: is updated in place and must be a CUDA array")
        a = c.arr(x, name, (4,))
        c.fit(a, name, B, None, G, hd)
        c.need(a.strides[3] == 1 or hd == 1, name, "its last axis must be contiguous")
        c.need(not a.readonly, name, "is updated in place but was exported read-only")
        caches.append(a)
    ka, va = caches
    c.fit(va, "v_cache", *ka.shape)
    cap = ka.shape[1]
    c.need(cap >= 1, "k_cache", "capacity must be >= 1")
    pa = _int_vector(c, pos, "pos", B, 0, 2**63 - 1)
    sa = _int_vector(c, slots, "slots", B, 0, cap - 1)
    q = c.new((B, H, hd), qa.dtype)
    launch(c.cu.rotary_kv, B, H, G, hd, qa.ref, ld, pa.ref, float(base),
           (q.ptr, DTYPES[q.dtype][0]), ka.ref, ka.strides[:3], va.ref, va.strides[:3], sa.ref,
           c.stream)
    return c.finish(q)


@keeps_device
def dt_state_update(state: Any, x: Any, dt_in: Any, dt_proj: Any, A: Any, B: Any, C: Any,
                    D: Any = None, z: Any = None, dt_bias: Any = None,
                    dt_softplus: bool = False, *, dt_dtype: Optional[str] = None,
                    stream: Any = None) -> Any:
    """Mamba's decode step from its low-rank dt: ``selective_state_update(state, x, dt, A, B,
    C, D, z, dt_bias, dt_softplus)`` with dt (batch, dim) = dt_in (batch, R) @ dt_proj (dim,
    R)^T rounded to ``dt_dtype`` (default dt_in's), as :func:`samba_ext.cuda.blas.matmul`
    followed by :func:`samba_ext.cuda.ops.selective_state_update` computes it, bit for bit. At
    batch 1, where the product would run on the GEMV's one-row kernel at one warp per row (R a
    multiple of 8, at most 8 x the step's lanes per channel), the state update computes dt
    itself: one launch instead of two (csrc/cuda/fused_gemm.cu). dt_in and dt_proj: one dtype;
    state float32 (batch, dim, N) updated in place; returns y (batch, dim) in x's dtype."""
    c = Call("dt_state_update", dict(state=state, x=x, dt_in=dt_in, dt_proj=dt_proj, A=A, B=B,
                                     C=C, D=D, z=z, dt_bias=dt_bias), stream)
    a = StepArgs(c, state, x, A, B, C, D, z, dt_bias)
    da = c.arr(dt_in, "dt_in", (2,))
    wa = c.contig(c.arr(dt_proj, "dt_proj", (2,)))
    R = wa.shape[1]
    c.fit(da, "dt_in", a.batch, R)
    c.fit(wa, "dt_proj", a.dim, R)
    c.need(R >= 1, "dt_proj", "its rank (second dimension) must be >= 1")
    if da.dtype != wa.dtype:
        raise TypeError(f"dt_in: expected dt_proj's dtype ({wa.dtype}), got {da.dtype}")
    od = product_dtype(dt_dtype, wa.dtype, "dt_dtype")
    da, ld = c.rows(da)
    dt_buf = c.new((a.batch, a.dim), od)
    c.keep.append(dt_buf)
    ya, yres = c.output((a.batch, a.dim), a.x.dtype, None)
    launch(c.cu.dt_state_update, a.batch, a.dim, a.N, a.G, R, a.state.ptr, a.x.ref, da.ref, ld,
           wa.ref, (dt_buf.ptr, DTYPES[od][0]), a.A.ref, a.B.ref, a.C.ref, a.opt("D"),
           a.opt("z"), a.opt("dt_bias"), ya.ref, a.x.strides, a.z.strides if a.z else (0, 0),
           ya.strides, a.s3(a.B), a.s3(a.C), int(bool(dt_softplus)), c.stream)
    return c.finish(yres)
