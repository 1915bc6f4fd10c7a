"""The CUDA runtime side of samba_ext: is CUDA usable here (and if not, why), the current
device (:class:`DeviceGuard`, :func:`keeps_device`), streams, the launch recorder of the
model backend, device synchronisation.

Module state (the loaded ``_cuda`` extension, the poison flag, the active recorder) is only
changed through the functions here: :func:`set_recorder`, :func:`set_poison`.
"""
from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable, Optional, TypeVar

import numpy as np

from ..errors import CudaUnavailableError
from .prefetch import MODES as _PREFETCH_MODES

__all__ = ["require", "is_available", "unavailable_reason", "set_poison", "poison_enabled",
           "set_recorder", "recorder", "launch", "flush_recorder", "stream_handle",
           "norm_stream", "dl_stream", "current_framework_stream", "synchronize",
           "cuda_error_class", "DeviceGuard", "keeps_device"]

# ------------------------------------------------------------------------ availability ---
_cuda_mod: Any = None
_poison = False


def _import_cuda() -> Any:
    import importlib

    return importlib.import_module("samba_ext._cuda")


def _not_built(e: ImportError) -> bool:
    """True when the extension does not exist (a CPU-only build), False when it exists but
    failed to load (missing CUDA runtime / cuBLAS libraries)."""
    return isinstance(e, ModuleNotFoundError) and e.name == "samba_ext._cuda" or \
        "No module named" in str(e)


def unavailable_reason(count: int, message: str, runtime: int, driver: int) -> str:
    """Why CUDA cannot be used, from cudaGetDeviceCount's result (count or -error code)."""
    def ver(v: int) -> str:
        return f"{v // 1000}.{(v % 1000) // 10}"

    if count == 0 or count == -100:  # cudaErrorNoDevice
        return ("no device: the CUDA driver sees no GPU (check CUDA_VISIBLE_DEVICES and "
                "nvidia-smi)")
    if count == -35:  # cudaErrorInsufficientDriver
        if driver == 0:
            return "no device: no NVIDIA driver is installed (libcuda.so.1 not found)"
        return (f"driver too old: the NVIDIA driver supports CUDA {ver(driver)} but samba_ext "
                f"was built with CUDA {ver(runtime)}; update the driver or rebuild with an "
                f"older toolkit")
    if count == -34:  # cudaErrorStubLibrary
        return "no device: only the CUDA stub driver library was found (no real driver)"
    return f"no device: CUDA initialisation failed ({message})"


# Environment knobs read by the C side, with the values it understands (anything else would
# silently mean the default there, so a typo is refused here, before the first CUDA call).
ENV_CHOICES = {
    "SAMBA_EXT_GEMM": ("gemmex", "lt", "lt-tune"),
    "SAMBA_EXT_GEMV": ("0", "1"),
    "SAMBA_EXT_GEMV_ROWS": ("0", "1"),
    "SAMBA_EXT_GEMV_FUSE": ("0", "1", "rms", "swiglu"),
    "SAMBA_EXT_L2_PREFETCH": tuple(_PREFETCH_MODES),
    "SAMBA_EXT_SCAN_VARIANT": ("split", "tile", "tile2", "warp", "warp8"),
    "SAMBA_EXT_ATTN_PREFILL": ("auto", "v1", "v2", "v3", "v4", "1", "2", "3", "4"),
    "SAMBA_EXT_ATTN_DECODE": ("auto", "v1", "v2", "1", "2"),
    "SAMBA_EXT_SCAN_LANES": ("1", "4", "8"),
    "SAMBA_EXT_SCAN_BWD_LANES": ("4", "8"),
    "SAMBA_EXT_SCAN_BWD_VEC": ("0", "1"),
    "SAMBA_EXT_SCAN_BWD_VARIANT": ("split", "tile"),
    "SAMBA_EXT_SCAN_BWD_OCC": ("2", "3"),
    "SAMBA_EXT_ATTN_BWD_ORDER": ("auto", "keys", "heavy"),
}

