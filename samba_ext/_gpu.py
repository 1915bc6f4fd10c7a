"""CUDA backend of the public kernel functions (imported lazily by samba_ext.kernels).

Every function here takes the same arguments as its namesake in :mod:`samba_ext.kernels`
plus ``out=`` and ``stream=``:

* Arrays on a CUDA device are used in place, without a copy: any object with
  ``__dlpack__`` (torch, cupy, jax, ...; a versioned DLPack 1.x capsule is requested, with
  a fallback to the legacy capsule) or ``__cuda_array_interface__`` (v2/v3). float32,
  float16 and bfloat16 are accepted; arithmetic, accumulation and recurrent states are
  float32. Strided inputs are read through their strides where the kernel supports it and
  copied to C order otherwise; arrays written in place (``state``, ``conv_state``, ``out``)
  must be C-contiguous.
* The result is a :class:`DeviceArray` (exports ``__dlpack__``, ``__dlpack_device__`` and
  ``__cuda_array_interface__`` v3, so ``torch.from_dlpack(y)`` / ``cupy.from_dlpack(y)``
  wrap it without a copy) in the dtype of the main input, or the caller's ``out=`` object.
* NumPy inputs with ``device="cuda"`` are copied to the GPU as float32, computed there and
  returned as float32 NumPy arrays (in-place states are copied back into the NumPy array).
* Streams (DLPack rules): the work is queued on ``stream`` (an int ``cudaStream_t``, 0/1 =
  legacy default, 2 = per-thread default, or an object with ``cuda_stream`` (torch), ``ptr``
  (cupy) or ``__cuda_stream__``). With ``stream=None`` it is the current stream of the
  framework of the inputs (torch / cupy), the stream of an input DeviceArray, or the legacy
  default stream. Inputs are requested for that stream (``__dlpack__(stream=...)``), so the
  producer orders its pending work before ours.
* Errors: a failed launch raises :class:`CudaError` (a RuntimeError) naming the kernel;
  set ``SAMBA_EXT_CUDA_SYNC=1`` to synchronize after every launch so that an asynchronous
  fault is reported by the kernel that caused it. Without a usable GPU every function
  raises :class:`samba_ext.errors.CudaUnavailableError` saying why ("built without CUDA",
  "no device", "driver too old").
* Memory comes from the CUDA stream-ordered allocator (``cudaMallocAsync`` on the device's
  default pool); :func:`empty_cache` returns cached blocks to the driver.
"""
from __future__ import annotations

import math
import sys
from typing import Any, Optional, Sequence

import numpy as np

from .errors import CudaUnavailableError

__all__ = [
    "DeviceArray", "CudaError", "selective_scan", "selective_state_update", "causal_conv1d",
    "causal_conv1d_update", "swa_attention", "swa_decode", "rms_norm", "apply_rotary",
    "swiglu", "to_device", "empty", "zeros", "linear", "matmul", "synchronize", "empty_cache",
    "memory_stats", "is_available", "unavailable_reason",
]

# dtype name -> (kernel code, itemsize, DLPack (code, bits), CAI typestr)
_DTYPES = {
    "float32": (0, 4, (2, 32), "<f4"),
    "float16": (1, 2, (2, 16), "<f2"),
    "bfloat16": (2, 2, (4, 16), "<V2"),
    "int32": (3, 4, (0, 32), "<i4"),
    "int64": (4, 8, (0, 64), "<i8"),
}
_FLOATS = ("float32", "float16", "bfloat16")
_INTS = ("int32", "int64")
_FROM_DL = {v[2]: k for k, v in _DTYPES.items()}
_FROM_TYPESTR = {"<f4": "float32", "<f2": "float16", "<V2": "bfloat16", "<i4": "int32",
                 "<i8": "int64", "|V2": "bfloat16"}

_KDLCUDA, _KDLCUDA_MANAGED = 2, 13

# ------------------------------------------------------------------------ availability ---
_cuda_mod: Any = None
_poison = False


def _import_cuda() -> Any:
    from . import _cuda  # type: ignore[attr-defined]

    return _cuda


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


def _require() -> Any:
    """The _cuda module, or CudaUnavailableError saying why CUDA cannot be used."""
    global _cuda_mod
    if _cuda_mod is not None:
        return _cuda_mod
    try:
        mod = _import_cuda()
    except ImportError as e:
        if "No module named" in str(e):
            raise CudaUnavailableError(
                "CUDA unavailable: samba_ext was built without CUDA (no CUDA toolkit at build "
                "time, or SAMBA_EXT_CUDA=0); reinstall with a toolkit (CUDA_HOME) to use "
                "device='cuda'") from None
        raise CudaUnavailableError(
            f"CUDA unavailable: the CUDA extension failed to load ({e}); the CUDA runtime / "
            f"cuBLAS libraries it was built against are missing") from None
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
        _require()
        return True
    except CudaUnavailableError:
        return False


def __getattr__(name: str) -> Any:
    if name == "CudaError":
        try:
            return _import_cuda().CudaError
        except ImportError:
            return RuntimeError
    raise AttributeError(f"module 'samba_ext._gpu' has no attribute {name!r}")


def set_poison(on: bool) -> None:
    """Testing aid: fill every new DeviceArray with 0xFF bytes (NaN for float dtypes)."""
    global _poison
    _poison = bool(on)


# ------------------------------------------------------------------------ streams --------
def _norm_stream(s: int) -> int:
    """Internal stream handle: 0 = legacy default (DLPack/CAI use 1 for it)."""
    return 0 if s in (0, 1) else int(s)


def _dl_stream(s: int) -> int:
    """Our stream as DLPack/CAI spell it (0 is not allowed there)."""
    return 1 if s == 0 else s


def _stream_handle(stream: Any) -> int:
    if isinstance(stream, bool):
        raise TypeError("stream: expected an int cudaStream_t or a stream object, got bool")
    if isinstance(stream, (int, np.integer)):
        if int(stream) < 0:
            raise ValueError(f"stream: expected a cudaStream_t handle >= 0, got {stream}")
        return _norm_stream(int(stream))
    if hasattr(stream, "__cuda_stream__"):
        return _norm_stream(int(stream.__cuda_stream__()[1]))
    if hasattr(stream, "cuda_stream"):  # torch.cuda.Stream
        return _norm_stream(int(stream.cuda_stream))
    if hasattr(stream, "ptr"):  # cupy.cuda.Stream
        return _norm_stream(int(stream.ptr))
    raise TypeError(f"stream: expected an int cudaStream_t, a torch.cuda.Stream or a "
                    f"cupy.cuda.Stream, got {type(stream).__name__}")


def _default_stream(objs: Sequence[Any], device: int) -> tuple[int, Any]:
    """(stream handle, object keeping it alive) for stream=None."""
    for x in objs:
        if isinstance(x, DeviceArray):
            return x.stream, getattr(x._buf, "keep", None)
    for x in objs:
        mod = type(x).__module__ or ""
        if mod.startswith("torch") and "torch" in sys.modules:
            st = sys.modules["torch"].cuda.current_stream(device)
            return _norm_stream(int(st.cuda_stream)), st
        if mod.startswith("cupy") and "cupy" in sys.modules:
            st = sys.modules["cupy"].cuda.get_current_stream()
            return _norm_stream(int(st.ptr)), st
    return 0, None


# ------------------------------------------------------------------------ recorder -------
# The CUDA model backend records a decode step instead of running it: while a recorder is
# active, every device operation issued here (kernel launches, copies, memsets, GEMMs) is
# handed to recorder.defer(fn, args) instead of being called, and new arrays come from
# recorder.alloc(nbytes) (a fixed arena, so a captured CUDA graph can be replayed). Host to
# device uploads still run at once (they feed the graph's input buffers).
_recorder: Any = None


def _launch(fn: Any, *args: Any) -> None:
    r = _recorder
    if r is not None:
        r.defer(fn, args)
    else:
        fn(*args)


def _flush_recorder() -> None:
    r = _recorder
    if r is not None:
        r.flush()


