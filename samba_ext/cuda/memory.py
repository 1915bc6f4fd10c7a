"""Device memory statistics and cache control of the stream-ordered pool
(``cudaMallocAsync`` on each device's default pool). Neither function changes the calling
thread's current device (``_cuda.trim`` switches to ``device`` and back itself)."""
from __future__ import annotations

from .runtime import require

__all__ = ["empty_cache", "memory_stats"]


def empty_cache(device: int = 0) -> None:
    """Return the memory cached by the stream-ordered pool to the driver."""
    require().trim(int(device))


def memory_stats(device: int = 0) -> dict:
    """Bytes reserved by / in use in the device's default memory pool."""
    return dict(require().pool_stats(int(device)))
