"""The bad-input table of every kernel op, run against every backend.

Each row is one mistake: the op, the arguments that differ from a valid call, the exception
and a pattern its message must match (it always names the argument). The table runs through
the public functions with the ``backend`` fixture: on the CPU, and on CUDA both with NumPy
inputs (``device="cuda"``) and with the inputs already on the device. Every backend must
raise the same exception with the same message as the CPU (one contract per op,
samba_ext/ops/contracts.py), and a rejected call must leave in-place states untouched.

Below the table: regression tests for byte order, float32 range and integer arguments, the
memory-safety checks the C glue keeps for direct ``_core`` calls, and the contract checker
itself (a valid call passes).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest

import samba_ext
from samba_ext import _core
from samba_ext.ops import contracts

f32 = np.float32


def _zeros(*shape: int, dtype: Any = f32) -> np.ndarray:
    return np.zeros(shape, dtype)


def _rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(f32)


# ------------------------------------------------------------------ valid base calls ---
def scan_args(rng):
    b, d, n, L, g = 2, 8, 4, 6, 2
    return dict(u=_rand(rng, b, d, L), delta=_rand(rng, b, d, L) * 0.5 - 1.0,
                A=-np.exp(_rand(rng, d, n) * 0.5), B=_rand(rng, b, g, n, L),
                C=_rand(rng, b, g, n, L), D=_rand(rng, d), z=_rand(rng, b, d, L),
                delta_bias=_rand(rng, d) * 0.5, initial_state=_rand(rng, b, d, n),
                delta_softplus=True)


def step_args(rng):
    b, d, n = 2, 8, 4
    return dict(state=_zeros(b, d, n), x=_rand(rng, b, d), dt=_rand(rng, b, d),
                A=-np.ones((d, n), f32), B=_rand(rng, b, 2, n), C=_rand(rng, b, 2, n),
                D=np.ones(d, f32), z=np.ones((b, d), f32), dt_bias=_zeros(d))


def conv_args(rng):
    return dict(x=_rand(rng, 2, 4, 6), weight=_rand(rng, 4, 4), bias=_rand(rng, 4),
                activation="silu", initial_states=_rand(rng, 2, 4, 3))


def conv_step_args(rng):
    return dict(x=_rand(rng, 2, 4), conv_state=_rand(rng, 2, 4, 3), weight=_rand(rng, 4, 4),
                bias=_rand(rng, 4), activation="silu")


def attn_args(rng):
    return dict(q=_zeros(1, 4, 4, 16), k=_zeros(1, 4, 2, 16), v=_zeros(1, 4, 2, 16))


def decode_args(rng):
    return dict(q=_zeros(2, 4, 16), k_cache=_zeros(2, 8, 2, 16), v_cache=_zeros(2, 8, 2, 16),
                pos=np.array([3, 9]), n_valid=np.array([4, 8]))


def norm_args(rng):
    return dict(x=_rand(rng, 3, 8), weight=np.ones(8, f32))


def rotary_args(rng):
    return dict(x=_rand(rng, 2, 5, 3, 8))


def swiglu_args(rng):
    return dict(gate=_rand(rng, 3, 4), up=_rand(rng, 3, 4))


OPS: dict[str, tuple[Callable, Callable]] = {
    "selective_scan": (samba_ext.selective_scan, scan_args),
    "selective_state_update": (samba_ext.selective_state_update, step_args),
    "causal_conv1d": (samba_ext.causal_conv1d, conv_args),
    "causal_conv1d_update": (samba_ext.causal_conv1d_update, conv_step_args),
    "swa_attention": (samba_ext.swa_attention, attn_args),
    "swa_decode": (samba_ext.swa_decode, decode_args),
    "rms_norm": (samba_ext.rms_norm, norm_args),
    "apply_rotary": (samba_ext.apply_rotary, rotary_args),
    "swiglu": (samba_ext.swiglu, swiglu_args),
}


def _readonly(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flags.writeable = False
    return a


# A value given as a callable is computed from the valid arguments (e.g. a slice of one).
# (op, {argument: bad value}, exception, message pattern)
TABLE = [
    # selective_scan
    ("selective_scan", {"u": _zeros(2, 8)}, ValueError, "u: expected a 3-D"),
    ("selective_scan", {"u": _zeros(2, 8, 6, dtype=np.int32)}, TypeError, "u: .*floating"),
    ("selective_scan", {"u": np.zeros((2, 8, 6), object)}, TypeError, "u"),
    ("selective_scan", {"u": "abc"}, TypeError, "u"),
    ("selective_scan", {"delta": _zeros(2, 8, 5)}, ValueError, "delta: expected shape"),
    ("selective_scan", {"A": _zeros(7, 4)}, ValueError, "A"),
    ("selective_scan", {"A": _zeros(8, 4, 1)}, ValueError, "A"),
    ("selective_scan", {"B": _zeros(2, 2, 4, 5)}, ValueError, "B"),
    ("selective_scan", {"B": _zeros(2, 2, 3, 6)}, ValueError, "B"),
    ("selective_scan", {"B": _zeros(2, 3, 4, 6)}, ValueError, "ngroups"),
    ("selective_scan", {"B": _zeros(2, 2, 2, 4, 6)}, ValueError, "B"),
    ("selective_scan", {"B": _zeros(1, 2, 4, 6)}, ValueError, "B"),
    ("selective_scan", {"C": _zeros(2, 4, 4, 6)}, ValueError, "C"),
    ("selective_scan", {"C": _zeros(2, 2, 4, 6, dtype=np.int64)}, TypeError, "C"),
    ("selective_scan", {"D": _zeros(7)}, ValueError, "D"),
    ("selective_scan", {"D": _zeros(8, 1)}, ValueError, "D"),
    ("selective_scan", {"z": _zeros(2, 8, 7)}, ValueError, "z"),
    ("selective_scan", {"delta_bias": _zeros(9)}, ValueError, "delta_bias"),
    ("selective_scan", {"initial_state": _zeros(2, 8, 5)}, ValueError, "initial_state"),
    ("selective_scan", {"initial_state": _zeros(2, 8, 4, dtype=np.complex64)}, TypeError,
     "initial_state"),
    # no state at all: refused forward as it is backward (every other shape consistent)
    ("selective_scan", {"A": _zeros(8, 0), "B": _zeros(2, 2, 0, 6), "C": _zeros(2, 2, 0, 6),
                        "initial_state": _zeros(2, 8, 0)}, ValueError, "A: dstate"),
    # selective_state_update (state is updated in place)
    ("selective_state_update", {"state": _zeros(2, 8, 0), "A": _zeros(8, 0),
                                "B": _zeros(2, 2, 0), "C": _zeros(2, 2, 0)}, ValueError,
     "A: dstate"),
    ("selective_state_update", {"state": _zeros(2, 8, 4, dtype=np.float64)}, TypeError,
     "state: is updated in place and must be float32"),
    ("selective_state_update", {"state": _zeros(2, 8, 8)[:, :, ::2]}, ValueError,
     "state: .*C-contiguous"),
    ("selective_state_update", {"state": _zeros(2, 8, 4).tolist()}, TypeError, "state"),
    ("selective_state_update", {"state": _zeros(2, 8, 5)}, ValueError, "state"),
    ("selective_state_update", {"state": _zeros(2, 32)}, ValueError, "state"),
    ("selective_state_update", {"state": _readonly(_zeros(2, 8, 4))}, ValueError,
     "state: .*read-only"),
    ("selective_state_update", {"state": _zeros(2, 8, 4, dtype=">f4")}, TypeError,
     "state: .*byte order"),
    ("selective_state_update", {"x": _zeros(2, 8, 1)}, ValueError, "x"),
    ("selective_state_update", {"dt": _zeros(2, 7)}, ValueError, "dt"),
    ("selective_state_update", {"dt": _zeros(2, 8, dtype=np.int16)}, TypeError, "dt"),
    ("selective_state_update", {"B": _zeros(2, 5)}, ValueError, "B"),
    ("selective_state_update", {"B": _zeros(2, 3, 4)}, ValueError, "ngroups"),
    ("selective_state_update", {"C": _zeros(2, 4)}, ValueError, "C"),
    ("selective_state_update", {"z": _zeros(3, 8)}, ValueError, "z"),
    ("selective_state_update", {"dt_bias": _zeros(3)}, ValueError, "dt_bias"),
    # causal_conv1d
    ("causal_conv1d", {"weight": _zeros(4, 5)}, ValueError, "weight"),
    ("causal_conv1d", {"weight": _zeros(4, 1)}, ValueError, "weight"),
    ("causal_conv1d", {"weight": _zeros(4, 1, 4)}, ValueError, r"weight.*\[:, 0, :\]"),
    ("causal_conv1d", {"weight": _zeros(3, 4)}, ValueError, "weight"),
    ("causal_conv1d", {"activation": "relu"}, ValueError, "activation"),
    ("causal_conv1d", {"activation": True}, TypeError, "activation"),
    ("causal_conv1d", {"bias": _zeros(3)}, ValueError, "bias"),
    ("causal_conv1d", {"initial_states": _zeros(2, 4, 2)}, ValueError, "initial_states"),
    ("causal_conv1d", {"initial_states": _zeros(1, 4, 3)}, ValueError, "initial_states"),
    ("causal_conv1d", {"x": _zeros(2, 4, 6, dtype=np.int32)}, TypeError, "x"),
    ("causal_conv1d", {"x": _zeros(4, 6)}, ValueError, "x"),
    ("causal_conv1d", {"weight": "w"}, TypeError, "weight"),
    # causal_conv1d_update (conv_state is updated in place)
    ("causal_conv1d_update", {"conv_state": _zeros(2, 4, 3, dtype=np.float64)}, TypeError,
     "conv_state: is updated in place and must be float32"),
    ("causal_conv1d_update", {"conv_state": _zeros(2, 4, 6)[:, :, ::2]}, ValueError,
     "conv_state"),
    ("causal_conv1d_update", {"conv_state": _zeros(2, 4, 4)}, ValueError, "conv_state"),
    ("causal_conv1d_update", {"conv_state": _zeros(1, 4, 3)}, ValueError, "conv_state"),
    ("causal_conv1d_update", {"conv_state": [[[0.0] * 3] * 4] * 2}, TypeError, "conv_state"),
    ("causal_conv1d_update", {"conv_state": _readonly(_zeros(2, 4, 3))}, ValueError,
     "conv_state: .*read-only"),
    ("causal_conv1d_update", {"conv_state": _zeros(2, 4, 3, dtype=">f4")}, TypeError,
     "conv_state: .*byte order"),
    ("causal_conv1d_update", {"activation": "gelu"}, ValueError, "activation"),
    # swa_attention
    ("swa_attention", {"q": _zeros(1, 4, 4, 16, dtype=np.int32)}, TypeError, "q"),
    ("swa_attention", {"q": "abc"}, TypeError, "q"),
    ("swa_attention", {"q": _zeros(4, 4, 16)}, ValueError, "q"),
    ("swa_attention", {"k": None}, TypeError, "k"),
    ("swa_attention", {"window": 0}, ValueError, "window"),
    ("swa_attention", {"window": -3}, ValueError, "window"),
    ("swa_attention", {"window": 2.5}, TypeError, "window"),
    ("swa_attention", {"window": True}, TypeError, "window"),
    ("swa_attention", {"window": 2**64}, ValueError, "window"),
    ("swa_attention", {"softmax_scale": float("nan")}, ValueError, "softmax_scale"),
    ("swa_attention", {"softmax_scale": "x"}, TypeError, "softmax_scale"),
    ("swa_attention", {"softmax_scale": 1e39}, ValueError, "softmax_scale: .*float32"),
    ("swa_attention", {"softmax_scale": -1e39}, ValueError, "softmax_scale: .*float32"),
    ("swa_attention", {"q": _zeros(1, 4, 3, 16)}, ValueError, "nheads"),
    ("swa_attention", {"k": _zeros(2, 4, 2, 16), "v": _zeros(2, 4, 2, 16)}, ValueError, "k"),
    ("swa_attention", {"k": _zeros(1, 4, 2, 8), "v": _zeros(1, 4, 2, 8)}, ValueError, "k"),
    ("swa_attention", {"v": _zeros(1, 5, 2, 16)}, ValueError, "v"),
    ("swa_attention", {"k": _zeros(1, 3, 2, 16), "v": _zeros(1, 3, 2, 16)}, ValueError,
     "seqlen_k"),
    ("swa_attention", {"k": _zeros(1, 4, 0, 16), "v": _zeros(1, 4, 0, 16)}, ValueError,
     "nheads_kv"),
    # swa_decode
    ("swa_decode", {"q": _zeros(2, 4, 16, dtype=np.int64)}, TypeError, "q"),
    ("swa_decode", {"q": _zeros(1, 2, 4, 16)}, ValueError, "q"),
    ("swa_decode", {"k_cache": _zeros(1, 8, 2, 16), "v_cache": _zeros(1, 8, 2, 16)},
     ValueError, "k_cache"),
    ("swa_decode", {"k_cache": _zeros(2, 8, 2, 8), "v_cache": _zeros(2, 8, 2, 8)},
     ValueError, "k_cache"),
    ("swa_decode", {"v_cache": _zeros(2, 5, 2, 16)}, ValueError, "v_cache"),
    ("swa_decode", {"q": _zeros(2, 3, 16)}, ValueError, "nheads"),
    ("swa_decode", {"pos": np.array([3.0, 9.0], f32)}, TypeError, "pos"),
    ("swa_decode", {"pos": np.array([3])}, ValueError, "pos"),
    ("swa_decode", {"pos": np.array([3, -1])}, ValueError, "pos"),
    ("swa_decode", {"pos": np.array([3, 2**64 - 1], np.uint64)}, ValueError,
     "pos: .*int64"),
    ("swa_decode", {"n_valid": np.array([0, 3])}, ValueError, "n_valid"),
    ("swa_decode", {"n_valid": np.array([4, 9])}, ValueError, "n_valid"),
    ("swa_decode", {"n_valid": np.array([[4], [8]])}, ValueError, "n_valid"),
    ("swa_decode", {"n_valid": np.array([2**63, 4], np.uint64)}, ValueError, "n_valid"),
    ("swa_decode", {"softmax_scale": float("inf")}, ValueError, "softmax_scale"),
    ("swa_decode", {"softmax_scale": 1e39}, ValueError, "softmax_scale: .*float32"),
    # rms_norm
    ("rms_norm", {"weight": np.ones(7, f32)}, ValueError, "weight"),
    ("rms_norm", {"weight": np.ones((1, 8), f32)}, ValueError, "weight"),
    ("rms_norm", {"residual": _zeros(2, 8)}, ValueError, "residual"),
    ("rms_norm", {"x": np.float32(3.0), "weight": np.ones(1, f32)}, ValueError, "x"),
    ("rms_norm", {"x": _zeros(3, 8, dtype=np.int64)}, TypeError, "x"),
    ("rms_norm", {"residual": _zeros(3, 8, dtype=np.int32)}, TypeError, "residual"),
    ("rms_norm", {"eps": -1.0}, ValueError, "eps"),
    ("rms_norm", {"eps": float("nan")}, ValueError, "eps"),
    ("rms_norm", {"eps": 1e39}, ValueError, "eps: .*float32"),
    ("rms_norm", {"eps": "1e-5"}, TypeError, "eps"),
    # apply_rotary
    ("apply_rotary", {"x": _zeros(2, 5, 3, 7)}, ValueError, "x.*even"),
    ("apply_rotary", {"x": _zeros(5, 3, 8)}, ValueError, "x"),
    ("apply_rotary", {"positions": np.arange(4)}, ValueError, "positions"),
    ("apply_rotary", {"positions": np.zeros((3, 5), np.int64)}, ValueError, "positions"),
    ("apply_rotary", {"positions": np.zeros((2, 5, 1), np.int64)}, ValueError, "positions"),
    ("apply_rotary", {"positions": np.arange(5) * 1.0}, TypeError, "positions"),
    ("apply_rotary", {"positions": 1.5}, TypeError, "positions"),
    ("apply_rotary", {"positions": True}, TypeError, "positions"),
    ("apply_rotary", {"positions": None}, TypeError, "positions"),
    ("apply_rotary", {"positions": 2**63 - 2}, ValueError, "positions"),
    ("apply_rotary", {"positions": 2**64}, ValueError, "positions"),
    ("apply_rotary", {"positions": np.full(5, 2**63, np.uint64)}, ValueError,
     "positions: .*int64"),
    ("apply_rotary", {"base": 0.0}, ValueError, "base"),
    ("apply_rotary", {"base": float("inf")}, ValueError, "base"),
    ("apply_rotary", {"x": _zeros(2, 5, 3, 8, dtype=np.int16)}, TypeError, "x"),
    # swiglu
    ("swiglu", {"up": _zeros(2, 4)}, ValueError, "up"),
    ("swiglu", {"up": _zeros(4, 3)}, ValueError, "up"),
    ("swiglu", {"gate": _zeros(3, 4, dtype=np.int8)}, TypeError, "gate"),
    ("swiglu", {"up": "up"}, TypeError, "up"),
    # out=
    ("swiglu", {"out": _zeros(4, 4)}, ValueError, "out: expected shape"),
    ("rms_norm", {"out": _zeros(3, 8, dtype=np.int32)}, TypeError, "out"),
    ("swa_attention", {"out": "x"}, TypeError, "out"),
    ("swa_attention", {"out": [0.0]}, ValueError, "out: expected shape"),
]

_IDS = [f"{op}-{i}-{'-'.join(bad)}" for i, (op, bad, _, _) in enumerate(TABLE)]

class FakeCudaArray:
    """Shape and dtype of a CUDA array, as torch / cupy / DeviceArray report them, with no
    device memory behind it: enough for the contract, which reads metadata only."""

    def __init__(self, a: np.ndarray) -> None:
        self.shape = a.shape
        self.dtype = "int64" if a.dtype.kind == "i" else "float32"
        self.is_contiguous = True

    def __dlpack_device__(self) -> tuple[int, int]:
        return (2, 0)  # kDLCUDA, device 0


def _call(op: str, bad: dict, rng: np.random.Generator, device: str, to_dev: Any) -> tuple:
    fn, make = OPS[op]
    args = make(rng)
    args.update(bad)
    if to_dev:
        if to_dev == "fake":
            move = FakeCudaArray
        else:
            from samba_ext import cuda as samba_cuda

            def move(v):
                return samba_cuda.to_device(v, "int64" if v.dtype.kind == "i" else "float32")
        for k, v in list(args.items()):
            if (k not in bad and isinstance(v, np.ndarray) and v.dtype.kind in "fi"
                    and v.dtype.isnative):
                args[k] = move(v)
    before = {k: v.copy() for k, v in args.items() if k in ("state", "conv_state")
              and isinstance(v, np.ndarray)}
    try:
        fn(**args, device=None if to_dev else device)
    except Exception as e:  # noqa: BLE001 - compared by the caller
        for k, v in before.items():
            np.testing.assert_array_equal(args[k], v, err_msg=f"{k} changed by a failed call")
        return type(e), str(e)
    return None, "no exception"


@pytest.mark.parametrize("op,bad,exc,match", TABLE, ids=_IDS)
def test_bad_input_table(rng, backend, op, bad, exc, match):
    got = _call(op, bad, rng, "cpu", False)
    assert got[0] is exc, f"{op}{sorted(bad)}: expected {exc.__name__}, got {got}"
    assert __import__("re").search(match, got[1]), f"{got[1]!r} does not match {match!r}"
    if backend == "cpu":
        return
    # CUDA: NumPy inputs with device="cuda", and the valid inputs already on the device; the
    # message is the CPU's, word for word.
    assert _call(op, bad, rng, "cuda", False) == got
    assert _call(op, bad, rng, "cuda", True) == got


@pytest.mark.parametrize("op,bad,exc,match", TABLE, ids=_IDS)
def test_bad_input_table_on_cuda_array_metadata(rng, op, bad, exc, match):
    """On any machine: with the valid arguments replaced by objects that only describe CUDA
    arrays, every mistake is still caught by the contract (before a backend could run) with
    the CPU's exception and message."""
    got = _call(op, bad, rng, "cpu", False)
    assert _call(op, bad, rng, "cuda", "fake") == got


