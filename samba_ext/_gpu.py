"""Deprecated alias of :mod:`samba_ext.cuda` (kept for one release).

``samba_ext._gpu`` was the single module of the CUDA backend; it is now the subpackage
:mod:`samba_ext.cuda`, split by concern. Import from there::

    from samba_ext.cuda import DeviceArray, to_device, matmul
"""
from __future__ import annotations

import warnings
from typing import Any

from .cuda import (DeviceArray, apply_rotary, causal_conv1d, causal_conv1d_update, empty,
                   empty_cache, is_available, linear, matmul, memory_stats, rms_norm,
                   selective_scan, selective_state_update, set_poison, swa_attention,
                   swa_decode, swiglu, synchronize, to_device, unavailable_reason, zeros)
from .cuda.layout import DTYPES as _DTYPES, FLOATS as _FLOATS, host_contig as _host_contig
from .cuda.runtime import launch as _launch, require as _require

warnings.warn("samba_ext._gpu is deprecated; use samba_ext.cuda", DeprecationWarning,
              stacklevel=2)

__all__ = [
    "DeviceArray", "CudaError", "selective_scan", "selective_state_update", "causal_conv1d",
    "causal_conv1d_update", "swa_attention", "swa_decode", "rms_norm", "apply_rotary",
    "swiglu", "to_device", "empty", "zeros", "linear", "matmul", "synchronize", "empty_cache",
    "memory_stats", "is_available", "unavailable_reason", "set_poison",
]
_ALIASES = (_DTYPES, _FLOATS, _host_contig, _launch, _require)  # former private names


def __getattr__(name: str) -> Any:
    if name == "CudaError":
        from .cuda.runtime import cuda_error_class

        return cuda_error_class()
    raise AttributeError(f"module 'samba_ext._gpu' has no attribute {name!r}")
