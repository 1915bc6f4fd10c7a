"""Tests of the CPU selective scan (_core.selective_scan / selective_state_update).

Everything is compared with the plain float64 reference in ref_scan.py.

Tolerance: the kernel computes in float32 (inputs rounded to float32 first, so the
reference gets the same rounded values) with a polynomial exp2 of relative error ~1e-7.
Each step adds a few float32 roundings (~6e-8 relative each, ~10 per update) to the state
and to y; the state carries them forward over its memory (1 / (dt |A|) steps), so the
relative-norm error of y and of the final state grows at most like sqrt(L) for random
inputs; measured 1e-7 .. 1.5e-7 for these tests. rtol(L) = 2e-6 * (1 + sqrt(L / 256)) leaves
a margin of >10x over that, while an exp accurate to only ~1e-6 or any indexing, masking or
formula error fails it (those give 3e-6 .. 1 errors).

The reference-comparison tests also run on CUDA (NumPy inputs with device="cuda"), which
computes in float32 with float32 accumulation but a different operation order and expf, so
there every tolerance is max(CPU tolerance, 1e-5), the issue's float32 bound
(cuda_util.RTOL["float32"]).
"""
from __future__ import annotations

import threading
from typing import Optional

import numpy as np
import pytest

import samba_ext
from conftest import assert_close
from cuda_util import RTOL as CUDA_RTOL
from ref_scan import selective_scan_ref, selective_state_update_ref

KERNELS = ["auto", "avx2", "vec"]  # SAMBA_EXT_ISA caps (simd.h); "vec" = the portable C


def rtol(L: int) -> float:
    return 2e-6 * (1.0 + np.sqrt(max(L, 1) / 256.0))


def tol(backend: str, cpu_rtol: float) -> float:
    """The CPU tolerance, or at least the float32 bound on CUDA (see the module docstring)."""
    return cpu_rtol if backend == "cpu" else max(cpu_rtol, CUDA_RTOL["float32"])


@pytest.fixture(params=KERNELS)
def kernel(request, monkeypatch) -> str:
    """Runs the test with each CPU kernel: the dispatched one (AVX-512 where available), the
    portable C compiled for AVX2 + FMA (where available, else plain), the plain portable C."""
    if request.param != "auto":
        monkeypatch.setenv("SAMBA_EXT_ISA", request.param)
    else:
        monkeypatch.delenv("SAMBA_EXT_ISA", raising=False)
    return request.param


# CPU: every ISA variant of `kernel`; CUDA: once (the ISA variants are CPU-only). Indirect,
# so the conftest `backend` fixture still skips the CUDA case without a GPU.
on_backends = pytest.mark.parametrize(
    "backend,kernel",
    [("cpu", k) for k in KERNELS] + [pytest.param("cuda", "auto", marks=pytest.mark.cuda)],
    indirect=True)


def make_inputs(rng: np.random.Generator, batch: int, dim: int, dstate: int, L: int,
                ngroups: int = 1, grouped_4d: Optional[bool] = None, dtype=np.float32,
                delta_scale: float = 0.5) -> dict:
    """Random scan inputs in the model's typical ranges (A < 0, dt ~ softplus(N(0, .5)))."""
    if grouped_4d is None:
        grouped_4d = ngroups > 1
    bc_shape = (batch, ngroups, dstate, L) if grouped_4d else (batch, dstate, L)
    f = lambda *s: rng.standard_normal(s).astype(dtype)  # noqa: E731
    return dict(
        u=f(batch, dim, L),
        delta=(rng.standard_normal((batch, dim, L)) * delta_scale - 1.0).astype(dtype),
        A=(-np.exp(rng.standard_normal((dim, dstate)) * 0.5)).astype(dtype),
        B=f(*bc_shape),
        C=f(*bc_shape),
        D=f(dim),
        z=f(batch, dim, L),
        delta_bias=(rng.standard_normal(dim) * 0.5).astype(dtype),
        initial_state=f(batch, dim, dstate),
    )


