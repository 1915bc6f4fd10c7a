"""One CUDA op call: its device, stream, the views of its inputs and its outputs.

:class:`Call` collects what a wrapper in :mod:`samba_ext.cuda.ops` or
:mod:`samba_ext.cuda.blas` needs: CUDA inputs are viewed in place (:func:`view`), host
inputs are uploaded as float32 (or int64), outputs are new DeviceArrays or the caller's
``out=``; for host inputs (``device="cuda"``) :meth:`Call.finish` downloads the results and
writes in-place arrays back. It checks what protects memory (ndim, dtype, contiguity of
arrays written in place); the argument rules are the contracts' (samba_ext/ops/).
"""
from __future__ import annotations

import importlib
from typing import Any, Optional, Sequence

import numpy as np

from .array import DeviceArray
from .interop import ArrayView, cuda_device_of, describe, import_array, is_cuda_array, \
    torch_view
from .layout import DTYPES, FLOATS, INTS, c_strides, host_contig, nocopy_reshape
from .runtime import current_framework_stream, launch, norm_stream, recorder, require, \
    stream_handle

__all__ = ["Call", "view", "default_stream", "strides_bgnl"]


def default_stream(objs: Sequence[Any], device: int) -> tuple[int, Any]:
    """(stream handle, object keeping it alive) for stream=None: the stream of an input
    DeviceArray, else the current torch / cupy stream, else the legacy default stream."""
    for x in objs:
        if isinstance(x, DeviceArray):
            return x.stream, getattr(x._buf, "keep", None)
    return current_framework_stream(objs, device)


def view(x: Any, name: str, stream: int, device: int) -> ArrayView:
    """A view of CUDA array ``x`` for a call on ``stream``: a DeviceArray directly (its stream
    is made to precede ``stream``), any other producer through DLPack / CAI."""
    if not isinstance(x, DeviceArray):
        return import_array(x, name, stream, device)
    if x.device != device:
        raise ValueError(f"{name}: is on cuda:{x.device} but the other inputs are on "
                         f"cuda:{device}")
    if x.stream != stream and recorder() is None:
        require().stream_wait(stream, x.stream)
        if hasattr(x._buf, "add_use"):
            x._buf.add_use(stream)
    return ArrayView(x.ptr, x.shape, x.strides, x.dtype, x.device, x)


def checker_hint(name: str) -> str:
    """"; samba_ext.NAME checks the arguments and explains" where samba_ext.NAME is a public
    function (a kernel op whose contract gives the full explanation, or a dotted name such as
    grad.selective_scan_bwd), else "" (the CUDA-only ops check everything here)."""
    mod, _, attr = ("samba_ext." + name).rpartition(".")
    try:
        ok = callable(getattr(importlib.import_module(mod), attr, None))
    except ImportError:
        ok = False
    return f"; samba_ext.{name} checks the arguments and explains" if ok else ""


