"""One contract per kernel op: the argument rules, checked once before a backend runs.

:mod:`samba_ext.kernels` calls the checker of an op with the caller's arguments before it
picks the CPU (``samba_ext._core``) or CUDA (:mod:`samba_ext.cuda.ops`) backend, as ggml
checks an op before any backend sees it. A checker reads shapes and dtypes only (never
copies or synchronises a CUDA array), raises ``TypeError``/``ValueError`` naming the argument
and the fix, and returns the shape of the op's main output (for ``out=``).

Conventions shared by all ops:

* float inputs: float16/float32/float64 on the CPU, float16/bfloat16/float32 on CUDA; any
  layout (copied where a backend needs it). Results and recurrent states are float32.
* arrays updated in place (``state``, ``conv_state``): float32, native byte order,
  C-contiguous, aligned, writeable.
* scalars a kernel receives as float32 (``eps``, ``softmax_scale``) must be finite and
  within float32's range; sizes and positions are integers (not bool) that fit in int64.

The backends keep only the checks that protect memory (buffer sizes, contiguity, the dtype
they read), so a direct ``_core`` call with bad arguments raises instead of crashing.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import checks as ck
from .meta import on_cuda

__all__ = ["selective_scan", "selective_state_update", "causal_conv1d",
           "causal_conv1d_update", "swa_attention", "swa_decode", "rms_norm", "apply_rotary",
           "swiglu", "out_array", "activation_code", "selective_scan_bwd", "causal_conv1d_bwd"]


def _bc(m: ck.ArrayMeta, name: str, batch: int, dim: int, dstate: int,
        seqlen: Optional[int]) -> int:
    """B or C: (batch, dstate[, seqlen]) or (batch, ngroups, dstate[, seqlen]); -> ngroups."""
    t = () if seqlen is None else (seqlen,)
    tail = "" if seqlen is None else ", seqlen"
    base = 2 + len(t)
    if m.ndim not in (base, base + 1):
        raise ValueError(f"{name}: expected shape (batch, dstate{tail}) or (batch, ngroups, "
                         f"dstate{tail}), got shape {m.shape}")
    groups = 1 if m.ndim == base else m.shape[1]
    if m.ndim == base + 1 and groups < 1:
        raise ValueError(f"{name}: ngroups (shape[1]) must be >= 1, got shape {m.shape}")
    if m.ndim == base + 1 and dim % groups:
        raise ValueError(f"{name}: ngroups {groups} must divide dim {dim} (channel d uses "
                         f"group d // (dim // ngroups)), got shape {m.shape}")
    want = (batch, dstate) + t if m.ndim == base else (batch, groups, dstate) + t
    ck.shape(m, name, want, "batch and dstate as in the other inputs"
             + ("" if seqlen is None else ", seqlen as in u"))
    return groups


def _dstate(mA: ck.ArrayMeta) -> int:
    """A's dstate (shape[1]); a scan without state is refused, forward and backward alike."""
    if mA.shape[1] < 1:
        raise ValueError("A: dstate (shape[1]) must be >= 1; a scan needs at least one state")
    return mA.shape[1]


def selective_scan(u: Any, delta: Any, A: Any, B: Any, C: Any, D: Any = None, z: Any = None,
                   delta_bias: Any = None, initial_state: Any = None) -> tuple:
    """Mamba-1 scan. -> y shape (batch, dim, seqlen)."""
    mu = ck.floats(u, "u", 3, "(batch, dim, seqlen)")
    batch, dim, L = mu.shape
    ck.same_shape(ck.floats(delta, "delta", 3), "delta", mu, "u")
    mA = ck.floats(A, "A", 2, "(dim, dstate)")
    ck.dim(mA, "A", 0, dim, "dim, as in u")
    N = _dstate(mA)
    gB = _bc(ck.floats(B, "B", (3, 4)), "B", batch, dim, N, L)
    gC = _bc(ck.floats(C, "C", (3, 4)), "C", batch, dim, N, L)
    if gC != gB:
        raise ValueError(f"C: ngroups {gC} does not match B's ngroups {gB}")
    ck.shape(None if D is None else ck.floats(D, "D", 1), "D", (dim,), "dim")
    ck.same_shape(None if z is None else ck.floats(z, "z", 3), "z", mu, "u")
    ck.shape(None if delta_bias is None else ck.floats(delta_bias, "delta_bias", 1),
             "delta_bias", (dim,), "dim")
    ck.shape(None if initial_state is None else ck.floats(initial_state, "initial_state", 3),
             "initial_state", (batch, dim, N), "batch, dim, dstate")
    return (batch, dim, L)


