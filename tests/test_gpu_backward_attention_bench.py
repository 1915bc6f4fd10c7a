"""benchmarks/gpu_backward_attention.py without a GPU: the report of a saved run, and of a run
that timed two kernel variants."""
from __future__ import annotations

import copy
import json
import os
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import gpu_backward_attention as gba  # noqa: E402


def _saved() -> dict:
    with open(os.path.join(ROOT, "benchmarks", "results", "gpu_backward_attention.json")) as f:
        return json.load(f)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _without_variants(rows: list[dict]) -> list[dict]:
    """The saved rows as a run from before the variants wrote them (samba_ext_ms alone)."""
    keep = ("samba_ext_ms", "samba_ext_fwd_ms", "samba_ext_tflops")
    return [{k: v for k, v in r.items() if k in keep or not k.startswith(("samba_ext_", "variant"))}
            for r in rows]


def test_render_saved_run_without_variants():
    # a run from before the variants: one samba_ext column, as it was written
    d = _saved()
    d["rows"] = _without_variants(d["rows"])
    md = gba.render(d["meta"], d["rows"], d["peers"])
    head = md.index(next(ln for ln in md if ln.startswith("| case |")))
    assert _cells(md[head])[1] == "samba_ext bwd ms"
    body = md[head + 2:head + 2 + len(d["rows"])]
    assert all(ln.startswith(("| swa L=", "| causal L=")) for ln in body)
    assert all(len(_cells(ln)) == len(_cells(md[head])) for ln in body)


def test_render_run_with_variants():
    # two variants, one failed in the second case: a column per variant, the fastest named in the
    # samba_ext column, the variants' difference in the last column
    d = _saved()
    rows = copy.deepcopy(_without_variants(d["rows"][:2]))
    rows[0].update(samba_ext_mma_ms=2.0, samba_ext_wgmma_ms=1.0, samba_ext_ms=1.0,
                   samba_ext_variant="wgmma", variant_err=3e-3)
    rows[1].update(samba_ext_mma_ms=5.0, samba_ext_ms=5.0, samba_ext_variant="mma",
                   variant_wgmma_error="ValueError: ...")
    md = gba.render(d["meta"], rows, d["peers"])
    head = md.index(next(ln for ln in md if ln.startswith("| case |")))
    names = _cells(md[head])
    assert names[1:4] == ["mma ms", "wgmma ms", "samba_ext bwd ms"]
    assert names[-1] == "variants' rel. diff"
    r0, r1 = (_cells(ln) for ln in md[head + 2:head + 4])
    assert r0[1:4] == ["2.000", "1.000", "1.000 (wgmma)"] and r0[-1] == "3.0e-03"
    assert r1[1:4] == ["5.000", "failed", "5.000 (mma)"] and r1[-1] == "-"
    assert len(_cells(md[head + 1])) == len(names)


@pytest.mark.parametrize("name,settings", [
    ("mma", ("0", "1", None)), ("wgmma", ("require", "1", None)),
    ("wgmma2", ("require", "2", None)), ("wgmma2-keys", ("require", "2", "keys")),
    ("wgmma2-heavy", ("require", "2", "heavy"))])
def test_variant_selects_the_kernel_settings(monkeypatch, name, settings):
    # each variant sets SAMBA_EXT_ATTN_BWD_WGMMA ("require": a call the wgmma kernel cannot run
    # fails rather than timing the other kernel), _WG (warpgroups per block) and _ORDER (the
    # block order; unset: picked per call); None restores what was there before, unset knobs
    # included
    monkeypatch.setattr(gba, "_ENV_BEFORE", ("1", None, "heavy"))
    monkeypatch.setenv("SAMBA_EXT_ATTN_BWD_WGMMA", "1")
    monkeypatch.delenv("SAMBA_EXT_ATTN_BWD_WGMMA_WG", raising=False)
    monkeypatch.setenv("SAMBA_EXT_ATTN_BWD_ORDER", "heavy")
    gba.select_variant(name)
    assert tuple(os.environ.get(k) for k in gba.KNOBS) == settings
    gba.select_variant(None)
    assert os.environ["SAMBA_EXT_ATTN_BWD_WGMMA"] == "1"
    assert "SAMBA_EXT_ATTN_BWD_WGMMA_WG" not in os.environ
    assert os.environ["SAMBA_EXT_ATTN_BWD_ORDER"] == "heavy"


