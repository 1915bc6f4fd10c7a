"""Zero-copy interop on the GPU: torch and cupy (where installed) as producers and
consumers, __cuda_array_interface__, out= buffers, and the DLPack stream handshake.

Zero copy is checked by pointer equality. The stream tests make the producer's write slow
(torch.cuda._sleep on the producer's stream before it writes) so that a consumer that did
not wait for the producer's stream would read the NaN-poisoned buffer and fail.
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close
from cuda_util import dev, host, needs_cuda
from ref_small import swiglu as swiglu_ref

import samba_ext

pytestmark = needs_cuda


def _torch():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    return torch


def _cupy():
    return pytest.importorskip("cupy")


def test_device_array_protocols(rng):
    from samba_ext import cuda as samba_cuda

    a = samba_cuda.to_device(rng.standard_normal((3, 4)), "bfloat16")
    assert a.__dlpack_device__() == (2, 0)
    cai = a.__cuda_array_interface__
    assert cai["version"] == 3 and cai["typestr"] == "<V2" and cai["data"][0] == a.ptr
    assert cai["shape"] == (3, 4) and cai["strides"] is None and cai["stream"] in (1, a.stream)
    with pytest.raises(BufferError):
        a.__dlpack__(dl_device=(1, 0))
    with pytest.raises(ValueError, match="stream=0"):
        a.__dlpack__(stream=0)
    assert a.reshape(12).ptr == a.ptr and a.reshape(-1, 2).shape == (6, 2)
    b = a.astype("float32")
    assert b.dtype == "float32" and b.ptr != a.ptr
    np.testing.assert_array_equal(b.to_numpy(), a.to_numpy())


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_torch_wraps_result_without_copy(rng, dtype):
    torch = _torch()
    g, u = rng.standard_normal((2, 50)), rng.standard_normal((2, 50))
    y = samba_ext.swiglu(dev(g, dtype), dev(u, dtype))
    t = torch.from_dlpack(y)  # versioned capsule (torch asks max_version=(1, 0))
    assert t.data_ptr() == y.ptr and t.dtype == getattr(torch, dtype) and t.is_cuda
    assert tuple(t.shape) == (2, 50)
    np.testing.assert_array_equal(t.float().cpu().numpy(), y.to_numpy().astype(np.float32))
    # legacy capsule path
    t2 = torch.utils.dlpack.from_dlpack(y.__dlpack__(stream=1))
    assert t2.data_ptr() == y.ptr
    del y  # the torch tensors keep the memory alive
    assert np.all(np.isfinite(t.float().cpu().numpy()))


def test_torch_inputs_and_out_without_copy(rng):
    torch = _torch()
    g = torch.randn(4, 64, device="cuda", dtype=torch.bfloat16)
    u = torch.randn(4, 64, device="cuda", dtype=torch.bfloat16)
    out = torch.full((4, 64), float("nan"), device="cuda", dtype=torch.float32)
    ptr = out.data_ptr()
    r = samba_ext.swiglu(g, u, out=out)
    assert r is out and out.data_ptr() == ptr
    ref = swiglu_ref(g.float().cpu().numpy(), u.float().cpu().numpy())
    assert_close(out.cpu().numpy(), ref, 1e-5)
    # non-contiguous torch inputs (strided read path and copy path)
    x = torch.randn(2, 40, 8, device="cuda").transpose(1, 2)  # (2, 8, 40) token-major memory
    w = torch.randn(8, 4, device="cuda")
    y = samba_ext.causal_conv1d(x, w, activation="silu")
    from ref_small import causal_conv1d as conv_ref

    assert_close(host(y), conv_ref(x.cpu().numpy(), w.cpu().numpy(), None, "silu")[0], 1e-5)
    # in-place state: a torch tensor is updated in place
    st = torch.randn(2, 8, 3, device="cuda")
    st_ptr, st0 = st.data_ptr(), st.cpu().numpy()
    xt = torch.randn(2, 8, device="cuda")
    samba_ext.causal_conv1d_update(xt, st, w)
    assert st.data_ptr() == st_ptr
    np.testing.assert_allclose(st.cpu().numpy()[:, :, :2], st0[:, :, 1:])
    np.testing.assert_allclose(st.cpu().numpy()[:, :, 2], xt.cpu().numpy())
    # a requires_grad tensor cannot be exported: torch's own error surfaces
    with pytest.raises((RuntimeError, BufferError)):
        samba_ext.swiglu(torch.ones(3, device="cuda", requires_grad=True), torch.ones(3,
                                                                                  device="cuda"))


def test_torch_inputs_read_from_their_attributes(rng, monkeypatch):
    """Plain CUDA tensors are read from data_ptr / shape / stride (no DLPack export): the
    same values with torch's __dlpack__ disabled, for a strided view with a storage offset
    and for a tensor written on torch's current side stream just before the call."""
    torch = _torch()
    base = torch.randn(5, 70, device="cuda")
    g, u = base[1:, 3:67], base[:4, 2:66].t().contiguous().t()  # offset rows; column-major
    ref = swiglu_ref(g.cpu().numpy(), u.cpu().numpy())

    def no_export(self, *a, **k):
        raise AssertionError("__dlpack__ called")
    monkeypatch.setattr(torch.Tensor, "__dlpack__", no_export)
    assert_close(host(samba_ext.swiglu(g, u)), ref, 1e-5)
    s = torch.cuda.Stream()
    x = torch.full((1 << 20,), float("nan"), device="cuda")
    src = torch.randn(1 << 20, device="cuda")
    torch.cuda.synchronize()
    with torch.cuda.stream(s):
        torch.cuda._sleep(50_000_000)
        x.copy_(src)
        y = samba_ext.swiglu(x, x)  # stream=None: torch's current stream, s
    assert y.stream == s.cuda_stream
    assert_close(y.to_numpy(), swiglu_ref(src.cpu().numpy(), src.cpu().numpy()), 1e-5)
    # anything else still goes through DLPack: a requires_grad tensor is refused there
    with pytest.raises(AssertionError, match="__dlpack__"):
        samba_ext.swiglu(torch.ones(3, device="cuda", requires_grad=True),
                         torch.ones(3, device="cuda"))


