"""Op contracts: the argument rules of every kernel op, in one place.

* :mod:`samba_ext.ops.contracts` - one checker per op (shapes, dtypes, ranges, in-place
  rules), called by :mod:`samba_ext.kernels` before the CPU or CUDA backend runs;
* :mod:`samba_ext.ops.checks` - the per-argument rules the checkers are written with;
* :mod:`samba_ext.ops.meta` - shape / dtype / layout of any host or CUDA array, read
  without a copy.
"""
from __future__ import annotations

from . import contracts

__all__ = ["contracts"]