class Call:
    """Collects the device, stream, imported views and temporaries of one kernel call.

    Makes the inputs' device current (device 0 for host inputs); the public function that
    creates the Call is decorated with :func:`~samba_ext.cuda.runtime.keeps_device`, which
    puts the caller's current device back when it returns or raises."""

    def __init__(self, name: str, arrays: dict, stream: Any) -> None:
        self.name = name
        self.cu = require()
        gpu = [v for v in arrays.values() if is_cuda_array(v)]
        self.host = not gpu
        self.device = cuda_device_of(gpu[0]) if gpu else 0
        self.cu.set_device(self.device)
        # torch tensors read through torch_view: has this call's stream been ordered after
        # torch's current stream? (already so when it is that stream)
        self.torch_ordered = False
        if stream is None:
            self.stream, self.keep_stream = default_stream(gpu, self.device)
            self.torch_ordered = type(self.keep_stream).__module__.startswith("torch")
        else:
            self.stream = stream_handle(stream)
            self.keep_stream = None if isinstance(stream, (int, np.integer)) else stream
        self.keep: list = []
        self.writeback: list = []  # (numpy array, device ArrayView) copied back after the call

    # -- memory-safety checks (the argument rules are the contracts') --------------------
    def fit(self, a: Optional[ArrayView], name: str, *want: Optional[int]) -> None:
        """``a`` (None: an absent optional argument, passes) has ``len(want)`` axes of the
        given sizes (None: any), so the kernel stays inside its buffers."""
        if a is None or (a.ndim == len(want) and all(
                w is None or n == w for n, w in zip(a.shape, want))):
            return
        exp = "(" + ", ".join("*" if w is None else str(w) for w in want) + ")"
        raise ValueError(f"{self.name}: {name} has shape {a.shape}, which does not fit the "
                         f"other arguments (expected {exp}){checker_hint(self.name)}")

    def need(self, ok: bool, name: str, what: str) -> None:
        """A memory-safety condition on argument ``name``."""
        if not ok:
            raise ValueError(f"{self.name}: {name}: {what}{checker_hint(self.name)}")

    def new(self, shape: Sequence[int], dtype: str) -> DeviceArray:
        """A new array on this call's device and stream."""
        return DeviceArray.empty(shape, dtype, self.device, self.stream, self.keep_stream)

    # -- inputs ---------------------------------------------------------------------
    def _upload(self, x: Any, name: str, kind: str) -> ArrayView:
        a = np.asarray(x)
        if kind == "int":
            if a.dtype.kind not in "iu":
                raise TypeError(f"{name}: expected an integer array, got dtype {a.dtype}")
            a = host_contig(a, np.int64)
            dtype = "int64"
        else:
            if getattr(a.dtype, "name", "") == "bfloat16" and not self.host:
                a = host_contig(a).view(np.uint16)
                dtype = "bfloat16"
            elif a.dtype.kind != "f":
                raise TypeError(f"{name}: expected a floating-point array (float16, float32 or "
                                f"float64), got dtype {a.dtype}")
            elif a.dtype == np.float16 and not self.host:
                a = host_contig(a)
                dtype = "float16"
            else:
                a = host_contig(a, np.float32)
                dtype = "float32"
        d = self.new(a.shape, dtype)
        if a.size:
            self.cu.memcpy_h2d(d.ptr, a.reshape(-1).view(np.uint8), self.stream)
        self.keep.append(d)
        return ArrayView(d.ptr, d.shape, c_strides(d.shape), dtype, self.device, d)

    def arr(self, x: Any, name: str, ndim: Optional[Sequence[int]] = None,
            kind: str = "float") -> Optional[ArrayView]:
        """An input: a view of a CUDA array, or an uploaded copy of a host array."""
        if x is None:
            return None
        if is_cuda_array(x):
            a = torch_view(x, name, self.device)
            if a is None:
                a = view(x, name, self.stream, self.device)
            elif not self.torch_ordered:
                self.order_after_torch()
        else:
            a = self._upload(x, name, kind)
        if kind == "float" and a.dtype not in FLOATS:
            raise TypeError(f"{name}: expected float32, float16 or bfloat16, got {a.dtype}")
        if kind == "int" and a.dtype not in INTS:
            raise TypeError(f"{name}: expected an int32 or int64 array, got {a.dtype}")
        if ndim is not None and a.ndim not in tuple(ndim):
            want = " or ".join(f"{n}-D" for n in ndim)
            raise ValueError(f"{name}: expected a {want} array, got shape {a.shape}")
        self.keep.append(a.keep)
        return a

    def order_after_torch(self) -> None:
        """This call's stream waits for torch's current stream on the call's device (once per
        call: torch tensors are produced in that stream's order)."""
        import torch

        ts = norm_stream(int(torch.cuda.current_stream(self.device).cuda_stream))
        if ts != self.stream:
            self.cu.stream_wait(self.stream, ts)
        self.torch_ordered = True

    def convert(self, a: ArrayView, dtype: Optional[str] = None) -> ArrayView:
        """A C-contiguous copy of `a` (converted to `dtype`)."""
        dtype = dtype or a.dtype
        d = self.new(a.shape, dtype)
        if d.size:
            launch(self.cu.copy, a.shape, a.ref, a.strides, (d.ptr, DTYPES[dtype][0]),
                    d.strides, -1, None, None, 0, self.stream)
        self.keep.append(d)
        return ArrayView(d.ptr, d.shape, c_strides(d.shape), dtype, self.device, d)

    def contig(self, a: Optional[ArrayView], dtype: Optional[str] = None) -> Optional[ArrayView]:
        if a is None:
            return None
        if a.contiguous() and (dtype is None or a.dtype == dtype):
            return a
        return self.convert(a, dtype)

    def lastdim_contig(self, a: ArrayView) -> ArrayView:
        return a if a.shape[-1] <= 1 or a.strides[-1] == 1 else self.convert(a)

    def rows(self, a: ArrayView) -> tuple[ArrayView, int]:
        """(view, row stride): `a` seen as (rows, a.shape[-1]) with unit last stride and
        one row stride (a copy in C order when its strides do not allow that)."""
        if a.ndim == 0:
            a = self.contig(a)
            return a, 1
        n = a.shape[-1]
        rows = int(np.prod(a.shape[:-1], dtype=np.int64))
        if rows * n == 0:
            return a, n
        st = nocopy_reshape(a.shape, a.strides, (rows, n))
        if st is None or (n > 1 and st[1] != 1):
            a = self.convert(a)
            return a, n
        return a, (st[0] if rows > 1 else n)

    def inplace(self, x: Any, name: str, ndim: int) -> ArrayView:
        """An array updated in place: float32, C-contiguous, writable."""
        if x is None:
            raise TypeError(f"{name}: expected an array updated in place, got None")
        if not is_cuda_array(x):
            if not self.host:
                raise TypeError(f"{name}: is updated in place and must be on the GPU like the "
                                f"other inputs, got {describe(x)}")
            if not isinstance(x, np.ndarray) or x.dtype != np.float32:
                raise TypeError(f"{name}: is updated in place and must be a float32 "
                                f"numpy.ndarray, got {describe(x)}"
                                + (f" of dtype {x.dtype}" if isinstance(x, np.ndarray) else ""))
            if not x.flags.writeable:
                raise ValueError(f"{name}: is updated in place but is read-only")
            a = self._upload(x, name, "float")
            self.writeback.append((x, a))
        else:
            a = view(x, name, self.stream, self.device)
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
    def output(self, shape: tuple, dtype: str, out: Any = None) -> tuple[ArrayView, Any]:
        """(view, result object): a new DeviceArray, or the caller's out= buffer."""
        if out is None:
            d = self.new(shape, "float32" if self.host else dtype)
            return ArrayView(d.ptr, d.shape, c_strides(d.shape), d.dtype, self.device, d), d
        if not is_cuda_array(out):
            if not self.host:
                raise TypeError(f"out: expected a CUDA array like the inputs, got {describe(out)}")
            if not isinstance(out, np.ndarray):
                raise TypeError(f"out: expected a numpy.ndarray for a NumPy call, got "
                                f"{describe(out)}")
            if out.shape != tuple(shape):
                raise ValueError(f"out: expected shape {tuple(shape)}, got {out.shape}")
            d = self.new(shape, "float32")
            a = ArrayView(d.ptr, d.shape, c_strides(d.shape), "float32", self.device, d)
            self.writeback.append((out, a))
            return a, out
        a = view(out, "out", self.stream, self.device)
        self.keep.append(a.keep)
        if a.shape != tuple(shape):
            raise ValueError(f"out: expected shape {tuple(shape)}, got {a.shape}")
        if a.dtype not in FLOATS:
            raise TypeError(f"out: expected float32, float16 or bfloat16, got {a.dtype}")
        if not a.contiguous():
            raise ValueError("out: must be C-contiguous")
        if a.readonly:
            raise ValueError("out: was exported read-only")
        return a, out

    def state_output(self, shape: tuple) -> tuple[ArrayView, Any]:
        d = self.new(shape, "float32")
        return ArrayView(d.ptr, d.shape, c_strides(d.shape), "float32", self.device, d), d

    def finish(self, result: Any) -> Any:
        """Host calls: download results (float32 NumPy) and write in-place arrays back."""
        rec = recorder()
        if rec is not None and hasattr(rec, "hold"):
            rec.hold(self.keep)  # a recorded (deferred) launch: keep its arrays until it runs
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


def strides_bgnl(a: ArrayView) -> tuple:
    """(B, N, L) or (B, G, N, L) -> 4 strides (a 3-D array is one group)."""
    if a.ndim == 3:
        return (a.strides[0], 0, a.strides[1], a.strides[2])
    return tuple(a.strides)
