"""The decode step's rotary with its K/V cache write in one kernel (csrc/cuda/rotary.cu,
``rotary_kv_kernel``): what ``apply_rotary`` on the q and k heads followed by two row writes into
the caches computes, bit for bit (the CUDA rotary kernels share their arithmetic,
csrc/cuda/rotary_math.cuh), in one launch instead of three.

Not a kernel op of samba_ext.kernels (no contract there): the checks here are the whole
argument check.
"""
from __future__ import annotations

from typing import Any

from .call import Call
from .interop import is_cuda_array
from .layout import DTYPES
from .ops import _int_vector
from .runtime import keeps_device, launch

__all__ = ["rotary_write_kv"]


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