def selective_state_update(state: Any, x: Any, dt: Any, A: Any, B: Any, C: Any,
                           D: Any = None, z: Any = None, dt_bias: Any = None) -> tuple:
    """One scan step; ``state`` is updated in place. -> y shape (batch, dim)."""
    ms = ck.inplace(state, "state", 3, "(batch, dim, dstate)")
    mx = ck.floats(x, "x", 2, "(batch, dim)")
    batch, dim = mx.shape
    ck.same_shape(ck.floats(dt, "dt", 2), "dt", mx, "x (batch, dim)")
    mA = ck.floats(A, "A", 2, "(dim, dstate)")
    ck.dim(mA, "A", 0, dim, "dim, as in x")
    N = _dstate(mA)
    gB = _bc(ck.floats(B, "B", (2, 3)), "B", batch, dim, N, None)
    gC = _bc(ck.floats(C, "C", (2, 3)), "C", batch, dim, N, None)
    if gC != gB:
        raise ValueError(f"C: ngroups {gC} does not match B's ngroups {gB}")
    ck.shape(None if D is None else ck.floats(D, "D", 1), "D", (dim,), "dim")
    ck.same_shape(None if z is None else ck.floats(z, "z", 2), "z", mx, "x (batch, dim)")
    ck.shape(None if dt_bias is None else ck.floats(dt_bias, "dt_bias", 1), "dt_bias",
             (dim,), "dim")
    ck.shape(ms, "state", (batch, dim, N), "batch, dim as in x; dstate as in A")
    return (batch, dim)


def activation_code(activation: Any) -> int:
    """None -> 0, "silu" / "swish" -> 1."""
    if activation is None:
        return 0
    if not isinstance(activation, str):
        raise TypeError(f'activation: expected None, "silu" or "swish", got '
                        f"{type(activation).__name__}")
    if activation in ("silu", "swish"):
        return 1
    raise ValueError(f'activation: expected None, "silu" or "swish", got {activation!r}')


def _conv_weight(weight: Any, dim: int) -> int:
    """weight (dim, width), 2 <= width <= 4 -> width."""
    mw = ck.meta(weight, "weight")
    if mw.ndim == 3 and mw.shape[1] == 1:
        raise ValueError("weight: expected a 2-D array (dim, width), got a 3-D (dim, 1, width) "
                         "Conv1d weight; pass weight[:, 0, :]")
    mw = ck.floats(weight, "weight", 2, "(dim, width)")
    ck.dim(mw, "weight", 0, dim, "dim of x")
    if not 2 <= mw.shape[1] <= 4:
        raise ValueError(f"weight: width (shape[1]) must be 2, 3 or 4, got {mw.shape[1]}")
    return mw.shape[1]


