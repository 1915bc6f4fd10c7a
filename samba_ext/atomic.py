"""Atomic file writes: the one helper every writer of the package uses.

``with atomic_write(path) as fh: fh.write(...)`` writes to a fresh temporary file in the
target's folder (created with O_EXCL under an unpredictable name, so a symlink planted at
any fixed name is never followed), flushes and fsyncs it, and renames it over ``path``
(atomic on POSIX and Windows). Readers therefore see the old file or the complete new one,
never a mix, even when several processes write the same path at once (the last rename
wins). On any exception, KeyboardInterrupt included, the temporary file is removed and
``path`` is untouched.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import IO, Any

__all__ = ["atomic_write", "write_text_atomic", "process_umask"]


def process_umask() -> int:
    """The process umask, read without changing it where possible (Linux /proc), else the
    usual 0o022 (os.umask cannot be read without a racy set-and-restore)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _fsync_dir(folder: str) -> None:
    """Make the rename durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *,
                 encoding: str | None = None, newline: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path`` for writing; on success rename it to ``path``.

    mode: "wb" or "w" (text; ``encoding`` defaults to UTF-8). The file gets the permissions a
    plain ``open(path, "w")`` would give (0o666 minus the umask), not mkstemp's 0o600.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode: expected 'w' or 'wb', got {mode!r}")
    target = os.fspath(path)
    if os.path.isdir(target):
        raise IsADirectoryError(f"{target}: is a directory (expected a file path)")
    folder = os.path.dirname(target) or "."
    base = os.path.basename(target)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{base}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~process_umask())
        if mode == "w":
            fh: IO[Any] = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline=newline)
        else:
            fh = os.fdopen(fd, "wb")
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_dir(folder)


def write_text_atomic(path: str | os.PathLike, text: str) -> str:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_write(path, "w") as fh:
        fh.write(text)
    return os.fspath(path)
