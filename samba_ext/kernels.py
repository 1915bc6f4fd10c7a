"""Public kernel API of samba_ext.

Every function dispatches on its inputs:

* NumPy arrays (or anything ``numpy.asarray`` accepts) run the C kernels on the CPU.
  float16 / float64 inputs are converted to float32; non-contiguous or negative-stride
  arrays are copied to C order first. Outputs are new float32 NumPy arrays.
* Arrays on a CUDA device (any object with ``__dlpack__`` reporting a CUDA device, or with
  ``__cuda_array_interface__``: torch, cupy, jax, ...) run the CUDA kernels without a copy
  and return a :class:`samba_ext.DeviceArray` (wrap it with ``torch.from_dlpack(y)`` or
  ``cupy.from_dlpack(y)``, again without a copy).
* NumPy inputs with ``device="cuda"`` are copied to the GPU, computed there, and returned
  as NumPy arrays.

Every call first checks its arguments against the op's contract
(:mod:`samba_ext.ops.contracts`: shapes, dtypes, ranges, in-place rules), whatever the
device, so one mistake gets one message on every backend; then it runs the CPU kernels
(``samba_ext._core``) or the CUDA ones (:mod:`samba_ext.cuda.ops`).

Argument names and orders follow mamba_ssm ``selective_scan_fn``, causal-conv1d and
flash-attn (``window_size=(window-1, 0)``), so research code can switch with small edits.
"""
from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np
import numpy.typing as npt

from . import _core
from .ops import contracts as _contract
from .ops.meta import on_cuda as _on_cuda

#: An input array: a NumPy array (or anything ``numpy.asarray`` accepts), or a CUDA array
#: (:class:`samba_ext.DeviceArray`, torch / cupy / jax tensors: ``__dlpack__`` or
#: ``__cuda_array_interface__``).
ArrayLike = Union[npt.ArrayLike, Any]
#: A result: a float32 NumPy array for NumPy inputs, a DeviceArray (or the caller's ``out=``
#: object) for CUDA inputs.
Array = Union[npt.NDArray[np.float32], Any]
#: An integer position / count array (host or CUDA) or a Python int.
IntArrayLike = Union[int, npt.ArrayLike, Any]

__all__ = [
    "selective_scan",
    "selective_state_update",
    "causal_conv1d",
    "causal_conv1d_update",
    "swa_attention",
    "swa_decode",
    "rms_norm",
    "apply_rotary",
    "swiglu",
]


def _where(name: str, arrays: tuple, device: Optional[str]) -> str:
    """Where the op runs: "cpu", "cuda-arrays" (an input lives on a CUDA device) or
    "cuda-host" (NumPy inputs with device="cuda": copied there and back)."""
    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"device: expected None, 'cpu' or 'cuda', got {device!r}")
    cuda_inputs = any(_on_cuda(a) for a in arrays)
    if device == "cpu" and cuda_inputs:
        raise ValueError(f"{name}: device='cpu' but an input is on a CUDA device; copy it to "
                         "the host first (e.g. tensor.cpu().numpy())")
    if cuda_inputs:
        return "cuda-arrays"
    return "cuda-host" if device == "cuda" else "cpu"


def _cuda_ops() -> Any:
    from .cuda import ops  # imported lazily: CPU users never load the CUDA backend

    return ops


def _finish(y: np.ndarray, out: Optional[np.ndarray]) -> np.ndarray:
    """CPU results: y itself, or y copied into the caller's ``out`` (checked by the contract)."""
    if out is None:
        return y
    np.copyto(out, y, casting="same_kind")
    return out


def selective_scan(u: ArrayLike, delta: ArrayLike, A: ArrayLike, B: ArrayLike, C: ArrayLike,
                   D: Optional[ArrayLike] = None, z: Optional[ArrayLike] = None,
                   delta_bias: Optional[ArrayLike] = None, delta_softplus: bool = False,
                   initial_state: Optional[ArrayLike] = None, return_last_state: bool = False,
                   *, out: Optional[Array] = None, device: Optional[str] = None,
                   stream: Any = None) -> Union[Array, tuple[Array, Array]]:
    """Mamba-1 selective scan (``mamba_ssm.selective_scan_fn`` semantics).

    Shapes: u, delta, z (batch, dim, seqlen); A (dim, dstate); B, C (batch, dstate, seqlen)
    or (batch, ngroups, dstate, seqlen) with dim % ngroups == 0; D, delta_bias (dim,);
    initial_state (batch, dim, dstate).

    Per step: dt = softplus(delta + delta_bias) (threshold 20) if delta_softplus;
    h = exp(dt*A) * h + dt*B*u; y = <h, C> + D*u; y *= silu(z) if z is given.
    Computed in float32, state float32.

    Returns y (batch, dim, seqlen), or (y, last_state (batch, dim, dstate)) when
    return_last_state.
    """
    where = _where("selective_scan", (u, delta, A, B, C, D, z, delta_bias, initial_state, out),
                   device)
    _contract.out_array(out, _contract.selective_scan(u, delta, A, B, C, D, z, delta_bias,
                                                      initial_state), where)
    if where != "cpu":
        return _cuda_ops().selective_scan(u, delta, A, B, C, D, z, delta_bias,
                                          bool(delta_softplus), initial_state,
                                          bool(return_last_state), out=out, stream=stream)
    res = _core.selective_scan(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus),
                               initial_state, bool(return_last_state))
    if return_last_state:
        return _finish(res[0], out), res[1]
    return _finish(res, out)