def run_both(inp: dict, backend: str, delta_softplus: bool = True,
             return_last_state: bool = True, drop=()):
    args = {k: (None if k in drop else v) for k, v in inp.items()}
    got = samba_ext.selective_scan(**args, delta_softplus=delta_softplus,
                                   return_last_state=return_last_state, device=backend)
    ref = selective_scan_ref(**args, delta_softplus=delta_softplus,
                             return_last_state=return_last_state)
    return got, ref


# ------------------------------------------------------------------ shapes vs reference ---
@pytest.mark.parametrize("batch,dim,dstate,L,ngroups", [
    (1, 16, 16, 1, 1),      # seqlen 1
    (2, 32, 16, 37, 1),     # odd seqlen, batch > 1
    (1, 40, 16, 2500, 2),   # longer than one time chunk (1024 steps), dim/group = 20 (tail)
    (3, 24, 8, 19, 3),      # dstate 8, 3 groups of 8 channels (partial lane blocks)
    (2, 21, 5, 33, 1),      # dstate 5, dim not a multiple of 16
    (1, 64, 32, 50, 4),     # dstate 32 (generic path), 4 groups
    (2, 18, 1, 17, 1),      # dstate 1
    (1, 16, 37, 20, 1),     # dstate 37 (odd, > 16)
])
@on_backends
def test_shapes_match_reference(rng, backend, kernel, batch, dim, dstate, L, ngroups):
    inp = make_inputs(rng, batch, dim, dstate, L, ngroups)
    (y, h), (yr, hr) = run_both(inp, backend)
    assert y.dtype == np.float32 and h.dtype == np.float32
    assert_close(y, yr, tol(backend, rtol(L)), "y")
    assert_close(h, hr, tol(backend, rtol(L)), "last_state")


@on_backends
def test_ngroups_one_as_4d(rng, backend, kernel):
    """B, C given as (batch, 1, dstate, L) equal the 3-D form."""
    inp = make_inputs(rng, 2, 20, 16, 40, 1, grouped_4d=True)
    (y4, h4), (yr, hr) = run_both(inp, backend)
    inp3 = dict(inp, B=inp["B"][:, 0], C=inp["C"][:, 0])
    y3, h3 = samba_ext.selective_scan(**inp3, delta_softplus=True, return_last_state=True,
                                      device=backend)
    assert_close(y4, yr, tol(backend, rtol(40)), "y")
    np.testing.assert_array_equal(y3, y4)
    np.testing.assert_array_equal(h3, h4)


OPTIONALS = ["D", "z", "delta_bias", "initial_state"]


@pytest.mark.parametrize("drop", [(), tuple(OPTIONALS)] + [(o,) for o in OPTIONALS] +
                         [tuple(o for o in OPTIONALS if o != k) for k in OPTIONALS])
@pytest.mark.parametrize("softplus", [True, False])
@on_backends
def test_optionals(rng, backend, kernel, drop, softplus):
    inp = make_inputs(rng, 2, 24, 16, 29, 1)
    if not softplus:
        # without softplus dt must stay positive for a stable recurrence
        inp["delta"] = np.abs(inp["delta"]) * 0.2
        if "delta_bias" not in drop:
            inp["delta_bias"] = np.abs(inp["delta_bias"]) * 0.2
    (y, h), (yr, hr) = run_both(inp, backend, delta_softplus=softplus, drop=drop)
    assert_close(y, yr, tol(backend, rtol(29)), "y")
    assert_close(h, hr, tol(backend, rtol(29)), "last_state")


@on_backends
def test_return_last_state_off(rng, backend, kernel):
    inp = make_inputs(rng, 1, 16, 16, 10)
    y = samba_ext.selective_scan(**inp, delta_softplus=True, device=backend)
    assert isinstance(y, np.ndarray) and y.shape == (1, 16, 10)
    assert_close(y, selective_scan_ref(**inp, delta_softplus=True), tol(backend, rtol(10)),
                 "y")