# ------------------------------------------------------------------------ DeviceArray ----
def _host_contig(a: np.ndarray, dtype: Any = None) -> np.ndarray:
    """C-contiguous host copy/view of ``a`` (optionally converted) with ``a``'s shape:
    ``np.ascontiguousarray`` alone turns a 0-d array into shape (1,)."""
    return np.ascontiguousarray(a, dtype=dtype).reshape(np.shape(a))


def _c_strides(shape: Sequence[int]) -> tuple[int, ...]:
    st, acc = [], 1
    for n in reversed(shape):
        st.append(acc)
        acc *= max(int(n), 1)
    return tuple(reversed(st))


def _is_c_contig(shape: Sequence[int], strides: Sequence[int]) -> bool:
    want = _c_strides(shape)
    return all(n <= 1 or s == w for n, s, w in zip(shape, strides, want))


def _check_dtype(dtype: Any) -> str:
    name = dtype if isinstance(dtype, str) else getattr(dtype, "name", None)
    if name is None:
        name = str(dtype)
    name = str(name).replace("torch.", "")
    if name not in _DTYPES:
        raise TypeError(f"dtype: expected one of {', '.join(_DTYPES)}, got {dtype!r}")
    return name


def _nocopy_reshape(shape: tuple, strides: tuple, new: tuple) -> Optional[tuple]:
    """Strides of `new` viewing (shape, strides) without a copy, or None (numpy's rule)."""
    old = [(n, s) for n, s in zip(shape, strides) if n != 1]
    newd = [n for n in new if n != 1]
    out: list[int] = []
    oi = ni = 0
    while oi < len(old) and ni < len(newd):
        op, np_ = old[oi][0], newd[ni]
        oj, nj = oi + 1, ni + 1
        while op != np_:
            if np_ < op:
                np_ *= newd[nj]
                nj += 1
            else:
                op *= old[oj][0]
                oj += 1
        for k in range(oi, oj - 1):  # the merged old axes must be contiguous among themselves
            if old[k][1] != old[k + 1][0] * old[k + 1][1]:
                return None
        st = old[oj - 1][1]
        grp = []
        for k in range(nj - 1, ni - 1, -1):
            grp.append(st)
            st *= newd[k]
        out.extend(reversed(grp))
        oi, ni = oj, nj
    if oi != len(old) or ni != len(newd):
        return None
    res, it = [], iter(out)
    for n in new:
        res.append(next(it) if n != 1 else 0)
    # size-1 axes get the stride the C layout would give (harmless, keeps ld valid)
    cs = _c_strides(new)
    return tuple(cs[k] if new[k] == 1 else res[k] for k in range(len(new)))


