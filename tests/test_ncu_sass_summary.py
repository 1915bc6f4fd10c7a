"""benchmarks/ncu_sass_summary.py without a GPU: a small export in Nsight Compute's format."""
from __future__ import annotations

import csv
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import ncu_sass_summary as ns  # noqa: E402

HEADER = ["Address", "Source", "Warp Stall Sampling (All Samples)",
          "Warp Stall Sampling (Not-issued Samples)", "Instructions Executed",
          "stall_barrier", "stall_wait", "stall_barrier (Not Issued)"]
ROWS = [  # address, text, samples, executed, barrier, wait
    ("0x10", "LDC R1, c[0x0][0x28]", 2, 64, 0, 2),
    ("0x20", "@!P0 BRA 0x100", 6, 128, 6, 0),
    ("0x30", "MUFU.EX2 R2, R2", 10, 256, 0, 10),
    ("0x40", "MUFU.EX2 R3, R3", 2, 256, 0, 2),
    ("0x50", "HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], RZ, !UPT", 0, 32, 0, 0),
]


def _write(path, first=("Kernel Name", "void k<float>(int)"), header=HEADER):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        w.writerow(first)
        w.writerow(header)
        for a, text, s, e, b, wt in ROWS:
            w.writerow([a, text, s, s // 2, e, b, wt, 0])


def test_opcode_of():
    assert ns.opcode_of("@!P0  BRA 0x7f") == "BRA"
    assert ns.opcode_of("MUFU.EX2 R1, R2") == "MUFU"
    assert ns.opcode_of("") == ""


def test_read_and_summary(tmp_path):
    path = tmp_path / "sass.csv"
    _write(path)
    kernel, instrs = ns.read(str(path))
    assert kernel == "void k<float>(int)" and len(instrs) == len(ROWS)
    assert [i.opcode for i in instrs] == ["LDC", "BRA", "MUFU", "MUFU", "HGMMA"]
    assert instrs[1].stalls == {"barrier": 6, "wait": 0}  # "Not Issued" columns left out
    lines = ns.summary(kernel, instrs, per=32, top=2)
    text = "\n".join(lines)
    # 20 samples: barrier 6 (30%), wait 14 (70%); MUFU executed 512 / 32 = 16 per unit
    assert "wait 70.0%, barrier 30.0%" in text
    assert "MUFU 16.0" in text and "LDC 2.0" in text
    top = [ln for ln in lines if ln.startswith("  ")]
    assert len(top) == 2 and "MUFU.EX2 R2, R2" in top[0] and "@!P0 BRA" in top[1]


def test_each_kernel_through_its_own_header(tmp_path, capsys):
    # three blocks: k, then a kernel whose header orders the stall columns the other way round,
    # then k again (Nsight Compute repeats some blocks): two kernels, each read by its header
    one, other = tmp_path / "k.csv", tmp_path / "store.csv"
    _write(one)
    swapped = HEADER[:5] + ["stall_wait", "stall_barrier", "stall_barrier (Not Issued)"]
    with open(other, "w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        w.writerow(["Kernel Name", "void store(int)"])
        w.writerow(swapped)
        w.writerow(["0x90", "BAR.SYNC.DEFER_BLOCKING 0x0", 8, 8, 32, 0, 8, 0])  # barrier 8
    path = tmp_path / "multi.csv"
    path.write_text(one.read_text() + other.read_text() + one.read_text())
    kernels = ns.read_all(str(path))
    assert [k for k, _ in kernels] == ["void k<float>(int)", "void store(int)"]
    (_, first), (_, second) = kernels
    assert len(first) == len(ROWS) and first[1].stalls == {"barrier": 6, "wait": 0}
    assert len(second) == 1 and second[0].stalls == {"wait": 0, "barrier": 8}
    assert ns.read(str(path))[0] == "void k<float>(int)"
    assert ns.main([str(path), "--kernel", "store"]) == 0
    out = capsys.readouterr().out
    assert "void store(int)" in out and "void k<float>" not in out and "barrier 100.0%" in out
    assert ns.main([str(path)]) == 0 and capsys.readouterr().out.count("kernel: ") == 2
    assert ns.main([str(path), "--kernel", "none"]) == 2
    assert "void store(int)" in capsys.readouterr().err


def test_rejects_other_files(tmp_path, capsys):
    bad = tmp_path / "details.csv"
    _write(bad, first=("ID", "Kernel"))
    with pytest.raises(ValueError, match="Kernel Name"):
        ns.read(str(bad))
    missing = tmp_path / "nosamples.csv"
    _write(missing, header=["Address", "Source", "Instructions Executed"] + HEADER[5:])
    with pytest.raises(ValueError, match="SourceCounters"):
        ns.read(str(missing))
    assert ns.main([str(bad)]) == 2 and "ncu_sass_summary" in capsys.readouterr().err
    assert ns.main([str(missing), "--per", "0"]) == 2