def test_cupy_round_trip_without_copy(rng):
    cp = _cupy()
    a = cp.asarray(rng.standard_normal((3, 33)).astype(np.float32))
    b = cp.asarray(rng.standard_normal((3, 33)).astype(np.float16))
    y = samba_ext.swiglu(a, b)
    assert isinstance(y, samba_ext.DeviceArray) and y.dtype == "float32"
    c = cp.from_dlpack(y)
    assert c.data.ptr == y.ptr
    c2 = cp.asarray(y)  # __cuda_array_interface__
    assert c2.data.ptr == y.ptr
    ref = swiglu_ref(cp.asnumpy(a), cp.asnumpy(b))
    assert_close(cp.asnumpy(c), ref, 1e-5)
    out = cp.full((3, 33), cp.nan, dtype=cp.float32)
    assert samba_ext.swiglu(a, b, out=out) is out
    assert_close(cp.asnumpy(out), ref, 1e-5)


def test_cupy_stream_argument(rng):
    cp = _cupy()
    s = cp.cuda.Stream(non_blocking=True)
    x = cp.asarray(rng.standard_normal((2, 3, 64)).astype(np.float32))
    w = cp.ones(64, dtype=cp.float32)
    with s:
        y = samba_ext.rms_norm(x, w)  # stream=None: cupy's current stream
    assert y.stream == s.ptr
    y2 = samba_ext.rms_norm(x, w, stream=s)
    assert y2.stream == s.ptr
    s.synchronize()
    np.testing.assert_allclose(y.to_numpy(), y2.to_numpy())


def test_stream_handshake_consumer_waits_for_torch_producer(rng):
    """Our kernel on stream S2 reads a tensor torch is still writing on stream S1."""
    torch = _torch()
    from samba_ext import cuda as samba_cuda

    src = torch.randn(1 << 20, device="cuda")
    x = torch.full((1 << 20,), float("nan"), device="cuda")
    s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
    torch.cuda.synchronize()
    with torch.cuda.stream(s1):
        torch.cuda._sleep(50_000_000)  # ~25 ms of GPU time before the write
        x.copy_(src)
        # Consumer on another stream: x.__dlpack__(stream=s2) must make s2 wait for s1.
        y = samba_ext.swiglu(x, x, stream=s2.cuda_stream)
    assert y.stream == s2.cuda_stream
    s2.synchronize()
    got = y.to_numpy()
    ref = swiglu_ref(src.cpu().numpy(), src.cpu().numpy())
    assert_close(got, ref, 1e-5)
    del samba_cuda


def test_stream_handshake_torch_consumer_waits_for_us(rng):
    """torch.from_dlpack on stream S1 of a result still being computed on our stream S2."""
    torch = _torch()
    s2 = torch.cuda.Stream()
    g = torch.randn(1 << 20, device="cuda")
    torch.cuda.synchronize()
    with torch.cuda.stream(s2):
        torch.cuda._sleep(50_000_000)  # delays our stream: the result lands late
    y = samba_ext.swiglu(g, g, stream=s2)  # poisoned output, written after the sleep
    t = torch.from_dlpack(y)  # torch's current (default) stream must wait for s2
    r = (t * 1.0).cpu().numpy()  # computed on the default stream
    ref = swiglu_ref(g.cpu().numpy(), g.cpu().numpy())
    assert_close(r, ref, 1e-5)


def test_cai_producer_with_stream_is_waited_for(rng):
    torch = _torch()
    from cuda_util import CAIView

    s1 = torch.cuda.Stream()
    base = dev(np.full(1 << 20, np.nan, np.float32))
    src = torch.randn(1 << 20, device="cuda")
    torch.cuda.synchronize()
    with torch.cuda.stream(s1):
        torch.cuda._sleep(50_000_000)
        torch.from_dlpack(base).copy_(src)
    view = CAIView(base, (1 << 20,), (1,), stream=s1.cuda_stream)
    y = samba_ext.swiglu(view, view, stream=torch.cuda.Stream())
    got = y.to_numpy()
    assert_close(got, swiglu_ref(src.cpu().numpy(), src.cpu().numpy()), 1e-5)


def test_jax_input_if_installed(rng):
    jax = pytest.importorskip("jax")
    try:
        gpu = jax.devices("gpu")[0]
    except RuntimeError:
        pytest.skip("jax without GPU")
    a = jax.device_put(np.arange(8, dtype=np.float32), gpu)
    y = samba_ext.swiglu(a, a)
    assert_close(y.to_numpy(), swiglu_ref(np.arange(8.0), np.arange(8.0)), 1e-5)
