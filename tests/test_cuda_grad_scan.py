"""The CUDA backward of the selective scan and of the causal conv1d (csrc/cuda/scan_bwd.cu,
conv_bwd.cu, through samba_ext.grad with CUDA inputs) against the float64 references of
tests/ref_grad.py, and against the CPU backward on the same inputs.

Inputs are drawn fresh per test (the ``rng`` fixture), in float64, and rounded to the tested
dtype on the host (cuda_util.round_to: float16 by NumPy, bfloat16 by round-to-nearest-even);
the references see the rounded values, so for every input dtype the kernels compute on
exactly the reference's inputs and only their float32 arithmetic and the rounding of the
outputs differ. The cases cover odd lengths (a partial last group of 8 steps), lengths
across many checkpointed chunks, batch > 1, channel counts that leave padding channels in
a block, grouped and 3-D B/C, dstate 1..256 (more than 16: several state slices), every
optional input on and off, softplus on and off, both lane layouts and several chunk sizes
(``SAMBA_EXT_SCAN_BWD_LANES`` / ``_CHUNK`` / ``_WS_MB`` / ``_VEC``), strided (token-major) inputs and
mixed input dtypes. Most of these shapes take the split kernels; the tiled kernels
(scan_tile_bwd.cuh: d_state 16, blocks of 32 channels, aligned rows) have cases of their own
(one tile, a partial last tile, chunks of several tiles, ``SAMBA_EXT_SCAN_BWD_TILES``, segments
along the sequence, ``SAMBA_EXT_SCAN_BWD_SEGS``), and the tests check which kernel ran.

Tolerances (relative Frobenius norm, conftest.assert_close; NaN or Inf in a result never
passes):
* Scan, float32 arithmetic. The CPU backward's bound (tests/test_grad_scan.py) is
  1e-5 (1 + sqrt(L / 256)), measured there at 1e-7 .. 5e-7: each gradient is a sum of
  float32 products along the state recurrence, error growing like sqrt(L). The GPU kernel
  takes exp as exp2 on the exp unit (relative error ~2^-22, about 4x a correctly rounded
  expf), softplus / sigmoid with the fast intrinsics, and sums over channels and batch by
  atomic adds in any order; SCAN_RTOL doubles the CPU bound for that: 2e-5 (1 + sqrt(L /
  256)), still >= 50x below what a wrong term, index, mask or chunk hand-over gives (1e-3 ..
  1). It applies to every gradient returned in float32 (dA, dB, dC, dD, ddelta_bias,
  dinitial_state) whatever the input dtype, since the inputs are exactly representable.
  Segments along the sequence carry a state or adjoint across a segment with one factor
  exp2(a T), T the float32 sum of the segment's dt, instead of the product of the per-step
  factors: a relative error of about |a T| 2^-24 sqrt(n) against the product's ~n 2^-22, so
  the same bound.
* du, ddelta, dz are returned in their input's dtype: their bound adds the rounding of the
  output, cuda_util.RTOL[dtype] (float16 2e-3, bfloat16 1e-2; float32 0 extra).
* Conv: dx and dinitial_states are sums of at most W products, dweight / dbias sums over
  batch x seqlen products (CPU bound 1e-5, measured <= 5e-7); SiLU's derivative uses the fast
  exp and division (a few ulp): CONV_RTOL = 2e-5, plus RTOL[dtype] for dx.
* GPU against CPU: both within their bound of the same float64 reference; the sum of the
  two bounds.
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close
from cuda_util import RTOL, dev, host, needs_cuda, round_to, transposed_view
from ref_grad import causal_conv1d_bwd_ref, selective_scan_bwd_ref

from samba_ext import grad

pytestmark = needs_cuda

CONV_RTOL = 2e-5
ACT = {"du", "ddelta", "dz", "dx"}  # gradients returned in their input's dtype


def scan_rtol(L: int) -> float:
    return 2e-5 * (1.0 + np.sqrt(max(L, 1) / 256.0))


# ----------------------------------------------------------------------- the scan ---

def scan_inputs(rng, batch, dim, L, N, G, dtype, *, three_d=False, D=True, z=True, bias=True,
                init=True, dlast=True, softplus=True):
    """Host float64 inputs (already rounded: the large ones to dtype, A / D / delta_bias /
    the states to float32) and the backward's options."""
    bc = (batch, N, L) if three_d else (batch, G, N, L)
    # without softplus dt = delta + bias must stay positive (else the state grows like
    # exp(|A| t) and the gradients overflow float16)
    delta = (rng.standard_normal((batch, dim, L)) * 0.5 if softplus
             else rng.uniform(0.01, 0.4, (batch, dim, L)))
    r = dict(u=rng.standard_normal((batch, dim, L)), delta=delta,
             B=rng.standard_normal(bc), C=rng.standard_normal(bc),
             z=rng.standard_normal((batch, dim, L)) if z else None,
             dout=rng.standard_normal((batch, dim, L)))
    r = {k: None if v is None else round_to(v, dtype) for k, v in r.items()}
    f32 = {"A": -np.exp(rng.standard_normal((dim, N)) * 0.5),
           "D": rng.standard_normal(dim) if D else None,
           "delta_bias": (rng.standard_normal(dim) * 0.3 if softplus
                          else rng.uniform(0.0, 0.1, dim)) if bias else None,
           "initial_state": rng.standard_normal((batch, dim, N)) if init else None,
           "dlast_state": rng.standard_normal((batch, dim, N)) if dlast else None}
    r.update({k: None if v is None else round_to(v, "float32") for k, v in f32.items()})
    return r, softplus


