"""Tensors <-> the arrays of samba_ext's kernel API (samba_ext.kernels, samba_ext.grad).

CPU tensors become NumPy arrays (no copy when float32 and contiguous; bfloat16 goes through
float32, NumPy has no bfloat16) and the float32 NumPy results are wrapped by
``torch.from_numpy`` (no copy). CUDA tensors are handed to the kernel API as they are: it
reads them in place (any strides; float32, float16 and bfloat16; float64 is
converted to float32 on the device first, the CUDA kernels do not read it), and its
:class:`samba_ext.DeviceArray` results are wrapped by ``torch.from_dlpack`` (no copy; see
:func:`tensors` for the stream). No data crosses between host and device.

Streams: with ``stream=None`` (what samba_ext.torch passes) the kernel API queues its CUDA
work on ``torch.cuda.current_stream(device)`` of the inputs' device, reads the inputs on it
(their pointers and strides, samba_ext.cuda.interop.torch_view) and exports the results for
that same stream, so the calls are ordered with the surrounding torch work like any torch op
on the current stream (and torch's caching allocator, which reuses freed blocks in that
stream's order, never hands an input's memory out while a kernel still reads it). Result
memory comes from samba_ext's stream-ordered pool (``cudaMallocAsync``), not torch's caching
allocator: it is released in order on the stream it was made on, so ``Tensor.record_stream``
does not apply to it.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterable, Optional

import numpy as np
import torch
from torch import Tensor

from ..cuda.array import DeviceArray
from ..cuda.runtime import norm_stream

__all__ = ["device_of", "check_kind", "is_cuda", "on_device", "arg", "tensor", "tensors",
           "act_dtype"]

_CUDA_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def device_of(named: Iterable[tuple[str, Optional[Tensor]]]) -> torch.device:
    """The one device of the given (name, tensor) pairs (None entries skipped; CPU when all
    are None). NotImplementedError naming the first tensor on a device other than CPU and
    CUDA; ValueError naming the first tensor on another device than the first one."""
    first: Optional[tuple[str, torch.device]] = None
    for name, t in named:
        if t is None:
            continue
        check_kind(name, t.device)
        if first is None:
            first = (name, t.device)
        elif t.device != first[1]:
            raise ValueError(f"{name}: is on {t.device} but {first[0]} is on {first[1]}; "
                             "pass all tensors on one device")
    return torch.device("cpu") if first is None else first[1]


def check_kind(name: str, device: torch.device) -> None:
    """NotImplementedError naming the argument for a device other than CPU and CUDA."""
    if device.type not in ("cpu", "cuda"):
        raise NotImplementedError(f"{name}: is on device {device}; samba_ext.torch runs on "
                                  "CPU and CUDA tensors")


def is_cuda(device: torch.device) -> bool:
    return device.type == "cuda"


def on_device(device: torch.device) -> Any:
    """Context for a kernel call on ``device``: for CUDA, that device made current (and the
    previous one restored afterwards: the kernel API selects the inputs' device itself)."""
    return torch.cuda.device(device) if is_cuda(device) else contextlib.nullcontext()


def arg(t: Optional[Tensor]) -> Any:
    """A tensor as a kernel-API argument: a NumPy array for a CPU tensor (shares its memory
    when float32 and contiguous), the detached tensor itself for a CUDA tensor (float64
    converted to float32 on the device); None stays None."""
    if t is None:
        return None
    a = t.detach()
    if a.device.type == "cpu":
        if a.dtype == torch.bfloat16:
            a = a.float()
        return a.contiguous().numpy()
    if a.dtype == torch.float64:
        a = a.float()
    return a


def tensor(a: Any, device: torch.device) -> Tensor:
    """A kernel-API result as a tensor sharing its memory: a float32 NumPy array through
    torch.from_numpy, a DeviceArray through torch.from_dlpack; None becomes an empty float32
    placeholder on ``device`` (a gradient of an input that was not given)."""
    return tensors((a,), device)[0]


def tensors(arrays: Iterable[Any], device: torch.device) -> tuple[Tensor, ...]:
    """Several kernel-API results as tensors, each as :func:`tensor` makes it.

    A DeviceArray made on torch's current stream of ``device`` (what every samba_ext.torch
    call gives: the kernel API queues its work there) is exported with ``stream=-1``, no
    synchronisation, and its capsule handed to torch.from_dlpack: the consumer is that same
    stream, so there is nothing to order, and torch's per-tensor lookup of its current stream
    (what from_dlpack does before it asks for the capsule) is made once for all of them.
    Any other DeviceArray goes through torch.from_dlpack's own protocol.
    """
    arrays = tuple(arrays)
    cur: Optional[int] = None
    if is_cuda(device) and any(isinstance(a, DeviceArray) for a in arrays):
        cur = norm_stream(int(torch.cuda.current_stream(device).cuda_stream))
    out = []
    for a in arrays:
        if a is None:
            out.append(torch.empty(0, device=device))
        elif isinstance(a, np.ndarray):
            out.append(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)))
        elif isinstance(a, DeviceArray) and a.stream == cur:
            out.append(torch.from_dlpack(a.__dlpack__(stream=-1)))
        else:
            out.append(torch.from_dlpack(a))
    return tuple(out)


def act_dtype(t: Tensor) -> torch.dtype:
    """dtype of a kernel output that follows its input ``t`` (y of the scan / conv /
    attention, the activation gradients): on CUDA t's own float32 / float16 / bfloat16
    (the CUDA kernels write in their input's dtype), otherwise float32 (the CPU kernels
    always return float32; float64 is computed in float32)."""
    if t.device.type == "cuda" and t.dtype in _CUDA_FLOATS:
        return t.dtype
    return torch.float32
