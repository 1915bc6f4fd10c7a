"""CUDA rms_norm, swiglu and apply_rotary on every access path of their kernels, against the
float64 references of ref_small.

The kernels pick the widest vector access (E = 8, 4, 2 or 1 elements) that every array's
base address and row stride allow (csrc/cuda/vecio.cuh), and rms_norm / rotary fall back to
a looping kernel beyond their register / shared-memory limits. The cases below reach each
path: widths 2048 and 8256 (E = 8 for 16-bit dtypes), 8196 (E = 4: rows of 16392 bytes
are only 8-byte aligned, also as the two halves of one (rows, 2 * 8196) GEMM output), 2050
(E = 2), odd widths 37 / 2051 (E = 1), views starting 1, 2 or 4 elements into a padded row
(misaligned base addresses and strides), the model's dtype mixes (bf16 x with a float32
residual stream, float32 x normalised into a bf16 output, bf16 weight), 1, 2, 15, 16, 17
rows (decode and the partial last blocks of the many-row launches), and rows too long for
the register path.

Every new DeviceArray is filled with NaN bytes first (set_poison), so an element a kernel
fails to write fails the finiteness check. Each result is checked element by element (a
single misplaced element fails, which a norm-wise tolerance could miss) with the bound

    |got - ref| <= u_out |ref| + (float32 arithmetic error),

u_out the unit roundoff of the output dtype (the result is rounded to nearest once:
2^-24, 2^-11, 2^-8 for float32, float16, bfloat16). The float32 error terms are given at
each check.
"""
from __future__ import annotations

import numpy as np
import pytest
from cuda_util import dev, host, needs_cuda, round_to
from ref_small import rms_norm as rms_ref
from ref_small import rotary as rotary_ref
from ref_small import swiglu as swiglu_ref

import samba_ext

pytestmark = needs_cuda

