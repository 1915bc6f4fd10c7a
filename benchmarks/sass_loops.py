"""The loops of one CUDA kernel's machine code, without a GPU: for every backward branch, the
instruction range it closes, its static instruction count and its commonest opcodes.

    python3 benchmarks/sass_loops.py FILE.cubin KERNEL_SUBSTRING [--cuobjdump PATH] [--top N]

A cubin comes from ``nvcc -cubin`` (benchmarks/cuda_static_check.sh leaves one per source in its
OUT folder); it is read with sass_compare.py's parser. The first kernel whose mangled name
contains KERNEL_SUBSTRING is read. Loops are listed innermost first (shortest range first); a
loop's count includes the loops inside it once, so a dynamic count per iteration needs their trip
counts (the kernel's source says them).
"""
from __future__ import annotations

import argparse
import collections
import re
import shutil
import sys

from sass_compare import sass_of

_TARGET = re.compile(r"\bBRA\b.*?0x([0-9a-f]+)")
_BYTES = 16  # every sm_70+ instruction is 16 bytes: instruction i sits at address 16 i


def kernel_code(kernels: dict[str, list[str]], needle: str) -> tuple[str, list[str]]:
    """The first kernel of sass_compare.parse_sass's result whose name contains needle."""
    for name, code in kernels.items():
        if needle in name:
            return name, code
    raise SystemExit(f"no kernel whose name contains {needle!r}")


def opcode(instr: str) -> str:
    words = instr.split()
    op = words[1] if words[0].startswith("@") else words[0]
    return op.split(".")[0]


def loops(code: list[str]) -> list[tuple[int, int]]:
    """(first, last) instruction indices of each backward branch's range, shortest first."""
    out = set()
    for i, instr in enumerate(code):
        m = _TARGET.search(instr)
        if m and int(m.group(1), 16) // _BYTES <= i:
            out.add((int(m.group(1), 16) // _BYTES, i))
    return sorted(out, key=lambda r: r[1] - r[0])


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cubin")
    ap.add_argument("kernel")
    ap.add_argument("--cuobjdump", default=shutil.which("cuobjdump") or "cuobjdump")
    ap.add_argument("--top", type=int, default=8)
    a = ap.parse_args(argv)
    name, code = kernel_code(sass_of(a.cubin, a.cuobjdump), a.kernel)
    print(f"{name}: {len(code)} instructions")
    for lo, hi in loops(code):
        ops = collections.Counter(opcode(i) for i in code[lo:hi + 1])
        common = ", ".join(f"{k} {v}" for k, v in ops.most_common(a.top))
        print(f"loop {lo * _BYTES:#07x}..{hi * _BYTES:#07x}: {hi - lo + 1} instructions ({common})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
