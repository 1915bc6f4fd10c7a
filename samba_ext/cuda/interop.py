"""DLPack and ``__cuda_array_interface__``: viewing foreign CUDA arrays (torch, cupy, jax,
...) without a copy, and exporting samba_ext's :class:`~samba_ext.cuda.array.DeviceArray`.

Import requests a versioned DLPack 1.x capsule (falling back to the legacy one) for the
stream the call runs on, so the producer orders its pending work first; CAI v2/v3 is read
with its stream field. Export follows the DLPack stream rules (the consumer's stream waits
for the array's pending work).
"""
from __future__ import annotations

import sys
from typing import Any, Optional

import numpy as np

from ..ops.meta import is_torch_tensor, on_cuda
from .layout import DTYPES, FROM_DL, FROM_TYPESTR, KDLCUDA, KDLCUDA_MANAGED, c_strides, \
    is_c_contig
from .runtime import DeviceGuard, dl_stream, flush_recorder, norm_stream, require

__all__ = ["ArrayView", "is_cuda_array", "cuda_device_of", "describe", "import_array",
           "torch_view", "export_dlpack", "export_cai"]

# ------------------------------------------------------------------------ array import ---
class ArrayView:
    """A device array view used by one call: pointer, shape, element strides, dtype."""

    __slots__ = ("ptr", "shape", "strides", "dtype", "device", "keep", "readonly")

    def __init__(self, ptr: int, shape: tuple, strides: tuple, dtype: str, device: int,
                 keep: Any, readonly: bool = False) -> None:
        self.ptr, self.shape, self.strides, self.dtype = ptr, shape, strides, dtype
        self.device, self.keep, self.readonly = device, keep, readonly

    @property
    def ref(self) -> tuple[int, int]:
        return (self.ptr, DTYPES[self.dtype][0])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def contiguous(self) -> bool:
        return is_c_contig(self.shape, self.strides)


def is_cuda_array(x: Any) -> bool:
    """x lives on a CUDA device: the one rule of :func:`samba_ext.ops.meta.on_cuda`."""
    return on_cuda(x)


def cuda_device_of(x: Any) -> int:
    if is_torch_tensor(x) and x.is_cuda:
        return int(x.get_device())
    dev = getattr(x, "__dlpack_device__", None)
    if dev is not None:
        try:
            return int(dev()[1])
        except Exception:
            pass
    return 0


def describe(x: Any) -> str:
    return type(x).__module__.split(".")[0] + "." + type(x).__name__


_TORCH_DTYPES: dict = {}  # torch.dtype -> dtype name, filled on first use


def torch_view(x: Any, name: str, device: int) -> Optional[ArrayView]:
    """A view of a plain strided CUDA torch tensor read from its attributes (pointer, shape,
    strides: what its DLPack capsule would hold, without torch's per-tensor Python export);
    None for anything else (other types, subclasses, requires_grad, conjugate or negative
    bit, other dtypes), which :func:`import_array` handles or refuses. The caller orders
    torch's current stream before its own (what ``__dlpack__(stream=...)`` does per tensor)."""
    torch = sys.modules.get("torch")
    if torch is None or type(x) is not torch.Tensor or not x.is_cuda or x.requires_grad \
            or x.layout != torch.strided or x.is_conj() or x.is_neg():
        return None
    if not _TORCH_DTYPES:
        _TORCH_DTYPES.update({getattr(torch, n): n for n in DTYPES})
    dtype = _TORCH_DTYPES.get(x.dtype)
    if dtype is None:
        return None
    dev_id = x.get_device()
    if dev_id != device:
        raise ValueError(f"{name}: is on cuda:{dev_id} but the other inputs are on "
                         f"cuda:{device}")
    return ArrayView(x.data_ptr(), tuple(x.shape), tuple(x.stride()), dtype, dev_id, x)