def causal_conv1d(x: Any, weight: Any, bias: Any = None, activation: Any = None,
                  initial_states: Any = None, seq_idx: Any = None,
                  final_states: bool = False) -> tuple:
    """Depthwise causal conv; seq_idx (batch, seqlen) integer sequence ids of packed
    sequences, without initial states or final states (as causal-conv1d). -> y shape
    (batch, dim, seqlen)."""
    activation_code(activation)
    mx = ck.floats(x, "x", 3, "(batch, dim, seqlen)")
    batch, dim, L = mx.shape
    W = _conv_weight(weight, dim)
    ck.shape(None if bias is None else ck.floats(bias, "bias", 1), "bias", (dim,), "dim of x")
    ck.shape(None if initial_states is None else ck.floats(initial_states, "initial_states",
                                                            3),
             "initial_states", (batch, dim, W - 1), "batch, dim of x; width - 1")
    if seq_idx is not None:
        ck.shape(ck.ints(seq_idx, "seq_idx", 2, "(batch, seqlen)"), "seq_idx", (batch, L),
                 "batch, seqlen of x")
        if initial_states is not None or final_states:
            raise ValueError("seq_idx: packed sequences take no initial_states and return no "
                             "final states (as causal-conv1d); pass initial_states=None and "
                             "return_final_states=False")
    return mx.shape


def causal_conv1d_update(x: Any, conv_state: Any, weight: Any, bias: Any = None,
                         activation: Any = None) -> tuple:
    """One conv step; ``conv_state`` is updated in place. -> y shape (batch, dim)."""
    activation_code(activation)
    mx = ck.floats(x, "x", 2, "(batch, dim)")
    batch, dim = mx.shape
    W = _conv_weight(weight, dim)
    ck.shape(None if bias is None else ck.floats(bias, "bias", 1), "bias", (dim,), "dim of x")
    ms = ck.inplace(conv_state, "conv_state", 3, "(batch, dim, width - 1)")
    ck.shape(ms, "conv_state", (batch, dim, W - 1), "batch, dim of x; width - 1")
    return mx.shape


def _gqa(H: int, Hkv: int, qname: str, kname: str, axis: int) -> None:
    if Hkv == 0 and H > 0:
        raise ValueError(f"{kname}: nheads_kv ({kname}.shape[2]) must be >= 1")
    if Hkv > 0 and H % Hkv:
        raise ValueError(f"{qname}: nheads ({qname}.shape[{axis}] = {H}) must be a multiple "
                         f"of nheads_kv ({kname}.shape[2] = {Hkv}) for grouped-query "
                         f"attention")


def swa_attention(q: Any, k: Any, v: Any, window: Any = None,
                  softmax_scale: Any = None) -> tuple:
    """Sliding-window attention. -> out shape (batch, seqlen_q, nheads, headdim)."""
    ck.int_scalar(window, "window", lo=1, allow_none=True,
                  expected="an int >= 1 (the number of keys each query sees, itself "
                           "included; None = full causal)")
    ck.f32_scalar(softmax_scale, "softmax_scale", allow_none=True)
    mq = ck.floats(q, "q", 4, "(batch, seqlen_q, nheads, headdim)")
    mk = ck.floats(k, "k", 4, "(batch, seqlen_k, nheads_kv, headdim)")
    mv = ck.floats(v, "v", 4, "(batch, seqlen_k, nheads_kv, headdim)")
    B, Lq, H, hd = mq.shape
    ck.dim(mk, "k", 0, B, "batch of q")
    ck.dim(mk, "k", 3, hd, "headdim of q")
    ck.same_shape(mv, "v", mk, "k")
    _gqa(H, mk.shape[2], "q", "k", 2)
    if mk.shape[1] < Lq:
        raise ValueError(f"k: seqlen_k (k.shape[1] = {mk.shape[1]}) must be >= seqlen_q "
                         f"(q.shape[1] = {Lq}); the last seqlen_q keys belong to the queries, "
                         f"earlier ones are past context")
    return mq.shape


def _host_ints(x: Any) -> Optional[np.ndarray]:
    return None if on_cuda(x) else np.asarray(x)


