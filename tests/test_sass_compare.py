"""benchmarks/sass_compare.py on cuobjdump-like text (no toolkit needed)."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import sass_compare as sc  # noqa: E402


def _listing(funcs: dict[str, list[str]]) -> str:
    lines = ["", "\tcode for sm_90a"]
    for name, instrs in funcs.items():
        lines.append(f"\t\tFunction : {name}")
        lines.append("\t.headerflags\t@\"EF_CUDA_SM90\"")
        for i, s in enumerate(instrs):
            # 5 hex digits past 64 KiB, as cuobjdump prints them
            lines.append(f"        /*{i * 16:04x}*/                   {s} ;   /* 0x000000ff */")
        lines.append("\t\t..........")
    return "\n".join(lines)


def test_parse_reads_every_instruction_past_64_kib():
    long_kernel = [f"FFMA R{i % 200}, R1, R2, R3" for i in range(5000)]  # 80,000 bytes
    got = sc.parse_sass(_listing({"k_long": long_kernel, "k_short": ["EXIT"]}))
    assert got["k_long"] == long_kernel and got["k_short"] == ["EXIT"]


def test_verdicts():
    old = {"a_old_name": ["IMAD R1, R2, R3, RZ", "EXIT"],
           "b": ["LDG.E R4, desc[UR4][R2.64]", "FADD R5, R4, c[0x0][0x210]", "EXIT"]}
    new = {"a_new_name": ["IMAD R1, R2, R3, RZ", "EXIT"],             # renamed, same code
           "b": ["LDG.E R8, desc[UR6][R2.64]", "FADD R9, R8, c[0x0][0x218]", "EXIT"],
           "c": ["FMUL R1, R2, R3", "EXIT"]}                          # new instruction
    got = dict(sc.compare(sc.parse_sass(_listing(old)), sc.parse_sass(_listing(new))))
    assert got == {"a_new_name": "identical", "b": "same up to registers", "c": "changed"}
