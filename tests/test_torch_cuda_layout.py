"""samba_ext.torch on CUDA tensors as callers lay them out: strided views as inputs (the
peers' packed qkv and xz slices, time-major tensors transposed), gradients arriving as
broadcast views (``loss = out.sum()`` hands the backward a stride-0 expand of ones), the
lifetime of the DLPack-wrapped outputs (a view kept after the output tensor is gone), and a
second GPU (tensors on cuda:1 while cuda:0 is current: results there, the caller's current
device left alone).

References: the float64 ones of test_torch_cuda.py on the same rounded inputs, with the
tolerances justified there (scan_tol + HALF, CONV + HALF, attn_tol): a layout changes which
memory the kernels read, not their arithmetic. Results that must be the same computation
(the kept view, cuda:1 against cuda:0) are compared exactly.
"""
from __future__ import annotations

import gc
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import assert_close  # noqa: E402
from cuda_util import RTOL  # noqa: E402
from ref_grad import attention_bwd_ref, attention_fwd_ref, causal_conv1d_bwd_ref  # noqa: E402
from ref_grad import selective_scan_bwd_ref  # noqa: E402
from ref_scan import selective_scan_ref  # noqa: E402
from ref_small import causal_conv1d as causal_conv1d_ref  # noqa: E402
from test_torch_cuda import CONV, HALF, attn_tol, scan_tol  # noqa: E402
from torch_cuda_util import f64, gpu, gpu_tensor, on_gpu_as  # noqa: E402

import samba_ext.torch as st  # noqa: E402


@gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_scan_strided_inputs_and_summed_loss(rng, poison, dtype):
    """u, delta, z, B, C as transposes of time-major (batch, L, .) tensors (time stride !=
    1) and the loss y.sum() (dy a stride-0 view of ones)."""
    b, d, L, N = 2, 24, 67, 16
    tm = {k: gpu_tensor(rng, (b, L, n), dtype, s, positive=(k == "delta"))
          for k, n, s in (("u", d, 1.0), ("delta", d, 0.5), ("z", d, 1.0), ("B", N, 1.0),
                          ("C", N, 1.0))}
    for t in tm.values():
        t.requires_grad_()
    inp = {k: t.transpose(1, 2) for k, t in tm.items()}
    assert not inp["u"].is_contiguous()
    A = (-torch.exp(gpu_tensor(rng, (d, N), scale=0.5))).detach().requires_grad_()
    D = gpu_tensor(rng, (d,), grad=True)
    y = st.selective_scan_fn(inp["u"], inp["delta"], A, inp["B"], inp["C"], D, inp["z"])
    on_gpu_as(y, inp["u"])
    ref = {k: f64(v) for k, v in inp.items()}
    ref.update(A=f64(A), D=f64(D))
    assert_close(f64(y), selective_scan_ref(**ref), scan_tol(L) + HALF[dtype], "y")
    loss = y.sum()
    got = torch.autograd.grad(loss, [tm[k] for k in inp] + [A, D])
    want = selective_scan_bwd_ref(**ref, dout=np.ones((b, d, L)))
    for k, g in zip(list(inp) + ["A", "D"], got):
        if k in inp:       # the gradient of the time-major base: transpose back
            on_gpu_as(g, tm[k])
            g = g.transpose(1, 2)
        tol = scan_tol(L) + (HALF[dtype] if k in inp else 0.0)
        assert_close(f64(g), want["d" + k], tol, "d" + k)


@gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_conv_strided_inputs_and_summed_loss(rng, poison, dtype):
    """x the first half of a (batch, 2 dim, L) xz (a batch stride of 2 dim L, as mamba_inner
    splits xz), weight a squeezed (dim, 1, width) view, loss y.sum()."""
    b, d, L, W = 2, 24, 37, 4
    xz = gpu_tensor(rng, (b, 2 * d, L), dtype, grad=True)
    x = xz[:, :d]
    w3 = gpu_tensor(rng, (d, 1, W), dtype, 0.5, grad=True)
    bias = gpu_tensor(rng, (d,), dtype, 0.3, grad=True)
    y = st.causal_conv1d_fn(x, w3.squeeze(1), bias, activation="silu")
    on_gpu_as(y, x)
    y_ref, _ = causal_conv1d_ref(f64(x), f64(w3)[:, 0], f64(bias), "silu", None)
    assert_close(f64(y), y_ref, CONV + HALF[dtype], "y")
    dxz, dw3, db = torch.autograd.grad(y.sum(), (xz, w3, bias))
    want = causal_conv1d_bwd_ref(f64(x), f64(w3)[:, 0], f64(bias), "silu", None,
                                 np.ones((b, d, L)), None)
    on_gpu_as(dxz, xz)
    assert_close(f64(dxz[:, :d]), want["dx"], CONV + HALF[dtype], "dx")
    assert not bool(dxz[:, d:].any()), "the gradient of the unused half of xz"
    assert_close(f64(dw3)[:, 0], want["dweight"], CONV + HALF[dtype], "dweight")
    assert_close(f64(db), want["dbias"], CONV + HALF[dtype], "dbias")


@gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_attention_packed_qkv_and_summed_loss(rng, poison, dtype):
    """q, k, v unbound from one packed (batch, L, 3, nheads, headdim) tensor (flash-attn's
    qkvpacked layout: strided views), loss out.sum()."""
    b, L, H, hd = 2, 45, 4, 64
    qkv = gpu_tensor(rng, (b, L, 3, H, hd), dtype, grad=True)
    q, k, v = qkv.unbind(2)
    assert not q.is_contiguous()
    out = st.flash_attn_func(q, k, v, causal=True, window_size=(15, 0))
    on_gpu_as(out, q)
    scale = 1.0 / math.sqrt(hd)
    ref = [f64(t) for t in (q, k, v)]
    out_ref, _ = attention_fwd_ref(*ref, scale, 15, 0)
    assert_close(f64(out), out_ref, RTOL[dtype], "out")
    (g,) = torch.autograd.grad(out.sum(), (qkv,))
    on_gpu_as(g, qkv)
    want = attention_bwd_ref(*ref, np.ones((b, L, H, hd)), scale, 15, 0)
    for i, name in enumerate(("dq", "dk", "dv")):
        assert_close(f64(g[:, :, i]), want[name], attn_tol(dtype, L), name)


@gpu
def test_outputs_outlive_their_device_arrays(rng, poison):
    """A view of an op's output, kept after the output tensor and every other reference to
    the DeviceArray behind it are gone, still reads the output's values while new outputs
    of the same size are made (the DLPack deleter holds the array: were its memory freed,
    the stream-ordered pool would hand it to the next outputs, NaN-poisoned then
    overwritten)."""
    u = gpu_tensor(rng, (2, 16, 129))
    A = -torch.exp(gpu_tensor(rng, (16, 8)))
    B = gpu_tensor(rng, (2, 8, 129))
    y = st.selective_scan_fn(u, u, A, B, B, delta_softplus=True)
    kept = y[:, :, ::2]
    want = kept.clone()
    del y
    gc.collect()
    for _ in range(8):
        st.selective_scan_fn(gpu_tensor(rng, (2, 16, 129)), u, A, B, B, delta_softplus=True)
    torch.cuda.synchronize()
    assert torch.equal(kept, want)


def _two_gpus(f):
    f = gpu(f)
    return pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                              reason="needs two GPUs")(f)


@_two_gpus
def test_second_gpu(rng, poison):
    """Tensors on cuda:1 while cuda:0 is current: forward and backward of the scan, conv and
    attention run on cuda:1 (results there, equal to the same call on cuda:0), and the
    current device is still cuda:0 after the calls, the backward and freeing the outputs."""
    torch.cuda.set_device(0)
    u0 = gpu_tensor(rng, (2, 16, 33), "bfloat16")
    A0 = -torch.exp(gpu_tensor(rng, (16, 8)))
    B0 = gpu_tensor(rng, (2, 8, 33), "bfloat16")
    w0 = gpu_tensor(rng, (16, 4), "bfloat16")
    q0 = gpu_tensor(rng, (1, 21, 4, 64), "bfloat16")

    def run(dev):
        u, A, B, w, q = (t.to(dev).requires_grad_() for t in (u0, A0, B0, w0, q0))
        y = st.selective_scan_fn(u, u, A, B, B, delta_softplus=True)
        c = st.causal_conv1d_fn(u, w, activation="silu")
        o = st.flash_attn_func(q, q, q, causal=True)
        grads = torch.autograd.grad(y.float().sum() + c.float().sum() + o.float().sum(),
                                    (u, A, B, w, q))
        return (y, c, o) + grads

    want = run(torch.device("cuda", 0))
    got = run(torch.device("cuda", 1))
    # run's temporaries (saved tensors, lse, the materialised zero gradients) are freed by
    # now: a free that switched the device would show here already
    assert torch.cuda.current_device() == 0, "a cuda:1 call or free changed the device"
    for g, w in zip(got, want):
        assert g.device == torch.device("cuda", 1)
        assert g.dtype == w.dtype
        assert bool(torch.isfinite(g).all())
        # the same kernels on the same inputs; float32 atomics in the backward may add in
        # another order: within the bfloat16 rounding of the results
        assert_close(f64(g), f64(w), 1e-2, "cuda:1 vs cuda:0")
    del got
    gc.collect()
    torch.cuda.synchronize(1)
    assert torch.cuda.current_device() == 0, "freeing cuda:1 outputs changed the device"
