"""GPU attention timings: samba_ext against FlexAttention (sliding-window block mask,
torch.compile'd) and SDPA (flash backend), on the same tensors, in one run.

Usage (on a machine with a CUDA GPU, torch installed, samba_ext built with CUDA):
    python3 benchmarks/gpu_attention.py [--out DIR] [--quick] [--no-flex] [--commit SHA]
                                        [--variants v1,v2,v3,v4]

Prefill cases: bf16, batch 1, sliding window W = 2048 at L = 4K, 32K, 128K for (32 q heads,
4 kv heads, dim 64) and (12, 12, 128), at 4K and 32K for (32, 32, 96); full causal at 4K and
32K for (32, 4, 64). FLOPs are counted over the (query, key) pairs inside the window:
4 * hd * H * sum_i min(i + 1, W).

Variants: every case times each tensor-core variant of samba_ext named in --variants (prefill
v1, v2, v3, v4 - v4 is the sm_90a wgmma kernel, dropped with a message where it cannot run,
and may name its key tile, ring depth and schedule, "v4b128s3skew" -; decode v1, v2, v2a /
v2e - v2 with row-aligned blocks (the default) / the even split; "auto" is the build's default
choice), switched in-process
through the private selector samba_ext._cuda._attn_variant, on the same tensors as the peers. The
"samba_ext" columns and the targets use the fastest variant of each case and name it.
Decode cases: one new token over a full ring-buffer cache, batch 1 and 16, caches 4K..128K,
(32, 4, 64) bf16; bytes = the K and V cache read once; compared with the bandwidth of a
measured device-to-device copy (bytes read + bytes written).

Timing: median of CUDA-event timings after warm-up; a sample times enough back-to-back calls
to last >= 1 ms (the same count for every implementation of a case), so that launch jitter of
sub-millisecond kernels does not dominate, and the samples of a prefill case's variants and
peers are interleaved (one of each per round; the peers compiled and run once before), so that
clock drift during the run weighs on all of them alike. Decode calls are captured in a CUDA
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
import re
import sys
from collections.abc import Callable
from typing import Any

try:
    import torch
except ImportError:  # --render needs neither torch nor a GPU
    torch = None

from gpu_bench_util import (command_line, copy_bandwidth_Bps, git_commit, median_ms,
                            median_ms_rounds, write_atomic)

import samba_ext

K = 1024


def calls_per_sample(fn: Callable[[], Any], target_ms: float = 1.0) -> int:
    """Back-to-back calls of fn() that last about target_ms (at least 1, at most 64)."""
    t = median_ms(fn, warmup=2, reps=3)
    return max(1, min(64, int(target_ms / max(t, 1e-3)) + 1))


def set_variant(which: int, name: str) -> None:
    """Selects a tensor-core variant ("auto", "v1" .. "v4"); which 0 prefill, 1 decode.

    A prefill v4 name may carry its tuning knobs (the kernel reads them on every call): "v4b128"
    sets SAMBA_EXT_ATTN_V4_BK=128; "v4s3" the ring depth, SAMBA_EXT_ATTN_V4_STAGES=3, with the
    warpgroups in step (SAMBA_EXT_ATTN_V4_SKEW=0) unless the name ends in "skew" (skewed,
    SAMBA_EXT_ATTN_V4_SKEW=1, as in "v4s3skew"), "alt" (alternating, 2) or "tma" (alternating with
    tensor-memory loads, SAMBA_EXT_ATTN_V4_TMA=1);
    plain "v4" is the library's default (alternating, 4 stages at head dim 64, 3 at 128). A decode
    name ending in "a" ("v2a") sets SAMBA_EXT_ATTN_DECODE_ALIGN=1 (row-aligned blocks, the
    default), in "e" ("v2e") 0 (the even split).
    """
    from samba_ext.cuda import runtime

    m = re.fullmatch(r"v(\d)(?:b(\d+))?(?:s(\d))?(skew|alt|tma)?(a|e)?", name)
    if which == 1:  # "v2a" / "v2e": the row-aligned / even block split of decode v2
        if m and m.group(5):
            os.environ["SAMBA_EXT_ATTN_DECODE_ALIGN"] = "1" if m.group(5) == "a" else "0"
        else:
            os.environ.pop("SAMBA_EXT_ATTN_DECODE_ALIGN", None)
    if which == 0:
        skew = ({"skew": "1", "alt": "2", "tma": "2"}[m.group(4)] if m.group(4) else "0"
                if m.group(3) else None) if m else None
        for key, val in (("BK", m.group(2) if m else None), ("STAGES", m.group(3) if m else None),
                         ("SKEW", skew), ("TMA", "1" if m and m.group(4) == "tma" else None)):
            if val:
                os.environ[f"SAMBA_EXT_ATTN_V4_{key}"] = val
            else:
                os.environ.pop(f"SAMBA_EXT_ATTN_V4_{key}", None)
    runtime.require()._attn_variant(which, 0 if name == "auto" else int(m.group(1)))


def v4_unavailable() -> str | None:
    """None when prefill v4 (sm_90a wgmma) runs on this device and build, else the reason."""
    x = torch.zeros(1, 8, 1, 64, device="cuda", dtype=torch.bfloat16)
    try:
        set_variant(0, "v4")
        samba_ext.swa_attention(x, x, x, None)
        return None
    except ValueError as e:
        return str(e)
    finally:
        set_variant(0, "auto")


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.float(), ref.float()
    return float((x - ref).norm() / ref.norm().clamp_min(1e-30))


def window_pairs(L: int, W: int | None) -> int:
    """Number of (query, key) pairs with key <= query and query - key < W."""
    if W is None or W >= L:
        return L * (L + 1) // 2
    return W * (W + 1) // 2 + (L - W) * W


# ------------------------------------------------------------------ prefill --------------
def make_flex(L: int, W: int | None, H: int, Hkv: int):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def mask(b, h, qi, ki):
        m = qi >= ki
        if W is not None:
            m = m & (qi - ki < W)
        return m

    # every case is a new shape, i.e. a recompile: past dynamo's limit (8) flex_attention would
    # silently run its unfused eager path (materialised scores: 60x slower, out of memory at 32K)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
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
                 reps: int, variants: list[str]) -> dict:
    g = torch.Generator(device="cuda").manual_seed(L + H + hd)
    q = torch.randn(1, L, H, hd, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, L, Hkv, hd, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(1, L, Hkv, hd, device="cuda", dtype=torch.bfloat16, generator=g)
    out = torch.empty_like(q)
    ours = lambda: samba_ext.swa_attention(q, k, v, W, out=out)
    flops = 4 * hd * H * window_pairs(L, W)
    row: dict = {"kind": "swa" if W else "causal", "L": L, "H": H, "Hkv": Hkv, "hd": hd,
                 "W": W, "flops": flops, "variants": {var: {} for var in variants}}
    set_variant(0, variants[0])
    calls = calls_per_sample(ours)
    row["calls_per_sample"] = calls
    outs = {}
    for var in variants:
        set_variant(0, var)
        ours()
        outs[var] = out.clone()
    # the peers: built (compiled) and run once before any timing, a failure reported per peer
    runs: dict[str, Callable[[], Any]] = {}
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # (B, H, L, hd) views
    for peer in peers:
        if peer == "sdpa" and W is not None and W < L:
            continue  # SDPA has no sliding window
        try:
            if peer == "flex":
                fn = make_flex(L, W, H, Hkv)
                run = lambda fn=fn: fn(qt, kt, vt)
            else:
                run = sdpa_flash(qt, kt, vt, H, Hkv)
            ref = run().transpose(1, 2)
            for var in variants:
                row["variants"][var][f"err_{peer}"] = rel_err(outs[var], ref)
            row[f"{peer}_err"] = max(row["variants"][x][f"err_{peer}"] for x in variants)
            runs[peer] = run
        except Exception as e:  # noqa: BLE001 - a peer that cannot run is reported, not fatal
            row[f"{peer}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    # every variant and peer timed in interleaved rounds (median_ms_rounds)
    impls: dict[str, Callable[[], Any]] = {f"v:{var}": ours for var in variants}
    impls.update({f"p:{peer}": run for peer, run in runs.items()})
    ms = median_ms_rounds(impls, reps=reps, calls=calls,
                          before=lambda name: set_variant(0, name[2:]) if name[0] == "v" else None)
    set_variant(0, "auto")
    for var in variants:
        row["variants"][var]["ms"] = ms[f"v:{var}"]
    for peer in runs:
        row[f"{peer}_ms"] = ms[f"p:{peer}"]
    best = min(row["variants"], key=lambda x: row["variants"][x]["ms"])
    row["best"] = best
    row["samba_ext_ms"] = row["variants"][best]["ms"]
    for var in variants:
        row["variants"][var]["tflops"] = flops / (row["variants"][var]["ms"] * 1e-3) / 1e12
    for key in ("samba_ext", *peers):
        if f"{key}_ms" in row:
            row[f"{key}_tflops"] = flops / (row[f"{key}_ms"] * 1e-3) / 1e12
    return row


# ------------------------------------------------------------------ decode ---------------
def decode_case(B: int, C: int, H: int, Hkv: int, hd: int, copy_bw: float,
                variants: list[str]) -> dict:
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
    G = H // Hkv
    kc, vc = sets[(calls - 1) % n_sets]
    kk = kc.float().repeat_interleave(G, dim=2)  # (B, C, H, hd); order of slots is irrelevant
    vv = vc.float().repeat_interleave(G, dim=2)
    s_ = torch.einsum("bhd,bchd->bhc", q.float(), kk) / hd ** 0.5
    ref = torch.einsum("bhc,bchd->bhd", s_.softmax(-1), vv)
    del kk, vv, s_

    def burst():
        for i in range(calls):
            kc, vc = sets[i % n_sets]
            samba_ext.swa_decode(q, kc, vc, pos, nv, out=out)

    row: dict = {"kind": "decode", "B": B, "C": C, "H": H, "Hkv": Hkv, "hd": hd,
                 "bytes": cache_bytes, "variants": {}}
    for var in variants:
        set_variant(1, var)
        r: dict = {}
        burst()
        torch.cuda.synchronize()
        try:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.stream(s):
                burst()  # warm-up on the capture stream (v2 sizes its workspace here)
                torch.cuda.synchronize()
                with torch.cuda.graph(graph, stream=s):
                    burst()
            t = median_ms(graph.replay, warmup=2, reps=10) / calls
            r["timing"] = "graph"
            del graph
        except Exception as e:  # noqa: BLE001 - no graph capture: time the eager calls
            r["timing"] = f"eager ({type(e).__name__})"
            t = median_ms(burst, warmup=2, reps=10) / calls
        r["ms"] = t
        r["bandwidth"] = cache_bytes / (t * 1e-3)
        r["vs_copy"] = r["bandwidth"] / copy_bw
        # correctness spot check against a float32 torch computation (the last set)
        samba_ext.swa_decode(q, kc, vc, pos, nv, out=out)
        r["err_vs_torch"] = rel_err(out, ref)
        row["variants"][var] = r
    set_variant(1, "auto")
    row.update(same_size_copy(sets, calls, cache_bytes))
    best = min(row["variants"], key=lambda x: row["variants"][x]["ms"])
    row["best"] = best
    for key in ("ms", "bandwidth", "vs_copy", "timing", "err_vs_torch"):
        row["samba_ext_" + key if key == "ms" else key] = row["variants"][best][key]
    return row


def same_size_copy(sets: list, calls: int, cache_bytes: int) -> dict:
    """The bandwidth a plain copy kernel reaches at the decode's size, timed like the decode: a
    graph of ``calls`` copies of one K cache (half the bytes read, the same amount written, so
    the traffic equals one read of K and V) over the rotating sets. For caches of a few MiB the
    fixed cost of a launch is most of the time, and this is the ceiling at that size. The copy
    is an element-wise kernel (x * 1), not ``copy_``: a captured ``copy_`` becomes a memcpy
    node, which ran on the copy engines at 2.6 TB/s for 1 GiB on the H200."""
    dst = torch.empty_like(sets[0][0])

    def burst():
        for i in range(calls):
            torch.mul(sets[i % len(sets)][0], 1, out=dst)

    burst()
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(s):
        burst()
        torch.cuda.synchronize()
        with torch.cuda.graph(graph, stream=s):
            burst()
    t = median_ms(graph.replay, warmup=2, reps=10) / calls
    del graph
    return {"copy_same_ms": t, "copy_same_bandwidth": cache_bytes / (t * 1e-3)}


# ------------------------------------------------------------------ report ---------------
def fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def _variants(r: dict) -> dict:
    """{variant: {"ms": ...}} of a row (a row of an older run has one, "samba_ext")."""
    return r.get("variants") or {"samba_ext": {"ms": r["samba_ext_ms"]}}


def _variant_names(rows: list[dict], kind: str) -> list[str]:
    names: list[str] = []
    for r in rows:
        if (r["kind"] == "decode") == (kind == "decode"):
            names += [v for v in _variants(r) if v not in names]
    return names


def case_name(r: dict) -> str:
    if r["kind"] == "decode":
        return f"decode B={r['B']} C={r['C'] // K}K ({r['H']},{r['Hkv']},d{r['hd']})"
    return (f"{r['kind']} L={r['L'] // K}K" + (f" W={r['W']}" if r["W"] else "") +
            f" ({r['H']},{r['Hkv']},d{r['hd']})")


def table(rows: list[dict], peers: list[str]) -> list[str]:
    names = _variant_names(rows, "prefill")
    lines = ["| case | " + " | ".join(f"{v} ms" for v in names) + " | best | TFLOP/s | " +
             " | ".join(f"{p} ms | {p} TFLOP/s | best / {p}" for p in peers) +
             " | max rel. err vs peer |",
             "|---" * (4 + len(names) + 3 * len(peers)) + "|"]
    for r in rows:
        if r["kind"] == "decode":
            continue
        var = _variants(r)
        cells = [case_name(r)] + [fmt(var.get(v, {}).get("ms")) for v in names]
        cells += [r.get("best", "-"), fmt(r.get("samba_ext_tflops"), ".0f")]
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
    names = _variant_names(rows, "decode")
    lines = [f"Copy bandwidth (device-to-device, read + write): {copy_bw / 1e12:.2f} TB/s", "",
             "| case | cache MiB | " + " | ".join(f"{v} us" for v in names) +
             " | best | GB/s | of copy bw | same-size copy us | of same-size copy | timing |"
             " max rel. err |",
             "|---" * (9 + len(names)) + "|"]
    for r in rows:
        if r["kind"] != "decode":
            continue
        var = _variants(r)
        us = [fmt(var[v]["ms"] * 1e3, ".1f") if v in var else "-" for v in names]
        err = max(x.get("err_vs_torch", r.get("err_vs_torch", 0.0)) for x in var.values())
        same_us, same_share = "-", "-"
        if r.get("copy_same_ms"):
            same_us = fmt(r["copy_same_ms"] * 1e3, ".1f")
            same_share = f"{100 * r['bandwidth'] / r['copy_same_bandwidth']:.0f}%"
        lines.append(f"| {case_name(r)} | {r['bytes'] / 2**20:.0f} | " + " | ".join(us) +
                     f" | {r.get('best', '-')} | {r['bandwidth'] / 1e9:.0f} | "
                     f"{100 * r['vs_copy']:.0f}% | {same_us} | {same_share} | {r['timing']} | "
                     f"{err:.1e} |")
    lines += ["", "Same-size copy: a graph of 20 copies of one K cache (read + write = the decode's "
              "bytes) by an element-wise kernel, timed like the decode; for caches of a few MiB a "
              "launch's fixed cost is most of its time, so this is about the bandwidth any kernel "
              "reading that much reaches.", ""]
    return lines


ISSUE_SWA_HEADS = {(32, 4, 64), (12, 12, 128)}  # the heads of issue #17's SWA target


def targets(rows: list[dict]) -> list[str]:
    """Issue #17's targets against this run (fastest variant of each case): met or missed,
    and by how much."""
    out = ["## Targets (issue #17)", "",
           "| target | case | ratio / share (variant) | met |", "|---|---|---|---|"]
    for r in rows:
        best = f" ({r['best']})" if "best" in r else ""
        if (r["kind"] == "swa" and r.get("flex_ms") and
                (r["H"], r["Hkv"], r["hd"]) in ISSUE_SWA_HEADS):
            x = r["samba_ext_ms"] / r["flex_ms"]
            out.append(f"| SWA <= 1.0x FlexAttention (goal 0.67x) | L={r['L'] // K}K "
                       f"({r['H']},{r['Hkv']},d{r['hd']}) | {x:.2f}x{best} | "
                       f"{'yes' if x <= 1.0 else f'no, {100 * (x - 1):.0f}% slower'} |")
        elif r["kind"] == "causal" and r.get("sdpa_ms"):
            x = r["samba_ext_ms"] / r["sdpa_ms"]
            out.append(f"| causal <= 1.25x SDPA | L={r['L'] // K}K ({r['H']},{r['Hkv']},"
                       f"d{r['hd']}) | {x:.2f}x{best} | "
                       f"{'yes' if x <= 1.25 else f'no, {100 * (x / 1.25 - 1):.0f}% over'} |")
        elif r["kind"] == "decode":
            x = r["vs_copy"]
            out.append(f"| decode >= 70% of copy bandwidth | B={r['B']} C={r['C'] // K}K | "
                       f"{100 * x:.0f}%{best} | "
                       f"{'yes' if x >= 0.7 else f'no, {100 * (0.7 - x):.0f} points short'} |")
    out += ["", "Why a target is missed, and what comes next: gpu_attention_notes.md.", ""]
    return out


def render(meta: dict, rows: list[dict], peers: list[str]) -> list[str]:
    """The markdown report of one run."""
    if "variants" in meta:
        knob = "variants " + ", ".join(meta["variants"])
    elif "attn_rows" in meta:
        knob = f"SAMBA_EXT_ATTN_ROWS={meta['attn_rows']}"
    else:
        knob = f"SAMBA_EXT_ATTN_WARPS={meta.get('attn_warps', '4')}"
    return ["# GPU attention: samba_ext vs FlexAttention and SDPA", "",
            (f"{meta['date']}, commit {meta['commit']}, {meta['device']}, torch {meta['torch']}, "
             f"command `{meta['command']}` ({knob})."), "",
            ("bf16, batch 1 (prefill); times are medians of CUDA-event timings after warm-up; "
             "TFLOP/s count 4 * hd * H FLOPs per (query, key) pair inside the window. One column "
             "per samba_ext variant (prefill v1 attention_mma.cu, v2 / v3 attention_mma_v2.cu; "
             "decode v1 attention_decode.cu, v2 attention_decode_v2.cu); best = the fastest, "
             "which the TFLOP/s, ratio and bandwidth columns use."), "",
            *table(rows, peers), "",
            *(decode_table(rows, meta["copy_bandwidth"]) + [""]
              if any(r["kind"] == "decode" for r in rows) else []),
            *targets(rows)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    ap.add_argument("--quick", action="store_true", help="4K/32K prefill, fewer decode sizes")
    ap.add_argument("--no-flex", action="store_true", help="skip FlexAttention (compile time)")
    ap.add_argument("--commit", default=os.environ.get("GIT_COMMIT"))
    ap.add_argument("--prefill-only", action="store_true", help="skip the decode cases")
    ap.add_argument("--decode-only", action="store_true", help="skip the prefill cases")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--variants", default="v1,v2,v3",
                    help="comma-separated samba_ext variants to time: v1, v2, v3, v4 (prefill "
                         "only; v4 needs sm_90a) or auto (the default choice)")
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
    commit = git_commit(args.commit)
    peers = ["sdpa"] if args.no_flex else ["flex", "sdpa"]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants
           if v not in ("auto", "v1", "v2", "v3", "v2a", "v2e")
           and not re.fullmatch(r"v4(b(64|128))?(s[234])?(skew|alt|tma)?", v)]
    if bad or not variants:
        print(f"--variants: expected a list of auto, v1, v2, v3, v4 (v4 with b64 / b128, s2 / s3 "
              f"/ s4, skew / alt / tma, e.g. v4b128s3skew), v2a / v2e (decode); got {args.variants!r}",
              file=sys.stderr)
        return 2
    if any(v.startswith("v4") for v in variants) and (why := v4_unavailable()):
        print(f"--variants: dropping v4: {why}", file=sys.stderr)
        variants = [v for v in variants if not v.startswith("v4")] or ["auto"]
    dec_variants = [v for v in variants if v not in ("v3",) and not v.startswith("v4")] or ["auto"]
    variants = [v for v in variants if v not in ("v2a", "v2e")] or ["auto"]  # decode settings only
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "commit": commit, "device": torch.cuda.get_device_name(),
            "torch": torch.__version__, "command": command_line("gpu_attention.py", sys.argv[1:]),
            "variants": variants,
            "copy_bandwidth": copy_bandwidth_Bps()}
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
    for H, Hkv, hd in () if args.decode_only else ((32, 4, 64), (12, 12, 128), (32, 32, 96)):
        for L in (lens if hd != 96 else [4 * K, 32 * K]):
            add(prefill_case(L, H, Hkv, hd, 2048, peers, args.reps, variants))
    for L in () if args.decode_only else (4 * K, 32 * K):
        add(prefill_case(L, 32, 4, 64, None, peers, args.reps, variants))
    caches = [4 * K, 32 * K, 128 * K] if args.quick else [4 * K, 16 * K, 32 * K, 64 * K, 128 * K]
    for B in () if args.prefill_only else (1, 16):
        for C in caches:
            add(decode_case(B, C, 32, 4, 64, meta["copy_bandwidth"], dec_variants))
    print("\n".join(report()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
