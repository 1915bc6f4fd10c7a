"""Every instruction-set variant of the CPU kernels against the float64 references.

The kernels pick a variant with one dispatch (csrc/simd.c, ``samba_isa()``): the best level the
CPU has, capped by ``SAMBA_EXT_ISA=avx512|avx2|vec|scalar``. The per-kernel test files run the
default level (and, for the scan and attention, the lower ones); this file runs the element-wise
kernels and the conv at every level, on fresh random inputs whose shapes do not fill whole vectors
(remainder lanes) and with values spanning the exp/silu range. A cap above what the CPU supports
runs the best available variant, so the test is meaningful on any machine.

Tolerances: the CPU kernels compute in float32 with polynomial exp (relative error ~1e-7), so
a relative-norm error of 1e-6 against float64 leaves a factor ~10 for float32 rounding over the
reductions (RMSNorm's mean of squares, the conv's 4 taps); silu's pointwise check uses an absolute
floor of 1e-30, below which the float32 result underflows by design (simd.h flushes exp < 2^-126).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ref_small as ref
from conftest import assert_close
from ref_grad import swiglu_bwd_ref

from samba_ext import _core

RTOL = 1e-6
LEVELS = ["avx512", "avx2", "vec", "scalar"]


@pytest.fixture(params=LEVELS)
def isa(request, monkeypatch) -> str:
    monkeypatch.setenv("SAMBA_EXT_ISA", request.param)
    return request.param


@pytest.mark.parametrize("shape", [(3, 37), (2, 5, 129), (1, 16)])
def test_rms_norm_every_isa(isa, shape):
    rng = np.random.default_rng()
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(shape[-1]).astype(np.float32)
    r = rng.standard_normal(shape).astype(np.float32)
    assert_close(_core.rms_norm(x, w, 1e-5), ref.rms_norm(x, w, 1e-5)[0], RTOL, f"{isa} rms_norm")
    y, s = _core.rms_norm(x, w, 1e-5, r)
    assert_close(y, ref.rms_norm(x, w, 1e-5, r)[0], RTOL, f"{isa} rms_norm + residual")


@pytest.mark.parametrize("shape", [(1, 19, 3, 24), (2, 5, 2, 64)])
def test_rotary_every_isa(isa, shape):
    rng = np.random.default_rng()
    x = rng.standard_normal(shape).astype(np.float32)
    pos = (rng.integers(0, 10**6) + np.arange(shape[1]))[None].repeat(shape[0], 0)
    assert_close(_core.apply_rotary(x, pos), ref.rotary(x, pos), RTOL, f"{isa} rotary")


def test_swiglu_every_isa(isa):
    rng = np.random.default_rng()
    g = (rng.standard_normal(1003) * 6).astype(np.float32)
    u = rng.standard_normal(1003).astype(np.float32)
    assert_close(_core.swiglu(g, u), ref.swiglu(g, u), RTOL, f"{isa} swiglu")
    # the whole range of gate values, including where exp under/overflows; specials
    g = np.linspace(-120, 120, 2401).astype(np.float32)
    np.testing.assert_allclose(_core.swiglu(g, np.ones_like(g)), ref.swiglu(g, np.ones_like(g)),
                               rtol=RTOL, atol=1e-30)
    y = _core.swiglu(np.float32([np.nan, 1.0, np.inf, -np.inf]), np.float32([1.0, np.nan, 1.0, 0.0]))
    assert np.isnan(y[0]) and np.isnan(y[1]) and y[2] == np.inf and np.isnan(y[3])


def test_swiglu_bwd_every_isa(isa):
    rng = np.random.default_rng()
    g = (rng.standard_normal(1003) * 6).astype(np.float32)
    u, dy = rng.standard_normal((2, 1003)).astype(np.float32)
    dg, du = _core.swiglu_bwd(g, u, dy)
    want = swiglu_bwd_ref(g, u, dy)
    assert_close(dg, want["dgate"], RTOL, f"{isa} swiglu_bwd dgate")
    assert_close(du, want["dup"], RTOL, f"{isa} swiglu_bwd dup")
    # every gate value where exp under/overflows, pointwise. dgate = s (1 + g (1 - s)) has a
    # root near g = -1.28 where its two terms cancel, so its bound is relative to their sizes;
    # dup = silu(g) with silu's absolute floor
    g = np.linspace(-120, 120, 2401).astype(np.float32)
    one = np.ones_like(g)
    dg, du = _core.swiglu_bwd(g, one, one)
    want = swiglu_bwd_ref(g, one, one)
    s = 1 / (1 + np.exp(-g.astype(np.float64)))
    assert np.all(np.abs(dg - want["dgate"]) <= RTOL * s * (1 + np.abs(g) * (1 - s)) + 1e-30)
    np.testing.assert_allclose(du, want["dup"], rtol=RTOL, atol=1e-30)
    # NaN anywhere in an element's inputs reaches both of its gradients (dup does not read up)
    dg, du = _core.swiglu_bwd(np.float32([np.nan, 1.0, 1.0]), np.float32([1.0, np.nan, 1.0]),
                              np.float32([1.0, 1.0, np.nan]))
    assert np.isnan(dg).all() and np.isnan(du[[0, 2]]).all() and np.isfinite(du[1])


@pytest.mark.parametrize("width", [2, 3, 4])
def test_conv1d_every_isa(isa, width):
    rng = np.random.default_rng()
    x = rng.standard_normal((2, 21, 67)).astype(np.float32) * 4
    w = rng.standard_normal((21, width)).astype(np.float32)
    b = rng.standard_normal(21).astype(np.float32)
    s = rng.standard_normal((2, 21, width - 1)).astype(np.float32)
    for act in (None, "silu"):
        got = _core.causal_conv1d(x=x, weight=w, bias=b, activation=act, initial_states=s)
        want, _ = ref.causal_conv1d(x, w, b, act, s)
        assert_close(got, want, RTOL, f"{isa} conv width {width} activation {act}")


@pytest.mark.parametrize("value,expect_warning", [("vec", False), ("scalar", False),
                                                  ("bogus", True), ("AVX2", True)])
def test_show_config_names_the_cpu_kernels(value, expect_warning):
    """show_config / config_dict name the CPU kernels' instruction set; a SAMBA_EXT_ISA value
    the C side does not know (it silently ran the best kernels) warns at import."""
    code = ("import warnings, json\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    import samba_ext\n"
            "from samba_ext._info import config_dict\n"
            "print(json.dumps([config_dict()['cpu_kernels'], [str(x.message) for x in w]]))\n")
    env = dict(os.environ, SAMBA_EXT_ISA=value)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    isa, warned = json.loads(out)
    if expect_warning:
        assert isa != value and any("SAMBA_EXT_ISA" in m for m in warned), (isa, warned)
    else:
        assert isa == value and not warned, (isa, warned)


def test_isa_levels_are_the_values_the_c_side_reads():
    """samba_ext._info.ISA_LEVELS (the warning's list) is what csrc/simd.c's env_cap compares
    SAMBA_EXT_ISA with, plus its default avx512, so the two cannot drift apart."""
    from samba_ext._info import ISA_LEVELS

    src = Path(__file__).resolve().parents[1] / "csrc" / "simd.c"
    if not src.exists():
        pytest.skip("csrc/ is not next to the tests (installed package)")
    body = src.read_text().split("env_cap(void)", 1)[1].split("\n}\n", 1)[0]
    read = set(re.findall(r'strcmp\(e, "([^"]+)"\)', body))
    assert read and read | {"avx512"} == set(ISA_LEVELS), (read, ISA_LEVELS)
