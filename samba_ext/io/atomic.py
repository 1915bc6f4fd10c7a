"""Atomic file writes: a unique temporary file in the target's folder (exclusive create, so a
planted file or symlink is never written through), flushed and fsynced, then renamed over the
target. Readers see the old file or the new one, never a mix; two writers racing on one path
each write their own temporary file, and the last rename wins whole."""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import BinaryIO, Iterator

__all__ = ["atomic_write"]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """``with atomic_write(p) as f: f.write(...)``: ``p`` is replaced only if the block
    completes; on any exception (KeyboardInterrupt included) the temporary file is removed."""
    target = os.fspath(path)
    if os.path.isdir(target):
        raise IsADirectoryError(f"{target}: is a directory (expected a file path)")
    folder = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(target) + ".", suffix=".tmp",
                               dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), 0o644)     # mkstemp creates 0600
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):       # make the rename itself durable (POSIX)
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