# Integer knobs read by the C side (leading digits, so "8x" would be 8 and "eight" the default),
# with the smallest value each takes.
ENV_INTS = {
    "SAMBA_EXT_SCAN_CHUNKS": 1,
    "SAMBA_EXT_SCAN_BWD_CHUNK": 1,
    "SAMBA_EXT_SCAN_BWD_WS_MB": 0,  # 0: no budget, the longest checkpoint chunks
    "SAMBA_EXT_SCAN_BWD_TILES": 1,
    "SAMBA_EXT_SCAN_BWD_SEGS": 1,
}


def check_env() -> None:
    """Raise ValueError naming the variable when a knob of ``ENV_CHOICES`` has another value,
    or one of ``ENV_INTS`` is not a whole number at least its minimum."""
    for name, choices in ENV_CHOICES.items():
        v = os.environ.get(name)
        if v not in (None, "") and v not in choices:
            raise ValueError(f"{name}: expected one of {', '.join(choices)} (or unset), "
                             f"got {v!r}")
    for name, least in ENV_INTS.items():
        v = os.environ.get(name)
        if v not in (None, "") and not (v.isascii() and v.isdigit() and least <= int(v) < 2**31):
            raise ValueError(f"{name}: expected a whole number >= {least} (or unset), got {v!r}")


def require() -> Any:
    """The _cuda module, or CudaUnavailableError saying why CUDA cannot be used."""
    global _cuda_mod
    if _cuda_mod is not None:
        return _cuda_mod
    try:
        mod = _import_cuda()
    except ImportError as e:
        if _not_built(e):
            raise CudaUnavailableError(
                "CUDA unavailable: samba_ext was built without CUDA (no CUDA toolkit at build "
                "time, or SAMBA_EXT_CUDA=0); reinstall with a toolkit (CUDA_HOME) to use "
                "device='cuda'") from None
        raise CudaUnavailableError(
            f"CUDA unavailable: the CUDA extension failed to load ({e}); the CUDA runtime / "
            f"cuBLAS libraries it was built against are missing") from None
    check_env()
    count, message = mod.device_status()
    if count <= 0:
        info = mod.build_info()
        raise CudaUnavailableError("CUDA unavailable: " + unavailable_reason(
            count, message, int(info.get("runtime_version", 0)),
            int(info.get("driver_version", 0))))
    _cuda_mod = mod
    return mod


def is_available() -> bool:
    """True when CUDA calls can run here."""
    try:
        require()
        return True
    except CudaUnavailableError:
        return False


def cuda_error_class() -> type:
    """The exception type of failed CUDA calls (RuntimeError when CUDA is not built)."""
    try:
        return _import_cuda().CudaError
    except ImportError:
        return RuntimeError


def set_poison(on: bool) -> None:
    """Testing aid: fill every new DeviceArray, and every scratch block the CUDA kernels
    allocate, with 0xFF bytes (NaN for float dtypes): an output element left unwritten, or
    scratch read before it is written, then shows as NaN."""
    global _poison
    _poison = bool(on)
    try:
        mod = _import_cuda()
    except ImportError:  # no CUDA build: nothing allocates scratch
        return
    mod.set_poison(_poison)


def poison_enabled() -> bool:
    return _poison



# ------------------------------------------------------------------------ current device -
class DeviceGuard:
    """``with DeviceGuard(device):`` runs the block with CUDA device ``device`` current, then
    makes the device that was current on entry current again, also when the block raises.

    ``DeviceGuard()`` (no device) changes nothing on entry and only restores: for code that
    selects its device itself (:class:`samba_ext.cuda.call.Call` makes the inputs' device
    current). Without a usable CUDA it does nothing, so the guarded code raises the reason.

    The previous device is put back through ``_cuda.restore_device``, which, as PyTorch's
    device guard, leaves the thread on its present device when the previous one has no active
    primary context (making it current would create a context, hundreds of MB, on a device
    the process never used). A failed restore raises, unless the block already raised.
    """

    __slots__ = ("device", "_cu", "_prev")

    def __init__(self, device: Optional[int] = None) -> None:
        self.device = None if device is None else int(device)
        self._cu: Any = None
        self._prev = -1

    def __enter__(self) -> "DeviceGuard":
        if self.device is None:
            try:
                cu = require()
            except CudaUnavailableError:
                return self
            self._prev = int(cu.get_device())
        else:
            cu = require()
            self._prev = int(cu.exchange_device(self.device))
        self._cu = cu
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        cu = self._cu
        if cu is None:
            return
        self._cu = None
        try:
            if int(cu.get_device()) != self._prev:
                cu.restore_device(self._prev)
        except Exception:
            if exc_type is None:
                raise  # else the block's own exception says more


