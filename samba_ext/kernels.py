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

Argument names and orders follow mamba_ssm ``selective_scan_fn``, causal-conv1d and
flash-attn (``window_size=(window-1, 0)``), so research code can switch with small edits.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import _core

ArrayLike = Any

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


def _on_gpu(x: Any) -> bool:
    """True for arrays that live on a CUDA device (DLPack device type 2, or CAI)."""
    if x is None or isinstance(x, (np.ndarray, int, float, list, tuple)):
        return False
    dev = getattr(x, "__dlpack_device__", None)
    if dev is not None:
        try:
            return int(dev()[0]) in (2, 13)  # kDLCUDA, kDLCUDAManaged
        except Exception:
            return False
    return hasattr(x, "__cuda_array_interface__")


def _gpu_call(name: str, args: tuple, kwargs: dict, device: Optional[str]) -> Any:
    """Route a call to the CUDA backend when an input is on the GPU or device='cuda'."""
    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"device: expected None, 'cpu' or 'cuda', got {device!r}")
    gpu_inputs = any(_on_gpu(a) for a in args) or any(_on_gpu(v) for v in kwargs.values())
    if device == "cpu" and gpu_inputs:
        raise ValueError(f"{name}: device='cpu' but an input is on a CUDA device; copy it to "
                         "the host first (e.g. tensor.cpu().numpy())")
    if not gpu_inputs and device != "cuda":
        return NotImplemented
    from . import _gpu  # imported lazily: CPU users never touch CUDA

    return getattr(_gpu, name)(*args, **kwargs)


def _finish(y: np.ndarray, out: Optional[np.ndarray]) -> np.ndarray:
    if out is None:
        return y
    if not isinstance(out, np.ndarray):
        raise TypeError("out: expected a numpy.ndarray for a CPU call")
    if out.shape != y.shape:
        raise ValueError(f"out: expected shape {y.shape}, got {out.shape}")
    np.copyto(out, y, casting="same_kind")
    return out


def selective_scan(u: ArrayLike, delta: ArrayLike, A: ArrayLike, B: ArrayLike, C: ArrayLike,
                   D: ArrayLike = None, z: ArrayLike = None, delta_bias: ArrayLike = None,
                   delta_softplus: bool = False, initial_state: ArrayLike = None,
                   return_last_state: bool = False, *, out: Any = None,
                   device: Optional[str] = None, stream: Optional[int] = None) -> Any:
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
    kw = dict(D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
              initial_state=initial_state, return_last_state=return_last_state)
    r = _gpu_call("selective_scan", (u, delta, A, B, C),
                  dict(kw, out=out, stream=stream), device)
    if r is not NotImplemented:
        return r
    res = _core.selective_scan(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus),
                               initial_state, bool(return_last_state))
    if return_last_state:
        return _finish(res[0], out), res[1]
    return _finish(res, out)


def selective_state_update(state: ArrayLike, x: ArrayLike, dt: ArrayLike, A: ArrayLike,
                           B: ArrayLike, C: ArrayLike, D: ArrayLike = None,
                           z: ArrayLike = None, dt_bias: ArrayLike = None,
                           dt_softplus: bool = False, *, out: Any = None,
                           device: Optional[str] = None, stream: Optional[int] = None) -> Any:
    """One selective-scan decode step; ``state`` is updated in place.

    Shapes: state (batch, dim, dstate) float32 C-contiguous; x, dt, z (batch, dim);
    A (dim, dstate); B, C (batch, dstate) or (batch, ngroups, dstate); D, dt_bias (dim,).
    Returns y (batch, dim).
    """
    r = _gpu_call("selective_state_update", (state, x, dt, A, B, C),
                  dict(D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus, out=out,
                       stream=stream), device)
    if r is not NotImplemented:
        return r
    return _finish(_core.selective_state_update(state, x, dt, A, B, C, D, z, dt_bias,
                                                bool(dt_softplus)), out)


def causal_conv1d(x: ArrayLike, weight: ArrayLike, bias: ArrayLike = None,
                  activation: Optional[str] = None, initial_states: ArrayLike = None,
                  return_final_states: bool = False, *, out: Any = None,
                  device: Optional[str] = None, stream: Optional[int] = None) -> Any:
    """Depthwise causal conv1d (``causal_conv1d_fn`` semantics).

    Shapes: x (batch, dim, seqlen); weight (dim, width), 2 <= width <= 4, weight[:, -1]
    multiplies the current token; bias (dim,); initial_states (batch, dim, width-1).
    activation: None or "silu" ("swish" is accepted as an alias).
    Returns y (batch, dim, seqlen), or (y, final_states (batch, dim, width-1)).
    """
    r = _gpu_call("causal_conv1d", (x, weight),
                  dict(bias=bias, activation=activation, initial_states=initial_states,
                       return_final_states=return_final_states, out=out, stream=stream),
                  device)
    if r is not NotImplemented:
        return r
    res = _core.causal_conv1d(x, weight, bias, activation, initial_states,
                              bool(return_final_states))
    if return_final_states:
        return _finish(res[0], out), res[1]
    return _finish(res, out)


