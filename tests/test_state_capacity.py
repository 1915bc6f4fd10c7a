"""Samba.new_state(batch, capacity): full-attention caches preallocated, nothing else changes."""
from __future__ import annotations

import numpy as np
import pytest

from samba_ext import Samba, SambaConfig


def _llama_cfg() -> SambaConfig:
    return SambaConfig.preset("samba-test", layer_types=("attn", "mamba", "attn", "swa"))


def test_capacity_shapes(backend):
    m = Samba(_llama_cfg(), seed=0, device=backend)
    c = m.config
    st = m.new_state(3, capacity=40)
    shp = st.shapes()
    assert shp[0]["k"] == shp[0]["v"] == (3, 40, c.n_kv_head, c.head_dim)
    assert shp[2]["k"] == (3, 40, c.n_kv_head, c.head_dim)
    assert shp[1] == m.new_state(3).shapes()[1]                      # Mamba: unchanged
    assert shp[3]["k"] == (3, c.window, c.n_kv_head, c.head_dim)      # SWA ring: window
    assert m.new_state(3).shapes()[0]["k"] == (3, 0, c.n_kv_head, c.head_dim)


def test_capacity_same_logits_and_no_regrowth(backend, rng):
    m = Samba(_llama_cfg(), seed=1, device=backend)
    toks = rng.integers(0, m.config.vocab_size, (2, 30))
    steps = rng.integers(0, m.config.vocab_size, (4, 2))
    a, b = m.new_state(2), m.new_state(2, capacity=34)
    la, lb = m.prefill(toks, a, chunk_size=8), m.prefill(toks, b, chunk_size=8)
    kept = [d.get("k") for d in b.layers]
    outs_a = [la] + [m.step(s, a) for s in steps]
    outs_b = [lb] + [m.step(s, b) for s in steps]
    # The same keys in the same order: only the unused tail of the caches differs, which
    # neither attention reads. Tolerance: float32 rounding of the device kernels, whose
    # reductions may split differently with another cache stride (exact on the CPU).
    tol = 0 if backend == "cpu" else 1e-5
    for x, y in zip(outs_a, outs_b):
        np.testing.assert_allclose(y, x, rtol=tol, atol=tol)
    assert all(d.get("k") is k for d, k in zip(b.layers, kept)), "a cache was reallocated"
    assert b.pos.tolist() == [34, 34]


@pytest.mark.parametrize("bad", [-1, 2.5, True, "8", None])
def test_capacity_bad_values(bad):
    m = Samba(_llama_cfg(), seed=0)
    with pytest.raises(ValueError, match="capacity"):
        m.new_state(1, capacity=bad)
