"""causal_conv1d over packed sequences (causal-conv1d's seq_idx): samba_ext.causal_conv1d and
samba_ext.grad.causal_conv1d_bwd on the CPU (conv.c conv_row_seq, conv_bwd.c cbwd_row_seq).

The definition, as causal-conv1d's kernels: y[t] = bias + sum_k w[k] x[t - (W-1) + k] over the
taps whose input s = t - (W-1) + k has s >= 0 and seq_idx[s] == seq_idx[t]; a negative id
marks padding, whose output is 0 (no bias, no activation); no initial states and no final
states with seq_idx. Checked against a float64 loop reference written here: widths 2-4, with
and without bias and SiLU, ids that repeat after other ids, one token per sequence, padding
inside and after the sequences, batch rows with their own ids; the gradients (padding
positions send none) against central differences of the
reference; a single id gives the plain conv; every instruction-set level; bad ids raise.

Tolerances: relative norms of 1e-6 for the outputs (at most 4 float32 products per output,
~6e-8 relative each, plus the SiLU) and 1e-5 for the gradients (float32 sums over the batch
and sequence for dweight / dbias), as tests/test_grad_conv.py.
"""
from __future__ import annotations

import numpy as np
import pytest

import samba_ext
from conftest import assert_close
from ref_grad import num_grad, r32
from samba_ext import grad