class DeviceArray:
    """An array in CUDA device memory, produced by samba_ext (float32 / float16 / bfloat16 /
    int32 / int64).

    Attributes: ``shape`` (tuple), ``strides`` (in elements), ``dtype`` (a string),
    ``device`` (CUDA index), ``ptr`` (device pointer of element [0, ..., 0]), ``stream`` (the
    stream its producing work was queued on). Basic slicing (``a[:, 2:5]``, ``a[:, -1]``)
    and ``reshape`` give views like NumPy's (reshape copies when no view is possible). Exchange
    it without a copy through ``__dlpack__`` / ``__dlpack_device__`` (``torch.from_dlpack(a)``,
    ``cupy.from_dlpack(a)``) or ``__cuda_array_interface__`` (v3; bfloat16 appears there as
    "<V2", as torch does). ``to_numpy()`` copies to the host (bfloat16 becomes float32).
    """

    __slots__ = ("_buf", "_ptr", "shape", "_strides", "dtype", "device", "_stream",
                 "__weakref__")

    def __init__(self, buf: Any, ptr: int, shape: Sequence[int], dtype: str, device: int,
                 stream: int, strides: Optional[Sequence[int]] = None) -> None:
        self._buf = buf
        self._ptr = int(ptr)
        self.shape = tuple(int(s) for s in shape)
        self._strides = _c_strides(self.shape) if strides is None else tuple(
            int(s) for s in strides)
        self.dtype = dtype
        self.device = int(device)
        self._stream = int(stream)

    # -- construction ---------------------------------------------------------------
    @classmethod
    def empty(cls, shape: Sequence[int], dtype: str = "float32", device: int = 0,
              stream: Any = 0, keep: Any = None) -> "DeviceArray":
        """Uninitialised C-contiguous array (stream-ordered allocation on ``stream``; a stream
        object, or ``keep``, is kept alive with the memory so that its free stays valid)."""
        cu = _require()
        if keep is None and not isinstance(stream, (int, np.integer)):
            keep = stream
        dtype = _check_dtype(dtype)
        shape = tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            raise ValueError(f"shape: negative dimension in {shape}")
        s = _stream_handle(stream)
        n = int(np.prod(shape, dtype=np.int64)) * _DTYPES[dtype][1]
        got = _recorder.alloc(n) if _recorder is not None else None
        if got is not None:
            owner, ptr = got
            return cls(owner, ptr, shape, dtype, device, s)
        buf = cu.Buffer(n, int(device), s, keep)
        a = cls(buf, buf.ptr, shape, dtype, device, s)
        if _poison and n:
            _launch(cu.memset, a._ptr, 0xFF, n, s)
        return a

    # -- properties -----------------------------------------------------------------
    @property
    def ptr(self) -> int:
        return self._ptr

    @property
    def strides(self) -> tuple[int, ...]:
        """Strides in elements (NumPy's are in bytes)."""
        return self._strides

    @property
    def stream(self) -> int:
        return self._stream

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def itemsize(self) -> int:
        return _DTYPES[self.dtype][1]

    @property
    def nbytes(self) -> int:
        return self.size * self.itemsize

    @property
    def is_contiguous(self) -> bool:
        return _is_c_contig(self.shape, self._strides)

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d DeviceArray")
        return self.shape[0]

    def __repr__(self) -> str:
        extra = "" if self.is_contiguous else f", strides={self._strides}"
        return (f"DeviceArray(shape={self.shape}, dtype={self.dtype}, device=cuda:{self.device}"
                f"{extra}, ptr=0x{self._ptr:x})")

    # -- views and copies -----------------------------------------------------------
    def _view(self, ptr: int, shape: Sequence[int], strides: Sequence[int]) -> "DeviceArray":
        return DeviceArray(self._buf, ptr, shape, self.dtype, self.device, self._stream,
                           strides)

    def __getitem__(self, key: Any) -> "DeviceArray":
        """Basic indexing (ints, slices, Ellipsis, None) -> a view."""
        if not isinstance(key, tuple):
            key = (key,)
        n_real = sum(1 for k in key if k is not None and k is not Ellipsis)
        if sum(1 for k in key if k is Ellipsis) > 1:
            raise IndexError("an index can only have a single ellipsis ('...')")
        if n_real > self.ndim:
            raise IndexError(f"too many indices for a {self.ndim}-D DeviceArray")
        exp: list = []
        for k in key:
            if k is Ellipsis:
                exp.extend([slice(None)] * (self.ndim - n_real))
            else:
                exp.append(k)
        exp.extend([slice(None)] * (self.ndim - sum(1 for k in exp if k is not None)))
        off, shape, strides, ax = 0, [], [], 0
        for k in exp:
            if k is None:
                shape.append(1)
                strides.append(0)
                continue
            n, st = self.shape[ax], self._strides[ax]
            if isinstance(k, slice):
                start, stop, step = k.indices(n)
                m = len(range(start, stop, step))
                if m:
                    off += start * st
                shape.append(m)
                strides.append(st * step)
            elif isinstance(k, (int, np.integer)) and not isinstance(k, bool):
                i = int(k) + (n if k < 0 else 0)
                if not 0 <= i < n:
                    raise IndexError(f"index {k} is out of bounds for axis {ax} with size {n}")
                off += i * st
            else:
                raise TypeError(f"DeviceArray supports basic indexing only (ints, slices, "
                                f"None, ...), got {type(k).__name__}")
            ax += 1
        return self._view(self._ptr + off * self.itemsize, shape, strides)

    def reshape(self, *shape: Any) -> "DeviceArray":
        """A view with a new shape (one dimension may be -1); a copy if no view exists."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = list(int(s) for s in shape)
        if shape.count(-1) > 1:
            raise ValueError("reshape: at most one dimension may be -1")
        if -1 in shape:
            known = int(np.prod([s for s in shape if s != -1], dtype=np.int64))
            shape[shape.index(-1)] = self.size // known if known else 0
        new = tuple(shape)
        if int(np.prod(new, dtype=np.int64)) != self.size:
            raise ValueError(f"reshape: cannot view {self.shape} as {new}")
        if self.is_contiguous:
            return self._view(self._ptr, new, None)
        st = _nocopy_reshape(self.shape, self._strides, new) if self.size else None
        if st is not None:
            return self._view(self._ptr, new, st)
        return self.copy().reshape(new)

    def astype(self, dtype: str) -> "DeviceArray":
        """A converted C-contiguous copy (floats among each other, ints among each other)."""
        dtype = _check_dtype(dtype)
        cu = _require()
        cu.set_device(self.device)
        out = DeviceArray.empty(self.shape, dtype, self.device, self._stream,
                                getattr(self._buf, "keep", None))
        if out.size:
            _launch(cu.copy, self.shape, (self._ptr, _DTYPES[self.dtype][0]), self._strides,
                    (out._ptr, _DTYPES[dtype][0]), out._strides, -1, None, None, 0,
                    self._stream)
        return out

    def copy(self) -> "DeviceArray":
        return self.astype(self.dtype)

    def to_numpy(self) -> np.ndarray:
        """Copy to a NumPy array (synchronizes; bfloat16 is returned as float32)."""
        cu = _require()
        _flush_recorder()
        cu.set_device(self.device)
        src = self if self.is_contiguous else self.copy()
        if self.dtype == "bfloat16":
            raw = np.empty(self.shape, dtype=np.uint16)
            if raw.size:
                cu.memcpy_d2h(raw, src._ptr, self._stream)
            else:
                cu.stream_sync(self._stream)
            return (raw.astype(np.uint32) << 16).view(np.float32)
        host = np.empty(self.shape, dtype=np.dtype(self.dtype))
        if host.size:
            cu.memcpy_d2h(host, src._ptr, self._stream)
        else:
            cu.stream_sync(self._stream)
        return host

    numpy = to_numpy

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if copy is False:
            raise ValueError("DeviceArray lives on the GPU: converting it to NumPy always "
                             "copies (use to_numpy())")
        a = self.to_numpy()
        return a if dtype is None else a.astype(dtype)

    # -- DLPack / CAI ---------------------------------------------------------------
    def __dlpack_device__(self) -> tuple[int, int]:
        return (_KDLCUDA, self.device)

    def __dlpack__(self, *, stream: Any = None, max_version: Any = None, dl_device: Any = None,
                   copy: Optional[bool] = None) -> Any:
        """DLPack export (versioned capsule when max_version >= (1, 0), legacy otherwise).

        ``stream``: the consumer's stream (None: the legacy default stream; -1: no
        synchronization); the consumer's stream waits for this array's pending work.
        """
        cu = _require()
        if dl_device is not None and tuple(int(v) for v in dl_device) != (_KDLCUDA, self.device):
            raise BufferError(f"DeviceArray lives on cuda:{self.device}; it cannot be exported "
                              f"to device {tuple(dl_device)} (use to_numpy() for the host)")
        _flush_recorder()
        cu.set_device(self.device)
        src = self.copy() if copy else self
        if stream is not None and not isinstance(stream, (int, np.integer)):
            raise TypeError(f"stream: expected an int or None, got {type(stream).__name__}")
        if stream is not None and int(stream) == 0:
            raise ValueError("stream=0 is not allowed by DLPack (use 1 for the legacy default "
                             "stream, 2 for the per-thread default stream)")
        if stream is None or int(stream) != -1:
            consumer = 0 if stream is None else _norm_stream(int(stream))
            if consumer != src._stream:
                cu.stream_wait(consumer, src._stream)
                if hasattr(src._buf, "add_use"):
                    src._buf.add_use(consumer)
        versioned = max_version is not None and int(max_version[0]) >= 1
        minor = 0
        if versioned:
            minor = min(int(max_version[1]), 1) if int(max_version[0]) == 1 else 1
        code, bits = _DTYPES[src.dtype][2]
        strides = None if src.is_contiguous else src._strides
        return cu.to_capsule(src, src._ptr, src.shape, strides, code, bits, _KDLCUDA, src.device,
                             int(versioned), minor, 0, int(bool(copy)))

    @property
    def __cuda_array_interface__(self) -> dict:
        _flush_recorder()
        ts = _DTYPES[self.dtype][3]
        strides = None if self.is_contiguous else tuple(s * self.itemsize for s in self._strides)
        return {"shape": self.shape, "typestr": ts, "descr": [("", ts)],
                "data": (self._ptr if self.size else 0, False), "strides": strides,
                "version": 3, "stream": _dl_stream(self._stream)}


# ------------------------------------------------------------------------ array import ---
class _Arr:
    """A device array view used by one call: pointer, shape, element strides, dtype."""

    __slots__ = ("ptr", "shape", "strides", "dtype", "device", "keep", "readonly")

    def __init__(self, ptr: int, shape: tuple, strides: tuple, dtype: str, device: int,
                 keep: Any, readonly: bool = False) -> None:
        self.ptr, self.shape, self.strides, self.dtype = ptr, shape, strides, dtype
        self.device, self.keep, self.readonly = device, keep, readonly

    @property
    def ref(self) -> tuple[int, int]:
        return (self.ptr, _DTYPES[self.dtype][0])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def contiguous(self) -> bool:
        return _is_c_contig(self.shape, self.strides)


def _is_gpu(x: Any) -> bool:
    if x is None or isinstance(x, (np.ndarray, np.generic, int, float, list, tuple, str)):
        return False
    if isinstance(x, DeviceArray):
        return True
    dev = getattr(x, "__dlpack_device__", None)
    if dev is not None:
        try:
            return int(dev()[0]) in (_KDLCUDA, _KDLCUDA_MANAGED)
        except Exception:
            return False
    return hasattr(x, "__cuda_array_interface__")


def _gpu_device(x: Any) -> int:
    if isinstance(x, DeviceArray):
        return x.device
    dev = getattr(x, "__dlpack_device__", None)
    if dev is not None:
        try:
            return int(dev()[1])
        except Exception:
            pass
    return 0


def _describe(x: Any) -> str:
    return type(x).__module__.split(".")[0] + "." + type(x).__name__


def _import_gpu(x: Any, name: str, stream: int, device: int) -> _Arr:
    """View a CUDA array without copying; its producer orders pending work before `stream`."""
    cu = _cuda_mod
    if isinstance(x, DeviceArray):
        if x.device != device:
            raise ValueError(f"{name}: is on cuda:{x.device} but the other inputs are on "
                             f"cuda:{device}")
        if x.stream != stream and _recorder is None:
            cu.stream_wait(stream, x.stream)
            if hasattr(x._buf, "add_use"):
                x._buf.add_use(stream)
        return _Arr(x.ptr, x.shape, x.strides, x.dtype, x.device, x)
    if hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__"):
        kw_stream = _dl_stream(stream)
        try:
            cap = x.__dlpack__(stream=kw_stream, max_version=(1, 1))
        except TypeError:
            cap = x.__dlpack__(stream=kw_stream)
        imp = cu.from_capsule(cap)
        info = imp.info()
        dev_type, dev_id = info["device"]
        if dev_type not in (_KDLCUDA, _KDLCUDA_MANAGED):
            raise ValueError(f"{name}: DLPack device type {dev_type} is not a CUDA device")
        if dev_id != device:
            raise ValueError(f"{name}: is on cuda:{dev_id} but the other inputs are on "
                             f"cuda:{device}")
        code, bits, lanes = info["dtype"]
        dtype = _FROM_DL.get((code, bits)) if lanes == 1 else None
        if dtype is None:
            raise TypeError(f"{name}: unsupported dtype (DLPack code {code}, {bits} bits, "
                            f"{lanes} lanes); expected float32, float16 or bfloat16")
        shape = tuple(info["shape"])
        strides = tuple(info["strides"]) if info["strides"] is not None else _c_strides(shape)
        return _Arr(info["ptr"], shape, strides, dtype, dev_id, (imp, x), info["readonly"])
    if hasattr(x, "__cuda_array_interface__"):
        d = x.__cuda_array_interface__
        if int(d.get("version", 0)) < 2:
            raise TypeError(f"{name}: __cuda_array_interface__ version {d.get('version')} "
                            f"is too old (need 2 or 3)")
        if d.get("mask") is not None:
            raise TypeError(f"{name}: masked __cuda_array_interface__ arrays are not supported")
        ts = d["typestr"]
        dtype = _FROM_TYPESTR.get(ts)
        if dtype is None:
            raise TypeError(f"{name}: unsupported typestr {ts!r}; expected float32 ('<f4'), "
                            f"float16 ('<f2') or bfloat16 ('<V2')")
        shape = tuple(int(s) for s in d["shape"])
        item = _DTYPES[dtype][1]
        if d.get("strides") is None:
            strides = _c_strides(shape)
        else:
            bst = tuple(int(s) for s in d["strides"])
            if any(s % item for s in bst):
                raise ValueError(f"{name}: strides {bst} are not multiples of the item size")
            strides = tuple(s // item for s in bst)
        ptr, ro = d["data"]
        s = d.get("stream")
        if s is not None:
            if int(s) == 0:
                raise ValueError(f"{name}: __cuda_array_interface__ stream 0 is not allowed")
            if _norm_stream(int(s)) != stream:
                cu.stream_wait(stream, _norm_stream(int(s)))
        return _Arr(int(ptr or 0), shape, strides, dtype, device, x, bool(ro))
    raise TypeError(f"{name}: expected a CUDA array, got {_describe(x)}")


# ------------------------------------------------------------------------ one call -------
class _Call:
    """Collects the device, stream, imported views and temporaries of one kernel call."""

    def __init__(self, name: str, arrays: dict, stream: Any) -> None:
        self.name = name
        self.cu = _require()
        gpu = [v for v in arrays.values() if _is_gpu(v)]
        self.host = not gpu
        self.device = _gpu_device(gpu[0]) if gpu else 0
        self.cu.set_device(self.device)
        if stream is None:
            self.stream, self.keep_stream = _default_stream(gpu, self.device)
        else:
            self.stream = _stream_handle(stream)
            self.keep_stream = None if isinstance(stream, (int, np.integer)) else stream
        self.keep: list = []
        self.writeback: list = []  # (numpy array, device _Arr) copied back after the call

    def new(self, shape: Sequence[int], dtype: str) -> DeviceArray:
        """A new array on this call's device and stream."""
        return DeviceArray.empty(shape, dtype, self.device, self.stream, self.keep_stream)

    # -- inputs ---------------------------------------------------------------------
    def _upload(self, x: Any, name: str, kind: str) -> _Arr:
        a = np.asarray(x)
        if kind == "int":
            if a.dtype.kind not in "iu":
                raise TypeError(f"{name}: expected an integer array, got dtype {a.dtype}")
            a = _host_contig(a, np.int64)
            dtype = "int64"
        else:
            if getattr(a.dtype, "name", "") == "bfloat16" and not self.host:
                a = _host_contig(a).view(np.uint16)
                dtype = "bfloat16"
            elif a.dtype.kind != "f":
                raise TypeError(f"{name}: expected a floating-point array (float16, float32 or "
                                f"float64), got dtype {a.dtype}")
            elif a.dtype == np.float16 and not self.host:
                a = _host_contig(a)
                dtype = "float16"
            else:
                a = _host_contig(a, np.float32)
                dtype = "float32"
        d = self.new(a.shape, dtype)
        if a.size:
            self.cu.memcpy_h2d(d.ptr, a.reshape(-1).view(np.uint8), self.stream)
        self.keep.append(d)
        return _Arr(d.ptr, d.shape, _c_strides(d.shape), dtype, self.device, d)

    def arr(self, x: Any, name: str, ndim: Optional[Sequence[int]] = None,
            kind: str = "float") -> Optional[_Arr]:
        """An input: a view of a CUDA array, or an uploaded copy of a host array."""
        if x is None:
            return None
        if _is_gpu(x):
            a = _import_gpu(x, name, self.stream, self.device)
        else:
            a = self._upload(x, name, kind)
        if kind == "float" and a.dtype not in _FLOATS:
            raise TypeError(f"{name}: expected float32, float16 or bfloat16, got {a.dtype}")
        if kind == "int" and a.dtype not in _INTS:
            raise TypeError(f"{name}: expected an int32 or int64 array, got {a.dtype}")
        if ndim is not None and a.ndim not in tuple(ndim):
            want = " or ".join(f"{n}-D" for n in ndim)
            raise ValueError(f"{name}: expected a {want} array, got shape {a.shape}")
        self.keep.append(a.keep)
        return a

    def convert(self, a: _Arr, dtype: Optional[str] = None) -> _Arr:
        """A C-contiguous copy of `a` (converted to `dtype`)."""
        dtype = dtype or a.dtype
        d = self.new(a.shape, dtype)
        if d.size:
            _launch(self.cu.copy, a.shape, a.ref, a.strides, (d.ptr, _DTYPES[dtype][0]),
                    d.strides, -1, None, None, 0, self.stream)
        self.keep.append(d)
        return _Arr(d.ptr, d.shape, _c_strides(d.shape), dtype, self.device, d)

    def contig(self, a: Optional[_Arr], dtype: Optional[str] = None) -> Optional[_Arr]:
        if a is None:
            return None
        if a.contiguous() and (dtype is None or a.dtype == dtype):
            return a
        return self.convert(a, dtype)

    def lastdim_contig(self, a: _Arr) -> _Arr:
        return a if a.shape[-1] <= 1 or a.strides[-1] == 1 else self.convert(a)

    def rows(self, a: _Arr) -> tuple[_Arr, int]:
        """(view, row stride): `a` seen as (rows, a.shape[-1]) with unit last stride and
        one row stride (a copy in C order when its strides do not allow that)."""
        if a.ndim == 0:
            a = self.contig(a)
            return a, 1
        n = a.shape[-1]
        rows = int(np.prod(a.shape[:-1], dtype=np.int64))
        if rows * n == 0:
            return a, n
        st = _nocopy_reshape(a.shape, a.strides, (rows, n))
        if st is None or (n > 1 and st[1] != 1):
            a = self.convert(a)
            return a, n
        return a, (st[0] if rows > 1 else n)

    def inplace(self, x: Any, name: str, ndim: int) -> _Arr:
        """An array updated in place: float32, C-contiguous, writable."""
        if x is None:
            raise TypeError(f"{name}: expected an array updated in place, got None")
        if not _is_gpu(x):
            if not self.host:
                raise TypeError(f"{name}: is updated in place and must be on the GPU like the "
                                f"other inputs, got {_describe(x)}")
            if not isinstance(x, np.ndarray) or x.dtype != np.float32:
                raise TypeError(f"{name}: is updated in place and must be a float32 "
                                f"numpy.ndarray, got {_describe(x)}"
                                + (f" of dtype {x.dtype}" if isinstance(x, np.ndarray) else ""))
            if not x.flags.writeable:
                raise ValueError(f"{name}: is updated in place but is read-only")
            a = self._upload(x, name, "float")
            self.writeback.append((x, a))
        else:
            a = _import_gpu(x, name, self.stream, self.device)
            self.keep.append(a.keep)
            if a.dtype != "float32":
                raise TypeError(f"{name}: is updated in place and must be float32, got "
                                f"{a.dtype}")
            if not a.contiguous():
                raise ValueError(f"{name}: is updated in place and must be C-contiguous")
            if a.readonly:
                raise ValueError(f"{name}: is updated in place but was exported read-only")
        if a.ndim != ndim:
            raise ValueError(f"{name}: expected a {ndim}-D array, got shape {a.shape}")
        return a

    # -- outputs --------------------------------------------------------------------
    def output(self, shape: tuple, dtype: str, out: Any = None) -> tuple[_Arr, Any]:
        """(view, result object): a new DeviceArray, or the caller's out= buffer."""
        if out is None:
            d = self.new(shape, "float32" if self.host else dtype)
            return _Arr(d.ptr, d.shape, _c_strides(d.shape), d.dtype, self.device, d), d
        if not _is_gpu(out):
            if not self.host:
                raise TypeError(f"out: expected a CUDA array like the inputs, got {_describe(out)}")
            if not isinstance(out, np.ndarray):
                raise TypeError(f"out: expected a numpy.ndarray for a NumPy call, got "
                                f"{_describe(out)}")
            if out.shape != tuple(shape):
                raise ValueError(f"out: expected shape {tuple(shape)}, got {out.shape}")
            d = self.new(shape, "float32")
            a = _Arr(d.ptr, d.shape, _c_strides(d.shape), "float32", self.device, d)
            self.writeback.append((out, a))
            return a, out
        a = _import_gpu(out, "out", self.stream, self.device)
        self.keep.append(a.keep)
        if a.shape != tuple(shape):
            raise ValueError(f"out: expected shape {tuple(shape)}, got {a.shape}")
        if a.dtype not in _FLOATS:
            raise TypeError(f"out: expected float32, float16 or bfloat16, got {a.dtype}")
        if not a.contiguous():
            raise ValueError("out: must be C-contiguous")
        if a.readonly:
            raise ValueError("out: was exported read-only")
        return a, out

    def state_output(self, shape: tuple) -> tuple[_Arr, Any]:
        d = self.new(shape, "float32")
        return _Arr(d.ptr, d.shape, _c_strides(d.shape), "float32", self.device, d), d

    def finish(self, result: Any) -> Any:
        """Host calls: download results (float32 NumPy) and write in-place arrays back."""
        if not self.host:
            return result
        for host, dev in self.writeback:
            tmp = np.empty(dev.shape, dtype=np.float32)
            if tmp.size:
                self.cu.memcpy_d2h(tmp, dev.ptr, self.stream)
            np.copyto(host, tmp.reshape(host.shape), casting="same_kind")

        def down(r: Any) -> Any:
            if isinstance(r, DeviceArray):
                return r.to_numpy().astype(np.float32, copy=False)
            return r  # None, or the caller's NumPy out= (already written back)

        if isinstance(result, tuple):
            return tuple(down(r) for r in result)
        return down(result)


