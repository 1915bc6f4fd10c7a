"""The loops of one CUDA kernel's machine code, without a GPU: for every backward branch, the
instruction range it closes, its static instruction count and its commonest opcodes.

    python3 benchmarks/sass_loops.py FILE.cubin KERNEL_SUBSTRING [--cuobjdump PATH] [--top N]

A cubin comes from ``nvcc -cubin`` (benchmarks/cuda_static_check.sh leaves one per source in its
OUT folder). The first kernel whose mangled name contains KERNEL_SUBSTRING is read. Loops are
listed innermost first (shortest range first); a loop's count includes the loops inside it once,
so a dynamic count per iteration needs their trip counts (the kernel's source says them).
"""
from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys

_LINE = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_FUNC = re.compile(r"Function : (\S+)")
_TARGET = re.compile(r"\bBRA\b.*?0x([0-9a-f]+)")


def kernel_code(text: str, needle: str) -> tuple[str, list[tuple[int, str]]]:
    """cuobjdump -sass text -> (name, [(address, instruction)]) of the first kernel matching."""
    name, code = None, []
    for line in text.splitlines():
        m = _FUNC.search(line)
        if m:
            if code:
                break
            name = m.group(1) if needle in m.group(1) else None
            continue
        if name:
            m = _LINE.match(line)
            if m:
                code.append((int(m.group(1), 16), m.group(2)))
    if not code:
        raise SystemExit(f"no kernel whose name contains {needle!r}")
    return name, code


def opcode(instr: str) -> str:
    words = instr.split()
    op = words[1] if words[0].startswith("@") else words[0]
    return op.split(".")[0]


def loops(code: list[tuple[int, str]]) -> list[tuple[int, int]]:
    """(first, last) addresses of each backward branch's range, shortest first."""
    out = set()
    for addr, instr in code:
        m = _TARGET.search(instr)
        if m and int(m.group(1), 16) <= addr:
            out.add((int(m.group(1), 16), addr))
    return sorted(out, key=lambda r: r[1] - r[0])


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cubin")
    ap.add_argument("kernel")
    ap.add_argument("--cuobjdump", default=shutil.which("cuobjdump") or "cuobjdump")
    ap.add_argument("--top", type=int, default=8)
    a = ap.parse_args(argv)
    text = subprocess.run([a.cuobjdump, "-sass", a.cubin], check=True, capture_output=True,
                          text=True).stdout
    name, code = kernel_code(text, a.kernel)
    print(f"{name}: {len(code)} instructions")
    for lo, hi in loops(code):
        ops = collections.Counter(opcode(i) for addr, i in code if lo <= addr <= hi)
        n = sum(ops.values())
        common = ", ".join(f"{k} {v}" for k, v in ops.most_common(a.top))
        print(f"loop {lo:#07x}..{hi:#07x}: {n} instructions ({common})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