def to_device(r: dict, dtype: str) -> dict:
    small = ("A", "D", "delta_bias", "initial_state", "dlast_state")
    return {k: None if v is None else dev(v, "float32" if k in small else dtype)
            for k, v in r.items()}


def scan_call(d: dict, softplus: bool):
    return grad.selective_scan_bwd(d["u"], d["delta"], d["A"], d["B"], d["C"], d["D"], d["z"],
                                   d["delta_bias"], softplus, d["initial_state"],
                                   dout=d["dout"], dlast_state=d["dlast_state"])


def scan_ref(r: dict, softplus: bool) -> dict:
    return selective_scan_bwd_ref(r["u"], r["delta"], r["A"], r["B"], r["C"], r["D"], r["z"],
                                  r["delta_bias"], softplus, r["initial_state"], r["dout"],
                                  r["dlast_state"])


def check_scan(got, ref: dict, r: dict, L: int, dtype: str, what: str = "") -> None:
    for k in got._fields:
        g, want = getattr(got, k), ref[k]
        if k == "dinitial_state" and r["initial_state"] is None:
            assert g is None, f"{what}{k}: expected None without an initial state"
            continue
        if want is None:
            assert g is None, f"{what}{k}: expected None for an input that was not given"
            continue
        src = {"du": "u", "ddelta": "delta", "dz": "z"}.get(k)
        assert g.dtype == (dtype if src else "float32"), f"{what}{k}: dtype {g.dtype}"
        tol = scan_rtol(L) + (RTOL[dtype] - RTOL["float32"] if k in ACT else 0.0)
        assert_close(host(g), want, tol, what + k)


SCAN_CASES = [
    # batch, dim, L, N, G, options
    (1, 1, 1, 1, 1, dict(D=False, z=False, bias=False, init=False, dlast=False)),
    (2, 3, 2, 4, 1, dict(three_d=True, z=False, init=False, softplus=False)),
    (3, 8, 63, 16, 4, dict()),
    (1, 6, 64, 5, 3, dict(D=False, bias=False, dlast=False)),
    (2, 4, 65, 7, 2, dict(init=False)),
    (2, 16, 129, 16, 1, dict(three_d=True)),
    (1, 12, 300, 8, 4, dict(z=False, softplus=False)),
    (2, 130, 37, 16, 2, dict()),  # 65 channels per group: padding channels in a block
    (1, 6, 129, 33, 3, dict()),   # 3 slices of 16 states
    (1, 4, 77, 256, 1, dict(z=False)),
    (2, 5, 8, 17, 5, dict(D=False)),
]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("case", SCAN_CASES)
def test_scan_against_reference(rng, dtype, case):
    batch, dim, L, N, G, opt = case
    r, softplus = scan_inputs(rng, batch, dim, L, N, G, dtype, **opt)
    got = scan_call(to_device(r, dtype), softplus)
    check_scan(got, scan_ref(r, softplus), r, L, dtype)