def _shape_err(name: str, what: str, got: tuple) -> ValueError:
    return ValueError(f"{name}: expected shape {what}, got {got}")


def _strides_bgnl(a: _Arr) -> tuple:
    """(B, N, L) or (B, G, N, L) -> 4 strides (a 3-D array is one group)."""
    if a.ndim == 3:
        return (a.strides[0], 0, a.strides[1], a.strides[2])
    return tuple(a.strides)


# ------------------------------------------------------------------------ kernels --------
def selective_scan(u: Any, delta: Any, A: Any, B: Any, C: Any, D: Any = None, z: Any = None,
                   delta_bias: Any = None, delta_softplus: bool = False,
                   initial_state: Any = None, return_last_state: bool = False, *,
                   out: Any = None, stream: Any = None) -> Any:
    """See :func:`samba_ext.kernels.selective_scan`. y has u's dtype; states float32."""
    c = _Call("selective_scan", dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z,
                                     delta_bias=delta_bias, initial_state=initial_state,
                                     out=out), stream)
    ua = c.arr(u, "u", (3,))
    batch, dim, L = ua.shape
    da = c.arr(delta, "delta", (3,))
    if da.shape != ua.shape:
        raise _shape_err("delta", f"{ua.shape} (same as u)", da.shape)
    Aa = c.contig(c.arr(A, "A", (2,)))
    if Aa.shape[0] != dim:
        raise _shape_err("A", f"({dim}, dstate)", Aa.shape)
    N = Aa.shape[1]
    Ba = c.arr(B, "B", (3, 4))
    Ca = c.arr(C, "C", (3, 4))
    for nm, a in (("B", Ba), ("C", Ca)):
        if a.ndim == 3 and a.shape != (batch, N, L):
            raise _shape_err(nm, f"({batch}, {N}, {L}) or (batch, ngroups, dstate, seqlen)",
                             a.shape)
        if a.ndim == 4 and (a.shape[0] != batch or a.shape[2:] != (N, L) or a.shape[1] < 1
                            or dim % a.shape[1]):
            raise _shape_err(nm, f"({batch}, ngroups, {N}, {L}) with {dim} % ngroups == 0",
                             a.shape)
    G = Ba.shape[1] if Ba.ndim == 4 else 1
    Gc = Ca.shape[1] if Ca.ndim == 4 else 1
    if G != Gc:
        raise ValueError(f"B and C: different ngroups ({G} vs {Gc})")
    if Ba.dtype != Ca.dtype:
        Ba, Ca = c.convert(Ba, "float32"), c.convert(Ca, "float32")
    Da = c.contig(c.arr(D, "D", (1,)))
    dba = c.contig(c.arr(delta_bias, "delta_bias", (1,)))
    for nm, a in (("D", Da), ("delta_bias", dba)):
        if a is not None and a.shape != (dim,):
            raise _shape_err(nm, f"({dim},)", a.shape)
    za = c.arr(z, "z", (3,))
    if za is not None and za.shape != ua.shape:
        raise _shape_err("z", f"{ua.shape} (same as u)", za.shape)
    init = c.contig(c.arr(initial_state, "initial_state", (3,)), "float32")
    if init is not None and init.shape != (batch, dim, N):
        raise _shape_err("initial_state", f"({batch}, {dim}, {N})", init.shape)
    ya, yres = c.output((batch, dim, L), ua.dtype, out)
    fin, fres = (c.state_output((batch, dim, N)) if return_last_state else (None, None))
    zero3 = (0, 0, 0)
    _launch(c.cu.selective_scan, batch, dim, N, L, G, ua.ref, da.ref, Aa.ref, Ba.ref, Ca.ref,
                        Da.ref if Da else None, za.ref if za else None,
                        dba.ref if dba else None, ya.ref, ua.strides, da.strides,
                        za.strides if za else zero3, ya.strides, _strides_bgnl(Ba),
                        _strides_bgnl(Ca), int(bool(delta_softplus)),
                        init.ptr if init else None, fin.ptr if fin else None, c.stream)
    return c.finish((yres, fres) if return_last_state else yres)