@pytest.mark.parametrize("op", sorted(OPS))
def test_valid_base_calls_pass(rng, backend, op):
    """The table's base arguments are a valid call on every backend (so each row tests
    exactly the mistake it names)."""
    fn, make = OPS[op]
    y = fn(**make(rng), device=backend)
    assert y is not None


def test_out_must_live_where_the_op_runs(rng):
    """out= of the right shape and dtype but the wrong kind of object: a NumPy call needs a
    numpy.ndarray (a CUDA call a CUDA array; tests/test_cuda_kernels.py)."""
    a = swiglu_args(rng)
    with pytest.raises(TypeError, match="out: expected a numpy.ndarray"):
        samba_ext.swiglu(**a, out=np.zeros((3, 4)).tolist())
    with pytest.raises(TypeError, match="out: expected a CUDA array like the inputs"):
        samba_ext.swiglu(FakeCudaArray(a["gate"]), FakeCudaArray(a["up"]),
                         out=np.zeros((3, 4), f32))
    ro = np.zeros((3, 4), f32)
    ro.flags.writeable = False       # refused before the kernel runs, not by the copy after it
    with pytest.raises(ValueError, match="out: the array is read-only"):
        samba_ext.swiglu(**a, out=ro)


# ------------------------------------------------------------- regression: byte order ---
def test_byteswapped_state_rejected_not_corrupted(rng):
    """#16.10: a '>f4' state used to be accepted and its bytes updated as native floats."""
    a = step_args(rng)
    st = np.zeros((2, 8, 4), ">f4")
    st[...] = 0.25
    a["state"] = st
    with pytest.raises(TypeError, match="state: .*byte order"):
        samba_ext.selective_state_update(**a)
    np.testing.assert_array_equal(st, 0.25)
    # a direct _core call (no contract) is refused by the glue's memory-safety check too
    with pytest.raises((TypeError, ValueError), match="state"):
        _core.selective_state_update(st, a["x"], a["dt"], a["A"], a["B"], a["C"], None, None,
                                     None, False)


