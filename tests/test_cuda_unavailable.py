"""CUDA availability paths that run on any machine (no GPU needed).

* importing samba_ext never fails, with or without the CUDA extension or a GPU;
* a call that asks for CUDA raises CudaUnavailableError saying why: "built without CUDA",
  "no device" or "driver too old" (the last two are classified from cudaGetDeviceCount's
  error code and the driver version, so they are tested with the real module here where
  possible, and with injected results otherwise).
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import CUDA_SKIP

import samba_ext
from samba_ext.cuda import runtime as cuda_runtime
from samba_ext.errors import CudaUnavailableError


@pytest.fixture
def fresh_gpu(monkeypatch):
    """samba_ext.cuda.runtime with its cached CUDA module cleared (restored afterwards)."""
    monkeypatch.setattr(cuda_runtime, "_cuda_mod", None)
    return cuda_runtime


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120)


def test_import_without_cuda_extension_never_fails():
    # None in sys.modules makes `from . import _cuda` raise ImportError, as on a CPU build.
    r = _run("""
        import sys
        sys.modules["samba_ext._cuda"] = None
        import numpy as np
        import samba_ext
        from samba_ext.errors import CudaUnavailableError
        assert samba_ext.cuda_available() is False
        samba_ext.show_config()
        y = samba_ext.swiglu(np.ones(4, np.float32), np.ones(4, np.float32))
        assert y.shape == (4,)
        try:
            samba_ext.swiglu(np.ones(4, np.float32), np.ones(4, np.float32), device="cuda")
        except CudaUnavailableError as e:
            print("RAISED", e)
        """)
    assert r.returncode == 0, r.stderr
    assert "RAISED CUDA unavailable" in r.stdout
    assert "CUDA" in r.stdout


def test_built_without_cuda_message(fresh_gpu, monkeypatch):
    def no_module():
        raise ImportError("No module named 'samba_ext._cuda'")

    monkeypatch.setattr(fresh_gpu, "_import_cuda", no_module)
    with pytest.raises(CudaUnavailableError, match="built without CUDA"):
        samba_ext.rms_norm(np.ones((2, 4), np.float32), np.ones(4, np.float32), device="cuda")
    assert fresh_gpu.is_available() is False


def test_extension_fails_to_load_message(fresh_gpu, monkeypatch):
    def broken():
        raise ImportError("libcudart.so.13: cannot open shared object file")

    monkeypatch.setattr(fresh_gpu, "_import_cuda", broken)
    with pytest.raises(CudaUnavailableError, match="failed to load.*libcudart"):
        samba_ext.cuda.to_device(np.ones(3))


class _FakeCuda:
    """Stands in for the _cuda module with a given cudaGetDeviceCount outcome."""

    def __init__(self, count: int, msg: str, runtime: int, driver: int):
        self._r = (count, msg)
        self._info = {"runtime_version": runtime, "driver_version": driver}

    def device_status(self):
        return self._r

    def build_info(self):
        return dict(self._info)


@pytest.mark.parametrize("count,runtime,driver,expect", [
    (-35, 13000, 12040, "driver too old: the NVIDIA driver supports CUDA 12.4 but samba_ext "
                        "was built with CUDA 13.0"),
    (-35, 13000, 0, "no device: no NVIDIA driver is installed"),
    (-100, 13000, 13000, "no device: the CUDA driver sees no GPU"),
    (0, 13000, 13000, "no device: the CUDA driver sees no GPU"),
    (-34, 13000, 0, "no device: only the CUDA stub"),
    (-999, 13000, 13000, "no device: CUDA initialisation failed (boom)"),
])
def test_unavailable_reasons(fresh_gpu, monkeypatch, count, runtime, driver, expect):
    monkeypatch.setattr(fresh_gpu, "_import_cuda", lambda: _FakeCuda(count, "boom", runtime,
                                                                     driver))
    with pytest.raises(CudaUnavailableError) as ei:
        samba_ext.swiglu(np.ones(3, np.float32), np.ones(3, np.float32), device="cuda")
    assert expect in str(ei.value)
    assert isinstance(ei.value, RuntimeError)


@pytest.mark.skipif(CUDA_SKIP is None, reason="a CUDA device is present")
def test_real_module_without_device_raises_clear_error(fresh_gpu):
    # On this machine: either no _cuda build or no driver / GPU.
    with pytest.raises(CudaUnavailableError, match="built without CUDA|no device|driver too old|"
                                                   "failed to load"):
        samba_ext.selective_scan(np.ones((1, 2, 3), np.float32), np.ones((1, 2, 3), np.float32),
                                 -np.ones((2, 4), np.float32), np.ones((1, 4, 3), np.float32),
                                 np.ones((1, 4, 3), np.float32), device="cuda")
    with pytest.raises(CudaUnavailableError):
        samba_ext.DeviceArray.empty((2, 2))


def test_device_argument_checked():
    with pytest.raises(ValueError, match="device"):
        samba_ext.swiglu(np.ones(2), np.ones(2), device="gpu")


def test_device_array_class_importable_without_gpu():
    from samba_ext import DeviceArray

    assert DeviceArray.__name__ == "DeviceArray"
    assert hasattr(DeviceArray, "__dlpack__") and hasattr(DeviceArray, "__cuda_array_interface__")


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int32])
def test_host_upload_keeps_0d_and_strided_shapes(dtype):
    """The host side of a device upload keeps the array's shape: np.ascontiguousarray alone
    turns a 0-d array into shape (1,) (found by swiglu(shape ()) with device="cuda" on the H200)."""
    from samba_ext.cuda.layout import host_contig

    a = np.array(3, dtype=dtype)
    for target in (None, np.float32, np.int64):
        h = host_contig(a, target)
        assert h.shape == () and h.flags.c_contiguous and h == 3
    b = np.arange(24, dtype=dtype).reshape(4, 6)[:, ::2]
    h = host_contig(b, np.float32)
    assert h.shape == (4, 3) and h.flags.c_contiguous and np.array_equal(h, b)


def test_deprecated_gpu_alias_still_works():
    """samba_ext._gpu (the former single CUDA module) stays importable for one release, with
    a DeprecationWarning, and names the same objects as samba_ext.cuda."""
    import importlib
    import warnings

    import samba_ext.cuda

    sys.modules.pop("samba_ext._gpu", None)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        gpu = importlib.import_module("samba_ext._gpu")
    assert any(issubclass(x.category, DeprecationWarning) for x in w)
    for name in ("DeviceArray", "to_device", "matmul", "linear", "selective_scan",
                 "memory_stats", "is_available", "set_poison"):
        assert getattr(gpu, name) is getattr(samba_ext.cuda, name)
    assert samba_ext.DeviceArray is samba_ext.cuda.DeviceArray
    assert issubclass(gpu.CudaError, RuntimeError)


def test_cpu_only_build_says_built_without_cuda():
    """Without the _cuda extension the reason is "built without CUDA", not "failed to load"
    (a relative import of a missing extension used to be reported as a load failure)."""
    import importlib.util

    if importlib.util.find_spec("samba_ext._cuda") is not None:
        pytest.skip("the CUDA extension is built here")
    with pytest.raises(CudaUnavailableError, match="built without CUDA"):
        samba_ext.swiglu(np.ones(2, np.float32), np.ones(2, np.float32), device="cuda")
    assert "built without CUDA" in samba_ext._info.config_dict()["cuda"]["reason"]