@on_backends
def test_softplus_threshold_and_extremes(rng, backend, kernel):
    """delta + bias spanning [-40, 40]: both sides of the softplus threshold (20), tiny dt
    (log1p accuracy) and dt large enough that exp(dt*A) underflows to 0."""
    inp = make_inputs(rng, 1, 32, 16, 64)
    inp["delta"] = rng.uniform(-40, 40, inp["delta"].shape).astype(np.float32)
    inp["delta"][0, 0, :8] = [19.9, 20.0, 20.1, -20.0, -87.0, 0.0, 1e-3, -1e-3]
    inp["delta_bias"][:] = 0.0
    inp["A"] = -np.exp(rng.uniform(-3, 3, inp["A"].shape)).astype(np.float32)
    (y, h), (yr, hr) = run_both(inp, backend)
    assert_close(y, yr, tol(backend, rtol(64)), "y")
    assert_close(h, hr, tol(backend, rtol(64)), "last_state")


@on_backends
def test_dt_values_exact_softplus(backend, kernel):
    """dt itself (read through a 1-state scan with A = 0, B = 1, u = 1: h_t = sum dt) is
    softplus with threshold 20 to float32 accuracy, including large negative arguments."""
    x = np.array([-80, -30, -20, -10, -1, -1e-4, 0, 1e-4, 0.5, 3, 10, 19.99, 20, 20.01, 25,
                  1e3], dtype=np.float32)
    L = x.size
    u = np.ones((1, 1, L), np.float32)
    delta = np.zeros((1, 1, L), np.float32)
    y_all = []
    for i in range(L):  # one step per call so every dt is read separately
        delta[0, 0, 0] = x[i]
        y = samba_ext.selective_scan(u[:, :, :1], delta[:, :, :1], np.zeros((1, 1), np.float32),
                                     np.ones((1, 1, 1), np.float32),
                                     np.ones((1, 1, 1), np.float32), delta_softplus=True,
                                     device=backend)
        y_all.append(y[0, 0, 0])
    from ref_scan import softplus_ref
    ref = softplus_ref(x.astype(np.float64))
    got = np.array(y_all, np.float64)
    np.testing.assert_allclose(got, ref, rtol=tol(backend, 3e-7), atol=0)


@on_backends
def test_decay_factor_accuracy(rng, backend, kernel):
    """One step with u = 0, B = C = 0 and state 1 returns exp(dt * A) elementwise. Bound:
    exp2 polynomial ~1e-7, plus the float32 rounding of dt*A*log2(e) (relative ~1.2e-7 of
    |dt*A|, turned into an absolute error of the exponent), as in the CUDA kernel."""
    dim, n = 64, 16
    dt = rng.uniform(1e-3, 2.0, (1, dim, 1)).astype(np.float32)
    A = -np.exp(rng.uniform(-4, 2.3, (dim, n))).astype(np.float32)
    zeros_bc = np.zeros((1, n, 1), np.float32)
    y, h = samba_ext.selective_scan(np.zeros((1, dim, 1), np.float32), dt, A, zeros_bc,
                                    zeros_bc, initial_state=np.ones((1, dim, n), np.float32),
                                    return_last_state=True, device=backend)
    x = dt[0].astype(np.float64) * A
    ref = np.exp(x)
    rel = np.abs(h[0] / ref - 1.0)
    bound = 2.5e-7 + 2.0e-7 * np.abs(x)
    if backend == "cuda":
        bound = np.maximum(bound, CUDA_RTOL["float32"])
    assert np.all(rel <= bound), f"worst {np.max(rel / bound):.2f} x bound at x={x.flat[np.argmax(rel / bound)]}"


# ------------------------------------------------------------ dtypes and memory layout ---
@pytest.mark.parametrize("dtype", [np.float64, np.float16])
@on_backends
def test_dtype_conversion(rng, backend, kernel, dtype):
    inp = make_inputs(rng, 2, 20, 16, 23, 2, dtype=dtype)
    (y, h), (yr, hr) = run_both(inp, backend)  # the reference sees the same (rounded) values
    assert y.dtype == np.float32
    assert_close(y, yr, tol(backend, rtol(23)), "y")
    assert_close(h, hr, tol(backend, rtol(23)), "last_state")


