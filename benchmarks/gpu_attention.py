"""GPU attention timings: samba_ext against FlexAttention (sliding-window block mask,
torch.compile'd) and SDPA (flash backend), on the same tensors, in one run.

Usage (on a machine with a CUDA GPU, torch installed, samba_ext built with CUDA):
    python3 benchmarks/gpu_attention.py [--out DIR] [--quick] [--no-flex] [--commit SHA]

Prefill cases: bf16, batch 1, sliding window W = 2048 at L = 4K, 32K, 128K for (32 q heads,
4 kv heads, dim 64) and (12, 12, 128); full causal at 4K and 32K for (32, 4, 64). FLOPs are
counted over the (query, key) pairs inside the window: 4 * hd * H * sum_i min(i + 1, W).
Decode cases: one new token over a full ring-buffer cache, batch 1 and 16, caches 4K..128K,
(32, 4, 64) bf16; bytes = the K and V cache read once; compared with the bandwidth of a
measured device-to-device copy (bytes read + bytes written).

Timing: median of CUDA-event timings after warm-up. Decode calls are captured in a CUDA
graph (20 calls over rotating caches, so the caches are not served from L2) and the graph is
replayed; the time per call is the replay time / 20. Each case also checks samba_ext's output
against the peer's (relative norm), so a fast wrong kernel cannot pass unnoticed.
Writes DIR/gpu_attention.md and DIR/gpu_attention.json (default DIR: benchmarks/results).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

try:
    import torch
except ImportError:  # --render needs neither torch nor a GPU
    torch = None

import samba_ext

K = 1024


def median_ms(fn: Callable[[], Any], warmup: int = 3, reps: int = 15) -> float:
    """Median of `reps` CUDA-event timings of fn() after `warmup` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.float(), ref.float()
    return float((x - ref).norm() / ref.norm().clamp_min(1e-30))


def window_pairs(L: int, W: int | None) -> int:
    """Number of (query, key) pairs with key <= query and query - key < W."""
    if W is None or W >= L:
        return L * (L + 1) // 2
    return W * (W + 1) // 2 + (L - W) * W


def copy_bandwidth() -> float:
    """Device-to-device copy of 2 GiB, bytes read + written per second (median)."""
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda").random_()
    b = torch.empty_like(a)
    t = median_ms(lambda: b.copy_(a), warmup=3, reps=10)
    return 2 * n / (t * 1e-3)


# ------------------------------------------------------------------ prefill --------------
def make_flex(L: int, W: int | None, H: int, Hkv: int):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def mask(b, h, qi, ki):
        m = qi >= ki
        if W is not None:
            m = m & (qi - ki < W)
        return m

    bm = torch.compile(create_block_mask)(mask, None, None, L, L, device="cuda")
    fa = torch.compile(flex_attention, dynamic=False)
    return lambda q, k, v: fa(q, k, v, block_mask=bm, enable_gqa=(H != Hkv))


