"""GPU GEMV timings for decode: samba_ext's GEMM entry (samba_ext.cuda.blas.matmul, the call the
CUDA model backend makes: y = x @ W^T, bf16 in, bf16 out) with the small-M GEMV kernel
(csrc/cuda/gemv.cu, SAMBA_EXT_GEMV) on and off, against torch.matmul, for every decode GEMM
shape of samba-1.7b (benchmarks/gpu_gemm.py's SHAPES).

Usage (on a machine with a CUDA GPU, torch installed, samba_ext built with CUDA):
    python3 benchmarks/gpu_gemv.py [--out DIR] [--commit SHA] [--m 1,8,16]

M = 1 and 8 run the GEMV when it is on; M = 16 is above its 8-row limit and shows that both
settings then run cuBLAS. Each case is timed as a CUDA graph of max(20, copies) calls that
cycle through the weight copies, each read at least once (gpu_gemm.py's rotating_weights / graph_ms_per_call:
>= 256 MiB of copies, at most 64, so W is not served from the 50 MB L2; the 1 MB weights of
x_proj and dt_proj have 64 MB in rotation) and reported as TB/s of weight bytes (N K 2 per call)
and as a fraction of the device-to-device copy bandwidth measured in the same run ((read +
write bytes) / time of a 1 GiB torch copy). The GEMV switch is flipped in-process
(``_cuda.gemv_mode``) before each capture, and ``_cuda.gemv_launches`` confirms which path
was captured. Every case checks both outputs against torch's (relative norm). Writes
DIR/gpu_gemv.md and DIR/gpu_gemv.json (default DIR: benchmarks/results). About 20-40 s on an
H200.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from typing import Any, Callable

from gpu_bench_util import copy_bandwidth_Bps, git_commit, rel
from gpu_bench_util import median_ms as _median_ms
from gpu_gemm import SHAPES, graph_ms_per_call, rotating_weights

CALLS = 20
GEMV_MAX_M = 8


def measure(ms: list[int]) -> list[dict]:
    import torch

    from samba_ext.cuda import runtime
    from samba_ext.cuda.blas import matmul

    cu = runtime.require()
    old = int(cu.gemv_mode())

    def median_ms(fn: Callable[[], Any]) -> float:
        return _median_ms(fn, warmup=2, reps=7)

    g = torch.Generator(device="cuda").manual_seed(0)
    # One capture stream for every case: samba_ext keeps a GEMM workspace (where the GEMV's
    # split-K partial sums go) for at most 16 streams per process.
    cap = torch.cuda.Stream()
    rows = []
    try:
        for name, K, N in SHAPES:
            ws = rotating_weights(N, K, g)
            n_w = len(ws)
            calls = max(CALLS, n_w)  # every copy at least once per replay
            for M in ms:
                x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=g)
                y = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
                yt = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
                row: dict = {"name": name, "M": M, "N": N, "K": K, "weight_copies": n_w,
                             "calls_per_graph": calls}
                wbytes = N * K * 2

                def ours(i: int = 0) -> None:
                    matmul(x, ws[i % n_w], trans_b=True, out_dtype="bfloat16", out=y)

                def theirs(i: int = 0) -> None:
                    torch.matmul(x, ws[i % n_w].t(), out=yt)

                torch.matmul(x, ws[0].t(), out=yt)
                for label, on, fn in (("gemv", 1, ours), ("cublas", 0, ours),
                                      ("torch", None, theirs)):
                    if on is not None:
                        cu.gemv_mode(on)
                    before = int(cu.gemv_launches())

                    def burst(fn=fn) -> None:
                        for i in range(calls):
                            fn(i)
                    t = graph_ms_per_call(burst, calls, median_ms, cap)
                    row[label + "_ms"] = t
                    row[label + "_tbs"] = wbytes / (t * 1e-3) / 1e12
                    if on is not None:
                        row[label + "_ran_gemv"] = int(cu.gemv_launches()) > before
                        y.fill_(float("nan"))
                        ours(0)
                        torch.cuda.synchronize()
                        row[label + "_err_vs_torch"] = rel(y, yt)
                rows.append(row)
            ws = []
            torch.cuda.empty_cache()
    finally:
        cu.gemv_mode(old)
    return rows


def _fmt(x: Any, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def render(meta: dict, rows: list[dict]) -> list[str]:
    cp = meta["copy_tbs"]
    out = ["# GPU GEMV timings (decode GEMMs: GEMV on / off / torch.matmul)", "",
           f"{meta['date']}, commit {meta['commit']}, {meta['device']}, torch {meta['torch']}. "
           f"Command: `{meta['command']}`.", "",
           f"bf16 x bf16 -> bf16, y = x @ W^T; ms per call and TB/s of weight bytes (N K 2) from "
           f"a CUDA graph of max({CALLS}, copies) calls over rotating weight copies (>= 256 MiB, "
           f"at most 64 copies). Device-to-device "
           f"copy bandwidth in this run: {cp:.2f} TB/s ((read + write) / time); \"of copy\" is "
           f"the GEMV's TB/s over it. M > {GEMV_MAX_M} runs cuBLAS either way.", ""]
    for M in sorted({r["M"] for r in rows}):
        out.append(f"## M = {M}")
        out.append("")
        out.append("| GEMM | K | N | gemv ms | gemv TB/s | of copy | cuBLAS ms | cuBLAS TB/s | "
                   "torch ms | torch TB/s | gemv / cuBLAS | gemv ran | max err |")
        out.append("|" + "---|" * 13)
        tot = {"gemv": 0.0, "cublas": 0.0, "torch": 0.0}
        for r in (r for r in rows if r["M"] == M):
            for k in tot:
                tot[k] += r[k + "_ms"]
            err = max(r.get("gemv_err_vs_torch", 0.0), r.get("cublas_err_vs_torch", 0.0))
            out.append(
                f"| {r['name']} | {r['K']} | {r['N']} | {r['gemv_ms']:.4f} | "
                f"{r['gemv_tbs']:.2f} | {r['gemv_tbs'] / cp:.0%} | {r['cublas_ms']:.4f} | "
                f"{r['cublas_tbs']:.2f} | {r['torch_ms']:.4f} | {r['torch_tbs']:.2f} | "
                f"{r['gemv_ms'] / r['cublas_ms']:.2f} | "
                f"{'yes' if r.get('gemv_ran_gemv') else 'no'} | {err:.1e} |")
        out.append(f"| sum | | | {tot['gemv']:.4f} | | | {tot['cublas']:.4f} | | "
                   f"{tot['torch']:.4f} | | {_fmt(tot['gemv'] / tot['cublas'] if tot['cublas'] else None, '.2f')} | | |")
        out.append("")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "results"))
    ap.add_argument("--commit", default=os.environ.get("GIT_COMMIT"))
    ap.add_argument("--m", default="1,8,16", help="comma-separated row counts M (1..64)")
    args = ap.parse_args()
    try:
        ms = [int(v) for v in args.m.split(",") if v.strip()]
    except ValueError:
        ms = []
    if not ms or any(m < 1 or m > 64 for m in ms):
        print(f"--m: expected comma-separated integers in 1..64, got {args.m!r}", file=sys.stderr)
        return 2
    import torch

    from samba_ext.atomic import write_text_atomic

    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "commit": git_commit(args.commit), "device": torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "command": "python3 benchmarks/gpu_gemv.py --m " + ",".join(map(str, ms))}
    meta["copy_tbs"] = copy_bandwidth_Bps() / 1e12
    rows = measure(ms)
    md = render(meta, rows)
    os.makedirs(args.out, exist_ok=True)
    write_text_atomic(os.path.join(args.out, "gpu_gemv.md"), "\n".join(md) + "\n")
    write_text_atomic(os.path.join(args.out, "gpu_gemv.json"),
                      json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print("\n".join(md))
    bad = [r["name"] for r in rows
           if max(r["gemv_err_vs_torch"], r["cublas_err_vs_torch"]) > 2e-2]
    if bad:
        print(f"outputs differ from torch's beyond bf16 rounding: {bad}", file=sys.stderr)
    missing = [r["name"] for r in rows if r["M"] <= GEMV_MAX_M and not r["gemv_ran_gemv"]]
    if missing:
        print(f"the GEMV did not run for: {missing}", file=sys.stderr)
    return 1 if bad or missing else 0


if __name__ == "__main__":
    sys.exit(main())