def selective_state_update(state: Any, x: Any, dt: Any, A: Any, B: Any, C: Any, D: Any = None,
                           z: Any = None, dt_bias: Any = None, dt_softplus: bool = False, *,
                           out: Any = None, stream: Any = None) -> Any:
    """See :func:`samba_ext.kernels.selective_state_update` (state float32, in place)."""
    c = _Call("selective_state_update", dict(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z,
                                             dt_bias=dt_bias, out=out), stream)
    st = c.inplace(state, "state", 3)
    batch, dim, N = st.shape
    xa = c.arr(x, "x", (2,))
    if xa.shape != (batch, dim):
        raise _shape_err("x", f"({batch}, {dim}) (state's batch, dim)", xa.shape)
    dta = c.arr(dt, "dt", (2,))
    if dta.shape != (batch, dim):
        raise _shape_err("dt", f"({batch}, {dim})", dta.shape)
    Aa = c.contig(c.arr(A, "A", (2,)))
    if Aa.shape != (dim, N):
        raise _shape_err("A", f"({dim}, {N})", Aa.shape)
    Ba = c.arr(B, "B", (2, 3))
    Ca = c.arr(C, "C", (2, 3))
    for nm, a in (("B", Ba), ("C", Ca)):
        if a.ndim == 2 and a.shape != (batch, N):
            raise _shape_err(nm, f"({batch}, {N}) or (batch, ngroups, dstate)", a.shape)
        if a.ndim == 3 and (a.shape[0] != batch or a.shape[2] != N or a.shape[1] < 1
                            or dim % a.shape[1]):
            raise _shape_err(nm, f"({batch}, ngroups, {N}) with {dim} % ngroups == 0", a.shape)
    G = Ba.shape[1] if Ba.ndim == 3 else 1
    if G != (Ca.shape[1] if Ca.ndim == 3 else 1):
        raise ValueError("B and C: different ngroups")

    def s3(a: _Arr) -> tuple:
        return (a.strides[0], 0, a.strides[1]) if a.ndim == 2 else tuple(a.strides)

    Da = c.contig(c.arr(D, "D", (1,)))
    dba = c.contig(c.arr(dt_bias, "dt_bias", (1,)))
    for nm, a in (("D", Da), ("dt_bias", dba)):
        if a is not None and a.shape != (dim,):
            raise _shape_err(nm, f"({dim},)", a.shape)
    za = c.arr(z, "z", (2,))
    if za is not None and za.shape != (batch, dim):
        raise _shape_err("z", f"({batch}, {dim})", za.shape)
    ya, yres = c.output((batch, dim), xa.dtype, out)
    _launch(c.cu.selective_state_update, batch, dim, N, G, st.ptr, xa.ref, dta.ref, Aa.ref, Ba.ref,
                                Ca.ref, Da.ref if Da else None, za.ref if za else None,
                                dba.ref if dba else None, ya.ref, xa.strides, dta.strides,
                                za.strides if za else (0, 0), ya.strides, s3(Ba), s3(Ca),
                                int(bool(dt_softplus)), c.stream)
    return c.finish(yres)


