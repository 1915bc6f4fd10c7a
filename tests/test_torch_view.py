"""samba_ext.cuda.interop.torch_view and the torch branches of is_cuda_array / cuda_device_of /
ops.meta.on_cuda, on a stand-in ``torch`` module (runs without torch and without a GPU): which
tensors are read from their attributes, which are left to DLPack, and what is read."""
from __future__ import annotations

import sys
import types

import pytest

from samba_ext.cuda import interop
from samba_ext.ops.meta import on_cuda


class _DType:
    def __init__(self, name: str) -> None:
        self.name = name


def _fake_torch() -> types.ModuleType:
    torch = types.ModuleType("torch")
    for n in ("float32", "float16", "bfloat16", "int32", "int64", "float64"):
        setattr(torch, n, _DType(n))
    torch.strided, torch.sparse_coo = object(), object()

    class Tensor:
        def __init__(self, shape, strides, dtype, ptr=4096, device=0, cuda=True, **flags):
            self.shape, self._strides, self.dtype, self._ptr = shape, strides, dtype, ptr
            self._device, self.is_cuda = device, cuda
            self.requires_grad = flags.get("requires_grad", False)
            self.layout = flags.get("layout", torch.strided)
            self._conj, self._neg = flags.get("conj", False), flags.get("neg", False)

        def stride(self):
            return self._strides

        def data_ptr(self):
            return self._ptr

        def get_device(self):
            return self._device if self.is_cuda else -1

        def is_conj(self):
            return self._conj

        def is_neg(self):
            return self._neg

        def __dlpack_device__(self):  # the attribute path must not ask for it
            raise AssertionError("__dlpack_device__ called")

    torch.Tensor = Tensor
    return torch


@pytest.fixture
def torch(monkeypatch):
    t = _fake_torch()
    monkeypatch.setitem(sys.modules, "torch", t)
    monkeypatch.setattr(interop, "_TORCH_DTYPES", {})  # filled from this module's dtypes
    return t


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int32", "int64"])
def test_plain_tensor_is_read_from_its_attributes(torch, dtype):
    # a strided view with a storage offset: the pointer, shape and element strides as given
    x = torch.Tensor((2, 5, 3), (40, 1, 5), getattr(torch, dtype), ptr=8192 + 6, device=1)
    a = interop.torch_view(x, "q", 1)
    assert (a.ptr, a.shape, a.strides, a.dtype, a.device) == (8198, (2, 5, 3), (40, 1, 5),
                                                               dtype, 1)
    assert a.keep is x and a.readonly is False
    assert interop.is_cuda_array(x) and on_cuda(x) and interop.cuda_device_of(x) == 1


@pytest.mark.parametrize("flag", [{"requires_grad": True}, {"conj": True}, {"neg": True},
                                  {"layout": "sparse"}, {"cuda": False}])
def test_other_tensors_are_left_to_dlpack(torch, flag):
    if flag.get("layout") == "sparse":
        flag = {"layout": torch.sparse_coo}
    x = torch.Tensor((4,), (1,), torch.float32, **flag)
    assert interop.torch_view(x, "q", 0) is None
    assert interop.is_cuda_array(x) == on_cuda(x) == flag.get("cuda", True)


def test_subclass_and_unsupported_dtype_are_left_to_dlpack(torch):
    class Sub(torch.Tensor):
        pass
    assert interop.torch_view(Sub((4,), (1,), torch.float32), "q", 0) is None
    assert interop.torch_view(torch.Tensor((4,), (1,), torch.float64), "q", 0) is None


def test_tensor_on_another_device_names_the_argument(torch):
    x = torch.Tensor((4,), (1,), torch.float32, device=2)
    with pytest.raises(ValueError, match=r"^dout: is on cuda:2 but the other inputs are on cuda:0"):
        interop.torch_view(x, "dout", 0)


def test_without_torch_loaded_nothing_is_a_torch_tensor(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert interop.torch_view(object(), "q", 0) is None
    assert not on_cuda(object())
