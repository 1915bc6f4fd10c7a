#!/usr/bin/env python3
"""GPU benchmark of the CUDA backward of the selective scan and of the causal conv1d
(samba_ext.grad with DeviceArray inputs) against their forwards, in the same run. Writes
gpu_backward.md and .json (date, commit, device) into --out (default benchmarks/results); in the .md
only the part between its markers is replaced, so notes written by hand around it are kept.

Run from the repository root after an in-place CUDA build, on a machine with a GPU::

    SAMBA_EXT_CUDA=1 python3 setup.py build_ext --inplace
    python3 benchmarks/gpu_backward.py            # a few minutes
    python3 benchmarks/gpu_backward.py --quick    # small shapes, smoke test, writes nothing

Cases: the scan with bfloat16 u / delta / z / B / C / dout, float32 A / D / delta_bias,
softplus, gate z, an initial state and dlast_state, dstate 16, dim 4096, seqlen 4096, batch 1,
2, 4 and 8; the conv (width 4, SiLU, bias, initial states) at batch 1 and 8. At batch 1 and 8 the
scan backward is timed for the library's default (the tiled kernels at these shapes), the tiled
main kernel built for 2 blocks per multiprocessor instead of 3 (SAMBA_EXT_SCAN_BWD_OCC=2), the
tiled kernels with chunks of 2 tiles between checkpoints (SAMBA_EXT_SCAN_BWD_TILES), with 1, 2,
3, 4 and 6 segments along the sequence (SAMBA_EXT_SCAN_BWD_SEGS; by default 3 at batch 1 on 132
SMs, 1 from batch 2 up), and the split kernels (SAMBA_EXT_SCAN_BWD_VARIANT=split) with their
default, two lane layout x checkpoint chunk settings (SAMBA_EXT_SCAN_BWD_LANES / _CHUNK) and
scalar dB / dC atomics (SAMBA_EXT_SCAN_BWD_VEC=0); at batch 2 and 4, the default and the
segment counts. Each variant's du and dB are compared with the default's (relative norm: they
compute the same sums in another order).
Target (issue #18): scan backward <= 2.5x its forward.

Times: median over ``--reps`` repeats of ``--calls`` back-to-back calls after a warm-up, per
call: CUDA events around the calls when torch is importable (device time of the queued
work), else the wall time between two device synchronisations (host overhead included;
the method is recorded). Every call allocates its outputs, as a user's call does.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import samba_ext  # noqa: E402
from samba_ext import cuda as scuda  # noqa: E402
from samba_ext import grad  # noqa: E402
from gpu_bench_util import kernel_us, median_ms, rel, write_atomic, write_marked  # noqa: E402

TARGET = 2.5
EXP_RATE_PER_SM = 16  # exp2 (MUFU) results per clock per multiprocessor on sm_90


# ------------------------------------------------------------------------------ timing
def _torch_events() -> Optional[Any]:
    try:
        import torch

        return torch if torch.cuda.is_available() else None
    except ImportError:
        return None


def time_call(fn: Callable[[], Any], reps: int, calls: int) -> tuple[float, str]:
    """(median milliseconds per call, method)."""
    if _torch_events() is not None:
        return median_ms(fn, warmup=1, reps=reps, calls=calls), "cuda events (torch)"
    fn()
    scuda.synchronize()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        scuda.synchronize()
        ts.append((time.perf_counter() - t0) * 1e3 / calls)
    return statistics.median(ts), "wall time between synchronisations"


def call_kernels(fn: Callable[[], Any]) -> Optional[dict[str, float]]:
    """The kernels one call runs, device us per call (torch.profiler), so that a run records
    which kernels its times are of, and their device time apart from the host's cost of the
    call (a short call timed back to back is bound by the host); None without torch."""
    if _torch_events() is None:
        return None
    try:
        return {k: round(v, 1) for k, v in kernel_us(fn, calls=3).items()}
    except (RuntimeError, AttributeError):
        return None


def kernel_lines(rows: list[dict]) -> list[str]:
    """One line per row with recorded kernels (the forward and the default backward of each
    batch): the kernels, their sum, and for the backward its ratio to the forward on device
    time alone; nothing where no kernels were recorded."""
    out, fwd_us = [], None
    for r in rows:
        ks = r.get("kernels_us")
        if not ks:
            continue
        parts = [f"`{n}` {t:.1f}" for n, t in ks.items() if n != "(all kernels)"]
        tot = ks["(all kernels)"]
        line = f"- {r['op']} {r['shape']}: " + ", ".join(parts) + f" us; sum {tot:.1f} us"
        if r["op"].endswith("fwd"):
            fwd_us = tot
        elif fwd_us:
            line += f", {tot / fwd_us:.2f}x the forward's"
        out.append(line)
    return ["", "Kernels (device us per call, torch.profiler; the forward and the default "
            "backward):", "", *out] if out else []


def set_env(**kv: str) -> None:
    for k, v in kv.items():
        if v:
            os.environ[k] = v
        else:
            os.environ.pop(k, None)


# ------------------------------------------------------------------------------- cases
def randn(rng: np.random.Generator, shape: tuple, dtype: str, scale: float = 1.0,
          shift: float = 0.0) -> Any:
    a = rng.standard_normal(shape, dtype=np.float32)
    if scale != 1.0 or shift != 0.0:
        a = a * np.float32(scale) + np.float32(shift)
    return scuda.to_device(a, dtype)


# the backward's knobs (SAMBA_EXT_SCAN_BWD_*) that a variant sets; the others are unset
KNOBS = ("VARIANT", "TILES", "OCC", "SEGS", "LANES", "CHUNK", "VEC")


def variant_name(v: dict[str, str]) -> str:
    if not v:
        return "default"
    return ", ".join(f"{k.lower()} {v[k]}" for k in KNOBS if k in v)


def scan_rows(rng: np.random.Generator, batch: int, dim: int, L: int, reps: int, calls: int,
              variants: list[dict[str, str]], exp_rate: float) -> list[dict]:
    N = 16
    bf = "bfloat16"
    u, z, dout = (randn(rng, (batch, dim, L), bf) for _ in range(3))
    delta = randn(rng, (batch, dim, L), bf, 0.5, -1.0)
    Bm, Cm = randn(rng, (batch, N, L), bf), randn(rng, (batch, N, L), bf)
    A = scuda.to_device(-np.exp(0.5 * rng.standard_normal((dim, N), dtype=np.float32)))
    D = randn(rng, (dim,), "float32")
    bias = randn(rng, (dim,), "float32", 0.3)
    h0 = randn(rng, (batch, dim, N), "float32")
    dlast = randn(rng, (batch, dim, N), "float32")
    shape = f"b{batch} d{dim} L{L} N{N} bf16"

    def fwd() -> Any:
        return samba_ext.selective_scan(u, delta, A, Bm, Cm, D, z, bias, True, h0, True)

    def bwd() -> Any:
        return grad.selective_scan_bwd(u, delta, A, Bm, Cm, D, z, bias, True, h0, dout=dout,
                                       dlast_state=dlast)

    fwd_ms, method = time_call(fwd, reps, calls)
    floor = batch * dim * L * N / exp_rate * 1e3
    rows = [dict(op="selective_scan fwd", shape=shape, variant="default", ms=fwd_ms,
                 exp_floor_ms=floor, ratio=None, rel_diff=None, method=method,
                 kernels_us=call_kernels(fwd))]
    ref = None
    for v in variants:
        set_env(**{f"SAMBA_EXT_SCAN_BWD_{k}": v.get(k, "") for k in KNOBS})
        g = bwd()
        diff = None
        if ref is None:
            ref = g
        else:
            diff = max(rel(g.du, ref.du), rel(g.dB, ref.dB))
        del g
        ms, method = time_call(bwd, reps, calls)
        rows.append(dict(op="selective_scan bwd", shape=shape, variant=variant_name(v), ms=ms, exp_floor_ms=2 * floor, ratio=ms / fwd_ms, rel_diff=diff,
                         method=method, kernels_us=None if v else call_kernels(bwd)))
    set_env(**{f"SAMBA_EXT_SCAN_BWD_{k}": "" for k in KNOBS})
    return rows


def conv_rows(rng: np.random.Generator, batch: int, dim: int, L: int, reps: int,
              calls: int) -> list[dict]:
    W, bf = 4, "bfloat16"
    x, dy = randn(rng, (batch, dim, L), bf), randn(rng, (batch, dim, L), bf)
    w = randn(rng, (dim, W), "float32", 0.5)
    b = randn(rng, (dim,), "float32")
    h0 = randn(rng, (batch, dim, W - 1), "float32")
    shape = f"b{batch} d{dim} L{L} W{W} silu bf16"
    fwd_ms, method = time_call(lambda: samba_ext.causal_conv1d(x, w, b, "silu", h0), reps,
                               calls)
    bwd_ms, method = time_call(lambda: grad.causal_conv1d_bwd(x, w, b, "silu", h0, dy=dy),
                               reps, calls)
    nbytes = 3 * batch * dim * L * 2  # x and dy read, dx written, once each
    return [dict(op="causal_conv1d fwd", shape=shape, variant="default", ms=fwd_ms,
                 ratio=None, method=method),
            dict(op="causal_conv1d bwd", shape=shape, variant="default", ms=bwd_ms,
                 ratio=bwd_ms / fwd_ms, gbps=nbytes / (bwd_ms * 1e-3) / 1e9, method=method)]


# ------------------------------------------------------------------------------ report
def commit() -> str:
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10, check=False)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(rows: list[dict]) -> list[str]:
    out = ["| op | shape | variant | ms | bwd / fwd | exp floor (ms) | rel. diff |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = fmt(r.get("ratio"), ".2f")
        if r.get("ratio") is not None and r["op"].startswith("selective_scan"):
            ratio += " ok" if r["ratio"] <= TARGET else " above target"
        out.append(f"| {r['op']} | {r['shape']} | {r['variant']} | {r['ms']:.3f} | {ratio} | "
                   f"{fmt(r.get('exp_floor_ms'), '.3f')} | {fmt(r.get('rel_diff'), '.1e')} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes; writes nothing")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"),
                    help="folder of gpu_backward.md (the table between its markers; notes "
                    "outside them are kept) and gpu_backward.json")
    args = ap.parse_args()
    if not samba_ext.cuda_available():
        sys.exit("gpu_backward.py: no usable CUDA device (samba_ext.cuda_available() is False)")
    t_start = time.time()
    info = scuda.runtime.require().device_info(0)
    clock = 1.98e9  # H200 maximum SM clock
    exp_rate = info["multiprocessors"] * EXP_RATE_PER_SM * clock
    rng = np.random.default_rng(0)
    dim, L = (256, 512) if args.quick else (4096, 4096)
    # batch 1 and 8: the default (the tiled kernels at these shapes), the tiled kernels with
    # longer chunks, 2 blocks per SM or other segment counts, the split kernels (default, and
    # the fastest settings of earlier runs); batch 2 and 4: segment counts only (how many
    # fill the waves of resident blocks best)
    split = {"VARIANT": "split"}
    segs = [{"SEGS": str(s)} for s in (1, 2, 3, 4, 6)]
    variants = [{}, {"OCC": "2"}, {"TILES": "2"}, *segs, split,
                {**split, "LANES": "4", "CHUNK": "1"}, {**split, "LANES": "8", "CHUNK": "2"},
                {**split, "VEC": "0"}]
    batches = {1: variants, 2: [{}, *segs], 4: [{}, *segs], 8: variants}
    if args.quick:
        quick = [{}, {"TILES": "3"}, split, {**split, "LANES": "4", "CHUNK": "1"}]
        batches = {1: quick, 8: quick}
    rows: list[dict] = []
    for batch, vs in batches.items():
        rows += scan_rows(rng, batch, dim, L, args.reps, args.calls, vs, exp_rate)
        if batch in (1, 8):
            rows += conv_rows(rng, batch, dim, L, args.reps, args.calls)
        scuda.empty_cache()
    lines = table(rows)
    print("\n".join(lines))
    if args.quick:
        return
    res = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "commit": commit(), "device": info["name"], "multiprocessors": info["multiprocessors"],
           "exp_floor_clock_hz": clock, "target_bwd_over_fwd": TARGET,
           "seconds": round(time.time() - t_start, 1), "rows": rows}
    out = Path(args.out)
    write_atomic(str(out / "gpu_backward.json"), json.dumps(res, indent=1) + "\n")
    md = [f"- date: {res['date']}", f"- git commit: {res['commit']}",
          f"- device: {res['device']} ({res['multiprocessors']} SMs)",
          f"- timing: {rows[0]['method']}; median of {args.reps} x {args.calls} calls",
          f"- command: `python3 benchmarks/gpu_backward.py` ({res['seconds']:.0f} s)", "",
          *lines, "",
          "bwd / fwd: the backward's time over the forward's on the same inputs (target "
          f"<= {TARGET}). exp floor: batch x dim x seqlen x dstate exponentials (forward; "
          "twice that for the backward, which recomputes the states once per step besides "
          f"the checkpoint pass) at {EXP_RATE_PER_SM} per clock per SM at {clock / 1e9:.2f} "
          "GHz. rel. diff: largest relative-norm difference of du and dB against the default "
          "variant (the same sums in another order).", *kernel_lines(rows)]
    path = str(out / "gpu_backward.md")
    if not os.path.exists(path):
        write_atomic(path, "# GPU backward benchmark (selective scan, causal conv1d)\n\n")
    write_marked(path, "gpu_backward.py", "\n".join(md))
    print(f"wrote {path} and .json")


if __name__ == "__main__":
    main()