def swa_decode(q: Any, k_cache: Any, v_cache: Any, pos: Any, n_valid: Any,
               softmax_scale: Any = None) -> tuple:
    """Ring-buffer decode attention. -> out shape (batch, nheads, headdim). ``pos`` and
    ``n_valid`` are (batch,) integer arrays (host values are range-checked; CUDA ones are
    read by the kernel without a synchronisation)."""
    ck.f32_scalar(softmax_scale, "softmax_scale", allow_none=True)
    mq = ck.floats(q, "q", 3, "(batch, nheads, headdim)")
    mk = ck.floats(k_cache, "k_cache", 4, "(batch, capacity, nheads_kv, headdim)")
    mv = ck.floats(v_cache, "v_cache", 4, "(batch, capacity, nheads_kv, headdim)")
    B, H, hd = mq.shape
    ck.dim(mk, "k_cache", 0, B, "batch of q")
    ck.dim(mk, "k_cache", 3, hd, "headdim of q")
    ck.same_shape(mv, "v_cache", mk, "k_cache")
    _gqa(H, mk.shape[2], "q", "k_cache", 1)
    cap = mk.shape[1]
    ck.shape(ck.ints(pos, "pos", 1, "(batch,)"), "pos", (B,), "batch")
    ck.shape(ck.ints(n_valid, "n_valid", 1, "(batch,)"), "n_valid", (B,), "batch")
    p, n = _host_ints(pos), _host_ints(n_valid)
    if n is not None and n.size and (n.min() < 1 or n.max() > cap):
        bad = int(np.flatnonzero((n < 1) | (n > cap))[0])
        raise ValueError(f"n_valid: expected 1 <= n_valid[b] <= capacity (k_cache.shape[1] = "
                         f"{cap}), got n_valid[{bad}] = {int(n[bad])}")
    if p is not None and p.size and p.min() < 0:
        bad = int(np.flatnonzero(p < 0)[0])
        raise ValueError(f"pos: expected pos[b] >= 0 (absolute position of the newest key), "
                         f"got pos[{bad}] = {int(p[bad])}")
    return mq.shape


def rms_norm(x: Any, weight: Any, eps: Any = 1e-5, residual: Any = None) -> tuple:
    """RMSNorm over the last axis. -> y shape (x's shape)."""
    ck.f32_scalar(eps, "eps", lo=0.0, expected="a finite value >= 0")
    mx = ck.floats(x, "x")
    if mx.ndim < 1:
        raise ValueError("x: expected an array of shape (..., n) with at least 1 dimension, "
                         "got a 0-D array")
    n = mx.shape[-1]
    ck.shape(ck.floats(weight, "weight", 1, "(n,)"), "weight", (n,), "last dim of x")
    ck.same_shape(None if residual is None else ck.floats(residual, "residual"), "residual",
                  mx, "x")
    return mx.shape


def apply_rotary(x: Any, positions: Any = 0, base: Any = 10000.0) -> tuple:
    """NeoX rotary embedding. -> y shape (x's shape)."""
    ck.real_scalar(base, "base", lo=0.0, expected="a finite value > 0")
    mx = ck.floats(x, "x", 4, "(batch, seqlen, nheads, headdim)")
    B, L, _, hd = mx.shape
    if hd % 2:
        raise ValueError(f"x: head dim (shape[3]) must be even for the NeoX half split, got "
                         f"{hd}")
    if positions is None or isinstance(positions, (bool, np.bool_, float, np.floating)):
        raise TypeError(f"positions: expected an int offset or an int array (seqlen,) or "
                        f"(batch, seqlen), got {type(positions).__name__}")
    if isinstance(positions, (int, np.integer)) or (isinstance(positions, np.ndarray)
                                                     and positions.ndim == 0):
        off = ck.int_scalar(positions.item() if isinstance(positions, np.ndarray)
                            else positions, "positions", lo=-ck.INT64_MAX - 1,
                            expected="an int offset")
        if L and off > ck.INT64_MAX - (L - 1):
            raise ValueError(f"positions: offset {off} + seqlen {L} overflows int64")
        return mx.shape
    mp = ck.ints(positions, "positions", (1, 2), "(seqlen,) or (batch, seqlen)")
    ck.shape(mp, "positions", (L,) if mp.ndim == 1 else (B, L),
             "seqlen of x" if mp.ndim == 1 else "batch, seqlen of x")
    return mx.shape


