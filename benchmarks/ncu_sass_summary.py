"""Summary of one kernel's per-instruction Nsight Compute data, without a GPU.

Input: the CSV that ``ncu -i REPORT.ncu-rep --page source --csv --print-source sass`` writes for
a report taken with ``--set full`` (or at least the SourceCounters section): per profiled kernel
a line naming it, a header line, then one row per SASS instruction with its address, its text,
its warp-stall samples and how often it was executed. A report of several kernels (a call that
launches a preprocessing, a main and a store kernel) gives one such block per kernel, some of
them repeated, each with its own header (the columns differ between kernels): each kernel is
summarised once, on its own, through its own header.

Output, per kernel (or only those whose name contains --kernel): the kernel, the share of each
stall reason over its samples, the executed instructions by opcode (per unit of work when --per
gives the number of units, e.g. warps x tiles), and the instructions with the most stall
samples. This is how ``benchmarks/results/gpu_attention_notes.md``
found that the wgmma prefill issued 464 instructions per warp and key tile, a fifth of them
address arithmetic.

Usage: python3 benchmarks/ncu_sass_summary.py SASS.csv [--kernel NAME] [--per N] [--top K]
"""
from __future__ import annotations

import argparse
import collections
import csv
import sys
from dataclasses import dataclass, field

SAMPLES = "Warp Stall Sampling (All Samples)"
EXECUTED = "Instructions Executed"


@dataclass
class Instr:
    address: str
    text: str
    opcode: str  # the mnemonic without its guard predicate or modifiers ("HGMMA", "MUFU")
    executed: int
    samples: int
    stalls: dict[str, int] = field(default_factory=dict)  # reason -> samples


def opcode_of(text: str) -> str:
    """The mnemonic of a SASS line: "@!P0 BRA 0x..." -> "BRA", "MUFU.EX2 R1, R2" -> "MUFU"."""
    words = text.split()
    if words and words[0].startswith("@"):
        words = words[1:]
    return words[0].split(".")[0] if words else ""


def _int(cell: str) -> int:
    try:
        return int(float(cell.replace(",", ""))) if cell.strip() else 0
    except ValueError:
        return 0


def read_all(path: str) -> list[tuple[str, list[Instr]]]:
    """[(kernel name, instructions)] from an ncu source-page CSV export, one entry per kernel
    block in file order, a block identical to an earlier one (name and rows) left out."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2 or not rows[0] or rows[0][0] != "Kernel Name":
        raise ValueError(f"{path}: not an 'ncu --page source --csv' export (no 'Kernel Name' line)")
    starts = [i for i, r in enumerate(rows) if r and r[0] == "Kernel Name"] + [len(rows)]
    out, seen = [], set()
    for a, b in zip(starts, starts[1:]):
        key = (tuple(rows[a]), tuple(tuple(r) for r in rows[a + 1:b]))
        if key in seen:
            continue
        seen.add(key)
        out.append(_block(path, rows[a], rows[a + 1:b]))
    return out


def read(path: str) -> tuple[str, list[Instr]]:
    """(kernel name, instructions) of the first kernel of an ncu source-page CSV export."""
    return read_all(path)[0]


def _block(path: str, first: list[str], rows: list[list[str]]) -> tuple[str, list[Instr]]:
    """One kernel's block: its 'Kernel Name' line, then the header and the instruction rows."""
    if not rows:
        raise ValueError(f"{path}: a 'Kernel Name' line without a header after it")
    kernel, header = first[1] if len(first) > 1 else "", rows[0]
    col = {name: i for i, name in enumerate(header)}
    for need in ("Address", "Source", SAMPLES, EXECUTED):
        if need not in col:
            raise ValueError(f"{path}: column {need!r} missing; export a report taken with "
                             "--set full (or --section SourceCounters)")
    reasons = [h for h in header if h.startswith("stall_") and "Not Issued" not in h]
    out = []
    for r in rows[1:]:
        if len(r) < len(header) or not r[col["Source"]].strip():
            continue
        text = r[col["Source"]].strip()
        out.append(Instr(r[col["Address"]], text, opcode_of(text), _int(r[col[EXECUTED]]),
                         _int(r[col[SAMPLES]]),
                         {h[len("stall_"):]: _int(r[col[h]]) for h in reasons}))
    return kernel, out


def summary(kernel: str, instrs: list[Instr], per: float = 1.0, top: int = 15) -> list[str]:
    """The report's lines (see the module docstring)."""
    samples = sum(i.samples for i in instrs) or 1
    executed = sum(i.executed for i in instrs)
    reasons: collections.Counter[str] = collections.Counter()
    by_op: collections.Counter[str] = collections.Counter()
    for i in instrs:
        reasons.update(i.stalls)
        by_op[i.opcode] += i.executed
    unit = "" if per == 1.0 else f" per unit (/{per:g})"
    lines = [f"kernel: {kernel}",
             f"instructions: {len(instrs)} in the code, {executed / per:,.1f} executed{unit}; "
             f"stall samples: {samples}",
             "stall reasons: " + ", ".join(f"{k} {v / samples:.1%}"
                                            for k, v in reasons.most_common(10) if v),
             f"executed by opcode{unit}: " + ", ".join(f"{k} {v / per:,.1f}"
                                                       for k, v in by_op.most_common(30)),
             f"top {top} instructions by stall samples (share, address, text, main reasons):"]
    for i in sorted(instrs, key=lambda x: -x.samples)[:top]:
        main = ", ".join(f"{k} {v}" for k, v in sorted(i.stalls.items(), key=lambda kv: -kv[1])[:3]
                         if v)
        lines.append(f"  {i.samples / samples:6.2%}  {i.address[-6:]}  {i.text[:60]:60s}  {main}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv", help="ncu --page source --csv --print-source sass output")
    ap.add_argument("--kernel", default="",
                    help="summarise only the kernels whose name contains this text")
    ap.add_argument("--per", type=float, default=1.0,
                    help="divide executed counts by this (e.g. warps x tiles); default 1")
    ap.add_argument("--top", type=int, default=15, help="instructions listed (default 15)")
    args = ap.parse_args(argv)
    if args.per <= 0:
        print("--per: must be positive", file=sys.stderr)
        return 2
    try:
        kernels = read_all(args.csv)
    except (OSError, ValueError) as e:
        print(f"ncu_sass_summary: {e}", file=sys.stderr)
        return 2
    chosen = [(k, i) for k, i in kernels if args.kernel in k]
    if not chosen:
        print(f"ncu_sass_summary: --kernel: no kernel name contains {args.kernel!r}; the file has: "
              + "; ".join(k for k, _ in kernels), file=sys.stderr)
        return 2
    print("\n\n".join("\n".join(summary(k, i, args.per, args.top)) for k, i in chosen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