def import_array(x: Any, name: str, stream: int, device: int) -> ArrayView:
    """View a foreign CUDA array (DLPack or CAI producer) without copying; its producer orders
    pending work before ``stream``. (samba_ext's own DeviceArray: see cuda/call.py.)"""
    cu = require()
    if hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__"):
        kw_stream = dl_stream(stream)
        try:
            cap = x.__dlpack__(stream=kw_stream, max_version=(1, 1))
        except TypeError:
            cap = x.__dlpack__(stream=kw_stream)
        imp = cu.from_capsule(cap)
        info = imp.info()
        dev_type, dev_id = info["device"]
        if dev_type not in (KDLCUDA, KDLCUDA_MANAGED):
            raise ValueError(f"{name}: DLPack device type {dev_type} is not a CUDA device")
        if dev_id != device:
            raise ValueError(f"{name}: is on cuda:{dev_id} but the other inputs are on "
                             f"cuda:{device}")
        code, bits, lanes = info["dtype"]
        dtype = FROM_DL.get((code, bits)) if lanes == 1 else None
        if dtype is None:
            raise TypeError(f"{name}: unsupported dtype (DLPack code {code}, {bits} bits, "
                            f"{lanes} lanes); expected float32, float16 or bfloat16 (int32 "
                            f"or int64 for integer arguments)")
        shape = tuple(info["shape"])
        strides = tuple(info["strides"]) if info["strides"] is not None else c_strides(shape)
        return ArrayView(info["ptr"], shape, strides, dtype, dev_id, (imp, x), info["readonly"])
    if hasattr(x, "__cuda_array_interface__"):
        d = x.__cuda_array_interface__
        if int(d.get("version", 0)) < 2:
            raise TypeError(f"{name}: __cuda_array_interface__ version {d.get('version')} "
                            f"is too old (need 2 or 3)")
        if d.get("mask") is not None:
            raise TypeError(f"{name}: masked __cuda_array_interface__ arrays are not supported")
        ts = d["typestr"]
        dtype = FROM_TYPESTR.get(ts)
        if dtype is None:
            raise TypeError(f"{name}: unsupported typestr {ts!r}; expected float32 ('<f4'), "
                            f"float16 ('<f2') or bfloat16 ('<V2'), or int32 ('<i4') or int64 "
                            f"('<i8') for integer arguments")
        shape = tuple(int(s) for s in d["shape"])
        item = DTYPES[dtype][1]
        if d.get("strides") is None:
            strides = c_strides(shape)
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
            if norm_stream(int(s)) != stream:
                cu.stream_wait(stream, norm_stream(int(s)))
        return ArrayView(int(ptr or 0), shape, strides, dtype, device, x, bool(ro))
    raise TypeError(f"{name}: expected a CUDA array, got {describe(x)}")


# ------------------------------------------------------------------------ export ---------
def export_dlpack(arr: Any, stream: Any, max_version: Any, dl_device: Any,
                  copy: Optional[bool]) -> Any:
    """``DeviceArray.__dlpack__``: a DLPack capsule of ``arr`` for a consumer on ``stream``."""
    cu = require()
    if dl_device is not None and tuple(int(v) for v in dl_device) != (KDLCUDA, arr.device):
        raise BufferError(f"DeviceArray lives on cuda:{arr.device}; it cannot be exported "
                          f"to device {tuple(dl_device)} (use to_numpy() for the host)")
    if stream is not None and not isinstance(stream, (int, np.integer)):
        raise TypeError(f"stream: expected an int or None, got {type(stream).__name__}")
    if stream is not None and int(stream) == 0:
        raise ValueError("stream=0 is not allowed by DLPack (use 1 for the legacy default "
                         "stream, 2 for the per-thread default stream)")
    flush_recorder()
    src = arr
    if copy or stream is None or int(stream) != -1:  # a plain stream=-1 export calls no CUDA
        with DeviceGuard(arr.device):
            src = arr.copy() if copy else arr
            if stream is None or int(stream) != -1:
                consumer = 0 if stream is None else norm_stream(int(stream))
                if consumer != src._stream:
                    cu.stream_wait(consumer, src._stream)
                    if hasattr(src._buf, "add_use"):
                        src._buf.add_use(consumer)
    versioned = max_version is not None and int(max_version[0]) >= 1
    minor = 0
    if versioned:
        minor = min(int(max_version[1]), 1) if int(max_version[0]) == 1 else 1
    code, bits = DTYPES[src.dtype][2]
    strides = None if src.is_contiguous else src._strides
    return cu.to_capsule(src, src._ptr, src.shape, strides, code, bits, KDLCUDA, src.device,
                         int(versioned), minor, 0, int(bool(copy)))


def export_cai(arr: Any) -> dict:
    """``DeviceArray.__cuda_array_interface__`` (version 3)."""
    flush_recorder()
    ts = DTYPES[arr.dtype][3]
    strides = None if arr.is_contiguous else tuple(s * arr.itemsize for s in arr._strides)
    return {"shape": arr.shape, "typestr": ts, "descr": [("", ts)],
            "data": (arr._ptr if arr.size else 0, False), "strides": strides,
            "version": 3, "stream": dl_stream(arr._stream)}