def test_byteswapped_conv_state_rejected_not_corrupted(rng):
    a = conv_step_args(rng)
    st = np.full((2, 4, 3), 0.5, ">f4")
    a["conv_state"] = st
    with pytest.raises(TypeError, match="conv_state: .*byte order"):
        samba_ext.causal_conv1d_update(**a)
    np.testing.assert_array_equal(st, 0.5)
    with pytest.raises((TypeError, ValueError), match="conv_state"):
        _core.causal_conv1d_update(a["x"], st, a["weight"], None, None)


def test_byteswapped_inputs_are_read_correctly(rng, backend):
    """Non-native byte order is fine for inputs (they are converted, not written)."""
    a = norm_args(rng)
    y_native = samba_ext.rms_norm(a["x"], a["weight"], device=backend)
    y_swapped = samba_ext.rms_norm(a["x"].astype(">f4"), a["weight"].astype(">f4"),
                                   device=backend)
    np.testing.assert_array_equal(y_native, y_swapped)


# -------------------------------------------------- regression: numeric edges (#16.15) ---
@pytest.mark.parametrize("scale", [3.5e38, -3.5e38, 1e39, 1e300])
def test_softmax_scale_beyond_float32_rejected(rng, backend, scale):
    a = attn_args(rng)
    with pytest.raises(ValueError, match="softmax_scale: .*float32"):
        samba_ext.swa_attention(**a, softmax_scale=scale, device=backend)