@on_backends
def test_noncontiguous_and_negative_strides(rng, backend, kernel):
    base = make_inputs(rng, 2, 24, 16, 60, 2)
    inp = {}
    for k, v in base.items():
        # build a strided view holding the same values as v
        if v.ndim >= 2:
            big = np.empty(v.shape[:-1] + (2 * v.shape[-1],), v.dtype)
            big[..., ::2] = v
            inp[k] = big[..., ::2]
        else:
            inp[k] = v[::-1].copy()[::-1]
        assert not inp[k].flags.c_contiguous or v.ndim == 1
    inp["u"] = np.ascontiguousarray(base["u"][:, :, ::-1])[:, :, ::-1]      # negative stride
    inp["A"] = np.asfortranarray(base["A"])
    inp["B"] = np.ascontiguousarray(np.swapaxes(base["B"], -1, -2)).swapaxes(-1, -2)
    for k in base:
        np.testing.assert_array_equal(inp[k], base[k])
    (y, h), (yr, hr) = run_both(inp, backend)
    assert_close(y, yr, tol(backend, rtol(60)), "y")
    assert_close(h, hr, tol(backend, rtol(60)), "last_state")


def test_lists_are_accepted(rng, backend):
    inp = make_inputs(rng, 1, 4, 3, 5)
    lists = {k: v.tolist() for k, v in inp.items()}
    y = samba_ext.selective_scan(**lists, delta_softplus=True, device=backend)
    assert_close(y, selective_scan_ref(**inp, delta_softplus=True), tol(backend, rtol(5)), "y")


# -------------------------------------------------------------------- equivalences ---
@pytest.mark.parametrize("k", [1, 17, 700, 1300])
@on_backends
def test_split_scan_equals_full(rng, backend, kernel, k):
    """scan over [0, L) == scan over [0, k) then [k, L) with the state carried."""
    L = 1500
    inp = make_inputs(rng, 1, 20, 16, L, 2)
    y, h = samba_ext.selective_scan(**inp, delta_softplus=True, return_last_state=True,
                                    device=backend)

    def part(a, b, state):
        sl = {n: (v[..., a:b] if n in ("u", "delta", "z", "B", "C") else v)
              for n, v in inp.items()}
        sl["initial_state"] = state
        return samba_ext.selective_scan(**sl, delta_softplus=True, return_last_state=True,
                                        device=backend)

    y1, h1 = part(0, k, inp["initial_state"])
    y2, h2 = part(k, L, h1)
    # same float32 operations in the same order: equal up to a few roundings
    assert_close(np.concatenate([y1, y2], axis=-1), y, tol(backend, 1e-6), "y")
    assert_close(h2, h, tol(backend, 1e-6), "last_state")


@pytest.mark.parametrize("ngroups,bc_4d", [(1, False), (1, True), (3, True)])
@on_backends
def test_state_update_equals_scan(rng, backend, kernel, ngroups, bc_4d):
    """Step-by-step selective_state_update reproduces the full scan (y and final state)."""
    batch, dim, dstate, L = 2, 24, 16, 30
    inp = make_inputs(rng, batch, dim, dstate, L, ngroups, grouped_4d=bc_4d)
    y, h = samba_ext.selective_scan(**inp, delta_softplus=True, return_last_state=True,
                                    device=backend)
    state = inp["initial_state"].copy()
    ys = []
    for t in range(L):
        yt = samba_ext.selective_state_update(
            state, inp["u"][:, :, t], inp["delta"][:, :, t], inp["A"], inp["B"][..., t],
            inp["C"][..., t], inp["D"], inp["z"][:, :, t], inp["delta_bias"], True,
            device=backend)
        assert yt.shape == (batch, dim) and yt.dtype == np.float32
        ys.append(yt)
    assert_close(np.stack(ys, axis=-1), y, tol(backend, 1e-6), "y")
    assert_close(state, h, tol(backend, 1e-6), "state")


