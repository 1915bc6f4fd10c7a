"""Build and runtime information: show_config(), CUDA availability (thread control lives in
samba_ext/threads.py; set_num_threads / get_num_threads are re-exported here)."""
from __future__ import annotations

import os
import platform
import sys
from typing import Any

from . import _core
from .threads import blas_info, get_num_threads, set_num_threads

__all__ = ["set_num_threads", "get_num_threads", "cuda_available", "config_dict", "show_config"]


def _cuda_module() -> tuple[Any, str]:
    from .cuda.runtime import _import_cuda, _not_built

    try:
        mod = _import_cuda()
    except ImportError as e:
        if _not_built(e):
            return None, "built without CUDA (no CUDA toolkit at build time, or SAMBA_EXT_CUDA=0)"
        return None, f"the CUDA extension failed to load: {e}"
    return mod, ""


def cuda_available() -> bool:
    """True when the CUDA extension is built and a usable GPU is present."""
    mod, _ = _cuda_module()
    if mod is None:
        return False
    try:
        return int(mod.device_count()) > 0
    except Exception:
        return False


#: the values of SAMBA_EXT_ISA that cap the CPU kernels (csrc/simd.c; any other runs the best)
ISA_LEVELS = ("avx512", "avx2", "vec", "scalar")


def isa_note(value: str | None) -> str:
    """How SAMBA_EXT_ISA=``value`` (None: unset) chose the CPU kernels, in words."""
    if not value:
        return "the best this CPU has; SAMBA_EXT_ISA unset"
    if value in ISA_LEVELS:
        return f"SAMBA_EXT_ISA={value}, or less where the CPU lacks it"
    return (f"SAMBA_EXT_ISA={value!r} is not one of {', '.join(ISA_LEVELS)}, so it is ignored: "
            "the best this CPU has")


def config_dict() -> dict:
    """Everything show_config() prints, as a dict (also stored in results JSON)."""
    from . import __version__

    info = dict(_core.build_info())
    d: dict[str, Any] = {
        "version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "compiler": info.get("compiler"),
        "openmp": bool(info.get("openmp")),
        "threads": get_num_threads(),
        "blas": blas_info(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "numpy_build": info.get("numpy_build"),
        "cpu_kernels": info.get("cpu_kernels"),
        "SAMBA_EXT_ISA": os.environ.get("SAMBA_EXT_ISA"),
    }
    mod, why = _cuda_module()
    if mod is None:
        d["cuda"] = {"built": False, "reason": why}
    else:
        c = {"built": True}
        try:
            c.update(dict(mod.build_info()))
        except Exception as e:  # pragma: no cover - depends on the machine
            c["error"] = str(e)
        try:
            c["device_count"] = int(mod.device_count())
        except Exception as e:
            c["device_count"] = 0
            c["device_error"] = str(e)
        d["cuda"] = c
    return d


def show_config() -> None:
    """Print the version, compiler, OpenMP and threads, and what CUDA support was built."""
    d = config_dict()
    print(f"samba_ext {d['version']}  (Python {d['python']}, {d['platform']})")
    print(f"  C compiler : {d['compiler']}")
    print(f"  OpenMP     : {'yes' if d['openmp'] else 'no'}, {d['threads']} threads"
          f" (OMP_NUM_THREADS={d['OMP_NUM_THREADS']})")
    print(f"  NumPy      : built against {d['numpy_build']}")
    print(f"  CPU kernels: {d['cpu_kernels']} ({isa_note(d['SAMBA_EXT_ISA'])})")
    b = d["blas"]
    print(f"  BLAS       : {b['threads'] if b['threads'] is not None else '?'} threads "
          f"(controlled through {b['control']})")
    c = d["cuda"]
    if not c["built"]:
        print(f"  CUDA       : not built ({c['reason']})")
    else:
        print(f"  CUDA       : built with nvcc {c.get('nvcc')}, archs {c.get('archs')}, "
              f"cuBLAS {c.get('cublas', 'linked')}")
        print(f"  GPUs       : {c.get('device_count')}"
              + (f" ({c['device_error']})" if c.get("device_error") else ""))
