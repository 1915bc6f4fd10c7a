"""samba_ext.torch.causal_conv1d_varlen_states (causal-conv1d's gather of packed sequences'
conv states) on CPU tensors, and on a CUDA tensor where a GPU is present.

Checked against a float64 loop written here from the definition (states[i, :, state_len - k:]
= x[end - k:end].T, k = min(state_len, length of sequence i), zeros before), exactly: the
function copies values. Cases: sequences shorter and longer than state_len, empty sequences,
state_len 0 and 1, float32 / bfloat16, a strided x; the states then continue the conv: a
packed prefill (causal_conv1d_fn with seq_idx) followed by causal_conv1d_update from the
gathered states equals each sequence's own prefill of one more token (float32 arithmetic of
at most 4 products: 1e-6 relative). Bad cu_seqlens / state_len raise ValueError naming them.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import assert_close  # noqa: E402

import samba_ext.torch as st  # noqa: E402


def varlen_states_loop(x: np.ndarray, cu: list[int], state_len: int) -> np.ndarray:
    batch, dim = len(cu) - 1, x.shape[1]
    out = np.zeros((batch, dim, state_len))
    for i in range(batch):
        for j in range(state_len):       # column j holds token end - state_len + j
            t = cu[i + 1] - state_len + j
            if t >= cu[i]:
                out[i, :, j] = x[t]
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("state_len", [0, 1, 3, 8])
def test_against_loop(rng, dtype, state_len):
    lens = [5, 0, 1, 12, 3, 2]
    cu = np.concatenate([[0], np.cumsum(lens)]).tolist()
    x = torch.tensor(rng.standard_normal((cu[-1] + 4, 7))).to(getattr(torch, dtype))
    got = st.causal_conv1d_varlen_states(x, torch.tensor(cu, dtype=torch.int32), state_len)
    assert got.shape == (len(lens), 7, state_len) and got.dtype == x.dtype
    np.testing.assert_array_equal(got.float().numpy(),
                                  varlen_states_loop(x.float().numpy(), cu, state_len))


def test_strided_x_and_int64_lengths(rng):
    base = torch.tensor(rng.standard_normal((9, 12)), dtype=torch.float32)
    x = base[:, ::2]                   # a column stride of 2
    cu = [0, 4, 9]
    got = st.causal_conv1d_varlen_states(x, torch.tensor(cu), 3)
    np.testing.assert_array_equal(got.numpy(), varlen_states_loop(x.numpy(), cu, 3))


def test_states_continue_the_packed_prefill(rng):
    """Packed prefill, gathered states, one update step = each sequence alone, one token
    longer."""
    lens, dim, W = [6, 2, 9], 5, 4
    cu = np.concatenate([[0], np.cumsum(lens)]).tolist()
    x = torch.tensor(rng.standard_normal((cu[-1], dim)), dtype=torch.float32)
    w = torch.tensor(rng.standard_normal((dim, W)), dtype=torch.float32)
    b = torch.tensor(rng.standard_normal(dim), dtype=torch.float32)
    nxt = torch.tensor(rng.standard_normal((len(lens), dim)), dtype=torch.float32)
    states = st.causal_conv1d_varlen_states(x, torch.tensor(cu), W - 1).contiguous()
    y = st.causal_conv1d_update(nxt, states, w, b, activation="silu")
    for i, n in enumerate(lens):
        seq = torch.cat([x[cu[i]:cu[i + 1]], nxt[i:i + 1]]).T[None]   # (1, dim, n + 1)
        want = st.causal_conv1d_fn(seq, w, b, activation="silu")[0, :, -1]
        assert_close(y[i].numpy(), want.numpy(), 1e-6, f"sequence {i}")


@pytest.mark.parametrize("cu,state_len,match", [
    ([1, 3], 2, "cu_seqlens"),         # not from 0
    ([0, 5, 3], 2, "cu_seqlens"),      # not sorted
    ([0, 3, 20], 2, "cu_seqlens"),     # past the tokens
    ([0, 3], -1, "state_len"),
    ([0, 3], 2.0, "state_len"),
])
def test_bad_arguments_raise(rng, cu, state_len, match):
    x = torch.zeros(10, 4)
    with pytest.raises(ValueError, match=match):
        st.causal_conv1d_varlen_states(x, torch.tensor(cu), state_len)
    with pytest.raises(ValueError, match="cu_seqlens"):
        st.causal_conv1d_varlen_states(x, torch.tensor([0.0, 3.0]), 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_tensor(rng):
    cu = [0, 3, 3, 11]
    x = torch.tensor(rng.standard_normal((12, 6)), dtype=torch.bfloat16)
    got = st.causal_conv1d_varlen_states(x.cuda(), torch.tensor(cu, device="cuda"), 4)
    assert got.device.type == "cuda"
    np.testing.assert_array_equal(got.float().cpu().numpy(),
                                  varlen_states_loop(x.float().numpy(), cu, 4))