def test_softmax_scale_at_float32_max_accepted(rng):
    a = attn_args(rng)
    y = samba_ext.swa_attention(**a, softmax_scale=float(np.finfo(f32).max))
    assert y.shape == a["q"].shape


def test_uint64_positions_do_not_wrap(rng):
    x = rotary_args(rng)["x"]
    p = np.arange(5, dtype=np.uint64) + np.uint64(2**63)  # would wrap to negative int64
    with pytest.raises(ValueError, match="positions: .*int64"):
        samba_ext.apply_rotary(x, p)
    ok = np.arange(5, dtype=np.uint64) + np.uint64(7)  # fits: same result as int64
    np.testing.assert_array_equal(samba_ext.apply_rotary(x, ok),
                                  samba_ext.apply_rotary(x, ok.astype(np.int64)))


@pytest.mark.parametrize("bad,exc", [(True, TypeError), (2.5, TypeError),
                                     (np.float64(3.0), TypeError), (0, ValueError)])
def test_window_must_be_a_positive_int(rng, bad, exc):
    with pytest.raises(exc, match="window"):
        samba_ext.swa_attention(**attn_args(rng), window=bad)


def test_numpy_integer_window_accepted(rng):
    a = attn_args(rng)
    np.testing.assert_array_equal(samba_ext.swa_attention(**a, window=np.int64(2)),
                                  samba_ext.swa_attention(**a, window=2))