@pytest.mark.parametrize("lanes,chunk", [("4", "1"), ("8", "1"), ("4", "3"), ("8", "16"),
                                         ("4", "")])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_scan_variants(rng, monkeypatch, lanes, chunk, dtype):
    """Both lane layouts and several checkpoint chunk sizes (chunk "" with a 0 MiB budget:
    the largest chunks) over a length that leaves a partial last chunk and group."""
    monkeypatch.setenv("SAMBA_EXT_SCAN_BWD_LANES", lanes)
    if chunk:
        monkeypatch.setenv("SAMBA_EXT_SCAN_BWD_CHUNK", chunk)
    else:
        monkeypatch.setenv("SAMBA_EXT_SCAN_BWD_WS_MB", "0")
    r, softplus = scan_inputs(rng, 2, 72, 301, 16, 2, dtype)
    got = scan_call(to_device(r, dtype), softplus)
    check_scan(got, scan_ref(r, softplus), r, 301, dtype, f"lanes {lanes} chunk {chunk}: ")


@pytest.mark.parametrize("vec", ["1", "0"])
@pytest.mark.parametrize("lanes", ["4", "8"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_scan_vector_atomics(rng, monkeypatch, vec, lanes, dtype):
    """SAMBA_EXT_SCAN_BWD_VEC=1 (the default): dB / dC added 4 steps per 16-byte atomic
    (seqlen a multiple of 4; 300 leaves a partial last group of 8, which takes the scalar
    adds), grouped B / C; =0: one scalar atomic per (block, state, step)."""
    monkeypatch.setenv("SAMBA_EXT_SCAN_BWD_LANES", lanes)
    monkeypatch.setenv("SAMBA_EXT_SCAN_BWD_VEC", vec)
    r, softplus = scan_inputs(rng, 2, 72, 300, 16, 2, dtype)
    got = scan_call(to_device(r, dtype), softplus)
    check_scan(got, scan_ref(r, softplus), r, 300, dtype, f"vec {vec}, lanes {lanes}: ")


def bwd_launches() -> tuple:
    from samba_ext.cuda import runtime
    return runtime.require().scan_bwd_launches()


TILED_CASES = [
    # batch, dim, L, G, environment, options: d_state 16, whole blocks of 32 channels per group,
    # seqlen a multiple of 8 (16-byte rows in every dtype)
    (1, 32, 32, 1, {}, dict()),                                    # one tile
    (2, 64, 296, 2, {}, dict()),                                   # a partial last tile
    (2, 64, 296, 2, {"SAMBA_EXT_SCAN_BWD_TILES": "3"}, dict(z=False)),  # chunks of 3 tiles
    (2, 64, 296, 2, {"SAMBA_EXT_SCAN_BWD_OCC": "2"}, dict()),      # the 2-block build
    (1, 96, 296, 3, {"SAMBA_EXT_SCAN_BWD_TILES": "4"}, dict(softplus=False, init=False)),
    (3, 32, 520, 1, {"SAMBA_EXT_SCAN_BWD_WS_MB": "0"}, dict(D=False, bias=False, dlast=False)),
    (1, 64, 2056, 1, {}, dict(three_d=True)),
    # segments (blocks along the sequence): the small cases above take as many as they have
    # chunks by default (a wave of resident blocks is never full there); here one segment
    # (with chunks of 1 and 3 tiles), three uneven segments, and two of chunks of 3 tiles
    # with a partial last tile
    (2, 64, 296, 2, {"SAMBA_EXT_SCAN_BWD_SEGS": "1"}, dict()),
    (2, 64, 296, 2, {"SAMBA_EXT_SCAN_BWD_SEGS": "1", "SAMBA_EXT_SCAN_BWD_TILES": "3"}, dict()),
    (1, 64, 2056, 1, {"SAMBA_EXT_SCAN_BWD_SEGS": "3"}, dict()),
    (1, 32, 1032, 1, {"SAMBA_EXT_SCAN_BWD_SEGS": "2", "SAMBA_EXT_SCAN_BWD_TILES": "3"},
     dict(dlast=False)),
]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("case", TILED_CASES)
def test_scan_tiled_kernel(rng, monkeypatch, dtype, case):
    """The tiled backward (scan_tile_bwd.cuh, the default where it applies): one tile, a
    partial last tile, chunks of several tiles (the states at their tile starts recomputed;
    a last chunk of fewer tiles), the largest chunks (no budget), one and several segments
    along the sequence, every option on and off."""
    batch, dim, L, G, env, opt = case
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    r, softplus = scan_inputs(rng, batch, dim, L, 16, G, dtype, **opt)
    before = bwd_launches()
    got = scan_call(to_device(r, dtype), softplus)
    assert bwd_launches() == (before[0], before[1] + 1), "the tiled kernel did not run"
    check_scan(got, scan_ref(r, softplus), r, L, dtype, f"tiled {case[:4]} {env}: ")


@pytest.mark.parametrize("L,env,kind", [(1028, {}, 1), (298, {}, 0),
                                        (296, {"SAMBA_EXT_SCAN_BWD_VARIANT": "split"}, 0)])
def test_scan_tiled_or_split(rng, monkeypatch, L, env, kind):
    """float32 rows of 1028 steps take the tiled kernel with element stores of du / ddelta / dz
    (seqlen not a multiple of 8); 298 steps (not a multiple of 4) and the split knob take the
    split kernels."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    r, softplus = scan_inputs(rng, 1, 64, L, 16, 1, "float32")
    before = bwd_launches()
    got = scan_call(to_device(r, "float32"), softplus)
    after = bwd_launches()
    assert after[kind] == before[kind] + 1 and after[1 - kind] == before[1 - kind]
    check_scan(got, scan_ref(r, softplus), r, L, "float32", f"L {L} {env}: ")


def test_scan_long_sequence(rng):
    L = 5003
    r, softplus = scan_inputs(rng, 1, 8, L, 16, 1, "float32", z=False)
    got = scan_call(to_device(r, "float32"), softplus)
    check_scan(got, scan_ref(r, softplus), r, L, "float32")


def test_scan_softplus_threshold(rng):
    """delta + bias straddles 20: softplus is the identity (derivative 1) above it."""
    r, softplus = scan_inputs(rng, 2, 4, 40, 4, 2, "float32")
    r["delta"] = round_to(rng.standard_normal((2, 4, 40)) * 3.0 + 19.0, "float32")
    x = r["delta"] + r["delta_bias"][None, :, None]
    assert (x > 20).any() and (x <= 20).any()
    got = scan_call(to_device(r, "float32"), softplus)
    check_scan(got, scan_ref(r, softplus), r, 40, "float32")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_scan_token_major_views(rng, dtype):
    """u, delta, z, dout seen through (batch, seqlen, dim) memory and B, C through
    (batch, seqlen, ngroups, dstate): strided reads, no 16-byte vector loads."""
    batch, dim, L, N, G = 2, 24, 45, 16, 2
    r, softplus = scan_inputs(rng, batch, dim, L, N, G, dtype)
    d = to_device(r, dtype)
    for k in ("u", "delta", "z", "dout"):
        d[k] = transposed_view(r[k], dtype, (0, 2, 1))
    for k in ("B", "C"):
        d[k] = transposed_view(r[k], dtype, (0, 3, 1, 2))
    got = scan_call(d, softplus)
    check_scan(got, scan_ref(r, softplus), r, L, dtype)


def test_scan_mixed_dtypes(rng):
    """bfloat16 u / delta / z / B / C with a float32 dout: all read as float32; the
    gradients keep their inputs' dtypes."""
    r, softplus = scan_inputs(rng, 2, 8, 50, 16, 1, "bfloat16")
    r["dout"] = round_to(rng.standard_normal((2, 8, 50)), "float32")
    d = to_device(r, "bfloat16")
    d["dout"] = dev(r["dout"], "float32")
    got = scan_call(d, softplus)
    check_scan(got, scan_ref(r, softplus), r, 50, "bfloat16")


@pytest.mark.parametrize("case", [c for c in SCAN_CASES if c[2] > 1])
def test_scan_gpu_matches_cpu(rng, case):
    """The same float32 inputs through the C backward (NumPy) and the CUDA one."""
    batch, dim, L, N, G, opt = case
    r, softplus = scan_inputs(rng, batch, dim, L, N, G, "float32", **opt)
    cpu = grad.selective_scan_bwd(r["u"], r["delta"], r["A"], r["B"], r["C"], r["D"], r["z"],
                                  r["delta_bias"], softplus, r["initial_state"],
                                  dout=r["dout"], dlast_state=r["dlast_state"])
    gpu = scan_call(to_device(r, "float32"), softplus)
    tol = scan_rtol(L) + 1e-5 * (1.0 + np.sqrt(L / 256.0))
    for k in cpu._fields:
        c, g = getattr(cpu, k), getattr(gpu, k)
        assert (c is None) == (g is None), k
        if c is not None:
            assert_close(host(g), c, tol, f"GPU vs CPU {k}")


def test_scan_nan_propagates(rng):
    r, softplus = scan_inputs(rng, 1, 2, 10, 3, 1, "float32")
    r["dout"][0, 1, 7] = np.nan
    got = scan_call(to_device(r, "float32"), softplus)
    du, dA = host(got.du), host(got.dA)
    assert np.isnan(du[0, 1, :8]).all() and np.isfinite(du[0, 0]).all()
    assert np.isnan(dA[1]).all() and np.isfinite(dA[0]).all()
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close(du, scan_ref(r, softplus)["du"], 1.0, "du")


def test_scan_empty_sequence(rng):
    r, softplus = scan_inputs(rng, 2, 4, 1, 3, 2, "float32")
    d = to_device(r, "float32")
    for k in ("u", "delta", "z", "dout"):
        d[k] = dev(np.zeros((2, 4, 0)))
    for k in ("B", "C"):
        d[k] = dev(np.zeros((2, 2, 3, 0)))
    got = scan_call(d, softplus)
    assert got.du.shape == (2, 4, 0) and got.dB.shape == (2, 2, 3, 0)
    assert not host(got.dA).any() and not host(got.dD).any()
    np.testing.assert_array_equal(host(got.dinitial_state), r["dlast_state"])


# ------------------------------------------------------------------------- the conv ---

def conv_inputs(rng, batch, dim, L, W, dtype, *, bias=True, init=True, dfin=True):
    r = dict(x=round_to(rng.standard_normal((batch, dim, L)), dtype),
             dy=round_to(rng.standard_normal((batch, dim, L)), dtype),
             weight=round_to(rng.standard_normal((dim, W)), "float32"),
             bias=round_to(rng.standard_normal(dim), "float32") if bias else None,
             initial_states=(round_to(rng.standard_normal((batch, dim, W - 1)), "float32")
                             if init else None),
             dfinal_states=(round_to(rng.standard_normal((batch, dim, W - 1)), "float32")
                            if dfin else None))
    return r


def conv_device(r: dict, dtype: str) -> dict:
    return {k: None if v is None else dev(v, dtype if k in ("x", "dy") else "float32")
            for k, v in r.items()}


def conv_call(d: dict, act):
    return grad.causal_conv1d_bwd(d["x"], d["weight"], d["bias"], act, d["initial_states"],
                                  dy=d["dy"], dfinal_states=d["dfinal_states"])


def check_conv(got, r: dict, act, dtype: str, what: str = "") -> None:
    ref = causal_conv1d_bwd_ref(r["x"], r["weight"], r["bias"], act, r["initial_states"],
                                r["dy"], r["dfinal_states"])
    for k in got._fields:
        g, want = getattr(got, k), ref[k]
        if (k == "dinitial_states" and r["initial_states"] is None) or want is None:
            assert g is None, f"{what}{k}: expected None"
            continue
        assert g.dtype == (dtype if k == "dx" else "float32"), f"{what}{k}: dtype {g.dtype}"
        tol = CONV_RTOL + (RTOL[dtype] - RTOL["float32"] if k in ACT else 0.0)
        assert_close(host(g), want, tol, what + k)


CONV_CASES = [
    # batch, dim, L, W, activation, options
    (1, 1, 1, 4, None, dict(bias=False, init=False, dfin=False)),
    (2, 5, 2, 4, "silu", dict()),
    (3, 7, 3, 3, "swish", dict(init=False)),
    (2, 16, 64, 4, "silu", dict(dfin=False)),
    (1, 3, 5, 2, None, dict()),
    (2, 4, 1000, 3, "silu", dict()),
    (3, 9, 37, 4, "silu", dict(bias=False)),
]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_against_reference(rng, dtype, case):
    batch, dim, L, W, act, opt = case
    r = conv_inputs(rng, batch, dim, L, W, dtype, **opt)
    check_conv(conv_call(conv_device(r, dtype), act), r, act, dtype)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_conv_token_major_and_mixed(rng, dtype):
    r = conv_inputs(rng, 2, 24, 45, 4, dtype)
    d = conv_device(r, dtype)
    d["x"] = transposed_view(r["x"], dtype, (0, 2, 1))
    check_conv(conv_call(d, "silu"), r, "silu", dtype, "token-major x: ")
    r["dy"] = round_to(r["dy"], "float32")
    d["dy"] = dev(r["dy"], "float32")  # x in dtype, dy float32: both read as float32
    check_conv(conv_call(d, "silu"), r, "silu", dtype, "float32 dy: ")


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_gpu_matches_cpu_and_is_deterministic(rng, case):
    batch, dim, L, W, act, opt = case
    r = conv_inputs(rng, batch, dim, L, W, "float32", **opt)
    cpu = grad.causal_conv1d_bwd(r["x"], r["weight"], r["bias"], act, r["initial_states"],
                                 dy=r["dy"], dfinal_states=r["dfinal_states"])
    d = conv_device(r, "float32")
    gpu, again = conv_call(d, act), conv_call(d, act)
    for k in cpu._fields:
        c, g = getattr(cpu, k), getattr(gpu, k)
        assert (c is None) == (g is None), k
        if c is not None:
            assert_close(host(g), c, CONV_RTOL + 1e-5, f"GPU vs CPU {k}")
            np.testing.assert_array_equal(host(getattr(again, k)), host(g), err_msg=k)


def test_conv_nan_and_empty(rng):
    r = conv_inputs(rng, 1, 2, 10, 4, "float32")
    r["dy"][0, 1, 6] = np.nan
    got = conv_call(conv_device(r, "float32"), "silu")
    dx = host(got.dx)
    assert np.isnan(dx[0, 1, 3:7]).all() and np.isfinite(dx[0, 0]).all()
    assert np.isnan(host(got.dweight)[1]).all() and np.isfinite(host(got.dweight)[0]).all()
    r = conv_inputs(rng, 2, 3, 1, 4, "float32")
    d = conv_device(r, "float32")
    d["x"] = d["dy"] = dev(np.zeros((2, 3, 0)))
    got = conv_call(d, "silu")
    assert got.dx.shape == (2, 3, 0) and not host(got.dweight).any()
    np.testing.assert_array_equal(host(got.dinitial_states), r["dfinal_states"])