def swiglu(gate: Any, up: Any) -> tuple:
    """silu(gate) * up. -> y shape (gate's shape)."""
    mg = ck.floats(gate, "gate")
    ck.same_shape(ck.floats(up, "up"), "up", mg, "gate")
    return mg.shape


def out_array(out: Any, shape: tuple, where: str) -> None:
    """``out=``: an array of the op's output shape on the device the op runs on ("cpu":
    a numpy.ndarray; "cuda" with CUDA inputs: a CUDA array; host inputs with device="cuda":
    a numpy.ndarray)."""
    if out is None:
        return
    m = ck.meta(out, "out")
    if m.dtype not in ck.FLOAT_DTYPES:
        raise TypeError(f"out: expected a floating-point array, got dtype {m.dtype}")
    ck.shape(m, "out", shape)
    cuda = on_cuda(out)
    if where == "cuda-arrays" and not cuda:
        raise TypeError(f"out: expected a CUDA array like the inputs, got {ck.describe(out)}")
    if where != "cuda-arrays" and not isinstance(out, np.ndarray):
        raise TypeError(f"out: expected a numpy.ndarray for a call on NumPy inputs, got "
                        f"{ck.describe(out)}")
    if m.writeable is False:     # checked before the kernel runs, not at the copy after it
        raise ValueError("out: the array is read-only; pass a writable array")


# ------------------------------------------------------------------------- backward ---
# The backward of an op takes the forward's arguments (checked by the forward's contract)
# plus the gradients of the forward's outputs.

def _grad(g: Any, name: str, want: tuple, what: str, layout: Optional[str] = None) -> None:
    """A gradient input of shape ``want`` (``what`` explains it); None passes unless
    ``layout`` (the axes, for the message) says the gradient is required."""
    if g is None:
        if layout is not None:
            raise TypeError(f"{name}: expected an array {layout}, got None")
        return
    ck.shape(ck.floats(g, name, len(want)), name, want, what)


def selective_scan_bwd(u: Any, delta: Any, A: Any, B: Any, C: Any, D: Any = None,
                       z: Any = None, delta_bias: Any = None, initial_state: Any = None,
                       dout: Any = None, dlast_state: Any = None) -> tuple:
    """Backward of the scan: the forward's rules, dstate >= 1, dout (batch, dim, seqlen)
    (required) and dlast_state (batch, dim, dstate). -> (batch, dim, seqlen, dstate)."""
    batch, dim, L = selective_scan(u, delta, A, B, C, D, z, delta_bias, initial_state)
    N = ck.meta(A, "A").shape[1]
    _grad(dout, "dout", (batch, dim, L), "the shape of u and y", "(batch, dim, seqlen)")
    _grad(dlast_state, "dlast_state", (batch, dim, N), "(batch, dim, dstate)")
    return (batch, dim, L, N)


def causal_conv1d_bwd(x: Any, weight: Any, bias: Any = None, activation: Any = None,
                      initial_states: Any = None, dy: Any = None,
                      dfinal_states: Any = None, seq_idx: Any = None) -> tuple:
    """Backward of the conv: the forward's rules, dy (batch, dim, seqlen) (required) and
    dfinal_states (batch, dim, width - 1). -> (batch, dim, seqlen, width)."""
    batch, dim, L = causal_conv1d(x, weight, bias, activation, initial_states, seq_idx,
                                  dfinal_states is not None)
    W = ck.meta(weight, "weight").shape[1]
    _grad(dy, "dy", (batch, dim, L), "the shape of x and y", "(batch, dim, seqlen)")
    _grad(dfinal_states, "dfinal_states", (batch, dim, W - 1), "(batch, dim, width-1)")
    return (batch, dim, L, W)