def test_command_line_leaves_out_the_output_folder():
    # a report's command names the script and its options, not the machine path given to --out
    from gpu_bench_util import command_line

    assert command_line("x.py", ["--out", "/tmp/w", "--reps", "5"]) == \
        "python3 benchmarks/x.py --reps 5"
    assert command_line("x.py", ["--out=/tmp/w", "--no-flex"]) == "python3 benchmarks/x.py --no-flex"
    assert command_line("x.py", []) == "python3 benchmarks/x.py"


def test_kernel_tables_from_a_traced_run():
    # the H200 run saved with --trace: one table per case and implementation, each kernel's
    # device time, and a header line with the call's time against the kernels' sum
    with open(os.path.join(ROOT, "benchmarks", "results", "gpu_backward_attention_h200.json")) as f:
        saved = json.load(f)
    md = gba.kernel_tables(saved["rows"], saved["peers"])
    assert md[1].startswith("## Kernels")
    heads = [ln for ln in md if ", samba_ext: call " in ln]
    assert len(heads) == len(saved["rows"])
    r = saved["rows"][0]
    total = r["samba_ext_kernels_us"]["(all kernels)"]
    assert f"call {1e3 * r['samba_ext_ms']:.0f} us, kernels {total:.0f} us" in heads[0]
    assert not any("(all kernels)" in ln for ln in md)  # the sum is in the header, not a row
    untraced = [{k: v for k, v in r.items() if not k.endswith("_kernels_us")}
                for r in saved["rows"]]
    assert gba.kernel_tables(untraced, saved["peers"]) == []


def test_queued_table_only_with_queued_times():
    # --queued: one row per case with the per-call times of N queued calls and the ratio to each
    # peer; a peer without a queued time gets "-"; runs without --queued print no such table
    d = _saved()
    plain = [{k: v for k, v in r.items() if not k.endswith("_queued_ms")} for r in d["rows"]]
    assert gba.queued_table(d["meta"], plain, d["peers"]) == []
    rows = copy.deepcopy(plain[:2])
    rows[0].update(samba_ext_queued_ms=0.6, flex_queued_ms=0.75, sdpa_queued_ms=1.2)
    rows[1].update(samba_ext_queued_ms=3.0, flex_queued_ms=2.5)
    meta = dict(d["meta"], queued=5)
    md = gba.queued_table(meta, rows, d["peers"])
    assert md[0] == "## Queued calls (--queued)" and "5 calls queued back to back" in md[2]
    head = _cells(md[4])
    assert head[:2] == ["case", "samba_ext ms"] and len(_cells(md[5])) == len(head)
    r0, r1 = (dict(zip(head, _cells(ln))) for ln in md[6:8])
    assert r0["samba_ext / flex"] == "0.80x" and r0["samba_ext / sdpa"] == "0.50x"
    assert r1["samba_ext / flex"] == "1.20x" and r1["sdpa ms"] == "-"
    # the saved run (--queued 5) renders its own table, one row per case
    if any("samba_ext_queued_ms" in r for r in d["rows"]):
        md = gba.queued_table(d["meta"], d["rows"], d["peers"])
        assert len([ln for ln in md if ln.startswith("| ") and "ms" not in ln]) == len(d["rows"])
    assert "## Queued calls (--queued)" in gba.render(meta, rows, d["peers"])


def test_forward_table_only_with_flex_forward_times():
    d = _saved()
    rows = copy.deepcopy(d["rows"])
    assert gba.forward_table([{k: v for k, v in r.items() if k != "flex_fwd_ms"} for r in rows]) == []
    for r in rows:
        r["samba_ext_fwd_ms"], r["flex_fwd_ms"] = 0.3, 0.2
    md = gba.forward_table(rows)
    body = [ln for ln in md if ln.startswith("| ") and not ln.startswith("| case")]
    assert len(body) == len(rows)
    assert all(_cells(ln)[1:] == ["0.300", "0.200", "1.50x"] for ln in body)
