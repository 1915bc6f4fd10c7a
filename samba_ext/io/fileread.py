"""Reading tensor bytes with plain file reads (no memory map).

A memory map of a file that another process truncates turns every later access to the lost
pages into SIGBUS, which kills the process. Reading with ``readinto`` instead turns the same
event into a short read, reported as :class:`~samba_ext.errors.CheckpointError`. Both readers
(safetensors and ``.pth``) fetch tensor bytes only through :func:`read_bytes`.
"""
from __future__ import annotations

import os
from typing import BinaryIO

import numpy as np

from ..errors import CheckpointError

__all__ = ["read_bytes", "check_size"]


def read_bytes(fh: BinaryIO, offset: int, nbytes: int, fname: str, what: str) -> np.ndarray:
    """``nbytes`` bytes of the open file ``fh`` from ``offset`` as a new uint8 array of shape
    (nbytes,). A file that ends early (truncated, or shrunk by another process while it is
    being read) raises CheckpointError naming ``fname`` and ``what``."""
    out = np.empty(nbytes, dtype=np.uint8)
    if nbytes == 0:
        return out
    view = memoryview(out)
    fh.seek(offset)
    got = 0
    while got < nbytes:
        k = fh.readinto(view[got:])
        if not k:
            raise CheckpointError(
                f"{fname}: {what}: the file ends at byte {offset + got}, but {nbytes} bytes "
                f"from byte {offset} were expected (truncated, or changed by another process "
                "while it was being read)")
        got += k
    return out


def check_size(fh: BinaryIO, expected: int, fname: str) -> None:
    """CheckpointError unless the open file still has ``expected`` bytes (it was not replaced
    or truncated between parsing its header and reading its data)."""
    size = os.fstat(fh.fileno()).st_size
    if size != expected:
        raise CheckpointError(f"{fname}: the file changed size while it was being read "
                              f"({expected} -> {size} bytes); reload it once it is complete")
