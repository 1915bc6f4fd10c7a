"""Atomic file writes for the checkpoint writers: the package's one helper,
:func:`samba_ext.atomic.atomic_write` (re-exported here; not a second implementation)."""
from __future__ import annotations

from ..atomic import atomic_write

__all__ = ["atomic_write"]
