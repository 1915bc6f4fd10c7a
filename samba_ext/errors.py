"""Exceptions raised by samba_ext."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint or tokenizer file is malformed, truncated, hostile or incompatible.

    Subclasses ValueError so that ``except ValueError`` also catches it.
    """


class CudaUnavailableError(RuntimeError):
    """A call asked for CUDA, but it cannot run here (built without CUDA, no device, or
    a driver too old). The message says which."""
