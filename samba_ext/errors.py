"""Exceptions raised by samba_ext."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint or tokenizer file is malformed, truncated, hostile or incompatible.

    Subclasses ValueError so that ``except ValueError`` also catches it.
    """


class CudaUnavailableError(RuntimeError):
    """A call asked for CUDA, but it cannot run here (built without CUDA, no device, or
    a driver too old). The message says which."""


class PeerArgumentError(ValueError, RuntimeError):
    """A bad argument to one of samba_ext.torch's functions named after a peer's
    (flash_attn_with_kvcache, ...). A ValueError, as everywhere in samba_ext, and a
    RuntimeError, as the peers' own argument checks (``TORCH_CHECK``) raise, so code written
    against either keeps catching it."""
