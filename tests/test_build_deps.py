"""setup.py's per-source header dependencies (``local_includes`` / ``source_deps``): an object is
rebuilt when its source or a header it includes, directly or through other headers, is newer;
where an include cannot be found, every header counts. The functions are taken from setup.py's
text (importing setup.py would run ``setup()``)."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "setup.py"
pytestmark = pytest.mark.skipif(not SETUP.exists(), reason="needs the source tree")


def _load(csrc: Path) -> dict:
    tree = ast.parse(SETUP.read_text())
    keep = [n for n in tree.body
            if (isinstance(n, ast.FunctionDef) and n.name in ("local_includes", "source_deps"))
            or (isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "_QUOTED_INCLUDE"
                                                  for t in n.targets))]
    assert len(keep) == 3, "setup.py no longer defines local_includes / source_deps / _QUOTED_INCLUDE"
    ns = {"re": re, "Path": Path, "CSRC": csrc}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(SETUP), "exec"), ns)
    return ns


def test_every_source_resolves_its_includes():
    """No source falls back to 'every header' (all its quoted includes are found)."""
    ns = _load(ROOT / "csrc")
    srcs = [p for p in (ROOT / "csrc").rglob("*") if p.suffix in (".c", ".cu")]
    assert srcs
    for src in srcs:
        assert ns["local_includes"](str(src), ROOT / "csrc") is not None, src


def test_scan_backward_depends_on_its_headers_only():
    ns = _load(ROOT / "csrc")
    deps = {Path(d).name for d in ns["local_includes"](str(ROOT / "csrc/cuda/scan_bwd.cu"),
                                                       ROOT / "csrc")}
    assert {"scan_tile_bwd.cuh", "scan_tile2.cuh", "scan_tile.cuh", "scan_bwd_kernels.cuh",
            "scan_common.cuh", "cu_common.cuh", "vecio.cuh", "samba_cuda_bwd_scan.h"} <= deps
    assert "attention_impl.cuh" not in deps and "wgmma_tile.cuh" not in deps


def test_transitive_cycles_and_missing(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.c").write_text('#include <stdio.h>\n#include "b.h"\nint x;\n')
    (tmp_path / "b.h").write_text(' #  include "sub/c.h"\n#include "a.h"\n')
    (tmp_path / "a.h").write_text('#include "b.h"  /* a cycle */\n')
    (tmp_path / "sub" / "c.h").write_text('#include "../top.h"\n')
    (tmp_path / "top.h").write_text("\n")
    (tmp_path / "d.c").write_text('#include "nowhere.h"\n')
    ns = _load(tmp_path)
    got = ns["local_includes"](str(tmp_path / "a.c"), tmp_path)
    assert {Path(p).name for p in got} == {"b.h", "a.h", "c.h", "top.h"}
    assert ns["local_includes"](str(tmp_path / "d.c"), tmp_path) is None
    every = ["ALL"]
    assert ns["source_deps"](str(tmp_path / "d.c"), every) == [str(tmp_path / "d.c"), "ALL"]


@pytest.mark.skipif(os.name != "posix", reason="the nvcc stand-in is a shell script")
def test_recompiled_cuda_object_relinks(tmp_path):
    """BuildExt._compile_cu makes the CUDA objects dependencies of the _cuda extension, so
    build_ext's relink test (any of sources + depends newer than the library) relinks after a
    .cu file alone was recompiled; before, only the .c glue sources and headers counted and an
    in-place rebuild kept the old library. nvcc is a stand-in script that writes its -o file."""
    pytest.importorskip("setuptools")
    from setuptools.command.build_ext import build_ext
    try:
        from setuptools._distutils.dep_util import newer_group
    except ImportError:  # older setuptools
        from distutils.dep_util import newer_group  # type: ignore[no-redef]

    tree = ast.parse(SETUP.read_text())
    names = ("local_includes", "source_deps", "up_to_date", "log", "sm90a_gencode")
    keep = [n for n in tree.body
            if (isinstance(n, (ast.FunctionDef, ast.ClassDef))
                and n.name in names + ("BuildExt",))
            or (isinstance(n, ast.Assign) and any(getattr(t, "id", "") in
                                                  ("_QUOTED_INCLUDE", "SM90A_SOURCES")
                                                  for t in n.targets))]
    ns = {"re": re, "Path": Path, "CSRC": tmp_path, "build_ext": build_ext, "os": os,
          "subprocess": subprocess, "sys": sys}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(SETUP), "exec"), ns)

    nvcc = tmp_path / "cuda" / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text('#!/bin/sh\nwhile [ "$1" != "-o" ]; do shift; done\necho obj > "$2"\n')
    nvcc.chmod(0o755)
    src = tmp_path / "k.cu"
    src.write_text("// kernel\n")
    lib = tmp_path / "_cuda.so"

    cmd = ns["BuildExt"].__new__(ns["BuildExt"])
    cmd._reuse, cmd.force, cmd.build_temp = True, False, str(tmp_path / "obj")

    def compile_once():
        ext = types.SimpleNamespace(_samba_cu_sources=[str(src)], depends=[], extra_objects=[])
        cmd._compile_cu(ext, {"home": tmp_path / "cuda", "archs": ["90"]})
        return ext

    ext = compile_once()
    obj = tmp_path / "obj" / "cuda" / "k.o"
    assert obj.exists() and ext.extra_objects == [str(obj)] and str(obj) in ext.depends
    now = time.time()  # the history: .cu, object, link, then the .cu edited
    os.utime(src, (now - 300, now - 300))
    os.utime(obj, (now - 200, now - 200))
    lib.write_text("linked")
    os.utime(lib, (now - 100, now - 100))
    ext = compile_once()  # nothing new: the object is reused and nothing relinks
    assert obj.stat().st_mtime == now - 200 and not newer_group(ext.depends, str(lib), "newer")
    os.utime(src, (now - 50, now - 50))
    ext = compile_once()  # recompiles k.o, now newer than the library
    assert str(obj) in ext.depends and newer_group(ext.depends, str(lib), "newer")