def _activation(activation: Optional[str]) -> int:
    if activation is None:
        return 0
    if activation in ("silu", "swish"):
        return 1
    raise ValueError(f"activation: expected None, 'silu' or 'swish', got {activation!r}")


def _conv_weight(c: _Call, weight: Any, dim: int) -> _Arr:
    wa = c.contig(c.arr(weight, "weight", (2,)))
    if wa.shape[0] != dim or not 2 <= wa.shape[1] <= 4:
        raise _shape_err("weight", f"({dim}, width) with 2 <= width <= 4", wa.shape)
    return wa


def causal_conv1d(x: Any, weight: Any, bias: Any = None, activation: Optional[str] = None,
                  initial_states: Any = None, return_final_states: bool = False, *,
                  out: Any = None, stream: Any = None) -> Any:
    """See :func:`samba_ext.kernels.causal_conv1d`. y has x's dtype; states float32."""
    silu = _activation(activation)
    c = _Call("causal_conv1d", dict(x=x, weight=weight, bias=bias,
                                    initial_states=initial_states, out=out), stream)
    xa = c.arr(x, "x", (3,))
    batch, dim, L = xa.shape
    wa = _conv_weight(c, weight, dim)
    W = wa.shape[1]
    ba = c.contig(c.arr(bias, "bias", (1,)))
    if ba is not None and ba.shape != (dim,):
        raise _shape_err("bias", f"({dim},)", ba.shape)
    init = c.contig(c.arr(initial_states, "initial_states", (3,)), "float32")
    if init is not None and init.shape != (batch, dim, W - 1):
        raise _shape_err("initial_states", f"({batch}, {dim}, {W - 1})", init.shape)
    ya, yres = c.output((batch, dim, L), xa.dtype, out)
    fin, fres = (c.state_output((batch, dim, W - 1)) if return_final_states else (None, None))
    _launch(c.cu.causal_conv1d, batch, dim, L, W, xa.ref, xa.strides, wa.ref, ba.ref if ba else None,
                       init.ptr if init else None, fin.ptr if fin else None, silu, ya.ref,
                       ya.strides, c.stream)
    return c.finish((yres, fres) if return_final_states else yres)


def causal_conv1d_update(x: Any, conv_state: Any, weight: Any, bias: Any = None,
                         activation: Optional[str] = None, *, out: Any = None,
                         stream: Any = None) -> Any:
    """See :func:`samba_ext.kernels.causal_conv1d_update` (conv_state float32, in place)."""
    silu = _activation(activation)
    c = _Call("causal_conv1d_update", dict(x=x, conv_state=conv_state, weight=weight,
                                           bias=bias, out=out), stream)
    st = c.inplace(conv_state, "conv_state", 3)
    batch, dim, W1 = st.shape
    xa = c.arr(x, "x", (2,))
    if xa.shape != (batch, dim):
        raise _shape_err("x", f"({batch}, {dim}) (conv_state's batch, dim)", xa.shape)
    wa = _conv_weight(c, weight, dim)
    if wa.shape[1] - 1 != W1:
        raise _shape_err("conv_state", f"({batch}, {dim}, {wa.shape[1] - 1}) (width - 1)",
                         st.shape)
    ba = c.contig(c.arr(bias, "bias", (1,)))
    if ba is not None and ba.shape != (dim,):
        raise _shape_err("bias", f"({dim},)", ba.shape)
    ya, yres = c.output((batch, dim), xa.dtype, out)
    _launch(c.cu.causal_conv1d_update, batch, dim, W1 + 1, xa.ref, xa.strides, st.ptr, wa.ref,
                              ba.ref if ba else None, silu, ya.ref, ya.strides, c.stream)
    return c.finish(yres)


def _scale(softmax_scale: Optional[float], hd: int) -> float:
    if softmax_scale is None:
        return 1.0 / math.sqrt(hd)
    s = float(softmax_scale)
    if not math.isfinite(s):
        raise ValueError(f"softmax_scale: expected a finite float, got {softmax_scale!r}")
    return s


def swa_attention(q: Any, k: Any, v: Any, window: Optional[int] = None,
                  softmax_scale: Optional[float] = None, *, out: Any = None,
                  stream: Any = None) -> Any:
    """See :func:`samba_ext.kernels.swa_attention`. out has q's dtype."""
    if window is not None:
        if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
            raise ValueError(f"window: expected None (full causal) or an int >= 1, got "
                             f"{window!r}")
    c = _Call("swa_attention", dict(q=q, k=k, v=v, out=out), stream)
    qa = c.lastdim_contig(c.arr(q, "q", (4,)))
    ka = c.lastdim_contig(c.arr(k, "k", (4,)))
    va = c.lastdim_contig(c.arr(v, "v", (4,)))
    batch, Lq, H, hd = qa.shape
    if ka.ndim != 4 or ka.shape[0] != batch or ka.shape[3] != hd:
        raise _shape_err("k", f"({batch}, seqlen_k, nheads_kv, {hd})", ka.shape)
    if va.shape != ka.shape:
        raise _shape_err("v", f"{ka.shape} (same as k)", va.shape)
    Lk, Hkv = ka.shape[1], ka.shape[2]
    if Hkv < 1 or H % Hkv:
        raise ValueError(f"k: nheads {H} must be a multiple of nheads_kv {Hkv}")
    if Lk < Lq:
        raise ValueError(f"k: seqlen_k {Lk} must be >= seqlen_q {Lq}")
    ya, yres = c.output((batch, Lq, H, hd), qa.dtype, out)
    _launch(c.cu.swa_attention, batch, Lq, Lk, H, Hkv, hd, int(window or 0), _scale(softmax_scale, hd),
                       qa.ref, qa.strides[:3], ka.ref, ka.strides[:3], va.ref, va.strides[:3],
                       ya.ref, c.stream)
    return c.finish(yres)


def _int_vector(c: _Call, x: Any, name: str, batch: int) -> _Arr:
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        x = np.full((batch,), int(x), dtype=np.int64)
    if not _is_gpu(x):
        h = np.asarray(x)
        if h.dtype.kind not in "iu":
            raise TypeError(f"{name}: expected integers, got dtype {h.dtype}")
        if h.shape != (batch,):
            raise _shape_err(name, f"({batch},)", h.shape)
    a = c.contig(c.arr(x, name, (1,), kind="int"))
    if a.shape != (batch,):
        raise _shape_err(name, f"({batch},)", a.shape)
    return a