def sdpa_flash(q, k, v, H: int, Hkv: int):
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if H != Hkv:  # the flash backend takes equal heads: expand K/V once, outside the timing
        k = k.repeat_interleave(H // Hkv, dim=1)
        v = v.repeat_interleave(H // Hkv, dim=1)

    def run():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return run


def prefill_case(L: int, H: int, Hkv: int, hd: int, W: int | None, peers: list[str],
                 reps: int) -> dict:
    g = torch.Generator(device="cuda").manual_seed(L + H + hd)
    q = torch.randn(1, L, H, hd, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, L, Hkv, hd, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(1, L, Hkv, hd, device="cuda", dtype=torch.bfloat16, generator=g)
    out = torch.empty_like(q)
    ours = lambda: samba_ext.swa_attention(q, k, v, W, out=out)
    flops = 4 * hd * H * window_pairs(L, W)
    row: dict = {"kind": "swa" if W else "causal", "L": L, "H": H, "Hkv": Hkv, "hd": hd,
                 "W": W, "flops": flops}
    row["samba_ext_ms"] = median_ms(ours, reps=reps)
    ours()
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # (B, H, L, hd) views
    for peer in peers:
        try:
            if peer == "flex":
                fn = make_flex(L, W, H, Hkv)
                run = lambda fn=fn: fn(qt, kt, vt)
            else:
                if W is not None and W < L:
                    continue  # SDPA has no sliding window
                run = sdpa_flash(qt, kt, vt, H, Hkv)
            row[f"{peer}_ms"] = median_ms(run, reps=reps)
            row[f"{peer}_err"] = rel_err(out, run().transpose(1, 2))
        except Exception as e:  # noqa: BLE001 - a peer that cannot run is reported, not fatal
            row[f"{peer}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    for key in ("samba_ext", *peers):
        if f"{key}_ms" in row:
            row[f"{key}_tflops"] = flops / (row[f"{key}_ms"] * 1e-3) / 1e12
    return row


# ------------------------------------------------------------------ decode ---------------
def decode_case(B: int, C: int, H: int, Hkv: int, hd: int, copy_bw: float) -> dict:
    g = torch.Generator(device="cuda").manual_seed(C + B)
    cache_bytes = 2 * B * C * Hkv * hd * 2
    n_sets = max(2, min(64, -(-512 * 2**20 // cache_bytes)))  # >= 512 MiB in rotation
    sets = []
    for _ in range(n_sets):
        kc = torch.randn(B, C, Hkv, hd, device="cuda", dtype=torch.bfloat16, generator=g)
        vc = torch.randn(B, C, Hkv, hd, device="cuda", dtype=torch.bfloat16, generator=g)
        sets.append((kc, vc))
    q = torch.randn(B, H, hd, device="cuda", dtype=torch.bfloat16, generator=g)
    out = torch.empty_like(q)
    pos = torch.full((B,), C + 123, device="cuda", dtype=torch.int32)
    nv = torch.full((B,), C, device="cuda", dtype=torch.int32)
    calls = 20

    def burst():
        for i in range(calls):
            kc, vc = sets[i % n_sets]
            samba_ext.swa_decode(q, kc, vc, pos, nv, out=out)

    row: dict = {"kind": "decode", "B": B, "C": C, "H": H, "Hkv": Hkv, "hd": hd,
                 "bytes": cache_bytes}
    burst()
    torch.cuda.synchronize()
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(s):
            burst()  # warm-up on the capture stream
            torch.cuda.synchronize()
            with torch.cuda.graph(graph, stream=s):
                burst()
        t = median_ms(graph.replay, warmup=2, reps=10) / calls
        row["timing"] = "graph"
    except Exception as e:  # noqa: BLE001 - no graph capture: time the eager calls
        row["timing"] = f"eager ({type(e).__name__})"
        t = median_ms(burst, warmup=2, reps=10) / calls
    row["samba_ext_ms"] = t
    row["bandwidth"] = cache_bytes / (t * 1e-3)
    row["vs_copy"] = row["bandwidth"] / copy_bw
    # correctness spot check against a float32 torch computation (the last set)
    kc, vc = sets[(calls - 1) % n_sets]
    samba_ext.swa_decode(q, kc, vc, pos, nv, out=out)
    G = H // Hkv
    kk = kc.float().repeat_interleave(G, dim=2)  # (B, C, H, hd); order of slots is irrelevant
    vv = vc.float().repeat_interleave(G, dim=2)
    s_ = torch.einsum("bhd,bchd->bhc", q.float(), kk) / hd ** 0.5
    ref = torch.einsum("bhc,bchd->bhd", s_.softmax(-1), vv)
    row["err_vs_torch"] = rel_err(out, ref)
    return row


# ------------------------------------------------------------------ report ---------------
def fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def table(rows: list[dict], peers: list[str]) -> list[str]:
    lines = ["| case | samba_ext ms | TFLOP/s | " + " | ".join(
        f"{p} ms | {p} TFLOP/s | samba_ext / {p}" for p in peers) + " | max rel. err vs peer |",
        "|---" * (4 + 3 * len(peers)) + "|"]
    for r in rows:
        if r["kind"] == "decode":
            continue
        name = (f"{r['kind']} L={r['L'] // K}K" + (f" W={r['W']}" if r["W"] else "") +
                f" ({r['H']},{r['Hkv']},d{r['hd']})")
        cells = [name, fmt(r["samba_ext_ms"]), fmt(r.get("samba_ext_tflops"), ".0f")]
        errs = []
        for p in peers:
            t = r.get(f"{p}_ms")
            cells += [fmt(t) if t else r.get(f"{p}_error", "-")[:40],
                      fmt(r.get(f"{p}_tflops"), ".0f"),
                      fmt(r["samba_ext_ms"] / t, ".2f") + "x" if t else "-"]
            if f"{p}_err" in r:
                errs.append(r[f"{p}_err"])
        cells.append(fmt(max(errs), ".1e") if errs else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def decode_table(rows: list[dict], copy_bw: float) -> list[str]:
    lines = [f"Copy bandwidth (device-to-device, read + write): {copy_bw / 1e12:.2f} TB/s", "",
             "| case | cache MiB | samba_ext us | GB/s | of copy bw | timing | rel. err |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] != "decode":
            continue
        lines.append(f"| decode B={r['B']} C={r['C'] // K}K ({r['H']},{r['Hkv']},d{r['hd']}) | "
                     f"{r['bytes'] / 2**20:.0f} | {r['samba_ext_ms'] * 1e3:.1f} | "
                     f"{r['bandwidth'] / 1e9:.0f} | {100 * r['vs_copy']:.0f}% | {r['timing']} | "
                     f"{r['err_vs_torch']:.1e} |")
    return lines


def targets(rows: list[dict]) -> list[str]:
    """Issue #17's targets against this run: met or missed, and by how much."""
    out = ["## Targets (issue #17)", "",
           "| target | case | ratio / share | met |", "|---|---|---|---|"]
    for r in rows:
        if r["kind"] == "swa" and r.get("flex_ms"):
            x = r["samba_ext_ms"] / r["flex_ms"]
            out.append(f"| SWA <= 1.0x FlexAttention (goal 0.67x) | L={r['L'] // K}K "
                       f"({r['H']},{r['Hkv']},d{r['hd']}) | {x:.2f}x | "
                       f"{'yes' if x <= 1.0 else f'no, {100 * (x - 1):.0f}% slower'} |")
        elif r["kind"] == "causal" and r.get("sdpa_ms"):
            x = r["samba_ext_ms"] / r["sdpa_ms"]
            out.append(f"| causal <= 1.25x SDPA | L={r['L'] // K}K ({r['H']},{r['Hkv']},"
                       f"d{r['hd']}) | {x:.2f}x | "
                       f"{'yes' if x <= 1.25 else f'no, {100 * (x / 1.25 - 1):.0f}% over'} |")
        elif r["kind"] == "decode":
            x = r["vs_copy"]
            out.append(f"| decode >= 70% of copy bandwidth | B={r['B']} C={r['C'] // K}K | "
                       f"{100 * x:.0f}% | "
                       f"{'yes' if x >= 0.7 else f'no, {100 * (0.7 - x):.0f} points short'} |")
    out += ["", "Why a target is missed, and what comes next: gpu_attention_notes.md.", ""]
    return out


def render(meta: dict, rows: list[dict], peers: list[str]) -> list[str]:
    """The markdown report of one run."""
    knob = (f"SAMBA_EXT_ATTN_ROWS={meta['attn_rows']}" if "attn_rows" in meta else
            f"SAMBA_EXT_ATTN_WARPS={meta.get('attn_warps', '4')}")
    return ["# GPU attention: samba_ext vs FlexAttention and SDPA", "",
            (f"{meta['date']}, commit {meta['commit']}, {meta['device']}, torch {meta['torch']}, "
             f"command `{meta['command']}` ({knob})."), "",
            ("bf16, batch 1; times are medians of CUDA-event timings after warm-up; TFLOP/s "
             "count 4 * hd * H FLOPs per (query, key) pair inside the window."), "",
            *table(rows, peers), "", *decode_table(rows, meta["copy_bandwidth"]), "",
            *targets(rows)]


def write_atomic(path: str, text: str) -> None:
    d = os.path.dirname(path) or "."
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _args_without_out(argv: list[str]) -> list[str]:
    """The command-line arguments minus --out DIR (a machine path, not part of the method)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--out":
            skip = True
        elif not a.startswith("--out="):
            out.append(a)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    ap.add_argument("--quick", action="store_true", help="4K/32K prefill, fewer decode sizes")
    ap.add_argument("--no-flex", action="store_true", help="skip FlexAttention (compile time)")
    ap.add_argument("--commit", default=os.environ.get("GIT_COMMIT"))
    ap.add_argument("--prefill-only", action="store_true", help="skip the decode cases")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--render", metavar="JSON",
                    help="rewrite DIR/gpu_attention.md from a saved gpu_attention.json (no GPU)")
    args = ap.parse_args()
    if args.render:
        with open(args.render) as f:
            saved = json.load(f)
        peers = saved.get("peers") or ["flex", "sdpa"]
        write_atomic(os.path.join(args.out, "gpu_attention.md"),
                     "\n".join(render(saved["meta"], saved["rows"], peers)))
        return 0
    if torch is None or not torch.cuda.is_available() or not samba_ext.cuda_available():
        print("needs a CUDA GPU, torch with CUDA and samba_ext built with CUDA", file=sys.stderr)
        return 2
    commit = args.commit
    if not commit:
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True, check=True).stdout.strip()
        except Exception:  # noqa: BLE001 - no git: the commit is unknown
            commit = "unknown"
    peers = ["sdpa"] if args.no_flex else ["flex", "sdpa"]
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "commit": commit, "device": torch.cuda.get_device_name(),
            "torch": torch.__version__, "command": "python3 benchmarks/gpu_attention.py " +
            " ".join(_args_without_out(sys.argv[1:])),
            "attn_rows": os.environ.get("SAMBA_EXT_ATTN_ROWS", "default"),
            "copy_bandwidth": copy_bandwidth()}
    rows: list[dict] = []

    def report() -> list[str]:  # rewritten after every case, so a cut-short run keeps its rows
        md = render(meta, rows, peers)
        write_atomic(os.path.join(args.out, "gpu_attention.md"), "\n".join(md))
        write_atomic(os.path.join(args.out, "gpu_attention.json"),
                     json.dumps({"meta": meta, "rows": rows, "peers": peers}, indent=1) + "\n")
        return md

    def add(row: dict) -> None:
        rows.append(row)
        torch.cuda.empty_cache()
        print(row, flush=True)
        report()

    lens = [4 * K, 32 * K] if args.quick else [4 * K, 32 * K, 128 * K]
    for H, Hkv, hd in ((32, 4, 64), (12, 12, 128)):
        for L in lens:
            add(prefill_case(L, H, Hkv, hd, 2048, peers, args.reps))
    for L in (4 * K, 32 * K):
        add(prefill_case(L, 32, 4, 64, None, peers, args.reps))
    caches = [4 * K, 32 * K, 128 * K] if args.quick else [4 * K, 16 * K, 32 * K, 64 * K, 128 * K]
    for B in () if args.prefill_only else (1, 16):
        for C in caches:
            add(decode_case(B, C, 32, 4, 64, meta["copy_bandwidth"]))
    print("\n".join(report()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
