"""The MLP padding of a device backend (Backend.mlp_width, samba_ext/model.py): the SwiGLU
hidden width laid out as a multiple of the backend's padding with zero gate/up rows and zero
down columns. The padded hidden units are silu(0) * 0 = 0 and add exact zeros to the down
projection, so a padded model computes the same logits; the config and the weights read back
keep the checkpoint's intermediate size.

CPU tests run the model's padding path on a CPU backend that pads (NumPy float32 GEMMs): the
only difference from the unpadded model is the BLAS blocking over a longer K with zero terms,
which may reorder float32 sums: relative logit error ~1e-7; 1e-5 bounds it. GPU tests compare
a padded CUDA model with the CPU model at the tolerances of tests/test_model_cuda.py (float32
weights and activations: 1e-4, see that module) and with an unpadded CUDA model.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import CUDA_SKIP, assert_close

from samba_ext.backend import CPUBackend
from samba_ext.config import SambaConfig
from samba_ext.model import Samba
from samba_ext.weights import pad_rows


class _PaddingCPU(CPUBackend):
    """A CPU backend that pads the MLP width to a multiple of `pad` (as CUDABackend does)."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def mlp_width(self, intermediate_size: int) -> int:
        return -(-intermediate_size // self.pad) * self.pad


def _cfg(F: int = 100, types=("mamba", "swa", "attn", "mamba")) -> SambaConfig:
    return dataclasses.replace(SambaConfig.preset("samba-test"), intermediate_size=F,
                               n_layer=len(types), layer_types=types)


def test_pad_rows():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert pad_rows(a, 2) is a
    p = pad_rows(a, 5)
    assert p.shape == (5, 3) and p.dtype == a.dtype
    np.testing.assert_array_equal(p[:2], a)
    np.testing.assert_array_equal(p[2:], 0)
    with pytest.raises(ValueError, match="rows"):
        pad_rows(a, 1)


def test_cpu_backend_does_not_pad():
    assert CPUBackend().mlp_width(8196) == 8196


@pytest.mark.parametrize("pad", [64, 7, 1])
def test_padded_model_matches_unpadded_on_cpu(rng, pad):
    cfg = _cfg()
    ref = Samba(cfg, seed=3)
    m = Samba(cfg, seed=3, device=_PaddingCPU(pad))
    Fp = -(-100 // pad) * pad
    b = m._blocks[0]
    assert b.w12.shape == (2 * Fp, cfg.d_model) and b.w3.shape == (cfg.d_model, Fp)
    assert m.config.intermediate_size == 100
    toks = rng.integers(0, cfg.vocab_size, (2, 30))
    assert_close(m.forward(toks), ref.forward(toks), 1e-5, "forward")
    s1, s2 = m.new_state(2), ref.new_state(2)
    assert_close(m.prefill(toks[:, :20], s1), ref.prefill(toks[:, :20], s2), 1e-5, "prefill")
    for t in range(20, 30):
        assert_close(m.step(toks[:, t], s1), ref.step(toks[:, t], s2), 1e-5, f"step {t}")
    # the weights read back are the checkpoint's, without the padding
    sd, sr = m.state_dict(), ref.state_dict()
    assert sd.keys() == sr.keys()
    for k in sr:
        assert sd[k].shape == sr[k].shape, k
        np.testing.assert_array_equal(sd[k], sr[k], err_msg=k)


def test_padded_model_saves_unpadded(tmp_path, rng):
    cfg = _cfg()
    m = Samba(cfg, seed=4, device=_PaddingCPU(64))
    path = str(tmp_path / "m.safetensors")
    m.save(path)
    back = Samba.load(path)
    toks = rng.integers(0, cfg.vocab_size, (1, 12))
    assert_close(back.forward(toks), Samba(cfg, seed=4).forward(toks), 1e-6, "reloaded")


def test_mlp_pad_argument_and_environment(monkeypatch):
    from samba_ext.backend_cuda import _mlp_pad

    monkeypatch.delenv("SAMBA_EXT_CUDA_MLP_PAD", raising=False)
    assert _mlp_pad(None) == 64
    assert _mlp_pad(128) == 128
    monkeypatch.setenv("SAMBA_EXT_CUDA_MLP_PAD", "1")
    assert _mlp_pad(None) == 1
    assert _mlp_pad(32) == 32  # the argument wins
    monkeypatch.setenv("SAMBA_EXT_CUDA_MLP_PAD", "x")
    with pytest.raises(ValueError, match="SAMBA_EXT_CUDA_MLP_PAD"):
        _mlp_pad(None)
    for bad in (0, -64, 2.5, True):
        with pytest.raises(ValueError, match="mlp_pad"):
            _mlp_pad(bad)


# ---------------------------------------------------------------------------- GPU ----------
def _cuda(**kw):
    from samba_ext.backend_cuda import CUDABackend

    return CUDABackend(**kw)


@pytest.mark.cuda
@pytest.mark.skipif(CUDA_SKIP is not None, reason=str(CUDA_SKIP))
@pytest.mark.parametrize("F", [100, 8196 // 32])   # 100 -> 128; 256 stays (a multiple of 64)
@pytest.mark.parametrize("types", [("mamba", "swa", "attn", "mamba"), ("attn", "attn")])
def test_padded_cuda_model_matches_cpu(rng, F, types):
    cfg = _cfg(F, types)
    cpu = Samba(cfg, seed=3)
    be = _cuda(weight_dtype="float32", act_dtype="float32", mlp_pad=64)
    gpu = Samba(cfg, seed=3, device=be)
    Fp = be.mlp_width(F)
    assert Fp % 64 == 0 and Fp - 64 < F <= Fp
    assert gpu._blocks[0].w12.shape == (2 * Fp, cfg.d_model)
    toks = rng.integers(0, cfg.vocab_size, (2, 40))
    # float32 weights and activations on the GPU against the CPU: 1e-4 (test_model_cuda.py)
    assert_close(gpu.forward(toks), cpu.forward(toks), 1e-4, "forward")
    s1, s2 = gpu.new_state(2), cpu.new_state(2)
    assert_close(gpu.prefill(toks[:, :25], s1), cpu.prefill(toks[:, :25], s2), 1e-4, "prefill")
    for t in range(25, 40):   # recorded and replayed steps (CUDA graphs) included
        assert_close(gpu.step(toks[:, t], s1), cpu.step(toks[:, t], s2), 1e-4, f"step {t}")
    sd, sr = gpu.state_dict(), cpu.state_dict()
    for k in sr:
        assert sd[k].shape == sr[k].shape, k
        np.testing.assert_array_equal(sd[k], sr[k], err_msg=k)   # float32 weights: exact


@pytest.mark.cuda
@pytest.mark.skipif(CUDA_SKIP is not None, reason=str(CUDA_SKIP))
def test_padded_cuda_model_matches_unpadded_in_bf16(rng):
    """Default dtypes (bf16 weights and activations): padded and unpadded CUDA models run the
    same roundings on the same values (the zero units add exact zeros), but other GEMM
    algorithms may sum in another order: bf16-level agreement, 2e-2 (test_model_cuda.py's
    tolerance between two GPU paths with bf16 activations)."""
    cfg = _cfg(100)
    toks = rng.integers(0, cfg.vocab_size, (1, 30))
    a = Samba(cfg, seed=6, device=_cuda(mlp_pad=64))
    b = Samba(cfg, seed=6, device=_cuda(mlp_pad=1))
    assert a._blocks[0].w3.shape[1] == 128 and b._blocks[0].w3.shape[1] == 100
    assert_close(a.forward(toks), b.forward(toks), 2e-2, "forward")
    sa, sb = a.new_state(1), b.new_state(1)
    a.prefill(toks[:, :20], sa)
    b.prefill(toks[:, :20], sb)
    for t in range(20, 30):
        assert_close(a.step(toks[:, t], sa), b.step(toks[:, t], sb), 2e-2, f"step {t}")