U = {"float32": 2.0 ** -24, "float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}
# float16 results below 2^-14 are subnormal: absolute spacing 2^-24, half of it as error.
ABS_F16 = 2.0 ** -25


@pytest.fixture(autouse=True)
def poison():
    from samba_ext import cuda as samba_cuda

    samba_cuda.set_poison(True)
    yield
    samba_cuda.set_poison(False)


def check(got, ref, bound, name: str) -> None:
    """Every element finite and within `bound` (array or scalar) of the float64 ref."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"{name}: shape {got.shape} != {ref.shape}"
    assert np.all(np.isfinite(got)), f"{name}: {np.sum(~np.isfinite(got))} non-finite values"
    err = np.abs(got - ref)
    bad = err > bound
    if np.any(bad):
        i = np.argwhere(bad)[0]
        b = bound if np.ndim(bound) == 0 else np.broadcast_to(bound, err.shape)[tuple(i)]
        raise AssertionError(f"{name}: {int(bad.sum())} of {err.size} elements out of bounds, "
                             f"first at {tuple(int(k) for k in i)}: got {got[tuple(i)]!r}, "
                             f"ref {ref[tuple(i)]!r}, bound {b!r}")


def padded_view(a: np.ndarray, dtype: str, off: int):
    """A DeviceArray view of `a` (rows, n) whose rows start `off` elements into rows of
    n + off elements (off 0: contiguous): base address and row stride misaligned by off."""
    if off == 0:
        return dev(a, dtype)
    rows, n = a.shape
    base = np.zeros((rows, n + off))
    base[:, off:] = a
    return dev(base, dtype)[:, off:]


# ------------------------------------------------------------------------ rms_norm --------
ROWS = [1, 2, 15, 16, 17]
NORM_WIDTHS = [2048, 8256, 8196, 2050, 37]


def _norm_bound(ref, ydtype, rdtype=None):
    # Sum of squares: float32, each thread adding at most 64 terms (register path) or
    # n / 256 <= 160 (the looping path, n <= 40960 here) before a tree: relative error
    # <= ~170 * 2^-24 = 1e-5, halved by the square root -> 5e-6 on rsqrt; plus 3 float32
    # products. With a residual stored in a 16-bit dtype, y normalises the rounded sum:
    # up to 2 u_r more (the element and the mean square).
    rel = U[ydtype] + 1e-5 + (2 * U[rdtype] if rdtype in ("float16", "bfloat16") else 0.0)
    return rel * np.abs(ref) + (ABS_F16 if ydtype == "float16" else 0.0)


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("n", NORM_WIDTHS)
@pytest.mark.parametrize("xdtype,rdtype,wdtype", [
    ("bfloat16", "float32", "float32"),    # the model: bf16 branch output, float32 stream
    ("bfloat16", "float32", "bfloat16"),
    ("float16", "float16", "float32"),
    ("bfloat16", "bfloat16", "float32"),
    ("float32", "float32", "float32"),
])
def test_rms_norm_residual_paths(rng, rows, n, xdtype, rdtype, wdtype):
    x = round_to(rng.standard_normal((rows, n)), xdtype)
    res = round_to(rng.standard_normal((rows, n)) * 2.0, rdtype)
    w = round_to(rng.uniform(0.5, 1.5, n) * rng.choice([-1.0, 1.0], n), wdtype)
    y_ref, s_ref = rms_ref(x, w, 1e-5, res)
    y, s = samba_ext.rms_norm(dev(x, xdtype), dev(w, wdtype), 1e-5, residual=dev(res, rdtype))
    assert y.dtype == xdtype and s.dtype == rdtype
    # The sum: one float32 addition (<= 2^-24 relative to the sum), then rounded to rdtype.
    check(host(s), s_ref, (U[rdtype] + 2.0 ** -24) * np.abs(s_ref)
          + (ABS_F16 if rdtype == "float16" else 0.0), "x + residual")
    check(host(y), y_ref, _norm_bound(y_ref, xdtype, rdtype), "y")


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("n", NORM_WIDTHS)
@pytest.mark.parametrize("xdtype,ydtype", [("float32", "bfloat16"), ("bfloat16", "bfloat16"),
                                           ("float16", "float16"), ("float32", "float32")])
def test_rms_norm_plain_paths(rng, rows, n, xdtype, ydtype):
    """No residual; float32 x into a bf16 out= is the model's first layer."""
    x = round_to(rng.standard_normal((rows, n)) * 3.0, xdtype)
    w = round_to(rng.uniform(-2.0, 2.0, n), "float32")
    y_ref, _ = rms_ref(x, w, 1e-6)
    from samba_ext import cuda as samba_cuda

    out = samba_cuda.empty((rows, n), ydtype)
    y = samba_ext.rms_norm(dev(x, xdtype), dev(w), 1e-6, out=out)
    assert y is out
    check(host(y), y_ref, _norm_bound(y_ref, ydtype), "y")


@pytest.mark.parametrize("off", [1, 2, 4])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("rows", [1, 17])
def test_rms_norm_misaligned_rows(rng, off, dtype, rows):
    """x and residual rows starting off elements into padded rows (E = 1, 2 or 4)."""
    n = 2048
    x = round_to(rng.standard_normal((rows, n)), dtype)
    res = round_to(rng.standard_normal((rows, n)), "float32")
    w = round_to(rng.standard_normal(n), "float32")
    y_ref, s_ref = rms_ref(x, w, 1e-5, res)
    y, s = samba_ext.rms_norm(padded_view(x, dtype, off), dev(w), 1e-5,
                              residual=padded_view(res, "float32", off))
    check(host(s), s_ref, 2 * 2.0 ** -24 * np.abs(s_ref), "x + residual")
    check(host(y), y_ref, _norm_bound(y_ref, dtype, "float32"), "y")


def test_rms_norm_decode_last_token_rows(rng):
    """The model's last-token call: x[:, -1] and resid[:, -1] of (B, L, D) (row stride L*D)."""
    B, L, D = 3, 5, 2048
    x = round_to(rng.standard_normal((B, L, D)), "bfloat16")
    res = round_to(rng.standard_normal((B, L, D)), "float32")
    w = round_to(rng.standard_normal(D), "float32")
    y_ref, s_ref = rms_ref(x[:, -1], w, 1e-5, res[:, -1])
    y, s = samba_ext.rms_norm(dev(x, "bfloat16")[:, -1], dev(w), 1e-5,
                              residual=dev(res)[:, -1])
    check(host(s), s_ref, 2 * 2.0 ** -24 * np.abs(s_ref), "x + residual")
    check(host(y), y_ref, _norm_bound(y_ref, "bfloat16", "float32"), "y")


@pytest.mark.parametrize("n,dtype", [(40960, "bfloat16"), (5001, "float32")])
@pytest.mark.parametrize("residual", [False, True])
def test_rms_norm_long_rows_loop_path(rng, n, dtype, residual):
    """Rows beyond 512 threads x 8 chunks of E elements: the looping kernel."""
    x = round_to(rng.standard_normal((3, n)), dtype)
    w = round_to(rng.standard_normal(n), "float32")
    if residual:
        res = round_to(rng.standard_normal((3, n)), "float32")
        y_ref, s_ref = rms_ref(x, w, 1e-5, res)
        y, s = samba_ext.rms_norm(dev(x, dtype), dev(w), 1e-5, residual=dev(res))
        check(host(s), s_ref, 2 * 2.0 ** -24 * np.abs(s_ref), "x + residual")
    else:
        y_ref, _ = rms_ref(x, w, 1e-5)
        y = samba_ext.rms_norm(dev(x, dtype), dev(w), 1e-5)
    check(host(y), y_ref, _norm_bound(y_ref, dtype, "float32"), "y")


# ------------------------------------------------------------------------ swiglu ----------
def _swiglu_bound(ref, dtype):
    # silu in float32: expf (<= 2 ulp), one addition, one division, one product: < 1e-6
    # relative.
    return (U[dtype] + 1e-6) * np.abs(ref) + (ABS_F16 if dtype == "float16" else 0.0)


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("width", [8196, 8256, 2048, 2050, 37])
@pytest.mark.parametrize("layout", ["separate", "halves", "misaligned"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_swiglu_paths(rng, rows, width, layout, dtype):
    """separate: two contiguous arrays; halves: gate and up the two column halves of one
    (rows, 2 * width) array (the decode GEMM output, row stride 2 * width); misaligned:
    rows starting 1 element into padded rows."""
    g = round_to(rng.standard_normal((rows, width)) * 3.0, dtype)
    u = round_to(rng.standard_normal((rows, width)), dtype)
    if layout == "separate":
        dg, du = dev(g, dtype), dev(u, dtype)
    elif layout == "halves":
        gu = dev(np.concatenate([g, u], axis=1), dtype)
        dg, du = gu[:, :width], gu[:, width:]
    else:
        dg, du = padded_view(g, dtype, 1), padded_view(u, dtype, 1)
    y = samba_ext.swiglu(dg, du)
    assert y.dtype == dtype and y.shape == (rows, width)
    ref = swiglu_ref(g, u)
    check(host(y), ref, _swiglu_bound(ref, dtype), "y")


@pytest.mark.parametrize("off", [2, 4])
def test_swiglu_partly_aligned(rng, off):
    """bf16 views 2 or 4 elements into padded rows: 4- or 8-byte accesses (E = 2, 4)."""
    rows, width = 5, 2048
    g = round_to(rng.standard_normal((rows, width)) * 3.0, "bfloat16")
    u = round_to(rng.standard_normal((rows, width)), "bfloat16")
    y = samba_ext.swiglu(padded_view(g, "bfloat16", off), padded_view(u, "bfloat16", off))
    ref = swiglu_ref(g, u)
    check(host(y), ref, _swiglu_bound(ref, "bfloat16"), "y")


def test_swiglu_mixed_dtypes(rng):
    """bf16 gate, float32 up, float32 out: each array accessed in its own dtype."""
    from samba_ext import cuda as samba_cuda

    rows, width = 16, 8196
    g = round_to(rng.standard_normal((rows, width)) * 3.0, "bfloat16")
    u = round_to(rng.standard_normal((rows, width)), "float32")
    out = samba_cuda.empty((rows, width), "float32")
    y = samba_ext.swiglu(dev(g, "bfloat16"), dev(u, "float32"), out=out)
    assert y is out
    ref = swiglu_ref(g, u)
    check(host(y), ref, _swiglu_bound(ref, "float32"), "y")


# ------------------------------------------------------------------------ rotary ----------
def _rot_bound(x, ref, dtype):
    # cos / sin from float64, rounded to float32 (2^-24 relative each), two products and a
    # sum in float32: <= 4 * 2^-24 * (|x1| + |x2|) per output of the pair, then the output
    # rounding u |ref|.
    half = x.shape[-1] // 2
    mag = np.abs(x[..., :half]) + np.abs(x[..., half:])
    mag = np.concatenate([mag, mag], axis=-1)
    return U[dtype] * np.abs(ref) + 3e-7 * mag + (ABS_F16 if dtype == "float16" else 0.0)


@pytest.mark.parametrize("L", ROWS)
@pytest.mark.parametrize("H,hd", [(32, 64), (4, 64), (3, 128), (2, 8), (5, 12), (2, 34)])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("B", [1, 2])
def test_apply_rotary_paths(rng, L, H, hd, dtype, B):
    """hd/2 = 32, 64 (E = 8 for 16-bit dtypes), 4 (E = 4), 6 (E = 2), 17 (E = 1); 4 heads
    of 64 (16 chunks per token: 16 tokens per block, partial last block)."""
    x = round_to(rng.standard_normal((B, L, H, hd)), dtype)
    p0 = 1000
    ref = rotary_ref(x, np.tile(np.arange(L) + p0, (B, 1)), 10000.0)
    y = samba_ext.apply_rotary(dev(x, dtype), p0, 10000.0)
    check(host(y), ref, _rot_bound(x, ref, dtype), "y")


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("positions", ["batched", "vector", "large"])
def test_apply_rotary_decode_qk_slice(rng, dtype, positions):
    """The decode call: q and k heads as a view of the fused (B, 1, (H + 2G) * hd) qkv GEMM
    output (row stride (H + 2G) * hd), positions per sequence."""
    B, H, G, hd = 3, 32, 4, 64
    qkv = round_to(rng.standard_normal((B, 1, (H + 2 * G) * hd)), dtype)
    x = qkv[:, :, : (H + G) * hd].reshape(B, 1, H + G, hd)
    if positions == "batched":
        p = rng.integers(0, 5000, (B, 1))
    elif positions == "vector":
        p = rng.integers(0, 5000, 1)
    else:
        p = rng.integers(10**6, 10**7, (B, 1))
    pref = p if p.ndim == 2 else np.tile(p, (B, 1))
    ref = rotary_ref(x, pref, 10000.0)
    dx = dev(qkv, dtype)[:, :, : (H + G) * hd].reshape(B, 1, H + G, hd)
    y = samba_ext.apply_rotary(dx, p, 10000.0)
    check(host(y), ref, _rot_bound(x, ref, dtype), "y")


@pytest.mark.parametrize("off", [1, 2, 4])
def test_apply_rotary_misaligned(rng, off):
    """Heads starting off elements into padded token rows (E = 1, 2 or 4 for bf16)."""
    B, L, H, hd = 2, 17, 4, 64
    x = round_to(rng.standard_normal((B, L, H, hd)), "bfloat16")
    base = np.zeros((B, L, H * hd + off))
    base[..., off:] = x.reshape(B, L, H * hd)
    dx = dev(base, "bfloat16")[:, :, off:].reshape(B, L, H, hd)
    ref = rotary_ref(x, np.tile(np.arange(L) + 7, (B, 1)), 10000.0)
    y = samba_ext.apply_rotary(dx, 7, 10000.0)
    check(host(y), ref, _rot_bound(x, ref, "bfloat16"), "y")


def test_apply_rotary_long_head_loop_path(rng):
    """hd/2 > 4096: the angle table would not fit shared memory -> the per-pair kernel."""
    B, L, H, hd = 1, 3, 1, 8200
    x = round_to(rng.standard_normal((B, L, H, hd)), "float32")
    ref = rotary_ref(x, np.tile(np.arange(L) + 3, (B, 1)), 10000.0)
    y = samba_ext.apply_rotary(dev(x), 3, 10000.0)
    check(host(y), ref, _rot_bound(x, ref, "float32"), "y")


def test_apply_rotary_in_place_many_tokens(rng):
    """y = x (out=x): each element read, then written, by one thread."""
    B, L, H, hd = 1, 300, 4, 64
    x = round_to(rng.standard_normal((B, L, H, hd)), "bfloat16")
    dx = dev(x, "bfloat16")
    y = samba_ext.apply_rotary(dx, 0, 10000.0, out=dx)
    assert y is dx
    ref = rotary_ref(x, np.tile(np.arange(L), (B, 1)), 10000.0)
    check(host(dx), ref, _rot_bound(x, ref, "bfloat16"), "y")


# ------------------------------------------------ aliasing, output / weight alignment, empty ---
def offset_empty(shape, dtype: str, off: int):
    """A new C-contiguous (poisoned) DeviceArray view starting `off` elements into its
    buffer: base address misaligned by off elements, rows still n apart."""
    from samba_ext import cuda as samba_cuda

    return samba_cuda.empty((int(np.prod(shape)) + off,), dtype)[off:].reshape(shape)


def offset_dev(a: np.ndarray, dtype: str, off: int):
    """`a` (1-D) on the device at a base address `off` elements past an allocation's."""
    return dev(np.concatenate([np.zeros(off), a]), dtype)[off:]


@pytest.mark.parametrize("n", [2048, 37, 40960])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_rms_norm_out_is_x(rng, n, dtype):
    """y written over x (out=x): each element read, then written, by one thread (register
    path, E = 8 / 1, and the looping path)."""
    rows = 17
    x = round_to(rng.standard_normal((rows, n)), dtype)
    w = round_to(rng.uniform(0.5, 1.5, n), "float32")
    y_ref, _ = rms_ref(x, w, 1e-5)
    dx = dev(x, dtype)
    y = samba_ext.rms_norm(dx, dev(w), 1e-5, out=dx)
    assert y is dx
    check(host(dx), y_ref, _norm_bound(y_ref, dtype), "y (out=x)")


@pytest.mark.parametrize("n", [2048, 37, 40960])
def test_rms_norm_out_is_residual(rng, n):
    """bf16 x, float32 residual, y (float32) written over the residual it reads; the sum is
    returned in a new array."""
    rows = 5
    x = round_to(rng.standard_normal((rows, n)), "bfloat16")
    res = round_to(rng.standard_normal((rows, n)), "float32")
    w = round_to(rng.uniform(0.5, 1.5, n), "float32")
    y_ref, s_ref = rms_ref(x, w, 1e-5, res)
    dres = dev(res)
    y, s = samba_ext.rms_norm(dev(x, "bfloat16"), dev(w), 1e-5, residual=dres, out=dres)
    assert y is dres
    check(host(s), s_ref, 2 * 2.0 ** -24 * np.abs(s_ref), "x + residual")
    check(host(dres), y_ref, _norm_bound(y_ref, "float32", "float32"), "y (out=residual)")


@pytest.mark.parametrize("woff,yoff", [(1, 0), (2, 0), (4, 0), (0, 1), (0, 2), (0, 4)])
@pytest.mark.parametrize("xdtype,wdtype,ydtype", [("bfloat16", "float32", "bfloat16"),
                                                  ("float32", "bfloat16", "float32")])
@pytest.mark.parametrize("residual", [False, True])
def test_rms_norm_misaligned_weight_and_out(rng, woff, yoff, xdtype, wdtype, ydtype, residual):
    """The weight and y (out=) at base addresses off elements past 16-byte boundaries (x
    aligned): the access width must follow the weight's / y's alignment too."""
    rows, n = 3, 2048
    x = round_to(rng.standard_normal((rows, n)), xdtype)
    w = round_to(rng.uniform(0.5, 1.5, n), wdtype)
    out = offset_empty((rows, n), ydtype, yoff)
    if residual:
        res = round_to(rng.standard_normal((rows, n)), "float32")
        y_ref, s_ref = rms_ref(x, w, 1e-5, res)
        y, s = samba_ext.rms_norm(dev(x, xdtype), offset_dev(w, wdtype, woff), 1e-5,
                                  residual=dev(res), out=out)
        check(host(s), s_ref, 2 * 2.0 ** -24 * np.abs(s_ref), "x + residual")
    else:
        y_ref, _ = rms_ref(x, w, 1e-5)
        y = samba_ext.rms_norm(dev(x, xdtype), offset_dev(w, wdtype, woff), 1e-5, out=out)
    assert y is out
    check(host(y), y_ref, _norm_bound(y_ref, ydtype, "float32"), "y")


@pytest.mark.parametrize("width", [2048, 37])
@pytest.mark.parametrize("target", ["gate", "up"])
def test_swiglu_out_is_input(rng, width, target):
    """y written over gate or up (out=gate / out=up)."""
    rows = 9
    g = round_to(rng.standard_normal((rows, width)) * 3.0, "bfloat16")
    u = round_to(rng.standard_normal((rows, width)), "bfloat16")
    dg, du = dev(g, "bfloat16"), dev(u, "bfloat16")
    out = dg if target == "gate" else du
    y = samba_ext.swiglu(dg, du, out=out)
    assert y is out
    ref = swiglu_ref(g, u)
    check(host(out), ref, _swiglu_bound(ref, "bfloat16"), f"y (out={target})")


@pytest.mark.parametrize("off", [1, 2, 4])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_swiglu_misaligned_out(rng, off, dtype):
    """Aligned inputs, y at a base address off elements past a 16-byte boundary."""
    rows, width = 5, 2048
    g = round_to(rng.standard_normal((rows, width)) * 3.0, dtype)
    u = round_to(rng.standard_normal((rows, width)), dtype)
    out = offset_empty((rows, width), dtype, off)
    y = samba_ext.swiglu(dev(g, dtype), dev(u, dtype), out=out)
    assert y is out
    ref = swiglu_ref(g, u)
    check(host(y), ref, _swiglu_bound(ref, dtype), "y")


@pytest.mark.parametrize("off", [1, 2, 4])
def test_apply_rotary_misaligned_out(rng, off):
    """Aligned x, y at a base address off elements past a 16-byte boundary."""
    B, L, H, hd = 2, 5, 4, 64
    x = round_to(rng.standard_normal((B, L, H, hd)), "bfloat16")
    out = offset_empty((B, L, H, hd), "bfloat16", off)
    y = samba_ext.apply_rotary(dev(x, "bfloat16"), 11, 10000.0, out=out)
    assert y is out
    ref = rotary_ref(x, np.tile(np.arange(L) + 11, (B, 1)), 10000.0)
    check(host(y), ref, _rot_bound(x, ref, "bfloat16"), "y")


@pytest.mark.parametrize("pdtype", ["int32", "int64"])
@pytest.mark.parametrize("batched", [False, True])
def test_apply_rotary_device_positions(rng, pdtype, batched):
    """Positions held on the device ((seqlen,) or (batch, seqlen), int32 or int64) with
    several tokens per block spanning a batch boundary (4 heads of 64: 16 tokens per block,
    seqlen 5)."""
    from samba_ext import cuda as samba_cuda

    B, L, H, hd = 3, 5, 4, 64
    x = round_to(rng.standard_normal((B, L, H, hd)), "bfloat16")
    p = rng.integers(0, 100000, (B, L) if batched else (L,))
    ref = rotary_ref(x, p if batched else np.tile(p, (B, 1)), 10000.0)
    y = samba_ext.apply_rotary(dev(x, "bfloat16"), samba_cuda.to_device(p, pdtype), 10000.0)
    check(host(y), ref, _rot_bound(x, ref, "bfloat16"), "y")


def test_elementwise_empty(rng):
    """Zero rows or zero width: nothing launched, outputs of the right shapes."""
    for shape in [(0, 64), (3, 0)]:
        x = dev(np.zeros(shape), "bfloat16")
        w = dev(np.ones(shape[1]))
        assert samba_ext.rms_norm(x, w, 1e-5).shape == shape
        y, s = samba_ext.rms_norm(x, w, 1e-5, residual=dev(np.zeros(shape)))
        assert y.shape == shape and s.shape == shape
        assert samba_ext.swiglu(x, x).shape == shape
    for shape in [(2, 0, 4, 64), (2, 3, 0, 64), (0, 3, 4, 64)]:
        assert samba_ext.apply_rotary(dev(np.zeros(shape), "bfloat16"), 5).shape == shape