# ----------------------------------------------- the C glue's memory-safety checks ---
@pytest.mark.parametrize("fn,args", [
    (_core.selective_scan, lambda r: (_zeros(2, 8, 6), _zeros(2, 8, 5), _zeros(8, 4),
                                      _zeros(2, 4, 6), _zeros(2, 4, 6), None, None, None,
                                      False, None, False)),
    (_core.selective_scan, lambda r: (_zeros(2, 8, 6), _zeros(2, 8, 6), _zeros(8, 4),
                                      _zeros(2, 3, 4, 6), _zeros(2, 3, 4, 6), None, None,
                                      None, False, None, False)),
    (_core.selective_state_update, lambda r: (_zeros(2, 8, 5), _zeros(2, 8), _zeros(2, 8),
                                              _zeros(8, 4), _zeros(2, 4), _zeros(2, 4),
                                              None, None, None, False)),
    (_core.causal_conv1d, lambda r: (_zeros(2, 4, 6), _zeros(4, 9))),
    (_core.causal_conv1d_update, lambda r: (_zeros(2, 4), _zeros(2, 4, 1), _zeros(4, 4))),
    (_core.swa_attention, lambda r: (_zeros(1, 4, 4, 16), _zeros(1, 3, 2, 16),
                                     _zeros(1, 4, 2, 16), None, None)),
    (_core.swa_attention, lambda r: (_zeros(1, 4, 3, 16), _zeros(1, 4, 2, 16),
                                     _zeros(1, 4, 2, 16), None, None)),
    (_core.swa_decode, lambda r: (_zeros(2, 4, 16), _zeros(2, 8, 2, 16), _zeros(2, 8, 2, 16),
                                  np.array([3, 9]), np.array([4, 99]), None)),
    (_core.swa_decode, lambda r: (_zeros(2, 4, 16), _zeros(2, 8, 2, 16), _zeros(2, 8, 2, 16),
                                  np.array([-5, 9]), np.array([4, 4]), None)),
    (_core.rms_norm, lambda r: (_zeros(3, 8), np.ones(7, f32), 1e-5, None)),
    (_core.apply_rotary, lambda r: (_zeros(2, 5, 3, 8), np.arange(4), 1e4)),
    (_core.apply_rotary, lambda r: (_zeros(2, 5, 3, 7), 0, 1e4)),
    (_core.swiglu, lambda r: (_zeros(3, 4), _zeros(4, 3))),
], ids=lambda v: getattr(v, "__name__", ""))
def test_direct_core_calls_with_inconsistent_shapes_raise(rng, fn, args):
    """A direct _core call skips the contract; the glue still refuses what would read or
    write out of bounds (an exception, never a crash)."""
    with pytest.raises((ValueError, TypeError)):
        fn(*args(rng))


