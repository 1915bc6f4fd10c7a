"""benchmarks/sass_loops.py on cuobjdump-like text (no toolkit needed)."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import sass_compare as sc  # noqa: E402
import sass_loops as sl  # noqa: E402


def _listing(funcs: dict[str, list[str]]) -> str:
    lines = ["", "\tcode for sm_90"]
    for name, instrs in funcs.items():
        lines.append(f"\t\tFunction : {name}")
        for i, s in enumerate(instrs):
            lines.append(f"        /*{i * 16:04x}*/                   {s} ;   /* 0x000000ff */")
        lines.append("\t\t..........")
    return "\n".join(lines)


CODE = ["MOV R1, RZ",                  # 0x00
        "FFMA R2, R2, R3, R4",         # 0x10  outer loop start
        "MUFU.EX2 R5, R2",             # 0x20  inner loop start
        "FMUL R5, R5, R6",             # 0x30
        "@P0 BRA 0x20",                # 0x40  inner back-branch
        "LDS R7, [R8]",                # 0x50
        "@!P1 BRA 0x10",               # 0x60  outer back-branch
        "BRA 0x80",                    # 0x70  forward branch: no loop
        "EXIT"]                        # 0x80


def test_loops_innermost_first_with_counts():
    kernels = sc.parse_sass(_listing({"_Z5otherv": ["EXIT"], "_Z6kernelv": CODE}))
    name, code = sl.kernel_code(kernels, "kernel")
    assert name == "_Z6kernelv" and len(code) == len(CODE)
    assert sl.loops(code) == [(2, 4), (1, 6)]  # instruction indices (addresses / 16)
    assert [sl.opcode(i) for i in code[2:5]] == ["MUFU", "FMUL", "BRA"]


def test_missing_kernel_is_an_error():
    with pytest.raises(SystemExit, match="nope"):
        sl.kernel_code(sc.parse_sass(_listing({"_Z6kernelv": CODE})), "nope")