def swa_decode(q: Any, k_cache: Any, v_cache: Any, pos: Any, n_valid: Any,
               softmax_scale: Optional[float] = None, *, out: Any = None,
               stream: Any = None) -> Any:
    """See :func:`samba_ext.kernels.swa_decode`. pos / n_valid may live on the device
    (int32 / int64), so a captured graph reads them at replay time."""
    c = _Call("swa_decode", dict(q=q, k_cache=k_cache, v_cache=v_cache, pos=pos,
                                 n_valid=n_valid, out=out), stream)
    qa = c.contig(c.arr(q, "q", (3,)))
    batch, H, hd = qa.shape
    ka = c.contig(c.arr(k_cache, "k_cache", (4,)))
    va = c.contig(c.arr(v_cache, "v_cache", (4,)))
    if ka.shape[0] != batch or ka.shape[3] != hd:
        raise _shape_err("k_cache", f"({batch}, capacity, nheads_kv, {hd})", ka.shape)
    if va.shape != ka.shape:
        raise _shape_err("v_cache", f"{ka.shape} (same as k_cache)", va.shape)
    cap, Hkv = ka.shape[1], ka.shape[2]
    if Hkv < 1 or H % Hkv:
        raise ValueError(f"k_cache: nheads {H} must be a multiple of nheads_kv {Hkv}")
    if cap < 1:
        raise ValueError("k_cache: capacity must be >= 1")
    for nm, val in (("pos", pos), ("n_valid", n_valid)):
        if not _is_gpu(val):
            h = np.asarray(val)
            if h.dtype.kind in "iu" and h.size:
                if nm == "n_valid" and (h.min() < 1 or h.max() > cap):
                    raise ValueError(f"n_valid: expected 1 <= n_valid[b] <= capacity "
                                     f"(k_cache.shape[1] = {cap}), got {h.min()}..{h.max()}")
                if nm == "pos" and h.min() < 0:
                    raise ValueError(f"pos: expected positions >= 0, got {h.min()}")
    pa = _int_vector(c, pos, "pos", batch)
    na = _int_vector(c, n_valid, "n_valid", batch)
    ya, yres = c.output((batch, H, hd), qa.dtype, out)
    _launch(c.cu.swa_decode, batch, H, Hkv, hd, cap, qa.ref, ka.ref, va.ref, pa.ref, na.ref,
                    _scale(softmax_scale, hd), ya.ref, c.stream)
    return c.finish(yres)


def rms_norm(x: Any, weight: Any, eps: float = 1e-5, residual: Any = None, *, out: Any = None,
             stream: Any = None) -> Any:
    """See :func:`samba_ext.kernels.rms_norm`. y has x's dtype; the returned sum x + residual
    has residual's dtype (and is what y normalises)."""
    eps = float(eps)
    if not (eps >= 0.0 and math.isfinite(eps)):
        raise ValueError(f"eps: expected a finite float >= 0, got {eps}")
    c = _Call("rms_norm", dict(x=x, weight=weight, residual=residual, out=out), stream)
    xa = c.arr(x, "x")
    if xa.ndim < 1:
        raise ValueError("x: expected at least 1 dimension")
    n = xa.shape[-1]
    rows = int(np.prod(xa.shape[:-1], dtype=np.int64))
    xa, ldx = c.rows(xa)
    wa = c.contig(c.arr(weight, "weight", (1,)))
    if wa.shape != (n,):
        raise _shape_err("weight", f"({n},) (x.shape[-1])", wa.shape)
    ra = c.arr(residual, "residual")
    if ra is not None and ra.shape != xa.shape:
        raise _shape_err("residual", f"{xa.shape} (same as x)", ra.shape)
    ya, yres = c.output(xa.shape, xa.dtype, out)
    if ra is not None:
        ra, ldr = c.rows(ra)
        ro = c.new(xa.shape, "float32" if c.host else ra.dtype)
        _launch(c.cu.rms_norm, rows, n, xa.ref, ldx, ra.ref, ldr,
                (ro.ptr, _DTYPES[ro.dtype][0]), wa.ref, eps, ya.ref, c.stream)
        return c.finish((yres, ro))
    _launch(c.cu.rms_norm, rows, n, xa.ref, ldx, None, 0, None, wa.ref, eps, ya.ref, c.stream)
    return c.finish(yres)


def apply_rotary(x: Any, positions: Any = 0, base: float = 10000.0, *, out: Any = None,
                 stream: Any = None) -> Any:
    """See :func:`samba_ext.kernels.apply_rotary` (angles computed in float64)."""
    base = float(base)
    if not (base > 0.0 and math.isfinite(base)):
        raise ValueError(f"base: expected a finite float > 0, got {base}")
    scalar = isinstance(positions, (int, np.integer)) and not isinstance(positions, bool)
    c = _Call("apply_rotary", dict(x=x, positions=None if scalar else positions, out=out),
              stream)
    xa = c.lastdim_contig(c.arr(x, "x", (4,)))
    batch, L, H, hd = xa.shape
    if hd % 2:
        raise ValueError(f"x: headdim must be even, got {hd}")
    if scalar:
        pa, batched, offset = None, 0, int(positions)
    else:
        pa = c.contig(c.arr(positions, "positions", (1, 2), kind="int"))
        if pa.shape == (L,):
            batched = 0
        elif pa.shape == (batch, L):
            batched = 1
        else:
            raise _shape_err("positions", f"({L},) or ({batch}, {L}) or an int offset", pa.shape)
        offset = 0
    ya, yres = c.output(xa.shape, xa.dtype, out)
    _launch(c.cu.apply_rotary, batch, L, H, hd, xa.ref, xa.strides[:3], pa.ref if pa else None, batched,
                      offset, base, ya.ref, ya.strides[:3], c.stream)
    return c.finish(yres)


def swiglu(gate: Any, up: Any, *, out: Any = None, stream: Any = None) -> Any:
    """See :func:`samba_ext.kernels.swiglu`. Output has gate's dtype."""
    c = _Call("swiglu", dict(gate=gate, up=up, out=out), stream)
    ga = c.arr(gate, "gate")
    ua = c.arr(up, "up")
    if ua.shape != ga.shape:
        raise _shape_err("up", f"{ga.shape} (same as gate)", ua.shape)
    ya, yres = c.output(ga.shape, ga.dtype, out)
    if ga.ndim == 0:
        ga, ua = c.contig(ga), c.contig(ua)
        rows, cols, ldg, ldu = 1, 1, 1, 1
    else:
        cols = ga.shape[-1]
        rows = int(np.prod(ga.shape[:-1], dtype=np.int64))
        ga, ldg = c.rows(ga)
        ua, ldu = c.rows(ua)
    _launch(c.cu.swiglu, rows, cols, ga.ref, ldg, ua.ref, ldu, ya.ref, cols, c.stream)
    return c.finish(yres)


# ------------------------------------------------------------------------ utilities ------
def to_device(x: Any, dtype: Optional[str] = None, device: int = 0,
              stream: Any = 0) -> DeviceArray:
    """Copy a host array (NumPy / list) to a new DeviceArray, converting to ``dtype``
    (default: float32 for floats, int64 for integers; float16 kept; "bfloat16" rounds to
    nearest even on the device)."""
    cu = _require()
    cu.set_device(int(device))
    s = _stream_handle(stream)
    h = np.asarray(x)
    if h.dtype.kind in "iub":
        src_dtype, h = "int64", _host_contig(h, np.int64)
    elif getattr(h.dtype, "name", "") == "bfloat16":
        src_dtype, h = "bfloat16", _host_contig(h).view(np.uint16)
    elif h.dtype == np.float16:
        src_dtype, h = "float16", _host_contig(h)
    elif h.dtype.kind == "f":
        src_dtype, h = "float32", _host_contig(h, np.float32)
    else:
        raise TypeError(f"x: expected a numeric array, got dtype {h.dtype}")
    dtype = _check_dtype(dtype) if dtype is not None else src_dtype
    d = DeviceArray.empty(h.shape, src_dtype, int(device), stream)
    if h.size:
        cu.memcpy_h2d(d.ptr, h.reshape(-1).view(np.uint8), s)
    return d if dtype == src_dtype else d.astype(dtype)


