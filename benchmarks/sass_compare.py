"""Compare the machine code of two builds of the CUDA kernels, kernel by kernel, without a GPU.

    python3 benchmarks/sass_compare.py OLD.cubin NEW.cubin [--cuobjdump PATH]

A cubin comes from ``nvcc -cubin`` (benchmarks/cuda_static_check.sh leaves one per source in its
OUT folder); cuobjdump comes with the CUDA toolkit or the nvidia-cuda-cuobjdump wheel. For every
kernel of NEW the report says whether OLD has a kernel with the same instructions ("identical"),
the same instructions up to register numbering and immediate / constant-bank offsets ("same up to
registers"), or none ("changed"); kernels are matched by their instruction lists, not by name, so a
renamed template or a moved namespace still matches. Use it to show that a refactoring left the
kernels that a GPU run tested unchanged. The exit status is 1 when a kernel of NEW changed.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys

# "/*0a70*/  FFMA R1, R2, R3, R4 ;" - the address has 4 or more hex digits (5 beyond 64 KiB)
_INSTR = re.compile(r"^\s+/\*[0-9a-f]{4,}\*/\s+(.*?)\s*;")
_FUNC = re.compile(r"Function : (\S+)")


def parse_sass(text: str) -> dict[str, list[str]]:
    """cuobjdump -sass output -> {kernel name: [instruction text, ...]}."""
    out: dict[str, list[str]] = {}
    cur = None
    for line in text.splitlines():
        m = _FUNC.search(line)
        if m:
            cur = m.group(1)
            out[cur] = []
            continue
        m = _INSTR.match(line)
        if m and cur is not None:
            out[cur].append(m.group(1))
    return out


def normalize(instrs: list[str]) -> list[str]:
    """The instructions with register numbers, predicates and hex numbers (offsets, branch
    targets, constant-bank addresses) replaced by placeholders."""
    out = []
    for s in instrs:
        s = re.sub(r"0x[0-9a-f]+", "#", s)
        s = re.sub(r"\bU?R\d+\b", "R", s)
        s = re.sub(r"\bU?P\d\b", "P", s)
        out.append(s)
    return out


def compare(old: dict[str, list[str]], new: dict[str, list[str]]) -> list[tuple[str, str]]:
    """[(kernel of new, "identical" | "same up to registers" | "changed")]."""
    exact = {tuple(v) for v in old.values()}
    loose = {tuple(normalize(v)) for v in old.values()}
    res = []
    for name, ins in new.items():
        if tuple(ins) in exact:
            res.append((name, "identical"))
        elif tuple(normalize(ins)) in loose:
            res.append((name, "same up to registers"))
        else:
            res.append((name, "changed"))
    return res


def sass_of(cubin: str, cuobjdump: str) -> dict[str, list[str]]:
    text = subprocess.run([cuobjdump, "-sass", cubin], check=True, capture_output=True,
                          text=True).stdout
    return parse_sass(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--cuobjdump", default=shutil.which("cuobjdump") or "cuobjdump")
    args = ap.parse_args(argv)
    res = compare(sass_of(args.old, args.cuobjdump), sass_of(args.new, args.cuobjdump))
    for name, verdict in res:
        print(f"{verdict:22s} {name}")
    counts = {v: sum(r == v for _, r in res) for v in ("identical", "same up to registers", "changed")}
    print(", ".join(f"{n} {v}" for v, n in counts.items()), f"(of {len(res)} kernels)")
    return 1 if counts["changed"] else 0


if __name__ == "__main__":
    sys.exit(main())