_F = TypeVar("_F", bound=Callable[..., Any])


def keeps_device(fn: _F) -> _F:
    """Decorator: ``fn`` runs inside ``DeviceGuard()``, so the calling thread's current CUDA
    device is the same after the call as before it (on success and on error). Every public
    entry point of samba_ext.cuda that selects a device is wrapped in it or in
    ``DeviceGuard(device)``."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kw: Any) -> Any:
        with DeviceGuard():
            return fn(*args, **kw)

    return wrapper  # type: ignore[return-value]


# ------------------------------------------------------------------------ streams --------
def norm_stream(s: int) -> int:
    """Internal stream handle: 0 = legacy default (DLPack/CAI use 1 for it)."""
    return 0 if s in (0, 1) else int(s)


def dl_stream(s: int) -> int:
    """Our stream as DLPack/CAI spell it (0 is not allowed there)."""
    return 1 if s == 0 else s


def stream_handle(stream: Any) -> int:
    if isinstance(stream, bool):
        raise TypeError("stream: expected an int cudaStream_t or a stream object, got bool")
    if isinstance(stream, (int, np.integer)):
        if int(stream) < 0:
            raise ValueError(f"stream: expected a cudaStream_t handle >= 0, got {stream}")
        return norm_stream(int(stream))
    if hasattr(stream, "__cuda_stream__"):
        return norm_stream(int(stream.__cuda_stream__()[1]))
    if hasattr(stream, "cuda_stream"):  # torch.cuda.Stream
        return norm_stream(int(stream.cuda_stream))
    if hasattr(stream, "ptr"):  # cupy.cuda.Stream
        return norm_stream(int(stream.ptr))
    raise TypeError(f"stream: expected an int cudaStream_t, a torch.cuda.Stream or a "
                    f"cupy.cuda.Stream, got {type(stream).__name__}")


def current_framework_stream(objs: Any, device: int) -> tuple[int, Any]:
    """(stream handle, object keeping it alive) of the current torch / cupy stream of the
    first input that belongs to one of them, else (0, None) (the legacy default stream)."""
    for x in objs:
        mod = type(x).__module__ or ""
        if mod.startswith("torch") and "torch" in sys.modules:
            st = sys.modules["torch"].cuda.current_stream(device)
            return norm_stream(int(st.cuda_stream)), st
        if mod.startswith("cupy") and "cupy" in sys.modules:
            cuda_mod = sys.modules["cupy"].cuda
            try:  # the current stream of the inputs' device, not of the current device
                st = cuda_mod.get_current_stream(device)
            except TypeError:  # a CuPy without the device argument
                st = cuda_mod.get_current_stream()
            return norm_stream(int(st.ptr)), st
    return 0, None


# ------------------------------------------------------------------------ recorder -------
# The CUDA model backend records a decode step instead of running it: while a recorder is
# active, every device operation issued here (kernel launches, copies, memsets, GEMMs) is
# handed to recorder.defer(fn, args) instead of being called, and new arrays come from
# recorder.alloc(nbytes) (a fixed arena, so a captured CUDA graph can be replayed). Host to
# device uploads still run at once (they feed the graph's input buffers).
_recorder: Any = None


def set_recorder(r: Any) -> Any:
    """Install recorder r (None: launch at once again); returns the previous one."""
    global _recorder
    prev, _recorder = _recorder, r
    return prev


def recorder() -> Any:
    """The active recorder, or None."""
    return _recorder


def launch(fn: Any, *args: Any) -> None:
    r = _recorder
    if r is not None:
        r.defer(fn, args)
    else:
        fn(*args)


def flush_recorder() -> None:
    r = _recorder
    if r is not None:
        r.flush()



def synchronize(device: int = 0) -> None:
    """Wait for all work on the device (the current device is left as it was)."""
    with DeviceGuard(int(device)):
        require().device_sync()
