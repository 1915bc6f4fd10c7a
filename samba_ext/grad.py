"""Backward passes of the samba_ext kernels for NumPy users (CPU, C kernels).

Each ``*_bwd`` function takes the forward's arguments (same names and order as the forward
in :mod:`samba_ext.kernels`) plus the gradient of the forward's output(s) as keyword-only
arguments, and returns the gradients of the forward's array inputs. Inputs may be any
float arrays (float16/float64 are converted to float32); all gradients are new float32
NumPy arrays of the corresponding input's shape, accumulated in float32. A gradient whose
input was not given (``D=None`` ...) is returned as ``None``.

Also here: :func:`attention_fwd`, an attention forward with two-sided windows, causality as
an option and softcap (flash-attn's ``window_size``/``causal``/``softcap``) that returns the
log-sum-exp the backward uses.

CUDA arrays are not accepted yet (the CUDA backward is not implemented): they raise
NotImplementedError. Argument problems raise TypeError/ValueError naming the argument.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import numpy as np

from . import _core

ArrayLike = Any

__all__ = [
    "ScanGrads", "Conv1dGrads", "RmsNormGrads",
    "selective_scan_bwd", "causal_conv1d_bwd", "rms_norm_bwd", "swiglu_bwd",
    "apply_rotary_bwd", "attention_fwd", "attention_bwd", "swa_attention_bwd",
]


class ScanGrads(NamedTuple):
    """Gradients of :func:`samba_ext.selective_scan` (float32)."""
    du: np.ndarray                         # (batch, dim, seqlen)
    ddelta: np.ndarray                     # (batch, dim, seqlen)
    dA: np.ndarray                         # (dim, dstate)
    dB: np.ndarray                         # B's shape
    dC: np.ndarray                         # C's shape
    dD: Optional[np.ndarray]               # (dim,) or None
    dz: Optional[np.ndarray]               # (batch, dim, seqlen) or None
    ddelta_bias: Optional[np.ndarray]      # (dim,) or None
    dinitial_state: Optional[np.ndarray]   # (batch, dim, dstate) or None


class Conv1dGrads(NamedTuple):
    """Gradients of :func:`samba_ext.causal_conv1d` (float32)."""
    dx: np.ndarray                         # (batch, dim, seqlen)
    dweight: np.ndarray                    # (dim, width)
    dbias: Optional[np.ndarray]            # (dim,) or None
    dinitial_states: Optional[np.ndarray]  # (batch, dim, width-1) or None


class RmsNormGrads(NamedTuple):
    """Gradients of :func:`samba_ext.rms_norm` (float32)."""
    dx: np.ndarray                         # x's shape
    dweight: np.ndarray                    # (n,)
    dresidual: Optional[np.ndarray]        # x's shape (equal to dx) or None


# ------------------------------------------------------------------ argument checks ---
# All checks of this module live here; the C glue re-checks shapes so it cannot crash.

def _arr(x: ArrayLike, name: str, ndim: Optional[int] = None,
         optional: bool = False) -> Optional[np.ndarray]:
    """float32 C-contiguous view/copy of x; None allowed when optional."""
    if x is None:
        if optional:
            return None
        raise TypeError(f"{name}: expected an array, got None")
    if hasattr(x, "__cuda_array_interface__") or (
            hasattr(x, "__dlpack_device__") and not isinstance(x, np.ndarray)
            and _dlpack_on_gpu(x)):
        raise NotImplementedError(
            f"{name}: is on a CUDA device; the CUDA backward is not implemented yet, pass "
            "NumPy arrays (e.g. tensor.cpu().numpy())")
    try:
        a = np.asarray(x)
    except Exception as e:  # noqa: BLE001 - any conversion failure is a type problem
        raise TypeError(f"{name}: expected a float array, got {type(x).__name__}") from e
    if a.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating-point array (float16/32/64), got dtype "
                        f"{a.dtype}; convert with .astype(numpy.float32)")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _dlpack_on_gpu(x: Any) -> bool:
    try:
        return int(x.__dlpack_device__()[0]) in (2, 13)
    except Exception:  # noqa: BLE001 - an unusable DLPack device is not a GPU array
        return False


def _shape(a: Optional[np.ndarray], name: str, shape: tuple, what: str) -> None:
    """Raise ValueError unless a is None or a.shape == shape (None entries match all)."""
    if a is None:
        return
    if a.ndim != len(shape) or any(s is not None and s != t for s, t in zip(shape, a.shape)):
        want = tuple("*" if s is None else s for s in shape)
        raise ValueError(f"{name}: expected shape {want} ({what}), got {a.shape}")


def _int(v: Any, name: str) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
    return int(v)


def _float(v: Any, name: str, lo: float, what: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: expected a float, got {type(v).__name__}") from e
    if not math.isfinite(f) or f < lo:
        raise ValueError(f"{name}: expected {what}, got {v!r}")
    return f


def _scale(softmax_scale: Optional[float], headdim: int) -> float:
    if softmax_scale is None:
        return 1.0 / math.sqrt(headdim)
    return _float(softmax_scale, "softmax_scale", -math.inf, "a finite float")


def _windows(causal: bool, window_size: Any) -> tuple[int, int]:
    """(left, right) with -1 = unbounded, flash-attn semantics (causal forces right = 0)."""
    try:
        left, right = window_size
    except (TypeError, ValueError) as e:
        raise TypeError("window_size: expected a pair (left, right) of ints, -1 = "
                        f"unbounded, got {window_size!r}") from e
    left, right = _int(left, "window_size[0]"), _int(right, "window_size[1]")
    if left < -1 or right < -1:
        raise ValueError(f"window_size: entries must be >= 0 or -1 (unbounded), got "
                         f"{window_size!r}")
    if causal:
        right = 0
    return left, right


def _positions(positions: Any, batch: int, seqlen: int) -> np.ndarray:
    """apply_rotary's positions (int offset, (seqlen,) or (batch, seqlen)) -> (batch,
    seqlen) int64."""
    if isinstance(positions, (int, np.integer)) and not isinstance(positions, bool):
        p = np.arange(seqlen, dtype=np.int64) + np.int64(positions)
        return np.ascontiguousarray(np.broadcast_to(p, (batch, seqlen)))
    p = np.asarray(positions)
    if p.dtype.kind not in "iu":
        raise TypeError(f"positions: expected an int or an int array, got dtype {p.dtype}")
    if p.ndim == 0:
        return _positions(int(p), batch, seqlen)
    if p.ndim == 1 and p.shape == (seqlen,):
        p = np.broadcast_to(p, (batch, seqlen))
    if p.shape != (batch, seqlen):
        raise ValueError(f"positions: expected an int, or shape ({seqlen},) or "
                         f"({batch}, {seqlen}), got shape {p.shape}")
    return np.ascontiguousarray(p, dtype=np.int64)


# ------------------------------------------------------------------------ functions ---

def selective_scan_bwd(u: ArrayLike, delta: ArrayLike, A: ArrayLike, B: ArrayLike,
                       C: ArrayLike, D: ArrayLike = None, z: ArrayLike = None,
                       delta_bias: ArrayLike = None, delta_softplus: bool = False,
                       initial_state: ArrayLike = None, *, dout: ArrayLike,
                       dlast_state: ArrayLike = None) -> ScanGrads:
    """Gradients of :func:`samba_ext.selective_scan`.

    Forward arguments as there: u, delta, z (batch, dim, seqlen); A (dim, dstate);
    B, C (batch, dstate, seqlen) or (batch, ngroups, dstate, seqlen); D, delta_bias (dim,);
    initial_state (batch, dim, dstate). dout (batch, dim, seqlen) is dL/dy; dlast_state
    (batch, dim, dstate), optional, is dL/d(last state) when the forward returned it.

    Returns :class:`ScanGrads` (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias,
    dinitial_state), float32; dD/dz/ddelta_bias/dinitial_state are None when D/z/
    delta_bias/initial_state were None. The states are recomputed per time chunk from
    checkpoints (memory O(dim * dstate * 256) besides the gradients).
    """
    u = _arr(u, "u", 3)
    batch, dim, seqlen = u.shape
    delta = _arr(delta, "delta", 3)
    _shape(delta, "delta", u.shape, "the shape of u")
    A = _arr(A, "A", 2)
    _shape(A, "A", (dim, None), "(dim, dstate)")
    dstate = A.shape[1]
    if dstate < 1:
        raise ValueError("A: dstate (shape[1]) must be >= 1")
    B = _arr(B, "B")
    C = _arr(C, "C")
    if B.ndim not in (3, 4):
        raise ValueError(f"B: expected (batch, dstate, seqlen) or (batch, ngroups, dstate, "
                         f"seqlen), got shape {B.shape}")
    if B.ndim == 3:
        _shape(B, "B", (batch, dstate, seqlen), "(batch, dstate, seqlen)")
    else:
        _shape(B, "B", (batch, None, dstate, seqlen), "(batch, ngroups, dstate, seqlen)")
        if B.shape[1] < 1 or dim % B.shape[1] != 0:
            raise ValueError(f"B: ngroups (shape[1]) must divide dim {dim}, got {B.shape[1]}")
    _shape(C, "C", B.shape, "the shape of B")
    D = _arr(D, "D", optional=True)
    _shape(D, "D", (dim,), "(dim,)")
    z = _arr(z, "z", optional=True)
    _shape(z, "z", u.shape, "the shape of u")
    delta_bias = _arr(delta_bias, "delta_bias", optional=True)
    _shape(delta_bias, "delta_bias", (dim,), "(dim,)")
    initial_state = _arr(initial_state, "initial_state", optional=True)
    _shape(initial_state, "initial_state", (batch, dim, dstate), "(batch, dim, dstate)")
    dout = _arr(dout, "dout")
    _shape(dout, "dout", u.shape, "the shape of u and y")
    dlast_state = _arr(dlast_state, "dlast_state", optional=True)
    _shape(dlast_state, "dlast_state", (batch, dim, dstate), "(batch, dim, dstate)")
    return ScanGrads(*_core.selective_scan_bwd(u, delta, A, B, C, D, z, delta_bias,
                                               bool(delta_softplus), initial_state, dout,
                                               dlast_state))


def causal_conv1d_bwd(x: ArrayLike, weight: ArrayLike, bias: ArrayLike = None,
                      activation: Optional[str] = None, initial_states: ArrayLike = None, *,
                      dy: ArrayLike, dfinal_states: ArrayLike = None) -> Conv1dGrads:
    """Gradients of :func:`samba_ext.causal_conv1d`.

    Forward arguments as there: x (batch, dim, seqlen); weight (dim, width), 2 <= width <= 4;
    bias (dim,); activation None or "silu"/"swish"; initial_states (batch, dim, width-1).
    dy (batch, dim, seqlen) is dL/dy; dfinal_states (batch, dim, width-1), optional, is
    dL/d(final_states) when the forward returned them.

    Returns :class:`Conv1dGrads` (dx, dweight, dbias, dinitial_states), float32; dbias /
    dinitial_states are None when bias / initial_states were None.
    """
    if activation not in (None, "silu", "swish"):
        raise ValueError(f'activation: expected None, "silu" or "swish", got {activation!r}')
    x = _arr(x, "x", 3)
    batch, dim, seqlen = x.shape
    weight = _arr(weight, "weight", 2)
    _shape(weight, "weight", (dim, None), "(dim, width)")
    width = weight.shape[1]
    if not 2 <= width <= 4:
        raise ValueError(f"weight: width (shape[1]) must be 2, 3 or 4, got {width}")
    bias = _arr(bias, "bias", optional=True)
    _shape(bias, "bias", (dim,), "(dim,)")
    initial_states = _arr(initial_states, "initial_states", optional=True)
    _shape(initial_states, "initial_states", (batch, dim, width - 1), "(batch, dim, width-1)")
    dy = _arr(dy, "dy")
    _shape(dy, "dy", x.shape, "the shape of x and y")
    dfinal_states = _arr(dfinal_states, "dfinal_states", optional=True)
    _shape(dfinal_states, "dfinal_states", (batch, dim, width - 1), "(batch, dim, width-1)")
    return Conv1dGrads(*_core.causal_conv1d_bwd(x, weight, bias, activation is not None,
                                                initial_states, dy, dfinal_states))


def rms_norm_bwd(x: ArrayLike, weight: ArrayLike, eps: float = 1e-5,
                 residual: ArrayLike = None, *, dy: ArrayLike,
                 dresidual_out: ArrayLike = None) -> RmsNormGrads:
    """Gradients of :func:`samba_ext.rms_norm`.

    Forward arguments as there: x (..., n); weight (n,); eps; residual (x's shape) or None.
    dy (x's shape) is dL/dy; dresidual_out (x's shape), optional, is dL/d(x + residual) when
    the forward returned it. Returns :class:`RmsNormGrads` (dx, dweight, dresidual),
    float32; dresidual (equal to dx) is None when residual was None.
    """
    eps = _float(eps, "eps", 0.0, "a finite value >= 0")
    x = _arr(x, "x")
    if x.ndim < 1:
        raise ValueError("x: expected shape (..., n), got a 0-D array")
    weight = _arr(weight, "weight", 1)
    _shape(weight, "weight", (x.shape[-1],), "(n,), n = x.shape[-1]")
    residual = _arr(residual, "residual", optional=True)
    _shape(residual, "residual", x.shape, "the shape of x")
    dy = _arr(dy, "dy")
    _shape(dy, "dy", x.shape, "the shape of x")
    dresidual_out = _arr(dresidual_out, "dresidual_out", optional=True)
    _shape(dresidual_out, "dresidual_out", x.shape, "the shape of x")
    return RmsNormGrads(*_core.rms_norm_bwd(x, weight, eps, residual, dy, dresidual_out))


def swiglu_bwd(gate: ArrayLike, up: ArrayLike, *, dy: ArrayLike
               ) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of :func:`samba_ext.swiglu` (y = silu(gate) * up).

    gate, up, dy: equal shapes. Returns (dgate, dup), float32, of that shape.
    """
    gate = _arr(gate, "gate")
    up = _arr(up, "up")
    _shape(up, "up", gate.shape, "the shape of gate")
    dy = _arr(dy, "dy")
    _shape(dy, "dy", gate.shape, "the shape of gate")
    return _core.swiglu_bwd(gate, up, dy)


def apply_rotary_bwd(x: ArrayLike, positions: ArrayLike = 0, base: float = 10000.0, *,
                     dy: ArrayLike) -> np.ndarray:
    """Gradient of :func:`samba_ext.apply_rotary` with respect to x.

    Forward arguments as there: x (batch, seqlen, nheads, headdim), even headdim (only its
    shape is used; None takes dy's); positions an int offset, or ints (seqlen,) or
    (batch, seqlen); base. dy (batch, seqlen, nheads, headdim) is dL/dy.
    Returns dx (batch, seqlen, nheads, headdim) float32: dy rotated by the negative angles.
    """
    base = _float(base, "base", 0.0, "a finite value > 0")
    if base <= 0.0:
        raise ValueError(f"base: expected a finite value > 0, got {base!r}")
    dy = _arr(dy, "dy", 4)
    if x is not None:
        xs = np.shape(x)
        if tuple(xs) != dy.shape:
            raise ValueError(f"dy: expected the shape of x {tuple(xs)}, got {dy.shape}")
    if dy.shape[3] % 2 != 0:
        raise ValueError(f"dy: headdim (shape[3]) must be even, got {dy.shape[3]}")
    pos = _positions(positions, dy.shape[0], dy.shape[1])
    return _core.apply_rotary_bwd(dy, pos, base)


def _attn_qkv(q: ArrayLike, k: ArrayLike, v: ArrayLike
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    q = _arr(q, "q", 4)
    k = _arr(k, "k", 4)
    v = _arr(v, "v", 4)
    batch, _, nheads, headdim = q.shape
    _shape(k, "k", (batch, None, None, headdim), "(batch, seqlen_k, nheads_kv, headdim)")
    _shape(v, "v", k.shape, "the shape of k")
    if headdim < 1:
        raise ValueError("q: headdim (shape[3]) must be >= 1")
    if k.shape[2] < 1 or nheads % k.shape[2] != 0:
        raise ValueError(f"k: nheads_kv (shape[2]) must divide nheads {nheads}, got "
                         f"{k.shape[2]}")
    return q, k, v


def attention_fwd(q: ArrayLike, k: ArrayLike, v: ArrayLike,
                  softmax_scale: Optional[float] = None, causal: bool = False,
                  window_size: tuple[int, int] = (-1, -1), softcap: float = 0.0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Attention forward that also returns the log-sum-exp (flash-attn masking semantics).

    q (batch, seqlen_q, nheads, headdim); k, v (batch, seqlen_k, nheads_kv, headdim),
    nheads % nheads_kv == 0. Query i sits at key position p = i + seqlen_k - seqlen_q and
    sees keys j with p - left <= j <= p + right, window_size = (left, right), -1 unbounded;
    causal=True sets right = 0 (so causal with window_size=(w-1, 0) is
    ``swa_attention(window=w)``). Scores: s = softmax_scale q.k (default 1/sqrt(headdim)),
    then softcap * tanh(s / softcap) when softcap > 0.

    Returns (out (batch, seqlen_q, nheads, headdim), lse (batch, nheads, seqlen_q)), float32;
    a query that sees no key gets out = 0 and lse = -inf.
    """
    q, k, v = _attn_qkv(q, k, v)
    left, right = _windows(bool(causal), window_size)
    cap = _float(softcap, "softcap", 0.0, "a finite value >= 0")
    return _core.attention_fwd(q, k, v, _scale(softmax_scale, q.shape[3]), left, right, cap)


def attention_bwd(q: ArrayLike, k: ArrayLike, v: ArrayLike,
                  softmax_scale: Optional[float] = None, causal: bool = False,
                  window_size: tuple[int, int] = (-1, -1), softcap: float = 0.0, *,
                  dout: ArrayLike, out: ArrayLike = None, lse: ArrayLike = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of :func:`attention_fwd` (FlashAttention-2 style: the probabilities are
    recomputed from the saved log-sum-exp, nothing of size seqlen_q x seqlen_k is stored).

    Forward arguments as there; dout (q's shape) is dL/dout. out and lse are the forward's
    outputs; when either is None both are recomputed with :func:`attention_fwd`.
    Returns (dq (q's shape), dk, dv (k's shape)), float32.
    """
    q, k, v = _attn_qkv(q, k, v)
    left, right = _windows(bool(causal), window_size)
    cap = _float(softcap, "softcap", 0.0, "a finite value >= 0")
    scale = _scale(softmax_scale, q.shape[3])
    dout = _arr(dout, "dout", 4)
    _shape(dout, "dout", q.shape, "the shape of q and out")
    if out is None or lse is None:
        out, lse = _core.attention_fwd(q, k, v, scale, left, right, cap)
    else:
        out = _arr(out, "out", 4)
        _shape(out, "out", q.shape, "the shape of q")
        lse = _arr(lse, "lse", 3)
        _shape(lse, "lse", (q.shape[0], q.shape[2], q.shape[1]), "(batch, nheads, seqlen_q)")
    return _core.attention_bwd(q, k, v, out, lse, dout, scale, left, right, cap)


def swa_attention_bwd(q: ArrayLike, k: ArrayLike, v: ArrayLike, window: Optional[int] = None,
                      softmax_scale: Optional[float] = None, *, dout: ArrayLike
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of :func:`samba_ext.swa_attention` (causal sliding window, GQA).

    Forward arguments as there: q (batch, seqlen_q, nheads, headdim); k, v (batch, seqlen_k,
    nheads_kv, headdim), seqlen_k >= seqlen_q; window None (full causal) or >= 1.
    dout (q's shape). Returns (dq, dk, dv), float32.
    """
    if window is None:
        left = -1
    else:
        w = _int(window, "window")
        if w < 1:
            raise ValueError(f"window: expected None or an int >= 1, got {window!r}")
        left = w - 1
    qa = _arr(q, "q", 4)
    ka = _arr(k, "k", 4)
    if ka.shape[1] < qa.shape[1]:
        raise ValueError(f"k: seqlen_k (shape[1]) must be >= seqlen_q {qa.shape[1]}, got "
                         f"{ka.shape[1]}")
    return attention_bwd(qa, ka, v, softmax_scale, True, (left, 0), 0.0, dout=dout)
