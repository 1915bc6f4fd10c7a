"""The CUDA backend of samba_ext, by concern:

* :mod:`~samba_ext.cuda.runtime` - is CUDA usable (and if not, why), streams, the launch
  recorder of the model backend, synchronisation;
* :mod:`~samba_ext.cuda.array` - :class:`DeviceArray` and :func:`to_device` / :func:`empty` /
  :func:`zeros`; :mod:`~samba_ext.cuda.layout` - dtypes and strides;
* :mod:`~samba_ext.cuda.interop` - DLPack / ``__cuda_array_interface__`` import and export;
* :mod:`~samba_ext.cuda.call` - one op call (device, stream, views, outputs);
* :mod:`~samba_ext.cuda.ops` - the kernel ops; :mod:`~samba_ext.cuda.blas` - cuBLAS GEMMs;
* :mod:`~samba_ext.cuda.memory` - memory-pool statistics.

Imported lazily by samba_ext.kernels (CPU users never load it); importing it never needs a
GPU: every function that does raises :class:`samba_ext.errors.CudaUnavailableError` saying
why when CUDA cannot be used.

Every op here takes the same arguments as its namesake in :mod:`samba_ext.kernels` plus
``out=`` and ``stream=``:

* Arrays on a CUDA device are used in place, without a copy: any object with
  ``__dlpack__`` (torch, cupy, jax, ...; a versioned DLPack 1.x capsule is requested, with
  a fallback to the legacy capsule) or ``__cuda_array_interface__`` (v2/v3). float32,
  float16 and bfloat16 are accepted; arithmetic, accumulation and recurrent states are
  float32. Strided inputs are read through their strides where the kernel supports it and
  copied to C order otherwise; arrays written in place (``state``, ``conv_state``, ``out``)
  must be C-contiguous.
* The result is a :class:`DeviceArray` (exports ``__dlpack__``, ``__dlpack_device__`` and
  ``__cuda_array_interface__`` v3, so ``torch.from_dlpack(y)`` / ``cupy.from_dlpack(y)``
  wrap it without a copy) in the dtype of the main input, or the caller's ``out=`` object.
* NumPy inputs with ``device="cuda"`` are copied to the GPU as float32, computed there and
  returned as float32 NumPy arrays (in-place states are copied back into the NumPy array).
* Streams (DLPack rules): the work is queued on ``stream`` (an int ``cudaStream_t``, 0/1 =
  legacy default, 2 = per-thread default, or an object with ``cuda_stream`` (torch), ``ptr``
  (cupy) or ``__cuda_stream__``). With ``stream=None`` it is the current stream of the
  framework of the inputs (torch / cupy), the stream of an input DeviceArray, or the legacy
  default stream. Inputs are requested for that stream (``__dlpack__(stream=...)``), so the
  producer orders its pending work before ours (plain torch tensors are read from their
  pointer and strides, and the stream waits once for torch's current stream instead).
* Errors: a failed launch raises :class:`CudaError` (a RuntimeError) naming the kernel;
  set ``SAMBA_EXT_CUDA_SYNC=1`` to synchronize after every launch so that an asynchronous
  fault is reported by the kernel that caused it. Without a usable GPU every function
  raises :class:`samba_ext.errors.CudaUnavailableError` saying why ("built without CUDA",
  "no device", "driver too old").
* Devices: a call runs on the device of its CUDA inputs (device 0 for NumPy inputs) and
  leaves the calling thread's current device as it found it, also when it raises (as
  PyTorch's device guard: not when the previous device has no active primary context,
  which would be created).
* Memory comes from the CUDA stream-ordered allocator (``cudaMallocAsync`` on the device's
  default pool); :func:`empty_cache` returns cached blocks to the driver.
"""
from __future__ import annotations

from typing import Any

from .array import DeviceArray, empty, to_device, zeros
from .blas import linear, matmul
from .memory import empty_cache, memory_stats
from .ops import (apply_rotary, causal_conv1d, causal_conv1d_update, rms_norm, selective_scan,
                  selective_state_update, swa_attention, swa_decode, swiglu)
from .runtime import is_available, set_poison, synchronize, unavailable_reason

__all__ = [
    "DeviceArray", "CudaError", "selective_scan", "selective_state_update", "causal_conv1d",
    "causal_conv1d_update", "swa_attention", "swa_decode", "rms_norm", "apply_rotary",
    "swiglu", "to_device", "empty", "zeros", "linear", "matmul", "synchronize", "empty_cache",
    "memory_stats", "is_available", "unavailable_reason", "set_poison",
]


def __getattr__(name: str) -> Any:
    if name == "CudaError":
        from .runtime import cuda_error_class

        return cuda_error_class()
    raise AttributeError(f"module 'samba_ext.cuda' has no attribute {name!r}")
