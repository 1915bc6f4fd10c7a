"""causal_conv1d over packed sequences (seq_idx) on CUDA: samba_ext.causal_conv1d and
samba_ext.grad.causal_conv1d_bwd with device inputs (csrc/cuda/conv.cu, conv_bwd_kernels.cuh,
their SEQ instantiations) against the float64 loop reference of tests/test_conv_seq_idx.py
(conv_seq_ref, imported) on the same rounded inputs.

The gradients' float64 reference is built from conv_seq_ref itself (conv_seq_bwd_ref): the
conv is linear in x and in the weight, so dweight[:, k] sums gp times conv_seq_ref with the
one-hot weight of tap k, and dx, the transpose, is conv_seq_ref run backwards in time
(reversing gp and the ids turns the anti-causal sum dx[s] = sum_k w[k] gp[s + W-1 - k] into
the causal one, with the same weight order and the same id test). It is checked against
central differences and the C backward first (test_reference_backward, no GPU needed).

Cases: float32 / float16 / bfloat16, widths 2, 3, 4, SiLU and bias on and off, batch > 1, odd
lengths (19: the scalar kernels and a partial last group of 8 in the backward; 64: the 16-byte
vector kernels), the id patterns of test_conv_seq_idx.SEQS (sorted, repeating after other ids,
unsorted, one token per sequence, padding ids -1 whose outputs are 0), int32 and int64 ids on the device, host ids with device
inputs (uploaded as int64), stride-0 and token-major views, the model's size once (dim 4096,
seqlen 4096, width 4); a NaN in one sequence reaches no other; the calls without seq_idx equal
those with one id everywhere bit for bit (the kernels without the id check, unchanged).

Tolerances (relative Frobenius norm, conftest.assert_close; NaN never passes):
* Forward, float32: at most 4 float32 products and the bias per output, then SiLU (expf):
  a few units of 2^-24, 1e-5 as cuda_util.RTOL["float32"]. float16 / bfloat16: the same
  arithmetic on exactly representable inputs, then one rounding of y to the dtype, at most
  2^-11 / 2^-8 of each element (unit roundoff), so of the norm: UNIT[dtype] + 1e-5.
* Backward (as tests/test_cuda_grad_scan.py's CONV_RTOL): dx sums at most W products of the
  weights and gp (SiLU's derivative with the fast exp and division, a few ulp); dweight and
  dbias sum batch x seqlen products in float32: 2e-5 + 4 * 2^-24 * sqrt(batch * seqlen)
  (the rounding of a float32 sum of n terms); dx in float16 / bfloat16 adds UNIT[dtype].
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import assert_close
from cuda_util import CAIView, cuda, dev, host, round_to, transposed_view
from ref_grad import dsilu, num_grad
from test_conv_seq_idx import SEQS, conv_seq_ref

import samba_ext
from samba_ext import grad

DTYPES = ["float32", "float16", "bfloat16"]
F32 = 1e-5
UNIT = {"float32": 0.0, "float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}
CONV_RTOL = 2e-5


def grad_tol(n: int) -> float:
    """Tolerance of a float32 gradient that sums n terms (module docstring)."""
    return CONV_RTOL + 4 * 2.0 ** -24 * math.sqrt(max(n, 1))


def conv_seq_bwd_ref(x, w, b, seq, silu, dy) -> dict:
    """float64 dx, dweight, dbias of conv_seq_ref (module docstring)."""
    x, w, dy = (np.asarray(a, np.float64) for a in (x, w, dy))
    seq = np.asarray(seq)
    D, W = w.shape
    gp = dy * dsilu(conv_seq_ref(x, w, b, seq, False)) if silu else dy
    gp = np.where(seq[:, None, :] < 0, 0.0, gp)  # padding outputs are constant 0
    dx = conv_seq_ref(gp[..., ::-1], w, None, seq[:, ::-1], False)[..., ::-1]
    onehot = np.eye(W)
    dw = np.stack([(gp * conv_seq_ref(x, np.tile(onehot[k], (D, 1)), None, seq, False))
                   .sum(axis=(0, 2)) for k in range(W)], axis=1)
    return dict(dx=dx, dweight=dw, dbias=None if b is None else gp.sum(axis=(0, 2)))


def test_reference_backward(rng):
    """conv_seq_bwd_ref against central differences of conv_seq_ref and the C backward."""
    x, w, b = (rng.standard_normal(s) for s in ((2, 3, 11), (3, 4), (3,)))
    x, w, b = (a.astype(np.float32).astype(np.float64) for a in (x, w, b))
    seq = np.array([[0, 0, 1, 1, 1, 0, 0, 2, 2, 2, 2], [3, 1, 1, -1, 2, 2, 2, 2, 1, -1, -1]])
    dy = rng.standard_normal(x.shape).astype(np.float32).astype(np.float64)
    ref = conv_seq_bwd_ref(x, w, b, seq, True, dy)
    inp = dict(x=x.copy(), w=w.copy(), b=b.copy())

    def f(i):
        return [conv_seq_ref(i["x"], i["w"], i["b"], seq, True)]
    for name, key in (("x", "dx"), ("w", "dweight"), ("b", "dbias")):
        assert_close(ref[key], num_grad(f, inp, name, [dy]), 1e-6, key)
    cpu = grad.causal_conv1d_bwd(x, w, b, "silu", dy=dy, seq_idx=seq)
    for key in ("dx", "dweight", "dbias"):
        assert_close(getattr(cpu, key), ref[key], 1e-5, "C " + key)


# ------------------------------------------------------------------ GPU helpers ----------
def make(rng, B, D, L, W, dtype, bias):
    """Rounded float64 inputs: x, dy in dtype; weight, bias float32."""
    return dict(x=round_to(rng.standard_normal((B, D, L)), dtype),
                dy=round_to(rng.standard_normal((B, D, L)), dtype),
                w=round_to(rng.standard_normal((D, W)), "float32"),
                b=round_to(rng.standard_normal(D), "float32") if bias else None)


def on_device(r: dict, dtype: str) -> dict:
    return dict(x=dev(r["x"], dtype), dy=dev(r["dy"], dtype), w=dev(r["w"]),
                b=None if r["b"] is None else dev(r["b"]))


def seq_dev(seq: np.ndarray, dtype: str = "int32"):
    from samba_ext import cuda as samba_cuda

    return samba_cuda.to_device(np.asarray(seq, np.int64), dtype)


def run(d: dict, act, seq, x=None):
    """(y, Conv1dGrads) of the CUDA kernels; x replaces d["x"] (a view of the same values)."""
    x = d["x"] if x is None else x
    y = samba_ext.causal_conv1d(x, d["w"], d["b"], act, seq_idx=seq)
    return y, grad.causal_conv1d_bwd(x, d["w"], d["b"], act, dy=d["dy"], seq_idx=seq)


def check(y, g, r: dict, act, seq: np.ndarray, dtype: str, what: str = "") -> None:
    silu = act is not None
    assert y.dtype == dtype and g.dx.dtype == dtype and g.dweight.dtype == "float32"
    assert_close(host(y), conv_seq_ref(r["x"], r["w"], r["b"], seq, silu), F32 + UNIT[dtype],
                 what + "y")
    want = conv_seq_bwd_ref(r["x"], r["w"], r["b"], seq, silu, r["dy"])
    n = r["x"].shape[0] * r["x"].shape[2]
    assert g.dinitial_states is None
    assert_close(host(g.dx), want["dx"], CONV_RTOL + UNIT[dtype], what + "dx")
    assert_close(host(g.dweight), want["dweight"], grad_tol(n), what + "dweight")
    if r["b"] is None:
        assert g.dbias is None
    else:
        assert_close(host(g.dbias), want["dbias"], grad_tol(n), what + "dbias")


# ------------------------------------------------------------------ GPU tests ------------
@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("W", [2, 3, 4])
@pytest.mark.parametrize("seqs", sorted(SEQS))
@pytest.mark.parametrize("bias,silu", [(True, True), (False, False), (True, False),
                                       (False, True)])
@pytest.mark.parametrize("L", [19, 64])
def test_against_reference(poison, rng, dtype, W, seqs, bias, silu, L):
    B, D = 3, 6
    r = make(rng, B, D, L, W, dtype, bias)
    seq = SEQS[seqs](rng, B, L)
    act = "silu" if silu else None
    y, g = run(on_device(r, dtype), act, seq_dev(seq))
    check(y, g, r, act, seq, dtype)


@cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_id_dtypes_and_layouts(poison, rng, dtype):
    """int64 ids; host ids with device arrays; a stride-0 batch of ids; token-major x; a
    float32 length that takes the vector backward with a partial last group; lengths shorter
    than the width; the backward repeats bit for bit."""
    B, D, L, W = 3, 10, 36, 4
    r = make(rng, B, D, L, W, dtype, True)
    d = on_device(r, dtype)
    seq = SEQS["random"](rng, B, L)
    check(*run(d, "silu", seq_dev(seq, "int64")), r, "silu", seq, dtype, "int64 ids: ")
    check(*run(d, "silu", seq), r, "silu", seq, dtype, "host ids: ")
    row = SEQS["repeats"](rng, 1, L)
    bcast = CAIView(seq_dev(row[0], "int64"), (B, L), (0, 1))
    check(*run(d, "silu", bcast), r, "silu", np.repeat(row, B, 0), dtype, "stride-0 ids: ")
    tm = transposed_view(r["x"], dtype, (0, 2, 1))
    check(*run(d, None, seq_dev(seq), x=tm), r, None, seq, dtype, "token-major x: ")
    g1, g2 = run(d, "silu", seq_dev(seq))[1], run(d, "silu", seq_dev(seq))[1]
    for k in ("dx", "dweight", "dbias"):
        np.testing.assert_array_equal(host(getattr(g1, k)), host(getattr(g2, k)), err_msg=k)
    for L in (1, 2):
        r = make(rng, 2, 3, L, W, dtype, True)
        seq = SEQS["singletons"](rng, 2, L)
        check(*run(on_device(r, dtype), "silu", seq_dev(seq)), r, "silu", seq, dtype,
              f"L={L}: ")


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L", [19, 64])
def test_no_seq_idx_unchanged(poison, rng, dtype, L):
    """One id everywhere gives the call without seq_idx bit for bit (the id check only drops
    taps at positions < 0, which add 0.0 there), forward and backward."""
    for W in (2, 3, 4):
        r = make(rng, 2, 5, L, W, dtype, True)
        d = on_device(r, dtype)
        one = seq_dev(np.full((2, L), 7))
        y0, g0 = run(d, "silu", None)
        y1, g1 = run(d, "silu", one)
        np.testing.assert_array_equal(host(y0), host(y1), err_msg=f"W={W} y")
        for k in ("dx", "dweight", "dbias"):
            np.testing.assert_array_equal(host(getattr(g0, k)), host(getattr(g1, k)),
                                          err_msg=f"W={W} {k}")


@cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("L", [19, 64])
def test_nan_stays_in_its_sequence(rng, dtype, L):
    """A NaN in sequence 0's inputs reaches no output or dx of sequence 1 (the id check drops
    the taps, it does not multiply them by 0)."""
    r = make(rng, 1, 4, L, 4, dtype, True)
    seq = np.array([[0] * 9 + [1] * (L - 9)])
    clean = run(on_device(r, dtype), "silu", seq_dev(seq))
    r["x"][0, 1, 8] = np.nan
    dirty = run(on_device(r, dtype), "silu", seq_dev(seq))
    np.testing.assert_array_equal(host(dirty[0])[..., 9:], host(clean[0])[..., 9:])
    np.testing.assert_array_equal(host(dirty[1].dx)[..., 9:], host(clean[1].dx)[..., 9:])
    assert np.isnan(host(dirty[0])[0, 1, 8])


@cuda
def test_model_size(poison, rng):
    """dim 4096, seqlen 4096, width 4, bfloat16 with SiLU and bias (Samba's conv), documents
    of 1..600 tokens packed into the row."""
    B, D, L, W = 1, 4096, 4096, 4
    r = make(rng, B, D, L, W, "bfloat16", True)
    lens = rng.integers(1, 600, 64)
    seq = np.repeat(np.arange(lens.size), lens)[None, :L]
    assert seq.shape == (B, L)
    y, g = run(on_device(r, "bfloat16"), "silu", seq_dev(seq))
    check(y, g, r, "silu", seq, "bfloat16")
