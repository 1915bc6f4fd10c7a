"""Thread control (samba_ext/threads.py): the kernels' threads and NumPy's BLAS pool.

The BLAS pool is found through threadpoolctl when it is installed, else through the
fallback prober; both must find the pool NumPy uses here and set / read it consistently.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import samba_ext
from samba_ext import threads


def test_kernel_threads_roundtrip():
    before = samba_ext.get_num_threads()
    try:
        samba_ext.set_num_threads(1)
        assert samba_ext.get_num_threads() == 1
        threads.set_num_threads(np.int64(2))
        assert threads.get_num_threads() == 2
    finally:
        samba_ext.set_num_threads(before)


@pytest.mark.parametrize("bad,exc", [(True, TypeError), (2.5, TypeError), ("2", TypeError),
                                     (0, ValueError)])
def test_kernel_threads_bad_values(bad, exc):
    with pytest.raises(exc, match="n"):
        samba_ext.set_num_threads(bad)


def _roundtrip(controls) -> None:
    fs, fg = controls
    before = fg()
    try:
        fs(1)
        assert fg() == 1
    finally:
        fs(before)
    assert fg() == before


def test_blas_controls_roundtrip():
    c = threads.blas_controls()
    if c is None:
        pytest.skip("NumPy's BLAS here has no thread control")
    _roundtrip(c)
    assert threads.blas_controls() is c  # found once
    info = threads.blas_info()
    assert info["control"] in ("threadpoolctl", "loaded-library symbols")
    assert info["threads"] == c[1]()


def test_threadpoolctl_and_fallback_prober_agree():
    """Both ways find the same pool: a thread count set through one is read by the other."""
    pytest.importorskip("threadpoolctl")
    a = threads._from_threadpoolctl()
    b = threads._from_loaded_libraries()
    if a is None or b is None:
        pytest.skip("no controllable BLAS here")
    before = a[1]()
    try:
        a[0](1)
        assert b[1]() == 1
        b[0](2)
        assert a[1]() == 2
    finally:
        a[0](before)


def test_fallback_without_threadpoolctl():
    """Without threadpoolctl (an optional dependency) the prober is used and works."""
    code = textwrap.dedent("""
        import sys
        sys.modules["threadpoolctl"] = None  # import fails as if not installed
        from samba_ext import threads
        c = threads.blas_controls()
        print(threads.blas_info()["control"])
        if c is not None:
            n = c[1]()
            c[0](1)
            assert c[1]() == 1
            c[0](n)
        """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() in ("loaded-library symbols", "none")


def test_set_blas_threads_rejects_bad_values():
    with pytest.raises(ValueError):
        threads.set_blas_threads(0)
    with pytest.raises(ValueError):
        threads.set_blas_threads(True)


def test_show_config_reports_blas(capsys):
    samba_ext.show_config()
    assert "BLAS" in capsys.readouterr().out


def test_set_num_threads_out_of_range_is_a_value_error():
    """A count that does not fit a C long was an OverflowError from the C API."""
    for n in (0, 4097, 10 ** 30, -10 ** 30):
        with pytest.raises(ValueError, match="1 <= n <= 4096"):
            samba_ext.set_num_threads(n)