def selective_state_update(state: ArrayLike, x: ArrayLike, dt: ArrayLike, A: ArrayLike,
                           B: ArrayLike, C: ArrayLike, D: Optional[ArrayLike] = None,
                           z: Optional[ArrayLike] = None, dt_bias: Optional[ArrayLike] = None,
                           dt_softplus: bool = False, *, out: Optional[Array] = None,
                           device: Optional[str] = None, stream: Any = None) -> Array:
    """One selective-scan decode step; ``state`` is updated in place.

    Shapes: state (batch, dim, dstate) float32 C-contiguous (native byte order, writeable);
    x, dt, z (batch, dim); A (dim, dstate); B, C (batch, dstate) or (batch, ngroups, dstate);
    D, dt_bias (dim,). Returns y (batch, dim).
    """
    where = _where("selective_state_update", (state, x, dt, A, B, C, D, z, dt_bias, out),
                   device)
    _contract.out_array(out, _contract.selective_state_update(state, x, dt, A, B, C, D, z,
                                                              dt_bias), where)
    if where != "cpu":
        return _cuda_ops().selective_state_update(state, x, dt, A, B, C, D, z, dt_bias,
                                                  bool(dt_softplus), out=out, stream=stream)
    return _finish(_core.selective_state_update(state, x, dt, A, B, C, D, z, dt_bias,
                                                bool(dt_softplus)), out)


def causal_conv1d(x: ArrayLike, weight: ArrayLike, bias: Optional[ArrayLike] = None,
                  activation: Optional[str] = None, initial_states: Optional[ArrayLike] = None,
                  return_final_states: bool = False, *, seq_idx: Optional[ArrayLike] = None,
                  out: Optional[Array] = None, device: Optional[str] = None,
                  stream: Any = None) -> Union[Array, tuple[Array, Array]]:
    """Depthwise causal conv1d (``causal_conv1d_fn`` semantics).

    Shapes: x (batch, dim, seqlen); weight (dim, width), 2 <= width <= 4, weight[:, -1]
    multiplies the current token; bias (dim,); initial_states (batch, dim, width-1).
    activation: None or "silu" ("swish" is accepted as an alias). seq_idx (batch, seqlen)
    integer ids of packed sequences: y[t] sees the inputs x[s] with seq_idx[s] ==
    seq_idx[t] only, and y[t] = 0 where seq_idx[t] < 0 (padding, as causal-conv1d); no
    initial or final states with it; CPU and CUDA, where int32 and int64 device ids are read
    in place.
    Returns y (batch, dim, seqlen), or (y, final_states (batch, dim, width-1)).
    """
    where = _where("causal_conv1d", (x, weight, bias, initial_states, seq_idx, out), device)
    _contract.out_array(out, _contract.causal_conv1d(x, weight, bias, activation,
                                                     initial_states, seq_idx,
                                                     bool(return_final_states)), where)
    if where != "cpu":
        return _cuda_ops().causal_conv1d(x, weight, bias, activation, initial_states,
                                         bool(return_final_states), seq_idx=seq_idx, out=out,
                                         stream=stream)
    res = _core.causal_conv1d(x, weight, bias, activation, initial_states,
                              bool(return_final_states),
                              None if seq_idx is None else np.asarray(seq_idx, np.int64))
    if return_final_states:
        return _finish(res[0], out), res[1]
    return _finish(res, out)


def causal_conv1d_update(x: ArrayLike, conv_state: ArrayLike, weight: ArrayLike,
                         bias: Optional[ArrayLike] = None, activation: Optional[str] = None, *,
                         out: Optional[Array] = None, device: Optional[str] = None,
                         stream: Any = None) -> Array:
    """One conv decode step; ``conv_state`` (batch, dim, width-1) float32 (C-contiguous,
    native byte order, writeable) is updated in place.

    Shapes: x (batch, dim); weight (dim, width); bias (dim,). Returns y (batch, dim).
    """
    where = _where("causal_conv1d_update", (x, conv_state, weight, bias, out), device)
    _contract.out_array(out, _contract.causal_conv1d_update(x, conv_state, weight, bias,
                                                            activation), where)
    if where != "cpu":
        return _cuda_ops().causal_conv1d_update(x, conv_state, weight, bias, activation,
                                                out=out, stream=stream)
    return _finish(_core.causal_conv1d_update(x, conv_state, weight, bias, activation), out)


