"""The small backend interface the model is written against (one model code path).

This module holds the interface only (:class:`Backend`); the implementations are
:class:`samba_ext.backend.CPUBackend` and :class:`samba_ext.backend_cuda.CUDABackend`, and
:func:`samba_ext.backend.get_backend` picks one. Both import this module, never each other.

:class:`samba_ext.model.Samba` never touches NumPy for tensor math directly: it calls the
methods of a :class:`Backend`. :class:`CPUBackend` implements them with NumPy (``np.matmul``
for every GEMM, i.e. the BLAS NumPy links) and the C kernels of :mod:`samba_ext.kernels` (called through ``_core``).
A CUDA backend (``samba_ext/backend_cuda.py``, class ``CUDABackend``) implements the same
methods with cuBLAS and the CUDA kernels; :func:`get_backend` picks one by device name.

Array objects ("Array" below) are whatever the backend uses (``numpy.ndarray`` here). The
model relies only on these array features, which NumPy, CuPy and torch all have:

* ``.shape``, ``.ndim``, ``.nbytes``;
* ``.reshape(*shape)`` of a C-contiguous array (a view) and of a last-axis slice when only the
  last axis is split;
* basic slicing with integer ranges (``x[:, a:b]``, ``x[:, -1]``), returning views.

Everything else goes through the methods below. Activations are float32 on the CPU; a
device backend may keep them in a lower precision (``act_dtype``: the CUDA backend's default
is bfloat16), while the residual stream, recurrent states and logits stay float32 (see each
method). Index arrays and positions are host ``numpy`` int64 arrays (a device backend
copies them) or int64 arrays made by :meth:`Backend.asarray` / :meth:`Backend.step_inputs`
(already on the device: used as they are, unchecked). Methods return new arrays unless they
say "in place".

Decode steps may be replayed (:meth:`Backend.replay_step`): :meth:`Samba.step` passes every
per-step host value (tokens, positions, ring slots, valid counts) through one
:meth:`Backend.step_inputs` array, so a backend that recorded a step can run it again with
new inputs without running the model's Python code.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

Array = Any

__all__ = ["Backend", "Array"]


class Backend:
    """Interface (abstract). Shapes use B batch, L tokens, H/Hkv heads, hd head size."""

    name: str = "abstract"
    device: str = "none"
    #: dtype name of activations between kernels (GEMM outputs, q/k/v, MLP)
    act_dtype: str = "float32"
    #: dtype name of the attention key/value caches of a new state
    cache_dtype: str = "float32"
    #: prefill chunk used when the caller gives none (see :meth:`default_chunk`)
    default_chunk_size: int = 2048

    def default_chunk(self, cfg: Any, batch: int, length: int) -> int:
        """The prefill chunk size when the caller gives none: ``default_chunk_size``."""
        return self.default_chunk_size

    def mlp_width(self, intermediate_size: int) -> int:
        """The SwiGLU hidden width the model's weights are laid out with on this backend:
        ``intermediate_size`` itself (the default), or more when the backend pads it (zero
        rows of the gate/up weights and zero columns of the down weight: the padded hidden
        units are silu(0) * 0 = 0 and add nothing). The config and the weights read back
        (:meth:`Samba.state_dict`) keep ``intermediate_size``."""
        return int(intermediate_size)

    # ------------------------------------------------------------------ decode steps ---
    def step_key(self, tag: Any, arrays: Sequence[Array]) -> Any:
        """A key identifying a decode step's launch sequence (``tag``: the model and batch;
        ``arrays``: the state arrays it updates), or None when the backend does not replay
        steps (the default)."""
        return None

    def replay_step(self, key: Any, inputs: np.ndarray) -> Any:
        """Run the decode step recorded under ``key`` again with new host ``inputs`` (the
        int64 array :meth:`step_inputs` was given when it was recorded, same shape) and
        return its logits (float32, a new array), or None when there is none (the default):
        the caller then runs the step (:meth:`begin_step` ... :meth:`end_step`)."""
        return None

    def begin_step(self, key: Any = None) -> None:
        """Called by :meth:`Samba.step` before its first backend call. A backend may record the
        step's launches from here until :meth:`end_step` (or ``to_numpy``); the CUDA backend
        captures them into a CUDA graph, kept under ``key`` for :meth:`replay_step`. The
        default does nothing."""

    def step_inputs(self, host: np.ndarray) -> Array:
        """The step's host int64 inputs as an index array of the backend (the values a replay
        replaces). The default returns ``host`` itself."""
        return host

    def end_step(self, logits: Array) -> Array:
        """Ends the step opened by :meth:`begin_step`; returns its logits as an array that
        later steps do not overwrite. The default returns ``logits``."""
        return logits

    # ---------------------------------------------------------------- arrays and copies ---
    def asarray(self, a: np.ndarray, dtype: Any = np.float32) -> Array:
        """Host array -> backend array of ``dtype`` (C-contiguous; may share memory on CPU)."""
        raise NotImplementedError

    def to_numpy(self, x: Array) -> np.ndarray:
        """Backend array -> host ``numpy.ndarray`` (a copy for device arrays)."""
        raise NotImplementedError

    def zeros(self, shape: Sequence[int], dtype: Any = np.float32) -> Array:
        """New zero-filled C-contiguous array."""
        raise NotImplementedError

    def copy(self, x: Array) -> Array:
        """Deep C-contiguous copy."""
        raise NotImplementedError

    def concat(self, xs: Sequence[Array], axis: int) -> Array:
        """Concatenate along ``axis`` (new C-contiguous array)."""
        raise NotImplementedError

    def transpose(self, x: Array) -> Array:
        """New C-contiguous array with the last two axes swapped (x may be a strided view)."""
        raise NotImplementedError

    def take(self, x: Array, idx: np.ndarray, axis: int, dtype: Any = None) -> Array:
        """Gather ``x`` along ``axis`` at int64 indices ``idx`` (any shape; the result has
        idx's shape in place of that axis). Embedding lookup: ``take(wte, ids, 0,
        np.float32)``. dtype: of the result (None: x's; the CPU backend is float32 always)."""
        raise NotImplementedError

    def put(self, dst: Array, idx: np.ndarray, src: Array, axis: int) -> None:
        """In place: ``dst[(slice(None),)*axis + (idx,)] = src`` for 1-D host int64 ``idx``."""
        raise NotImplementedError

    def write_rows(self, dst: Array, slots: np.ndarray, src: Array) -> None:
        """In place: ``dst[b, slots[b]] = src[b]`` for every b. dst (B, C, ...), slots (B,)
        host int64, src (B, ...) (ring-buffer write of one decode step)."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------- GEMM ---
    def matmul(self, a: Array, b: Array, trans_a: bool = False, trans_b: bool = False,
               dtype: Any = None) -> Array:
        """``op(a) @ op(b)`` over the last two axes, op = transpose of the last two axes when
        the flag is set; leading (batch) axes broadcast as in ``numpy.matmul`` (a 2-D weight
        against a 3-D batch). Accumulation in float32 or better; the result is ``dtype``
        (None: ``act_dtype``; ``np.float32`` for logits). The CPU backend is float32 always."""
        raise NotImplementedError

    # ------------------------------------------------------------------------- kernels ---
    # Same arguments and semantics as the functions of samba_ext.kernels (see there).
    def rms_norm(self, x, weight, eps, residual=None):
        """(..., n) -> y, or (y, x + residual) when residual is given. y is an activation
        (``act_dtype``); x + residual has residual's dtype (the float32 residual stream)."""
        raise NotImplementedError

    def rms_norm_matmul(self, x, weight, eps, residual, w, dtype=None):
        """``matmul(rms_norm(x, weight, eps, residual), w, trans_b=True, dtype=dtype)``: the
        pre-norm of a block and the product that reads it; returns the product, or (product,
        x + residual) when residual is given. A backend may run the two as one kernel (the
        CUDA backend does for one row) with the same result."""
        if residual is None:
            return self.matmul(self.rms_norm(x, weight, eps), w, trans_b=True, dtype=dtype)
        n, r = self.rms_norm(x, weight, eps, residual)
        return self.matmul(n, w, trans_b=True, dtype=dtype), r

    def swiglu_matmul(self, gate, up, w, dtype=None):
        """``matmul(swiglu(gate, up), w, trans_b=True, dtype=dtype)``: an MLP's down
        projection. A backend may run the two as one kernel (the CUDA backend does for one
        row) with the same result."""
        return self.matmul(self.swiglu(gate, up), w, trans_b=True, dtype=dtype)

    def rotary_write_kv(self, qkv, n_head, n_kv_head, positions, base, k_cache, v_cache,
                        slots):
        """A decode step's attention input: qkv (B, (H + 2G) hd) = [q | k | v] heads; q and k
        rotated at positions (B,), k written into k_cache[b, slots[b]] and v into
        v_cache[b, slots[b]] (caches (B, C, G, hd)); returns q (B, H, hd). A backend may run
        it as one kernel (the CUDA backend does) with the same result."""
        B = qkv.shape[0]
        H, G = n_head, n_kv_head
        hd = qkv.shape[1] // (H + 2 * G)
        qk = self.apply_rotary(qkv[:, : (H + G) * hd].reshape(B, 1, H + G, hd),
                               positions.reshape(B, 1), base)
        self.write_rows(k_cache, slots, qk[:, 0, H:])
        self.write_rows(v_cache, slots, qkv[:, (H + G) * hd:].reshape(B, G, hd))
        return qk[:, 0, :H]

    def apply_rotary(self, x, positions, base):
        """x (B, L, H, hd); positions int64 (B, L) absolute, or an int (the first position of
        every row). NeoX half split."""
        raise NotImplementedError

    def swiglu(self, gate, up):
        """silu(gate) * up."""
        raise NotImplementedError

    def causal_conv1d(self, x, weight, bias, initial_states):
        """SiLU(depthwise causal conv): x (B, E, L) -> (y (B, E, L), final_states (B, E, K-1))."""
        raise NotImplementedError

    def causal_conv1d_update(self, x, conv_state, weight, bias):
        """x (B, E); conv_state (B, E, K-1) updated in place; returns SiLU(conv) (B, E)."""
        raise NotImplementedError

    def selective_scan(self, u, delta, A, B, C, D, z, delta_bias, initial_state):
        """Mamba scan with softplus(delta + delta_bias) and the silu(z) gate:
        u, delta, z (B, E, L); A (E, N); B, C (B, N, L); returns (y (B, E, L), state (B, E, N))."""
        raise NotImplementedError

    def selective_state_update(self, state, x, dt, A, B, C, D, z, dt_bias):
        """One scan step, state (B, E, N) updated in place; x, dt, z (B, E); B, C (B, N);
        returns y (B, E)."""
        raise NotImplementedError

    def dt_state_update(self, state, x, dt_in, dt_proj, A, B, C, D, z, dt_bias):
        """One scan step whose dt (B, E) = dt_in (B, R) @ dt_proj (E, R)^T (Mamba's low-rank
        dt projection), as matmul then selective_state_update; returns y (B, E). A backend may
        run it as one kernel (the CUDA backend does at batch 1) with the same result."""
        dt = self.matmul(dt_in, dt_proj, trans_b=True)
        return self.selective_state_update(state, x, dt, A, B, C, D, z, dt_bias)

    def swa_attention(self, q, k, v, window):
        """q (B, Lq, H, hd); k, v (B, Lk, Hkv, hd), Lk >= Lq, query i at key index
        i + Lk - Lq; window None = full causal. Returns (B, Lq, H, hd)."""
        raise NotImplementedError

    def swa_decode(self, q, k_cache, v_cache, pos, n_valid):
        """q (B, H, hd); caches (B, C, Hkv, hd); newest key at slot pos % C; pos, n_valid host
        int64 (B,). Returns (B, H, hd)."""
        raise NotImplementedError