def empty(shape: Sequence[int], dtype: str = "float32", device: int = 0,
          stream: Any = 0) -> DeviceArray:
    """Uninitialised DeviceArray."""
    return DeviceArray.empty(shape, dtype, device, stream)


def zeros(shape: Sequence[int], dtype: str = "float32", device: int = 0,
          stream: Any = 0) -> DeviceArray:
    """Zero-filled DeviceArray."""
    a = DeviceArray.empty(shape, dtype, device, stream)
    if a.nbytes:
        _launch(_require().memset, a.ptr, 0, a.nbytes, a.stream)
    return a


def linear(x: Any, weight: Any, *, out: Any = None, out_dtype: Optional[str] = None,
           stream: Any = None) -> Any:
    """y (..., N) = x (..., K) @ weight (N, K)^T through cuBLAS (cublasGemmEx,
    CUBLAS_COMPUTE_32F: float32 accumulation, no TF32). x and weight must share a dtype
    (float32, float16 or bfloat16); y is ``out_dtype`` (float32 or x's dtype, default x's)."""
    c = _Call("linear", dict(x=x, weight=weight, out=out), stream)
    xa = c.contig(c.arr(x, "x"))
    wa = c.contig(c.arr(weight, "weight", (2,)))
    if xa.ndim < 1 or xa.shape[-1] != wa.shape[1]:
        raise ValueError(f"x: last dimension must equal weight.shape[1] ({wa.shape[1]}), got "
                         f"shape {xa.shape}")
    if xa.dtype != wa.dtype:
        raise TypeError(f"x and weight: dtypes differ ({xa.dtype} vs {wa.dtype})")
    K, N = wa.shape[1], wa.shape[0]
    M = int(np.prod(xa.shape[:-1], dtype=np.int64))
    od = _check_dtype(out_dtype) if out_dtype else xa.dtype
    if od not in ("float32", xa.dtype):
        raise TypeError(f"out_dtype: expected float32 or {xa.dtype}, got {od}")
    ya, yres = c.output(xa.shape[:-1] + (N,), od, out)
    _launch(c.cu.gemm, M, N, K, xa.ref, K, wa.ref, K, ya.ref, N, 0.0, c.stream)
    return c.finish(yres)


def _blas_layout(r: int, c: int, sr: int, sc: int) -> Optional[tuple[str, int]]:
    """How cuBLAS can read an (r, c) matrix with element strides (sr, sc): ("row", ld),
    ("col", ld) or None (needs a copy)."""
    if (c == 1 or sc == 1) and (r == 1 or sr >= max(c, 1)):
        return "row", (sr if r > 1 else max(c, 1))
    if (r == 1 or sr == 1) and (c == 1 or sc >= max(r, 1)):
        return "col", (sc if c > 1 else max(r, 1))
    return None


def _batch_stride(shape: tuple, strides: tuple, bshape: tuple) -> Optional[int]:
    """One stride covering the (broadcast) batch axes of an operand, or None."""
    nb = len(bshape)
    pad = nb - len(shape)
    full = [(1, 0)] * pad + list(zip(shape, strides))
    eff = [(n, st if n == bn else 0) for (n, st), bn in zip(full, bshape)]
    nz = [(bn, st) for (n, st), bn in zip(eff, bshape) if bn != 1]
    if not nz:
        return 0
    if all(st == 0 for _, st in nz):
        return 0
    st = nz[-1][1]
    for k in range(len(nz) - 2, -1, -1):
        if nz[k][1] != nz[k + 1][0] * nz[k + 1][1]:
            return None
    return st


def matmul(a: Any, b: Any, trans_a: bool = False, trans_b: bool = False, *,
           out_dtype: str = "float32", out: Any = None, stream: Any = None) -> Any:
    """``op(a) @ op(b)`` over the last two axes (op = swap of the last two axes when the flag
    is set), leading axes broadcast as in ``numpy.matmul``; strided views are read in place
    where cuBLAS can (one unit stride per matrix), else copied. cuBLAS
    cublasGemmStridedBatchedEx with CUBLAS_COMPUTE_32F (float32 accumulation, no TF32).
    Operands of different dtypes run in the lower precision one (a float32 activation times a
    bfloat16 weight is rounded to bfloat16 first). Output ``out_dtype`` (float32 default)."""
    c = _Call("matmul", dict(a=a, b=b, out=out), stream)
    A = c.arr(a, "a")
    B = c.arr(b, "b")
    if A.ndim < 2 or B.ndim < 2:
        raise ValueError(f"matmul: operands need >= 2 dimensions, got {A.shape} and {B.shape}")

    def op(x: _Arr, t: bool) -> _Arr:
        if not t:
            return x
        sh, st = list(x.shape), list(x.strides)
        sh[-1], sh[-2], st[-1], st[-2] = sh[-2], sh[-1], st[-2], st[-1]
        return _Arr(x.ptr, tuple(sh), tuple(st), x.dtype, x.device, x.keep, x.readonly)

    if A.dtype != B.dtype:
        low = "bfloat16" if "bfloat16" in (A.dtype, B.dtype) else "float16"
        A = A if A.dtype == low else c.convert(A, low)
        B = B if B.dtype == low else c.convert(B, low)
    A, B = op(A, trans_a), op(B, trans_b)
    M, K = A.shape[-2:]
    K2, N = B.shape[-2:]
    if K != K2:
        raise ValueError(f"matmul: inner dimensions differ: op(a) {A.shape} @ op(b) {B.shape}")
    try:
        bshape = tuple(np.broadcast_shapes(A.shape[:-2], B.shape[:-2]))
    except ValueError:
        raise ValueError(f"matmul: batch dimensions {A.shape[:-2]} and {B.shape[:-2]} do not "
                         f"broadcast") from None
    od = _check_dtype(out_dtype)
    ya, yres = c.output(bshape + (M, N), od, out)
    nb = int(np.prod(bshape, dtype=np.int64))
    if M * N * nb == 0:
        return c.finish(yres)
    if K == 0:
        _launch(c.cu.memset, ya.ptr, 0, M * N * nb * _DTYPES[ya.dtype][1], c.stream)
        return c.finish(yres)

    def prep(x: _Arr) -> tuple[_Arr, tuple, int]:
        for attempt in (0, 1):
            lay = _blas_layout(x.shape[-2], x.shape[-1], x.strides[-2], x.strides[-1])
            sb = _batch_stride(x.shape[:-2], x.strides[:-2], bshape)
            if lay is not None and sb is not None:
                return x, lay, sb
            x = c.convert(x)
        raise AssertionError("unreachable")  # a C-contiguous copy always qualifies

    A, la, sa = prep(A)
    B, lb, sbt = prep(B)
    # Column-major: C^T (N x M) = op(X) op(Y) with X from B, Y from A.
    tx, ldx = (0, lb[1]) if lb[0] == "row" else (1, lb[1])
    ty, ldy = (0, la[1]) if la[0] == "row" else (1, la[1])
    _launch(c.cu.gemm_batched, tx, ty, N, M, K, B.ref, ldx, sbt if nb > 1 else 0, A.ref, ldy,
            sa if nb > 1 else 0, ya.ref, N, M * N, nb, 0.0, c.stream)
    return c.finish(yres)


def synchronize(device: int = 0) -> None:
    """Wait for all work on the device."""
    cu = _require()
    cu.set_device(int(device))
    cu.device_sync()


def empty_cache(device: int = 0) -> None:
    """Return the memory cached by the stream-ordered pool to the driver."""
    cu = _require()
    cu.trim(int(device))


def memory_stats(device: int = 0) -> dict:
    """Bytes reserved by / in use in the device's default memory pool."""
    return dict(_require().pool_stats(int(device)))
