"""Decode step time under several settings, one model, every setting in the same run: the L2
prefetch of the GEMM weights (``SAMBA_EXT_L2_PREFETCH``, samba_ext/cuda/prefetch.py), the GEMV
kernel, programmatic dependent launch.

    python3 benchmarks/gpu_decode_prefetch.py [--model samba-1.7b] [--settings 0,bulk:24,touch:24]
        [--batches 1,16] [--context 4096] [--steps 20] [--out DIR]

A setting is ``0`` (off) or ``MODE:MB`` (``bulk`` or ``touch``, at most MB MiB per GEMM), with
optional ``+gemv`` (the products on csrc/cuda/gemv.cu's kernels instead of cuBLAS), ``+pdl``
(programmatic dependent launch of the decode-path kernels, csrc/cuda/pdl.cuh; off without it) and
``+splitk`` (one-row products on the GEMV's split-K kernel, not its one-row kernel) and
``+nofuse`` (the pre-norms and SwiGLUs as kernels of their own, not fused into the one-row
products; ``+rmsonly``: only the pre-norms fused) and ``+norotkv`` (an attention layer's
rotary and K/V cache writes as the base backend's composition, not one kernel) and
``+nodtfold`` (a Mamba layer's dt projection as its own product before the state update). The
model (random bf16 weights, benchmarks/gpu_model.py's ``Ours``) is built once; for each
setting its captured graphs are dropped, so the next step is captured again with the setting
in force. Each point: a state at ``--context`` (gpu_model.py's ``state_at_context``), 4 untimed
and ``--steps`` timed ``step`` calls (wall clock, synchronised: the time a user sees), median.
The weight-read floor is gpu_model.py's (bf16 weights read once at the copy bandwidth measured
in the same run). The first timed step's logits of every setting are compared with those of
the first setting whose products take the same path (cuBLAS, ``+gemv`` or ``+gemv+splitk``:
each sums in its own order): the prefetch and dependent launch must not change them. Writes DIR/gpu_decode_prefetch.md and .json
(default DIR: benchmarks/results).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for _p in (str(ROOT), str(ROOT / "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from gpu_bench_util import write_atomic, write_marked  # noqa: E402
from gpu_model import (Ours, device_name, floor_ms, git_commit,  # noqa: E402
                       measure_copy_bandwidth, state_at_context, weight_read_bytes)


SUFFIXES = ("gemv", "pdl", "splitk", "nofuse", "rmsonly", "norotkv", "nodtfold")


def parse_setting(s: str) -> tuple[str, str, frozenset[str]]:
    """'0' -> ('0', '', {}); 'bulk:24+pdl' -> ('bulk', '24', {'pdl'}). Suffixes, in any order:
    '+gemv' (the GEMV kernel of csrc/cuda/gemv.cu instead of cuBLAS for the products,
    SAMBA_EXT_GEMV=1), '+pdl' (programmatic dependent launch of the decode-path kernels,
    csrc/cuda/pdl.cuh; off without it), '+splitk' (one-row products on the GEMV's split-K
    kernel rather than its one-row kernel, SAMBA_EXT_GEMV_ROWS=0), '+nofuse' (the
    pre-norms and SwiGLUs apart from the products they feed, SAMBA_EXT_GEMV_FUSE=0) and
    '+rmsonly' (only the pre-norms fused, SAMBA_EXT_GEMV_FUSE=rms), '+norotkv' (rotary and
    K/V cache writes composed, CUDABackend.fuse_rotary_kv = False), '+nodtfold' (the dt
    projection apart from the state update, CUDABackend.fuse_dt_proj = False)."""
    body, *extras = s.split("+")
    if any(e not in SUFFIXES for e in extras) or len(set(extras)) != len(extras):
        raise SystemExit(f"--settings: the suffixes are {', '.join('+' + e for e in SUFFIXES)}, "
                         f"got {s!r}")
    if body == "0":
        return "0", "", frozenset(extras)
    mode, _, mb = body.partition(":")
    if mode not in ("bulk", "touch") or not mb.isdigit():
        raise SystemExit("--settings: expected 0 or bulk:MB / touch:MB [+gemv][+pdl][+splitk]"
                         f"[+nofuse|+rmsonly][+norotkv][+nodtfold], got {s!r}")
    return mode, mb, frozenset(extras)


def point(m: Ours, batch: int, ctx: int, steps: int, warm: int = 4) -> dict[str, Any]:
    model = m.model
    st = state_at_context(model, batch, ctx, extra=warm + steps + 1, seed=1)
    rng = np.random.default_rng(2)
    toks = rng.integers(0, m.vocab, (warm + steps, batch))
    for i in range(warm):
        model.step(toks[i], st)
    ts, first = [], None
    for i in range(steps):
        t0 = time.perf_counter()
        lg = model.step(toks[warm + i], st)
        m.sync()
        ts.append(time.perf_counter() - t0)
        if first is None:
            first = np.asarray(lg, dtype=np.float32).copy()
    return {"batch": batch, "context": ctx, "steps": steps, "step_s": ts,
            "ms_per_step": 1000 * statistics.median(ts), "first_logits": first,
            "stats": dict(model.backend.stats)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="samba-1.7b")
    ap.add_argument("--settings", default="0,bulk:8,bulk:24,bulk:48,touch:24")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args()
    settings = [parse_setting(s) for s in a.settings.split(",")]
    batches = [int(b) for b in a.batches.split(",")]
    bw = measure_copy_bandwidth("cuda")["bandwidth_Bps"]
    m = Ours(a.model, "cuda", 8192)
    wb = weight_read_bytes(m.cfg)
    fl = floor_ms(wb, bw)
    rows: list[dict[str, Any]] = []
    ref: dict[tuple[int, str], np.ndarray] = {}
    from samba_ext.cuda import runtime

    cu = runtime.require()
    for mode, mb, extras in settings:
        os.environ["SAMBA_EXT_L2_PREFETCH"] = mode
        os.environ["SAMBA_EXT_GEMV_ROWS"] = "0" if "splitk" in extras else "1"
        os.environ["SAMBA_EXT_GEMV_FUSE"] = ("0" if "nofuse" in extras else
                                             "rms" if "rmsonly" in extras else "1")
        cu.gemv_mode(int("gemv" in extras))
        cu.pdl_mode(int("pdl" in extras))
        m.model.backend.fuse_rotary_kv = "norotkv" not in extras
        m.model.backend.fuse_dt_proj = "nodtfold" not in extras
        if mb:
            os.environ["SAMBA_EXT_L2_PREFETCH_MB"] = mb
        for B in batches:
            m.model.backend._free_graphs()
            p = point(m, B, a.context, a.steps)
            lg = p.pop("first_logits")
            # the products' path (cuBLAS, the GEMV's one-row or split-K kernel) fixes the
            # summation order; the other switches must not change the logits
            path = (B, "+".join(sorted(extras & {"gemv", "splitk"})))
            same = None
            if path in ref:
                same = bool(np.array_equal(lg, ref[path]))
            else:
                ref[path] = lg
            name = (mode if mode == "0" else f"{mode}:{mb}") + "".join(
                "+" + e for e in SUFFIXES if e in extras)
            p.update(setting=name, same_logits=same,
                     floor_ms=fl if B == 1 else None)
            rows.append(p)
            print(f"{p['setting']:>9} B={B:<3} {p['ms_per_step']:.3f} ms/step"
                  + (f" ({p['ms_per_step'] / fl:.2f}x floor {fl:.3f} ms)" if B == 1 else "")
                  + ("" if same is None else f", logits {'identical' if same else 'DIFFER'}"),
                  flush=True)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    meta = {"date": now, "commit": git_commit(), "device": device_name("cuda"),
            "model": a.model, "context": a.context, "steps": a.steps,
            "copy_bandwidth_Bps": bw, "weight_read_bytes": wb, "floor_ms": fl,
            "command": "python3 benchmarks/gpu_decode_prefetch.py " + " ".join(sys.argv[1:])}
    write(Path(a.out), meta, rows)
    return 0 if all(r["same_logits"] in (None, True) for r in rows) else 1


def render(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The Markdown table of one run (the JSON's meta and rows)."""
    fl = meta["floor_ms"]
    off: dict[int, list[float]] = {}
    for r in rows:
        if r["setting"] == "0":
            off.setdefault(r["batch"], []).append(r["ms_per_step"])
    base = {b: statistics.mean(v) for b, v in off.items()}
    lines = ["# Decode step settings: L2 prefetch of the GEMM weights, GEMV kernel, dependent "
             "launch", "",
             f"{meta['date']}, commit {meta['commit']}, {meta['device']}, model "
             f"{meta['model']} (random bf16 weights), context {meta['context']}. Command: "
             f"`{meta['command']}`.", "",
             f"Median wall-clock ms per synchronised `step` over {meta.get('steps', 20)} steps "
             f"after 4 untimed ones. Floor: {meta['weight_read_bytes'] / 1e9:.2f} GB of bf16 "
             f"weights at the copy bandwidth measured in this run "
             f"({meta['copy_bandwidth_Bps'] / 1e12:.2f} TB/s) = {fl:.3f} ms. Setting: "
             "SAMBA_EXT_L2_PREFETCH[:SAMBA_EXT_L2_PREFETCH_MB] (+gemv: SAMBA_EXT_GEMV=1; +pdl: "
             "programmatic dependent launch on, off in every other row; +splitk: "
             "SAMBA_EXT_GEMV_ROWS=0; +nofuse / +rmsonly: SAMBA_EXT_GEMV_FUSE=0 / rms; "
             "+norotkv: the rotary and K/V cache writes composed; +nodtfold: the dt "
             "projection apart from the state update). "
             "vs off: the mean time of this batch's `0` rows (the setting is off; the spread "
             "between them is the run-to-run noise) over this row's. Same logits: the first "
             "timed step's logits equal those of the first setting with the same "
             "products (+gemv, +splitk or neither) bit for bit.", "",
             "| setting | batch | ms / step | x floor (batch 1) | vs off | same logits |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        B = r["batch"]
        xf = f"{r['ms_per_step'] / fl:.2f}x" if B == 1 else "-"
        vs = f"{base[B] / r['ms_per_step']:.3f}x" if B in base else "-"
        same = "-" if r["same_logits"] is None else ("yes" if r["same_logits"] else "**no**")
        lines.append(f"| {r['setting']} | {B} | {r['ms_per_step']:.3f} | {xf} | {vs} | {same} |")
    return "\n".join(lines) + "\n"


def write(out: Path, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """OUT/gpu_decode_prefetch.md (between markers; text outside them is kept) and .json,
    each written atomically."""
    table = render(meta, rows)
    write_marked(str(out / "gpu_decode_prefetch.md"), "gpu_decode_prefetch.py", table)
    write_atomic(str(out / "gpu_decode_prefetch.json"),
                 json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(table)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--render":   # re-render a run's JSON
        d = json.loads(Path(sys.argv[2]).read_text())
        write(Path(sys.argv[2]).parent, d["meta"], d["rows"])
        raise SystemExit(0)
    raise SystemExit(main())
