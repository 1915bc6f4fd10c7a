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

CUDA arrays (DeviceArray, torch / cupy tensors: ``__dlpack__`` / ``__cuda_array_interface__``)
run the CUDA kernels (samba_ext/cuda/grad_scan.py for the scan and the conv, grad_small.py,
grad_attention.py) and return DeviceArrays: the gradients of activations in the dtypes of the
matching inputs (float32 / float16 / bfloat16), those of the scan's and the conv's parameters
and states, and lse, in float32; all accumulated in float32. Argument problems raise
TypeError/ValueError naming the argument.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import numpy as np

from . import _core
from .ops import checks as ck
from .ops import contracts
from .ops.meta import on_cuda

ArrayLike = Any

__all__ = [
    "ScanGrads", "Conv1dGrads", "RmsNormGrads",
    "selective_scan_bwd", "causal_conv1d_bwd", "rms_norm_bwd", "swiglu_bwd",
    "apply_rotary_bwd", "attention_fwd", "attention_bwd", "swa_attention_bwd",
]


class ScanGrads(NamedTuple):
    """Gradients of :func:`samba_ext.selective_scan`: float32 NumPy arrays, or DeviceArrays
    for CUDA inputs (du, ddelta, dz in their input's dtype, the others float32)."""
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
    """Gradients of :func:`samba_ext.causal_conv1d`: float32 NumPy arrays, or DeviceArrays
    for CUDA inputs (dx in x's dtype, the others float32)."""
    dx: np.ndarray                         # (batch, dim, seqlen)
    dweight: np.ndarray                    # (dim, width)
    dbias: Optional[np.ndarray]            # (dim,) or None
    dinitial_states: Optional[np.ndarray]  # (batch, dim, width-1) or None


class RmsNormGrads(NamedTuple):
    """Gradients of :func:`samba_ext.rms_norm` (float32)."""
    dx: np.ndarray                         # x's shape
    dweight: np.ndarray                    # (n,)
    dresidual: Optional[np.ndarray]        # dx itself (the same array) or None


# ------------------------------------------------------------------ argument checks ---
# The forward's arguments are checked by the op contracts (samba_ext.ops.contracts, the same
# rules as the forward ops; the scan's and the conv's gradients too); the other gradients and
# the backward-only options are checked here with the same building blocks
# (samba_ext.ops.checks). The C glue re-checks shapes so that a
# direct _core call cannot crash.

def _f32(x: Any) -> Optional[np.ndarray]:
    """Host float array -> float32 C-contiguous (bfloat16 and other NumPy-unknown float
    dtypes go through float32 first); None stays None."""
    if x is None:
        return None
    a = np.asarray(x)
    return np.ascontiguousarray(a, dtype=np.float32)


def _grad_like(g: Any, name: str, want: tuple, what: str, host: bool = True) -> Any:
    """A gradient input of shape ``want`` (None passes), as float32 NumPy when ``host``."""
    if g is None:
        return None
    ck.shape(ck.floats(g, name, len(want)), name, want, what)
    return _f32(g) if host else g


def _gpu(*arrays: Any) -> bool:
    """True when an input lives on a CUDA device: the call runs the CUDA backward."""
    return any(on_cuda(a) for a in arrays)


def _cuda(module: str) -> Any:
    """samba_ext.cuda.grad_<module> (imported lazily: CPU users never load the CUDA backend)."""
    if module == "attention":
        from .cuda import grad_attention as m
    else:
        from .cuda import grad_small as m
    return m


def _scale(softmax_scale: Any, headdim: int) -> float:
    s = ck.f32_scalar(softmax_scale, "softmax_scale", allow_none=True)
    return 1.0 / math.sqrt(headdim) if s is None else s


def _windows(causal: bool, window_size: Any) -> tuple[int, int]:
    """(left, right) with -1 = unbounded, flash-attn semantics (causal forces right = 0)."""
    try:
        left, right = window_size
    except (TypeError, ValueError) as e:
        raise TypeError("window_size: expected a pair (left, right) of ints, -1 = "
                        f"unbounded, got {window_size!r}") from e
    left = ck.int_scalar(left, "window_size[0]", lo=-1, expected="an int >= 0 or -1")
    right = ck.int_scalar(right, "window_size[1]", lo=-1, expected="an int >= 0 or -1")
    return left, 0 if causal else right