def swa_attention(q: ArrayLike, k: ArrayLike, v: ArrayLike, window: Optional[int] = None,
                  softmax_scale: Optional[float] = None, *, out: Optional[Array] = None,
                  device: Optional[str] = None, stream: Any = None) -> Array:
    """Causal sliding-window attention with GQA (flash-attn ``window_size=(window-1, 0)``).

    Shapes: q (batch, seqlen_q, nheads, headdim); k, v (batch, seqlen_k, nheads_kv, headdim),
    nheads % nheads_kv == 0, seqlen_k >= seqlen_q. Query i is at key position
    i + seqlen_k - seqlen_q and sees the ``window`` keys ending there (itself included);
    window=None is full causal attention. softmax_scale defaults to 1/sqrt(headdim).
    Returns out (batch, seqlen_q, nheads, headdim).
    """
    where = _where("swa_attention", (q, k, v, out), device)
    _contract.out_array(out, _contract.swa_attention(q, k, v, window, softmax_scale), where)
    if where != "cpu":
        return _cuda_ops().swa_attention(q, k, v, window, softmax_scale, out=out,
                                         stream=stream)
    return _finish(_core.swa_attention(q, k, v, window, softmax_scale), out)


def swa_decode(q: ArrayLike, k_cache: ArrayLike, v_cache: ArrayLike, pos: IntArrayLike,
               n_valid: IntArrayLike, softmax_scale: Optional[float] = None, *,
               out: Optional[Array] = None, device: Optional[str] = None,
               stream: Any = None) -> Array:
    """Decode attention over a ring-buffer KV cache.

    Shapes: q (batch, nheads, headdim); k_cache, v_cache (batch, capacity, nheads_kv,
    headdim); pos, n_valid (batch,) int. The newest key sits in slot pos % capacity, the
    n_valid - 1 older ones in the slots before it (mod capacity).
    Returns out (batch, nheads, headdim).
    """
    where = _where("swa_decode", (q, k_cache, v_cache, pos, n_valid, out), device)
    _contract.out_array(out, _contract.swa_decode(q, k_cache, v_cache, pos, n_valid,
                                                  softmax_scale), where)
    if where != "cpu":
        return _cuda_ops().swa_decode(q, k_cache, v_cache, pos, n_valid, softmax_scale,
                                      out=out, stream=stream)
    return _finish(_core.swa_decode(q, k_cache, v_cache, pos, n_valid, softmax_scale), out)


def rms_norm(x: ArrayLike, weight: ArrayLike, eps: float = 1e-5,
             residual: Optional[ArrayLike] = None, *, out: Optional[Array] = None,
             device: Optional[str] = None,
             stream: Any = None) -> Union[Array, tuple[Array, Array]]:
    """RMSNorm over the last axis: y = x * rsqrt(mean(x**2) + eps) * weight.

    Shapes: x (..., n); weight (n,). With ``residual`` (same shape as x) it returns
    (y, x + residual) where y normalises x + residual (the fused pre-norm residual add).
    eps: finite, >= 0 and within float32's range.
    """
    where = _where("rms_norm", (x, weight, residual, out), device)
    _contract.out_array(out, _contract.rms_norm(x, weight, eps, residual), where)
    if where != "cpu":
        return _cuda_ops().rms_norm(x, weight, float(eps), residual, out=out, stream=stream)
    res = _core.rms_norm(x, weight, float(eps), residual)
    if residual is not None:
        return _finish(res[0], out), res[1]
    return _finish(res, out)


def apply_rotary(x: ArrayLike, positions: IntArrayLike = 0, base: float = 10000.0, *,
                 out: Optional[Array] = None, device: Optional[str] = None,
                 stream: Any = None) -> Array:
    """Rotary position embedding, NeoX half-split over the full head dim.

    Shapes: x (batch, seqlen, nheads, headdim) with even headdim. positions: an int offset
    (token t gets position offset + t), or an int array (seqlen,) or (batch, seqlen) of
    absolute positions. theta_i = base ** (-2i/headdim);
    out1 = x1 cos - x2 sin, out2 = x1 sin + x2 cos. Returns a new array.
    """
    where = _where("apply_rotary", (x, positions, out), device)
    _contract.out_array(out, _contract.apply_rotary(x, positions, base), where)
    if where != "cpu":
        return _cuda_ops().apply_rotary(x, positions, float(base), out=out, stream=stream)
    return _finish(_core.apply_rotary(x, positions, float(base)), out)


def swiglu(gate: ArrayLike, up: ArrayLike, *, out: Optional[Array] = None,
           device: Optional[str] = None, stream: Any = None) -> Array:
    """SwiGLU activation: silu(gate) * up, elementwise, any (equal) shapes."""
    where = _where("swiglu", (gate, up, out), device)
    _contract.out_array(out, _contract.swiglu(gate, up), where)
    if where != "cpu":
        return _cuda_ops().swiglu(gate, up, out=out, stream=stream)
    return _finish(_core.swiglu(gate, up), out)
