"""samba_ext.cuda.decode.rotary_write_kv (csrc/cuda/rotary.cu, rotary_kv_kernel): a decode step's
rotary on the q and k heads of qkv with k and v written into the caches, in one kernel.

Against the composition it replaces (Backend.rotary_write_kv on the CUDA backend: apply_rotary,
then two row writes) it must agree bit for bit: the CUDA rotary kernels share their arithmetic
(csrc/cuda/rotary_math.cuh: angles in float64, each product rounded on its own). Against a
float64 NumPy rotation: the float32 rotation of float32 inputs errs by a few float32 ulps of the
row (3e-6 of max |x|, a 10x margin over 2 roundings and the float32 angle), 16-bit outputs by
one rounding (2^-8 relative for bfloat16, used as 1e-2 of max |x|).
"""
from __future__ import annotations

import numpy as np
import pytest
from cuda_util import host, needs_cuda, round_to

pytestmark = needs_cuda


def _rope64(x: np.ndarray, p: np.ndarray, base: float) -> np.ndarray:
    """x (B, n, hd) rotated at positions p (B,), NeoX half split, float64."""
    hd = x.shape[-1]
    half = hd // 2
    inv = base ** (-(2.0 * np.arange(half)) / hd)
    a = p[:, None, None].astype(np.float64) * inv[None, None, :]
    c, s = np.cos(a), np.sin(a)
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * c - x2 * s, x1 * s + x2 * c], axis=-1)


def _backend():
    from samba_ext.backend_cuda import CUDABackend

    return CUDABackend(graphs=False)


@pytest.mark.parametrize("dt", ["bfloat16", "float32"])
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("H,G", [(4, 1), (6, 2), (8, 8)])
@pytest.mark.parametrize("hd", [64, 96, 128, 256])
def test_rotary_write_kv_matches_the_composition(rng, dt, B, H, G, hd):
    from samba_ext.backend_api import Backend
    from samba_ext.cuda import to_device

    be = _backend()
    C, base = 37, 10000.0
    qkv = round_to(rng.standard_normal((B, (H + 2 * G) * hd)), dt)
    pos = rng.integers(0, 1 << 20, B).astype(np.int64)
    slots = rng.choice(C, B, replace=False).astype(np.int64)
    kc0 = round_to(rng.standard_normal((B, C, G, hd)), dt)
    vc0 = round_to(rng.standard_normal((B, C, G, hd)), dt)
    out = []
    for fused in (True, False):
        q_d = to_device(qkv.astype(np.float32), dt, stream=be.stream)
        kc = to_device(kc0.astype(np.float32), dt, stream=be.stream)
        vc = to_device(vc0.astype(np.float32), dt, stream=be.stream)
        pd, sd = be._ints(pos), be._ints(slots)
        if fused:
            q = be.rotary_write_kv(q_d, H, G, pd, base, kc, vc, sd)
        else:
            q = Backend.rotary_write_kv(be, q_d, H, G, pd, base, kc, vc, sd)
        out.append((host(q), host(kc), host(vc)))
    for a, b_, what in zip(out[0], out[1], ("q", "k_cache", "v_cache")):
        assert np.isfinite(a).all(), what
        np.testing.assert_array_equal(a, b_, err_msg=f"{what} {(dt, B, H, G, hd)}")
    q, kc, vc = out[0]
    x = qkv.reshape(B, H + 2 * G, hd)
    ref = _rope64(x[:, :H + G], pos, base)
    tol = (1e-2 if dt == "bfloat16" else 3e-6) * np.abs(x).max()
    np.testing.assert_allclose(q, ref[:, :H], rtol=0, atol=tol)
    bi = np.arange(B)
    np.testing.assert_allclose(kc[bi, slots], ref[:, H:], rtol=0, atol=tol)
    np.testing.assert_array_equal(vc[bi, slots], x[:, H + G:])
    other = np.ones((B, C), bool)
    other[bi, slots] = False
    np.testing.assert_array_equal(kc[other], kc0[other])   # other slots untouched
    np.testing.assert_array_equal(vc[other], vc0[other])


@pytest.mark.parametrize("bad,match", [("width", "qkv: width"), ("slot", "slots: values"),
                                       ("cache", "v_cache has shape"),
                                       ("host_cache", "k_cache: is updated in place")])
def test_rotary_write_kv_rejects_bad_arguments(bad, match):
    from samba_ext.cuda import to_device
    from samba_ext.cuda.decode import rotary_write_kv

    B, H, G, hd, C = 2, 4, 2, 8, 5
    qkv = to_device(np.zeros((B, (H + 2 * G) * hd + (1 if bad == "width" else 0)), np.float32))
    kc = np.zeros((B, C, G, hd), np.float32) if bad == "host_cache" else \
        to_device(np.zeros((B, C, G, hd), np.float32))
    vc = to_device(np.zeros((B, C + (1 if bad == "cache" else 0), G, hd), np.float32))
    slots = np.array([0, C if bad == "slot" else 1])
    with pytest.raises((ValueError, TypeError), match=match):
        rotary_write_kv(qkv, H, G, np.array([3, 4]), kc, vc, slots)


@pytest.mark.parametrize("B", [1, 2])
def test_model_decode_fused_equals_the_composition(rng, monkeypatch, B):
    """A tiny bf16 CUDA model decoding with graphs (an SWA ring cache of 16 and a full-attention
    layer): the fused kernel against the composition, the same logits bit for bit."""
    import dataclasses

    from samba_ext.backend_api import Backend
    from samba_ext.backend_cuda import CUDABackend
    from samba_ext.config import SambaConfig
    from samba_ext.model import Samba

    cfg = dataclasses.replace(SambaConfig.preset("samba-test"), window=16,
                              layer_types=("mamba", "swa", "attn", "mamba"))
    toks = rng.integers(0, cfg.vocab_size, (B, 40))   # the SWA ring wraps twice
    outs = []
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(CUDABackend, "rotary_write_kv", Backend.rotary_write_kv)
        m = Samba(cfg, seed=6, device=CUDABackend(act_dtype="bfloat16",
                                                  weight_dtype="bfloat16", graphs=True))
        st = m.new_state(B)
        m.prefill(toks[:, :4], st)
        outs.append(np.stack([np.asarray(m.step(toks[:, t], st)) for t in range(4, 40)]))
        assert m.backend.stats["replays"] > 0
    assert np.isfinite(outs[0]).all()
    np.testing.assert_array_equal(outs[0], outs[1])