def conv_seq_ref(x, w, b, seq, silu):
    """float64 loops: the definition above."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    B, D, L = x.shape
    W = w.shape[1]
    y = np.zeros((B, D, L)) + (0.0 if b is None else np.asarray(b, np.float64)[None, :, None])
    for bb in range(B):
        for t in range(L):
            for k in range(W):
                s = t - (W - 1) + k
                if s >= 0 and seq[bb, s] == seq[bb, t]:
                    y[bb, :, t] += w[:, k] * x[bb, :, s]
    y = y / (1.0 + np.exp(-y)) if silu else y
    return np.where(np.asarray(seq)[:, None, :] < 0, 0.0, y)  # padding


def inputs(rng, B, D, L, W, bias):
    x = r32(rng.standard_normal((B, D, L)))
    w = r32(rng.standard_normal((D, W)))
    b = r32(rng.standard_normal(D)) if bias else None
    return x, w, b


def padded_ids(B: int, L: int) -> np.ndarray:
    """Sequences 0, 1, 2, ... separated by padding (-1), and 3 padding positions at the end."""
    row = np.array([0, 0, 0, -1, 1, 1, 1, 1, -1, -1, 2] * L)[:L]
    row[-3:] = -1
    return np.tile(row, (B, 1))


SEQS = {
    "sorted": lambda rng, B, L: np.sort(rng.integers(0, 4, (B, L)), axis=1),
    "repeats": lambda rng, B, L: np.tile(np.array([0, 0, 1, 1, 1, 0, 0, 2] * L)[:L], (B, 1)),
    "singletons": lambda rng, B, L: np.tile(np.arange(L), (B, 1)),
    "random": lambda rng, B, L: rng.integers(0, 2, (B, L)),
    # padding (-1) between sequences and at the end, as causal-conv1d's varlen tests
    "padded": lambda rng, B, L: padded_ids(B, L),
}


@pytest.mark.parametrize("W", [2, 3, 4])
@pytest.mark.parametrize("seqs", sorted(SEQS))
@pytest.mark.parametrize("bias,silu", [(True, True), (False, False)])
def test_forward_and_backward_against_reference(rng, W, seqs, bias, silu):
    B, D, L = 2, 5, 19
    x, w, b = inputs(rng, B, D, L, W, bias)
    seq = SEQS[seqs](rng, B, L).astype(np.int32)
    act = "silu" if silu else None
    y = samba_ext.causal_conv1d(x, w, b, act, seq_idx=seq)
    assert y.dtype == np.float32
    assert_close(y, conv_seq_ref(x, w, b, seq, silu), 1e-6, "y")
    dy = r32(rng.standard_normal((B, D, L)))
    g = grad.causal_conv1d_bwd(x, w, b, act, dy=dy, seq_idx=seq)
    assert g.dinitial_states is None
    inp = dict(x=x.astype(np.float64), w=w.astype(np.float64))
    if bias:
        inp["b"] = b.astype(np.float64)

    def f(i):
        return [conv_seq_ref(i["x"], i["w"], i.get("b"), seq, silu)]
    for name, got in (("x", g.dx), ("w", g.dweight), ("b", g.dbias)):
        if name in inp:
            assert_close(got, num_grad(f, inp, name, [dy]), 1e-5, f"d{name}")


def test_one_sequence_is_the_plain_conv(rng):
    x, w, b = inputs(rng, 3, 6, 40, 4, True)
    seq = np.full((3, 40), 7, np.int64)
    assert_close(samba_ext.causal_conv1d(x, w, b, "silu", seq_idx=seq),
                 samba_ext.causal_conv1d(x, w, b, "silu"), 1e-6, "y")
    dy = r32(rng.standard_normal(x.shape))
    for a, r in zip(grad.causal_conv1d_bwd(x, w, b, "silu", dy=dy, seq_idx=seq)[:3],
                    grad.causal_conv1d_bwd(x, w, b, "silu", dy=dy)[:3]):
        assert_close(a, r, 1e-5, "gradients")


def test_padding_is_zero_and_sends_no_gradient(rng):
    """Positions with a negative id (padding, as causal-conv1d's varlen tests mark it) output
    exactly 0 whatever their inputs, bias and activation; their dy is ignored, and inputs
    there get dx = 0."""
    x, w, b = inputs(rng, 2, 4, 22, 4, True)
    seq = padded_ids(2, 22)
    pad = seq < 0
    y = samba_ext.causal_conv1d(x, w, b, "silu", seq_idx=seq)
    assert np.all(y.transpose(0, 2, 1)[pad] == 0.0)
    assert np.all(y.transpose(0, 2, 1)[~pad] != 0.0)
    dy = r32(rng.standard_normal(x.shape))
    g = grad.causal_conv1d_bwd(x, w, b, "silu", dy=dy, seq_idx=seq)
    assert np.all(g.dx.transpose(0, 2, 1)[pad] == 0.0)
    dy2 = dy.copy()
    dy2.transpose(0, 2, 1)[pad] = 1e6
    g2 = grad.causal_conv1d_bwd(x, w, b, "silu", dy=dy2, seq_idx=seq)
    for a, c in zip(g[:3], g2[:3]):
        np.testing.assert_array_equal(a, c)


def test_sequences_do_not_leak(rng):
    """Changing one sequence's inputs changes no output of another sequence."""
    x, w, b = inputs(rng, 1, 4, 12, 4, True)
    seq = np.array([[0] * 5 + [1] * 7])
    y0 = samba_ext.causal_conv1d(x, w, b, seq_idx=seq)
    x2 = x.copy()
    x2[:, :, :5] += 10.0
    y1 = samba_ext.causal_conv1d(x2, w, b, seq_idx=seq)
    np.testing.assert_array_equal(y0[:, :, 5:], y1[:, :, 5:])
    assert not np.allclose(y0[:, :, :5], y1[:, :, :5])


@pytest.mark.parametrize("bad,err,match", [
    (np.zeros((2, 7), np.float32), TypeError, "seq_idx: expected an integer array"),
    (np.zeros((2, 6), np.int32), ValueError, r"seq_idx: expected shape \(2, 7\)"),
    (np.zeros(7, np.int32), ValueError, "seq_idx: expected a 2-D"),
])
def test_bad_seq_idx_raises(rng, bad, err, match):
    x, w, b = inputs(rng, 2, 3, 7, 3, True)
    with pytest.raises(err, match=match):
        samba_ext.causal_conv1d(x, w, b, seq_idx=bad)
    with pytest.raises(err, match=match):
        grad.causal_conv1d_bwd(x, w, b, dy=x, seq_idx=bad)


def test_seq_idx_takes_no_states(rng):
    x, w, b = inputs(rng, 2, 3, 7, 3, True)
    seq = np.zeros((2, 7), np.int32)
    init = np.zeros((2, 3, 2), np.float32)
    with pytest.raises(ValueError, match="seq_idx: packed sequences take no initial_states"):
        samba_ext.causal_conv1d(x, w, b, initial_states=init, seq_idx=seq)
    with pytest.raises(ValueError, match="seq_idx: packed sequences"):
        samba_ext.causal_conv1d(x, w, b, return_final_states=True, seq_idx=seq)
    with pytest.raises(ValueError, match="seq_idx: packed sequences"):
        grad.causal_conv1d_bwd(x, w, b, dy=x, dfinal_states=init, seq_idx=seq)