@pytest.mark.parametrize("dstate", [16, 5, 37])
@on_backends
def test_state_update_matches_reference(rng, backend, kernel, dstate):
    batch, dim = 3, 40
    inp = make_inputs(rng, batch, dim, dstate, 1, 2)
    state = inp["initial_state"].copy()
    args = (inp["u"][..., 0], inp["delta"][..., 0], inp["A"], inp["B"][..., 0],
            inp["C"][..., 0], inp["D"], inp["z"][..., 0], inp["delta_bias"], True)
    y = samba_ext.selective_state_update(state, *args, device=backend)
    yr, hr = selective_state_update_ref(inp["initial_state"], *args)
    assert_close(y, yr, tol(backend, rtol(1)), "y")
    assert_close(state, hr, tol(backend, rtol(1)), "state")
    # without the optional arguments
    state = inp["initial_state"].copy()
    bare = args[:5] + (None, None, None, False)
    y = samba_ext.selective_state_update(state, *bare, device=backend)
    yr, hr = selective_state_update_ref(inp["initial_state"], *bare)
    assert_close(y, yr, tol(backend, rtol(1)), "y")
    assert_close(state, hr, tol(backend, rtol(1)), "state")


# ------------------------------------------------------------------------- empty ---
@on_backends
def test_empty_seqlen(rng, backend, kernel):
    inp = make_inputs(rng, 2, 8, 4, 0)
    y, h = samba_ext.selective_scan(**inp, delta_softplus=True, return_last_state=True,
                                    device=backend)
    assert y.shape == (2, 8, 0)
    np.testing.assert_array_equal(h, inp["initial_state"])
    inp["initial_state"] = None
    y, h = samba_ext.selective_scan(**inp, delta_softplus=True, return_last_state=True,
                                    device=backend)
    np.testing.assert_array_equal(h, np.zeros((2, 8, 4), np.float32))


@on_backends
def test_empty_batch(rng, backend, kernel):
    inp = make_inputs(rng, 0, 8, 4, 5)
    y, h = samba_ext.selective_scan(**inp, delta_softplus=True, return_last_state=True,
                                    device=backend)
    assert y.shape == (0, 8, 5) and h.shape == (0, 8, 4)
    state = np.zeros((0, 8, 4), np.float32)
    y = samba_ext.selective_state_update(state, np.zeros((0, 8), np.float32),
                                         np.zeros((0, 8), np.float32), inp["A"],
                                         np.zeros((0, 4), np.float32),
                                         np.zeros((0, 4), np.float32), device=backend)
    assert y.shape == (0, 8)


@on_backends
def test_nan_propagates(rng, backend, kernel):
    inp = make_inputs(rng, 1, 20, 16, 12)
    inp["u"][0, 3, 5] = np.nan
    y, h = samba_ext.selective_scan(**inp, delta_softplus=True, return_last_state=True,
                                    device=backend)
    assert np.all(np.isnan(y[0, 3, 5:])) and np.all(np.isnan(h[0, 3]))
    mask = np.ones(y.shape, bool)
    mask[0, 3, 5:] = False
    assert np.all(np.isfinite(y[mask]))


# Bad inputs: the table in tests/test_contracts.py (every op, every backend).


# --------------------------------------------------------------------- concurrency ---
def test_concurrent_calls_match_serial(rng, kernel):
    """4 Python threads calling the kernel at once (GIL released) give the serial results."""
    inputs = [make_inputs(rng, 1, 48, 16, 700, 2) for _ in range(4)]
    serial = [samba_ext.selective_scan(**inp, delta_softplus=True, return_last_state=True)
              for inp in inputs]
    results: list = [None] * 4
    errors: list = []
    barrier = threading.Barrier(4)

    def work(i: int) -> None:
        try:
            barrier.wait()
            for _ in range(3):
                results[i] = samba_ext.selective_scan(**inputs[i], delta_softplus=True,
                                                      return_last_state=True)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for (y, h), (ys, hs) in zip(results, serial):
        np.testing.assert_array_equal(y, ys)
        np.testing.assert_array_equal(h, hs)
