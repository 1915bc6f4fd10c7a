"""Argument checking of samba_ext.grad and of the backward glue: bad input raises an
exception naming the argument, never crashes; the contract runs before the backend is
chosen, and a CUDA array without a usable GPU raises CudaUnavailableError."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import CUDA_SKIP
from samba_ext import _core, grad
from samba_ext.errors import CudaUnavailableError


class FakeCudaArray:
    """Looks like a CUDA array to the dispatch (no GPU needed)."""

    def __init__(self, shape: tuple = (1,)) -> None:
        self.__cuda_array_interface__ = {"shape": shape, "typestr": "<f4",
                                         "data": (0, False), "version": 3}


def scan_args(batch=2, dim=4, L=5, N=3):
    r = np.random.default_rng(0)
    return dict(u=r.standard_normal((batch, dim, L)), delta=r.standard_normal((batch, dim, L)),
                A=-np.ones((dim, N)), B=r.standard_normal((batch, N, L)),
                C=r.standard_normal((batch, N, L)))


@pytest.mark.parametrize("change,exc,word", [
    (dict(delta=np.zeros((2, 4, 6))), ValueError, "delta"),
    (dict(A=np.zeros((3, 3))), ValueError, "A"),
    (dict(B=np.zeros((2, 3, 5), dtype=np.int32)), TypeError, "B"),
    (dict(C=np.zeros((2, 3, 4))), ValueError, "C"),
    (dict(B=np.zeros((2, 3, 3, 5)), C=np.zeros((2, 3, 3, 5))), ValueError, "ngroups"),
    (dict(D=np.zeros(5)), ValueError, "D"),
    (dict(z=np.zeros((2, 4))), ValueError, "z"),
    (dict(initial_state=np.zeros((2, 4, 2))), ValueError, "initial_state"),
    (dict(dout=np.zeros((2, 4, 4))), ValueError, "dout"),
    (dict(dlast_state=np.zeros((1, 4, 3))), ValueError, "dlast_state"),
    (dict(u=FakeCudaArray()), ValueError, "u"),  # the contract, before the backend
    (dict(u="abc"), TypeError, "u"),
])
def test_scan_bad_args(change, exc, word):
    kw = dict(scan_args(), dout=np.zeros((2, 4, 5)))
    kw.update(change)
    with pytest.raises(exc, match=word):
        grad.selective_scan_bwd(**kw)


@pytest.mark.skipif(CUDA_SKIP is None, reason="a CUDA device is present")
def test_cuda_inputs_without_device():
    """Valid shapes with a CUDA array pass the contract and reach the CUDA backend, which
    says why it cannot run here."""
    kw = dict(scan_args(), dout=np.zeros((2, 4, 5)))
    kw["u"] = FakeCudaArray((2, 4, 5))
    with pytest.raises(CudaUnavailableError):
        grad.selective_scan_bwd(**kw)
    x = np.zeros((2, 3, 5))
    with pytest.raises(CudaUnavailableError):
        grad.causal_conv1d_bwd(x, np.zeros((3, 4)), dy=FakeCudaArray((2, 3, 5)))


def test_conv_bad_args():
    x = np.zeros((2, 3, 5))
    with pytest.raises(ValueError, match="width"):
        grad.causal_conv1d_bwd(x, np.zeros((3, 5)), dy=x)
    with pytest.raises(ValueError, match="activation"):
        grad.causal_conv1d_bwd(x, np.zeros((3, 4)), activation="relu", dy=x)
    with pytest.raises(ValueError, match="initial_states"):
        grad.causal_conv1d_bwd(x, np.zeros((3, 4)), initial_states=np.zeros((2, 3, 2)), dy=x)
    with pytest.raises(ValueError, match="dy"):
        grad.causal_conv1d_bwd(x, np.zeros((3, 4)), dy=x[:, :, :4])


def test_small_ops_bad_args():
    x = np.zeros((3, 4))
    with pytest.raises(ValueError, match="weight"):
        grad.rms_norm_bwd(x, np.ones(5), dy=x)
    with pytest.raises(ValueError, match="eps"):
        grad.rms_norm_bwd(x, np.ones(4), eps=-1.0, dy=x)
    with pytest.raises(ValueError, match="residual"):
        grad.rms_norm_bwd(x, np.ones(4), residual=np.zeros((3, 5)), dy=x)
    with pytest.raises(ValueError, match="up"):
        grad.swiglu_bwd(x, np.zeros((4, 3)), dy=x)
    dy = np.zeros((1, 2, 1, 3))
    with pytest.raises(ValueError, match="headdim"):
        grad.apply_rotary_bwd(None, 0, dy=dy)
    with pytest.raises(ValueError, match="positions"):
        grad.apply_rotary_bwd(None, np.zeros((3,), dtype=np.int64), dy=np.zeros((1, 2, 1, 4)))
    with pytest.raises(TypeError, match="positions"):
        grad.apply_rotary_bwd(None, np.zeros(2), dy=np.zeros((1, 2, 1, 4)))
    with pytest.raises(ValueError, match="base"):
        grad.apply_rotary_bwd(None, 0, base=0.0, dy=np.zeros((1, 2, 1, 4)))


def test_attention_bad_args():
    q = np.zeros((1, 3, 4, 8))
    k = np.zeros((1, 3, 3, 8))
    with pytest.raises(ValueError, match="nheads_kv"):
        grad.attention_bwd(q, k, k, dout=q)
    k = np.zeros((1, 3, 2, 8))
    with pytest.raises(ValueError, match="window_size"):
        grad.attention_bwd(q, k, k, window_size=(-2, 0), dout=q)
    with pytest.raises(TypeError, match="window_size"):
        grad.attention_bwd(q, k, k, window_size=3, dout=q)
    with pytest.raises(ValueError, match="softcap"):
        grad.attention_bwd(q, k, k, softcap=-1.0, dout=q)
    with pytest.raises(ValueError, match="lse"):
        grad.attention_bwd(q, k, k, dout=q, out=q, lse=np.zeros((1, 3, 4)))
    with pytest.raises(ValueError, match="window"):
        grad.swa_attention_bwd(q, k, k, 0, dout=q)
    with pytest.raises(ValueError, match="seqlen_k"):
        grad.swa_attention_bwd(q, k[:, :2], k[:, :2], dout=q)


def test_glue_checks_shapes_itself():
    """Direct calls of the C glue with inconsistent shapes raise, they do not crash."""
    a = scan_args()
    with pytest.raises(ValueError, match="dout"):
        _core.selective_scan_bwd(a["u"], a["delta"], a["A"], a["B"], a["C"], None, None, None,
                                 False, None, np.zeros((2, 4, 4)), None)
    with pytest.raises(ValueError, match="C"):
        _core.selective_scan_bwd(a["u"], a["delta"], a["A"], a["B"], a["C"][:, :, :3], None,
                                 None, None, False, None, np.zeros((2, 4, 5)), None)
    with pytest.raises(ValueError, match="dy"):
        _core.causal_conv1d_bwd(np.zeros((1, 2, 5)), np.zeros((2, 3)), None, False, None,
                                np.zeros((1, 2, 4)), None)
    with pytest.raises(ValueError, match="lse"):
        q = np.zeros((1, 3, 2, 4))
        _core.attention_bwd(q, q, q, q, np.zeros((1, 3, 2)), q, 1.0, -1, 0, 0.0)
    with pytest.raises(ValueError, match="positions"):
        _core.apply_rotary_bwd(np.zeros((1, 2, 1, 4)), np.zeros((1, 3), dtype=np.int64), 1e4)
    with pytest.raises(ValueError, match="dy"):
        _core.rms_norm_bwd(np.zeros((2, 3)), np.ones(3), 1e-5, None, np.zeros((2, 4)), None)


def test_dtypes_and_empty():
    a = scan_args()
    g16 = grad.selective_scan_bwd(**{k: v.astype(np.float16) for k, v in a.items()},
                                  dout=np.ones((2, 4, 5), dtype=np.float16))
    g32 = grad.selective_scan_bwd(**{k: v.astype(np.float16).astype(np.float32)
                                     for k, v in a.items()}, dout=np.ones((2, 4, 5)))
    for x, y in zip(g16[:5], g32[:5]):
        assert x.dtype == np.float32
        np.testing.assert_array_equal(x, y)
    dq, dk, _ = grad.attention_bwd(np.zeros((0, 3, 2, 4)), np.zeros((0, 3, 2, 4)),
                                    np.zeros((0, 3, 2, 4)), dout=np.zeros((0, 3, 2, 4)))
    assert dq.shape == (0, 3, 2, 4) and dk.shape == (0, 3, 2, 4)
    dx, dw, _ = grad.rms_norm_bwd(np.zeros((0, 4)), np.ones(4), dy=np.zeros((0, 4)))
    assert dx.shape == (0, 4) and not dw.any()


@pytest.mark.parametrize("name,nparams", [
    ("selective_scan_bwd", 12), ("causal_conv1d_bwd", 8), ("rms_norm_bwd", 6),
    ("swiglu_bwd", 3), ("apply_rotary_bwd", 3), ("attention_fwd", 8), ("attention_bwd", 11)])
def test_glue_text_signatures(name, nparams):
    import inspect
    assert len(inspect.signature(getattr(_core, name)).parameters) == nparams


def test_backward_contracts_return_sizes():
    from samba_ext.ops import contracts

    kw = scan_args()
    assert contracts.selective_scan_bwd(**kw, dout=np.zeros((2, 4, 5))) == (2, 4, 5, 3)
    x = np.zeros((2, 3, 5))
    assert contracts.causal_conv1d_bwd(x, np.zeros((3, 4)), dy=x) == (2, 3, 5, 4)
    with pytest.raises(TypeError, match="dy"):
        contracts.causal_conv1d_bwd(x, np.zeros((3, 4)))