def causal_conv1d_update(x: ArrayLike, conv_state: ArrayLike, weight: ArrayLike,
                         bias: ArrayLike = None, activation: Optional[str] = None, *,
                         out: Any = None, device: Optional[str] = None,
                         stream: Optional[int] = None) -> Any:
    """One conv decode step; ``conv_state`` (batch, dim, width-1) float32 is updated in place.

    Shapes: x (batch, dim); weight (dim, width); bias (dim,). Returns y (batch, dim).
    """
    r = _gpu_call("causal_conv1d_update", (x, conv_state, weight),
                  dict(bias=bias, activation=activation, out=out, stream=stream), device)
    if r is not NotImplemented:
        return r
    return _finish(_core.causal_conv1d_update(x, conv_state, weight, bias, activation), out)


def swa_attention(q: ArrayLike, k: ArrayLike, v: ArrayLike, window: Optional[int] = None,
                  softmax_scale: Optional[float] = None, *, out: Any = None,
                  device: Optional[str] = None, stream: Optional[int] = None) -> Any:
    """Causal sliding-window attention with GQA (flash-attn ``window_size=(window-1, 0)``).

    Shapes: q (batch, seqlen_q, nheads, headdim); k, v (batch, seqlen_k, nheads_kv, headdim),
    nheads % nheads_kv == 0, seqlen_k >= seqlen_q. Query i is at key position
    i + seqlen_k - seqlen_q and sees the ``window`` keys ending there (itself included);
    window=None is full causal attention. softmax_scale defaults to 1/sqrt(headdim).
    Returns out (batch, seqlen_q, nheads, headdim).
    """
    r = _gpu_call("swa_attention", (q, k, v),
                  dict(window=window, softmax_scale=softmax_scale, out=out, stream=stream),
                  device)
    if r is not NotImplemented:
        return r
    return _finish(_core.swa_attention(q, k, v, window, softmax_scale), out)


def swa_decode(q: ArrayLike, k_cache: ArrayLike, v_cache: ArrayLike, pos: ArrayLike,
               n_valid: ArrayLike, softmax_scale: Optional[float] = None, *, out: Any = None,
               device: Optional[str] = None, stream: Optional[int] = None) -> Any:
    """Decode attention over a ring-buffer KV cache.

    Shapes: q (batch, nheads, headdim); k_cache, v_cache (batch, capacity, nheads_kv,
    headdim); pos, n_valid (batch,) int. The newest key sits in slot pos % capacity, the
    n_valid - 1 older ones in the slots before it (mod capacity).
    Returns out (batch, nheads, headdim).
    """
    r = _gpu_call("swa_decode", (q, k_cache, v_cache, pos, n_valid),
                  dict(softmax_scale=softmax_scale, out=out, stream=stream), device)
    if r is not NotImplemented:
        return r
    return _finish(_core.swa_decode(q, k_cache, v_cache, pos, n_valid, softmax_scale), out)


def rms_norm(x: ArrayLike, weight: ArrayLike, eps: float = 1e-5,
             residual: ArrayLike = None, *, out: Any = None, device: Optional[str] = None,
             stream: Optional[int] = None) -> Any:
    """RMSNorm over the last axis: y = x * rsqrt(mean(x**2) + eps) * weight.

    Shapes: x (..., n); weight (n,). With ``residual`` (same shape as x) it returns
    (y, x + residual) where y normalises x + residual (the fused pre-norm residual add).
    """
    r = _gpu_call("rms_norm", (x, weight),
                  dict(eps=eps, residual=residual, out=out, stream=stream), device)
    if r is not NotImplemented:
        return r
    res = _core.rms_norm(x, weight, float(eps), residual)
    if residual is not None:
        return _finish(res[0], out), res[1]
    return _finish(res, out)


def apply_rotary(x: ArrayLike, positions: ArrayLike = 0, base: float = 10000.0, *,
                 out: Any = None, device: Optional[str] = None,
                 stream: Optional[int] = None) -> Any:
    """Rotary position embedding, NeoX half-split over the full head dim.

    Shapes: x (batch, seqlen, nheads, headdim) with even headdim. positions: an int offset
    (token t gets position offset + t), or an int array (seqlen,) or (batch, seqlen) of
    absolute positions. theta_i = base ** (-2i/headdim);
    out1 = x1 cos - x2 sin, out2 = x1 sin + x2 cos. Returns a new array.
    """
    r = _gpu_call("apply_rotary", (x,),
                  dict(positions=positions, base=base, out=out, stream=stream), device)
    if r is not NotImplemented:
        return r
    return _finish(_core.apply_rotary(x, positions, float(base)), out)


def swiglu(gate: ArrayLike, up: ArrayLike, *, out: Any = None,
           device: Optional[str] = None, stream: Optional[int] = None) -> Any:
    """SwiGLU activation: silu(gate) * up, elementwise, any (equal) shapes."""
    r = _gpu_call("swiglu", (gate, up), dict(out=out, stream=stream), device)
    if r is not NotImplemented:
        return r
    return _finish(_core.swiglu(gate, up), out)
