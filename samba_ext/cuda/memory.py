"""Device memory statistics and cache control of the stream-ordered pool
(``cudaMallocAsync`` on each device's default pool). Neither function changes the calling
thread's current device (``_cuda.trim`` switches to ``device`` and back itself)."""
from __future__ import annotations

import sys

from .runtime import require

__all__ = ["empty_cache", "memory_stats", "release_torch_cache"]


def empty_cache(device: int = 0) -> None:
    """Return the memory cached by the stream-ordered pool to the driver."""
    require().trim(int(device))


def memory_stats(device: int = 0) -> dict:
    """Bytes reserved by / in use in the device's default memory pool."""
    return dict(require().pool_stats(int(device)))


def release_torch_cache(device: int) -> bool:
    """Return the blocks torch's caching allocator keeps on ``device`` to the driver (what
    ``torch.cuda.empty_cache`` does), so that an allocation of ours that found the device full
    can be tried again; False when torch is not loaded, has not used CUDA (nothing to free) or
    is capturing a CUDA graph on the device (a synchronisation would break the capture). Never
    imports torch."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return False
    with torch.cuda.device(int(device)):
        if torch.cuda.is_current_stream_capturing():
            return False
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    return True