def _alibi(alibi_slopes: Any, batch: int, nheads: int) -> Any:
    """flash-attn's alibi_slopes: None, or finite slopes of shape (nheads,) or (batch,
    nheads) -> None or a (batch, nheads) float32 C-contiguous array. Slopes on a CUDA device
    are returned as they are (the CUDA call checks their shape; their values are not read
    back to the host, so a non-finite slope gives non-finite rows there)."""
    if alibi_slopes is None:
        return None
    if on_cuda(alibi_slopes):
        return alibi_slopes
    m = ck.floats(alibi_slopes, "alibi_slopes", (1, 2), "(nheads,) or (batch, nheads)")
    ck.shape(m, "alibi_slopes", (nheads,) if m.ndim == 1 else (batch, nheads),
             "(nheads,) or (batch, nheads) of q")
    a = np.asarray(alibi_slopes, dtype=np.float32)
    if not np.isfinite(a).all():
        raise ValueError("alibi_slopes: every slope must be finite (found NaN or inf)")
    return np.ascontiguousarray(np.broadcast_to(a, (batch, nheads)))


def _attn_qkv(q: Any, k: Any, v: Any, host: bool = True) -> tuple:
    """q (B, Lq, H, hd), k, v (B, Lk, Hkv, hd) with H % Hkv == 0 -> float32 arrays (the
    arrays themselves when not ``host``)."""
    mq = ck.floats(q, "q", 4, "(batch, seqlen_q, nheads, headdim)")
    mk = ck.floats(k, "k", 4, "(batch, seqlen_k, nheads_kv, headdim)")
    ck.dim(mk, "k", 0, mq.shape[0], "batch of q")      # k against q first, then v against k
    ck.dim(mk, "k", 3, mq.shape[3], "headdim of q")
    ck.same_shape(ck.floats(v, "v", 4), "v", mk, "k")
    if mq.shape[3] < 1:
        raise ValueError("q: headdim (shape[3]) must be >= 1")
    if mk.shape[2] < 1 or mq.shape[2] % mk.shape[2]:
        raise ValueError(f"q: nheads (q.shape[2] = {mq.shape[2]}) must be a multiple of "
                         f"nheads_kv (k.shape[2] = {mk.shape[2]}) for grouped-query attention")
    return (_f32(q), _f32(k), _f32(v)) if host else (q, k, v)


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

    With an input on a CUDA device the CUDA kernels run (samba_ext/cuda/grad_scan.py) and
    the gradients are DeviceArrays: du, ddelta, dz in the dtype of u, delta, z (float32,
    float16 or bfloat16), the others float32; accumulation is float32, the sums over
    channels and batch are atomic (their last bits may vary from run to run).
    """
    contracts.selective_scan_bwd(u, delta, A, B, C, D, z, delta_bias, initial_state, dout,
                                 dlast_state)
    if any(on_cuda(a) for a in (u, delta, A, B, C, D, z, delta_bias, initial_state, dout,
                                dlast_state)):
        from .cuda import grad_scan  # imported lazily: CPU users never load the CUDA backend

        return ScanGrads(*grad_scan.selective_scan_bwd(
            u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), initial_state, dout,
            dlast_state))
    u, delta, A, B, C, D, z, delta_bias, initial_state, dout, dlast_state = map(
        _f32, (u, delta, A, B, C, D, z, delta_bias, initial_state, dout, dlast_state))
    return ScanGrads(*_core.selective_scan_bwd(u, delta, A, B, C, D, z, delta_bias,
                                               bool(delta_softplus), initial_state, dout,
                                               dlast_state))


def causal_conv1d_bwd(x: ArrayLike, weight: ArrayLike, bias: ArrayLike = None,
                      activation: Optional[str] = None, initial_states: ArrayLike = None, *,
                      dy: ArrayLike, dfinal_states: ArrayLike = None,
                      seq_idx: ArrayLike = None) -> Conv1dGrads:
    """Gradients of :func:`samba_ext.causal_conv1d`.

    Forward arguments as there: x (batch, dim, seqlen); weight (dim, width), 2 <= width <= 4;
    bias (dim,); activation None or "silu"/"swish"; initial_states (batch, dim, width-1).
    dy (batch, dim, seqlen) is dL/dy; dfinal_states (batch, dim, width-1), optional, is
    dL/d(final_states) when the forward returned them. seq_idx (batch, seqlen): the
    forward's packed-sequence ids (then no initial or final states; CPU and CUDA).

    Returns :class:`Conv1dGrads` (dx, dweight, dbias, dinitial_states), float32; dbias /
    dinitial_states are None when bias / initial_states were None. With an input on a CUDA
    device the CUDA kernel runs and the gradients are DeviceArrays (dx in x's dtype, the
    others float32; float32 accumulation, deterministic).
    """
    contracts.causal_conv1d_bwd(x, weight, bias, activation, initial_states, dy,
                                dfinal_states, seq_idx)
    if any(on_cuda(a) for a in (x, weight, bias, initial_states, dy, dfinal_states, seq_idx)):
        from .cuda import grad_scan  # imported lazily: CPU users never load the CUDA backend

        return Conv1dGrads(*grad_scan.causal_conv1d_bwd(x, weight, bias, activation,
                                                        initial_states, dy, dfinal_states,
                                                        seq_idx=seq_idx))
    x, weight, bias, initial_states, dy, dfinal_states = map(
        _f32, (x, weight, bias, initial_states, dy, dfinal_states))
    seq = None if seq_idx is None else np.asarray(seq_idx, dtype=np.int64)
    return Conv1dGrads(*_core.causal_conv1d_bwd(x, weight, bias, activation is not None,
                                                initial_states, dy, dfinal_states, seq))


def rms_norm_bwd(x: ArrayLike, weight: ArrayLike, eps: float = 1e-5,
                 residual: ArrayLike = None, *, dy: ArrayLike,
                 dresidual_out: ArrayLike = None) -> RmsNormGrads:
    """Gradients of :func:`samba_ext.rms_norm`.

    Forward arguments as there: x (..., n); weight (n,); eps; residual (x's shape) or None.
    dy (x's shape) is dL/dy; dresidual_out (x's shape), optional, is dL/d(x + residual) when
    the forward returned it. Returns :class:`RmsNormGrads` (dx, dweight, dresidual),
    float32. The gradient of x + residual reaches both addends unchanged, so dresidual is dx
    itself (the same array, as autograd frameworks pass one gradient to both inputs of a
    sum; copy it before modifying one in place); None when residual was None.
    """
    gpu = _gpu(x, weight, residual, dy, dresidual_out)
    shape = tuple(contracts.rms_norm(x, weight, eps, residual))
    dy = _grad_like(dy, "dy", shape, "the shape of x", not gpu)
    if dy is None:
        raise TypeError("dy: expected an array of x's shape, got None")
    dresidual_out = _grad_like(dresidual_out, "dresidual_out", shape, "the shape of x", not gpu)
    eps = float(eps)
    if gpu:
        return RmsNormGrads(*_cuda("small").rms_norm_bwd(x, weight, eps, residual, dy,
                                                         dresidual_out))
    x, weight, residual = map(_f32, (x, weight, residual))
    return RmsNormGrads(*_core.rms_norm_bwd(x, weight, eps, residual, dy, dresidual_out))


def swiglu_bwd(gate: ArrayLike, up: ArrayLike, *, dy: ArrayLike
               ) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of :func:`samba_ext.swiglu` (y = silu(gate) * up).

    gate, up, dy: equal shapes. Returns (dgate, dup), float32, of that shape.
    """
    gpu = _gpu(gate, up, dy)
    shape = tuple(contracts.swiglu(gate, up))
    dy = _grad_like(dy, "dy", shape, "the shape of gate", not gpu)
    if dy is None:
        raise TypeError("dy: expected an array of gate's shape, got None")
    if gpu:
        return _cuda("small").swiglu_bwd(gate, up, dy)
    gate, up = _f32(gate), _f32(up)
    return _core.swiglu_bwd(gate, up, dy)


def apply_rotary_bwd(x: ArrayLike, positions: ArrayLike = 0, base: float = 10000.0, *,
                     dy: ArrayLike) -> np.ndarray:
    """Gradient of :func:`samba_ext.apply_rotary` with respect to x.

    Forward arguments as there: x (batch, seqlen, nheads, headdim), even headdim (only its
    shape is used; None takes dy's); positions an int offset, or ints (seqlen,) or
    (batch, seqlen); base. dy (batch, seqlen, nheads, headdim) is dL/dy.
    Returns dx (batch, seqlen, nheads, headdim) float32: dy rotated by the negative angles.
    """
    my = ck.floats(dy, "dy", 4, "(batch, seqlen, nheads, headdim)")
    if x is not None:
        ck.same_shape(my, "dy", ck.floats(x, "x"), "x")
    if my.shape[3] % 2:
        raise ValueError(f"dy: headdim (shape[3]) must be even for the NeoX half split, got "
                         f"{my.shape[3]}")
    contracts.apply_rotary(dy, positions, base)
    base = float(base)
    if _gpu(x, dy, positions):
        return _cuda("small").apply_rotary_bwd(dy, positions, base)
    dy = _f32(dy)
    pos = _positions(positions, dy.shape[0], dy.shape[1])
    return _core.apply_rotary_bwd(dy, pos, base)


def attention_fwd(q: ArrayLike, k: ArrayLike, v: ArrayLike,
                  softmax_scale: Optional[float] = None, causal: bool = False,
                  window_size: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                  alibi_slopes: ArrayLike = None) -> tuple[np.ndarray, np.ndarray]:
    """Attention forward that also returns the log-sum-exp (flash-attn masking semantics).

    q (batch, seqlen_q, nheads, headdim); k, v (batch, seqlen_k, nheads_kv, headdim),
    nheads % nheads_kv == 0. Query i sits at key position p = i + seqlen_k - seqlen_q and
    sees keys j with p - left <= j <= p + right, window_size = (left, right), -1 unbounded;
    causal=True sets right = 0 (so causal with window_size=(w-1, 0) is
    ``swa_attention(window=w)``). Scores: s = softmax_scale q.k (default 1/sqrt(headdim)),
    then softcap * tanh(s / softcap) when softcap > 0, then (ALiBi) s - slope |p - j| with
    alibi_slopes of shape (nheads,) or (batch, nheads), as flash-attn.

    Returns (out (batch, seqlen_q, nheads, headdim), lse (batch, nheads, seqlen_q)), float32;
    a query that sees no key gets out = 0 and lse = -inf.
    """
    gpu = _gpu(q, k, v)
    q, k, v = _attn_qkv(q, k, v, not gpu)
    left, right = _windows(bool(causal), window_size)
    cap = ck.f32_scalar(softcap, "softcap", lo=0.0, expected="a finite value >= 0")
    qs = tuple(np.shape(q))
    scale = _scale(softmax_scale, qs[3])
    alibi = _alibi(alibi_slopes, qs[0], qs[2])
    if gpu:
        return _cuda("attention").attention_fwd(q, k, v, scale, left, right, cap, alibi)
    return _core.attention_fwd(q, k, v, scale, left, right, cap, alibi)


def attention_bwd(q: ArrayLike, k: ArrayLike, v: ArrayLike,
                  softmax_scale: Optional[float] = None, causal: bool = False,
                  window_size: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                  alibi_slopes: ArrayLike = None, *, dout: ArrayLike, out: ArrayLike = None,
                  lse: ArrayLike = None, deterministic: bool = False
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of :func:`attention_fwd` (FlashAttention-2 style: the probabilities are
    recomputed from the saved log-sum-exp, nothing of size seqlen_q x seqlen_k is stored).

    Forward arguments as there; dout (q's shape) is dL/dout. out and lse are the forward's
    outputs; when either is None both are recomputed with :func:`attention_fwd`.
    deterministic: bitwise-repeatable results on the GPU's bfloat16 / float16 tensor-core
    path (otherwise it sums dq with atomics in a varying order); the CPU and float32 paths
    are always deterministic.
    Returns (dq (q's shape), dk, dv (k's shape)), float32.
    """
    gpu = _gpu(q, k, v, dout, out, lse)
    q, k, v = _attn_qkv(q, k, v, not gpu)
    left, right = _windows(bool(causal), window_size)
    cap = ck.f32_scalar(softcap, "softcap", lo=0.0, expected="a finite value >= 0")
    qs = tuple(np.shape(q))
    scale = _scale(softmax_scale, qs[3])
    alibi = _alibi(alibi_slopes, qs[0], qs[2])
    dout = _grad_like(dout, "dout", qs, "the shape of q and out", not gpu)
    if dout is None:
        raise TypeError("dout: expected an array of q's shape, got None")
    if out is not None and lse is not None:
        out = _grad_like(out, "out", qs, "the shape of q", not gpu)
        lse = _grad_like(lse, "lse", (qs[0], qs[2], qs[1]), "(batch, nheads, seqlen_q)",
                         not gpu)
    if gpu:
        return _cuda("attention").attention_bwd(q, k, v, scale, left, right, cap, dout, out,
                                                lse, alibi, deterministic=bool(deterministic))
    if out is None or lse is None:
        out, lse = _core.attention_fwd(q, k, v, scale, left, right, cap, alibi)
    return _core.attention_bwd(q, k, v, out, lse, dout, scale, left, right, cap, alibi)


def swa_attention_bwd(q: ArrayLike, k: ArrayLike, v: ArrayLike, window: Optional[int] = None,
                      softmax_scale: Optional[float] = None, *, dout: ArrayLike
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of :func:`samba_ext.swa_attention` (causal sliding window, GQA).

    Forward arguments as there: q (batch, seqlen_q, nheads, headdim); k, v (batch, seqlen_k,
    nheads_kv, headdim), seqlen_k >= seqlen_q; window None (full causal) or >= 1.
    dout (q's shape). Returns (dq, dk, dv), float32.
    """
    contracts.swa_attention(q, k, v, window, softmax_scale)
    left = -1 if window is None else int(window) - 1
    return attention_bwd(q, k, v, softmax_scale, True, (left, 0), 0.0, dout=dout)
