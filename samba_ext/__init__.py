"""samba_ext: C and CUDA kernels for Samba hybrid language models.

Quick start::

    import samba_ext
    samba_ext.show_config()
    y = samba_ext.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True)
    model = samba_ext.Samba.load("samba-tiny")
    print(model.generate("The pass key is", max_new_tokens=10))

Kernels live in :mod:`samba_ext.kernels` (re-exported here), the model in
:mod:`samba_ext.model`, evaluations in :mod:`samba_ext.eval`.
"""
from __future__ import annotations

__version__ = "0.1.0"

import os as _os

# OpenMP threads that busy-wait between parallel regions steal the cores from NumPy's BLAS
# threads and from each other: measured on 2 cores, prefill ~17% slower when quiet and decode
# 5-10x slower under load (benchmarks/results/cpu_model.md). Sleep-waiting is the default here;
# it only takes effect if set before the OpenMP runtime loads, and a user's value wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import _core
from .kernels import (apply_rotary, causal_conv1d, causal_conv1d_update, rms_norm,
                      selective_scan, selective_state_update, swa_attention, swa_decode,
                      swiglu)
from ._info import ISA_LEVELS as _ISA_LEVELS
from ._info import cuda_available, get_num_threads, set_num_threads, show_config

if _os.environ.get("SAMBA_EXT_ISA") and _os.environ["SAMBA_EXT_ISA"] not in _ISA_LEVELS:
    import warnings as _warnings

    from ._info import isa_note as _isa_note

    _warnings.warn(_isa_note(_os.environ["SAMBA_EXT_ISA"]), stacklevel=2)

__all__ = [
    "__version__", "show_config", "set_num_threads", "get_num_threads", "cuda_available",
    "selective_scan", "selective_state_update", "causal_conv1d", "causal_conv1d_update",
    "swa_attention", "swa_decode", "rms_norm", "apply_rotary", "swiglu",
    "SambaConfig", "Samba", "DeviceArray", "CheckpointError",
]

_LAZY = {
    "SambaConfig": ("config", "SambaConfig"),
    "Samba": ("model", "Samba"),
    "CheckpointError": ("errors", "CheckpointError"),
    "DeviceArray": ("cuda.array", "DeviceArray"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{mod}", __name__), attr)
    raise AttributeError(f"module 'samba_ext' has no attribute {name!r}")
