"""GPU GEMM timings: samba_ext's cuBLAS GEMM (samba_ext.cuda.blas.matmul, the call the CUDA
model backend makes: y = x @ W^T, bf16 in, bf16 out, float32 accumulation) in each
SAMBA_EXT_GEMM mode (gemmex, lt, lt-tune) against torch.matmul on the same bf16 tensors, for
every GEMM shape of samba-1.7b.

Usage (on a machine with a CUDA GPU, torch installed, samba_ext built with CUDA):
    python3 benchmarks/gpu_gemm.py [--out DIR] [--commit SHA] [--modes gemmex,lt,lt-tune]

Shapes (K -> N): qkv 2048->2560, attn out 2048->2048, mamba in_proj 2048->8192, x_proj
4096->160, dt_proj 128->4096, out_proj 4096->2048, MLP gate 2048->8196 (the prefill's separate
gate and up GEMMs), gate+up 2048->16392 (decode's fused GEMM), down 8196->2048, the same three
with the hidden width padded to 8256 (the CUDA backend's default, a multiple of 64), lm head
2048->50304. Prefill: M = 16384 rows, reported in TFLOP/s (2 M N K). Decode: M = 1 and 16,
reported in TB/s of weight bytes (N K 2); the calls are captured in a CUDA graph (20 calls
over rotating weight copies, >= 256 MiB in rotation, so the weights are not served from L2)
and the replay time / 20 is reported.

Each mode runs in its own subprocess (SAMBA_EXT_GEMM is read once per process); torch is timed
in the gemmex one. Timing: median of CUDA-event samples after warm-up. Every case checks
samba_ext's output against torch's (relative norm). Writes DIR/gpu_gemm.md and
DIR/gpu_gemm.json (default DIR: benchmarks/results). About 30-60 s on an H200.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from typing import Any, Callable

from gpu_bench_util import git_commit, rel
from gpu_bench_util import median_ms as _median_ms

MODES = ("gemmex", "lt", "lt-tune")
F, FP = 8196, 8256
SHAPES = [  # (name, K, N)
    ("qkv", 2048, 2560), ("attn out", 2048, 2048), ("mamba in_proj", 2048, 8192),
    ("x_proj", 4096, 160), ("dt_proj", 128, 4096), ("mamba out_proj", 4096, 2048),
    ("mlp gate", 2048, F), ("mlp gate (padded)", 2048, FP),
    ("mlp gate+up", 2048, 2 * F), ("mlp gate+up (padded)", 2048, 2 * FP),
    ("mlp down", F, 2048), ("mlp down (padded)", FP, 2048),
    ("lm head", 2048, 50304),
]
PREFILL_M = 16384
DECODE_M = (1, 16)


# ------------------------------------------------------------------ shared helpers -------
def rotating_weights(N: int, K: int, generator: Any, min_bytes: int = 256 * 2**20) -> list:
    """Copies of a random bf16 (N, K) weight, scaled by K^-0.5, enough of them (2..64) that
    cycling through them reads >= min_bytes, so a timed burst is not served from L2 (one copy
    when min_bytes is 0)."""
    import torch

    n_w = 1 if min_bytes <= 0 else max(2, min(64, -(-min_bytes // (N * K * 2))))
    return [torch.randn(N, K, device="cuda", dtype=torch.bfloat16, generator=generator) * K ** -0.5
            for _ in range(n_w)]


def graph_ms_per_call(burst: Callable[[], Any], calls: int,
                      median_ms: Callable[[Callable[[], Any]], float], stream: Any = None) -> float:
    """burst() (``calls`` calls) run once eagerly on a side stream (workspaces, tuned choices),
    then captured in a CUDA graph; the median replay time / calls, in ms. ``stream``: the
    torch.cuda.Stream to capture on (default: a new one)."""
    import torch

    s = torch.cuda.Stream() if stream is None else stream
    s.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(s):
        burst()  # warm-up on the capture stream (workspace, lt-tune's choice)
        torch.cuda.synchronize()
        with torch.cuda.graph(graph, stream=s):
            burst()
    return median_ms(graph.replay) / calls


# ------------------------------------------------------------------ worker (one mode) -----
def _worker(mode: str, with_torch: bool) -> list[dict]:
    import torch

    from samba_ext.cuda import runtime
    from samba_ext.cuda.blas import matmul

    cu = runtime.require()
    got = int(cu.gemm_mode())
    if got != MODES.index(mode):
        raise RuntimeError(f"SAMBA_EXT_GEMM={mode} but the extension runs mode {got}")

    def median_ms(fn: Callable[[], Any]) -> float:
        return _median_ms(fn, warmup=2, reps=7)

    g = torch.Generator(device="cuda").manual_seed(0)

    def case(M: int, name: str, K: int, N: int) -> dict:
        wbytes = N * K * 2
        ws = rotating_weights(N, K, g, 0 if M == PREFILL_M else 256 * 2**20)
        n_w = len(ws)
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=g)
        y = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
        yt = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
        calls = 1 if M == PREFILL_M else 20

        def ours(i: int = 0) -> None:
            matmul(x, ws[i % n_w], trans_b=True, out_dtype="bfloat16", out=y)

        def theirs(i: int = 0) -> None:
            torch.matmul(x, ws[i % n_w].t(), out=yt)

        row = {"name": name, "M": M, "N": N, "K": K, "mode": mode}
        impls = [("samba_ext", ours)] + ([("torch", theirs)] if with_torch else [])
        for label, fn in impls:
            def burst(fn=fn) -> None:
                for i in range(calls):
                    fn(i)
            if M == PREFILL_M:
                t = median_ms(burst)
                row["timing"] = "eager"
            else:
                t = graph_ms_per_call(burst, calls, median_ms)
                row["timing"] = "graph"
            row[label + "_ms"] = t
            if M == PREFILL_M:
                row[label + "_tflops"] = 2 * M * N * K / (t * 1e-3) / 1e12
            else:
                row[label + "_tbs"] = wbytes / (t * 1e-3) / 1e12
        ours(0)
        torch.matmul(x, ws[0].t(), out=yt)
        row["err_vs_torch"] = rel(y, yt)
        return row

    rows = []
    for M in (PREFILL_M,) + DECODE_M:
        for name, K, N in SHAPES:
            rows.append(case(M, name, K, N))
            torch.cuda.empty_cache()
    return rows


# ------------------------------------------------------------------ report ---------------
def _fmt(x: Any, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def render(meta: dict, rows: list[dict], modes: list[str]) -> list[str]:
    by = {(r["mode"], r["name"], r["M"]): r for r in rows}
    out = ["# GPU GEMM timings (samba_ext cuBLAS modes vs torch.matmul)", "",
           f"{meta['date']}, commit {meta['commit']}, {meta['device']}, torch {meta['torch']}. "
           f"Command: `{meta['command']}`.", "",
           "bf16 x bf16 -> bf16, y = x @ W^T. Prefill: TFLOP/s (2MNK); decode: TB/s of weight "
           "bytes (CUDA graph of 20 calls over rotating weights).", ""]
    for M in (PREFILL_M,) + DECODE_M:
        unit = "TFLOP/s" if M == PREFILL_M else "TB/s"
        key = "_tflops" if M == PREFILL_M else "_tbs"
        out.append(f"## M = {M} ({'prefill' if M == PREFILL_M else 'decode'})")
        out.append("")
        hdr = "| GEMM | K | N | " + " | ".join(f"{m} ms | {m} {unit}" for m in modes)
        hdr += f" | torch ms | torch {unit} | best | max err |"
        out.append(hdr)
        out.append("|" + "---|" * (3 + 2 * len(modes) + 4))
        for name, K, N in SHAPES:
            cells = []
            best, best_t, err = None, None, 0.0
            for m in modes:
                r = by.get((m, name, M))
                t = r and r.get("samba_ext_ms")
                cells.append(f"{_fmt(t, '.4f')} | {_fmt(r and r.get('samba_ext' + key), '.1f' if M == PREFILL_M else '.2f')}")
                if t is not None and (best_t is None or t < best_t):
                    best, best_t = m, t
                if r:
                    err = max(err, r["err_vs_torch"])
            rt = next((by[(m, name, M)] for m in modes if (m, name, M) in by
                       and "torch_ms" in by[(m, name, M)]), None)
            tt = rt and rt["torch_ms"]
            cells.append(f"{_fmt(tt, '.4f')} | {_fmt(rt and rt.get('torch' + key), '.1f' if M == PREFILL_M else '.2f')}")
            if tt is not None and best_t is not None and tt < best_t:
                best = "torch"
            out.append(f"| {name} | {K} | {N} | " + " | ".join(cells) + f" | {best} | {err:.1e} |")
        out.append("")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "results"))
    ap.add_argument("--commit", default=os.environ.get("GIT_COMMIT"))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--worker", help=argparse.SUPPRESS)       # internal: one mode, JSON rows
    ap.add_argument("--with-torch", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("ROWS " + json.dumps(_worker(args.worker, args.with_torch)))
        return 0
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        print(f"--modes: expected a list of {', '.join(MODES)}; got {args.modes!r}",
              file=sys.stderr)
        return 2
    import torch

    from samba_ext.atomic import write_text_atomic

    commit = git_commit(args.commit)
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "commit": commit, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "command": "python3 benchmarks/gpu_gemm.py --modes " + ",".join(modes)}
    rows: list[dict] = []
    for i, m in enumerate(modes):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", m]
        if i == 0:
            cmd.append("--with-torch")
        env = dict(os.environ, SAMBA_EXT_GEMM=m)
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        got = [ln for ln in p.stdout.splitlines() if ln.startswith("ROWS ")]
        if p.returncode != 0 or not got:
            print(f"mode {m}: worker failed (rc {p.returncode})\n{p.stderr[-4000:]}",
                  file=sys.stderr)
            continue
        rows += json.loads(got[-1][5:])
    md = render(meta, rows, modes)
    os.makedirs(args.out, exist_ok=True)
    write_text_atomic(os.path.join(args.out, "gpu_gemm.md"), "\n".join(md) + "\n")
    write_text_atomic(os.path.join(args.out, "gpu_gemm.json"),
                      json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print("\n".join(md))
    return 0 if rows and len({r["mode"] for r in rows}) == len(modes) else 1


if __name__ == "__main__":
    sys.exit(main())