# -------------------------------------------------------------- the checker itself ---
def test_contract_returns_output_shapes(rng):
    a = scan_args(rng)
    a.pop("delta_softplus")
    assert contracts.selective_scan(**a) == (2, 8, 6)
    assert contracts.swa_decode(**decode_args(rng)) == (2, 4, 16)
    assert contracts.rms_norm(**norm_args(rng)) == (3, 8)


class _CaiInts:
    """A CUDA integer array described by __cuda_array_interface__ only (no GPU needed)."""

    def __init__(self, shape: tuple, typestr: str) -> None:
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr,
                                         "data": (0, False), "version": 3}


@pytest.mark.parametrize("typestr", ["|i1", "<i2", "|u1", "<u4", "<u8"])
def test_cuda_integer_arrays_must_be_int32_or_int64(rng, typestr):
    # the CUDA kernels read int32 / int64 indices in place; other integer dtypes on the device
    # are refused by the contract, naming the argument (host arrays are converted)
    args = OPS["swa_decode"][1](rng)
    with pytest.raises(TypeError, match=r"^pos: a CUDA integer array must be int32 or int64"):
        contracts.swa_decode(args["q"], args["k_cache"], args["v_cache"],
                             _CaiInts((2,), typestr), args["n_valid"], None)
    x, w = _rand(rng, 2, 3, 5), _rand(rng, 3, 4)
    with pytest.raises(TypeError, match=r"^seq_idx: a CUDA integer array must be int32"):
        contracts.causal_conv1d(x, w, seq_idx=_CaiInts((2, 5), typestr))
    for ok in ("<i4", "<i8"):
        contracts.causal_conv1d(x, w, seq_idx=_CaiInts((2, 5), ok))
