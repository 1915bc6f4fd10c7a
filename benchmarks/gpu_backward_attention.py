"""GPU attention backward timings: samba_ext.grad.attention_bwd against FlexAttention's backward
(sliding-window block mask, torch.compile'd) and SDPA's backward, on the same tensors, in one run.

Usage (on a machine with a CUDA GPU, torch installed, samba_ext built with CUDA):
    python3 benchmarks/gpu_backward_attention.py [--out DIR] [--no-flex] [--reps N] [--commit SHA]
        [--variants mma,wgmma,wgmma2,wgmma2-keys,wgmma2-heavy] [--trace] [--queued N]

Cases: bf16, batch 1, 32 query heads, 4 kv heads, head dim 64: sliding window W = 2048 at
L = 4K and 16K, full causal at 4K; and 12 heads of dim 128 (no GQA) with W = 2048 at 4K.
Variants of samba_ext's tensor-core backward, timed in interleaved rounds (median_ms_rounds):
"mma" (attention_bwd_mma.cu), "wgmma" and "wgmma2" (attention_bwd_wgmma.cu, sm_90a, one or two
warpgroups per block: SAMBA_EXT_ATTN_BWD_WGMMA_WG; selected with SAMBA_EXT_ATTN_BWD_WGMMA=require,
so a call it cannot run fails instead of timing the other kernel; a variant that fails is
reported and left out); "wgmma2-keys" and "wgmma2-heavy": wgmma2 with its block order forced
(SAMBA_EXT_ATTN_BWD_ORDER; the others pick it per call). The fastest is the samba_ext column.
Only the backward is timed: samba_ext's from the out / lse of its own forward
(grad.attention_fwd), the peers' as torch.autograd.grad of a forward kept alive (retain_graph).
SDPA: the flash backend with is_causal=True for the causal case; for the sliding window (which
the flash backend cannot mask) SDPA with a boolean (L, L) mask, the backend torch picks
(efficient attention), reported as "sdpa (mask)".
FLOPs: the backward's five products count 10 * hd * H FLOPs per (query, key) pair inside the
window. Timing: median of CUDA-event timings after warm-up. Every case also compares samba_ext's
dq, dk, dv with the peer's (relative norm), so a fast wrong kernel cannot pass unnoticed.
--trace: also record, through torch.profiler (CUPTI), the device time of every kernel of
samba_ext's fastest variant and of FlexAttention's backward (microseconds per call, 5 calls),
so that the event-timed call can be split into kernels and the gaps between them.
--queued N (N >= 2): also time N calls queued back to back per sample (the time per call), for
samba_ext's fastest variant and each peer: the device then never waits on the host between calls,
so the ratio compares the devices' work, while the single-call columns include each side's
host time before its first kernel (as a training step that waits on the result pays it).
Writes DIR/gpu_backward_attention.md and .json (default DIR: benchmarks/results), with the date,
commit, device and the tuning knobs of the tensor-core kernel: SAMBA_EXT_ATTN_BWD_SPLIT (blocks
per group of query heads; default: enough blocks for the device) and SAMBA_EXT_ATTN_BWD_WARPS
(4 or 8 warps per block at head dim 64; default 8).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from typing import Any

try:
    import torch
except ImportError:  # --render needs neither torch nor a GPU
    torch = None

from gpu_bench_util import (command_line, git_commit, kernel_us, median_ms, median_ms_rounds,
                            write_atomic)

import samba_ext
from samba_ext import grad

K = 1024
PEERS = ["flex", "sdpa"]


def rel_err(x: Any, ref: Any) -> float:
    x, ref = torch.from_dlpack(x).float() if not torch.is_tensor(x) else x.float(), ref.float()
    return float((x - ref).norm() / ref.norm().clamp_min(1e-30))


def window_pairs(L: int, W: int | None) -> int:
    """Number of (query, key) pairs with key <= query and query - key < W."""
    if W is None or W >= L:
        return L * (L + 1) // 2
    return W * (W + 1) // 2 + (L - W) * W


def flex_backward(q, k, v, do, L: int, W: int | None, gqa: bool):
    """(run, back, forward): run() runs FlexAttention's backward of one kept forward -> grads,
    back(grads) puts them in samba_ext's layout, forward() runs a new forward that records its
    graph (the forward of a training step)."""
    import torch._functorch.config as functorch_config
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    # the timed backward reruns one kept graph (retain_graph=True); a compiled backward that
    # donates its saved buffers refuses that after a recompile ("non-empty donated buffers")
    functorch_config.donated_buffer = False

    def mask(b, h, qi, ki):
        m = qi >= ki
        if W is not None:
            m = m & (qi - ki < W)
        return m

    bm = torch.compile(create_block_mask)(mask, None, None, L, L, device="cuda")
    fa = torch.compile(flex_attention, dynamic=False)
    qt, kt, vt = (x.detach().transpose(1, 2).requires_grad_() for x in (q, k, v))
    out = fa(qt, kt, vt, block_mask=bm, enable_gqa=gqa)
    dot = do.transpose(1, 2)

    def run():
        return torch.autograd.grad(out, (qt, kt, vt), dot, retain_graph=True)

    def forward():
        return fa(qt, kt, vt, block_mask=bm, enable_gqa=gqa)
    return run, lambda g: [x.transpose(1, 2) for x in g], forward


def sdpa_backward(q, k, v, do, L: int, W: int | None, H: int, Hkv: int):
    """SDPA's backward: flash backend for full causal, a boolean mask for a window."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    G = H // Hkv
    qt = q.detach().transpose(1, 2).requires_grad_()
    kt0, vt0 = (x.detach().transpose(1, 2).requires_grad_() for x in (k, v))
    kt, vt = (x.repeat_interleave(G, dim=1) if G > 1 else x for x in (kt0, vt0))
    if W is None or W >= L:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
        name = "sdpa"
    else:
        i = torch.arange(L, device="cuda")
        m = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < W)
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=m)
        name = "sdpa (mask)"
    dot = do.transpose(1, 2)

    def run():  # the repeat_interleave's backward (sum over the group) is part of the cost
        return torch.autograd.grad(out, (qt, kt0, vt0), dot, retain_graph=True)
    return run, lambda g: [x.transpose(1, 2) for x in g], name


# the settings of each variant: SAMBA_EXT_ATTN_BWD_WGMMA, SAMBA_EXT_ATTN_BWD_WGMMA_WG and
# SAMBA_EXT_ATTN_BWD_ORDER (None: unset, the block order picked per call; the last two variants
# force one order for an A/B of the pick)
VARIANT_ENV = {"mma": ("0", "1", None), "wgmma": ("require", "1", None),
               "wgmma2": ("require", "2", None), "wgmma2-keys": ("require", "2", "keys"),
               "wgmma2-heavy": ("require", "2", "heavy")}
KNOBS = ("SAMBA_EXT_ATTN_BWD_WGMMA", "SAMBA_EXT_ATTN_BWD_WGMMA_WG", "SAMBA_EXT_ATTN_BWD_ORDER")


def select_variant(name: str | None) -> None:
    """Selects samba_ext's backward kernel by its settings; None restores the caller's."""
    for i, knob in enumerate(KNOBS):
        value = _ENV_BEFORE[i] if name is None else VARIANT_ENV[name][i]
        if value is None:
            os.environ.pop(knob, None)
        else:
            os.environ[knob] = value


_ENV_BEFORE = tuple(os.environ.get(k) for k in KNOBS)


def case(L: int, H: int, Hkv: int, hd: int, W: int | None, peers: list[str], reps: int,
         variants: list[str], trace: bool = False, queued: int = 0) -> dict:
    g = torch.Generator(device="cuda").manual_seed(L + H + hd)
    q = torch.randn(1, L, H, hd, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, L, Hkv, hd, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(1, L, Hkv, hd, device="cuda", dtype=torch.bfloat16, generator=g)
    do = torch.randn(1, L, H, hd, device="cuda", dtype=torch.bfloat16, generator=g)
    ws = (-1 if W is None else W - 1, 0)
    out, lse = grad.attention_fwd(q, k, v, None, True, ws)

    def ours():
        return grad.attention_bwd(q, k, v, None, True, ws, dout=do, out=out, lse=lse)
    flops = 10 * hd * H * window_pairs(L, W)
    row: dict = {"kind": "swa" if W else "causal", "L": L, "H": H, "Hkv": Hkv, "hd": hd,
                 "W": W, "flops": flops}
    grads: dict = {}
    for name in variants:  # a variant that cannot run here is reported and left out
        select_variant(name)
        try:
            grads[name] = ours()
        except ValueError as e:
            row[f"variant_{name}_error"] = str(e)[:200]
    select_variant(None)
    if not grads:
        raise RuntimeError(f"no samba_ext variant ran: {row}")
    times = median_ms_rounds({name: ours for name in grads}, reps=reps, before=select_variant)
    select_variant(None)
    for name, t in times.items():
        row[f"samba_ext_{name}_ms"] = t
    best = min(times, key=times.get)
    row["samba_ext_variant"], row["samba_ext_ms"] = best, times[best]
    mine = grads[best]
    if trace or queued:
        select_variant(best)
        if trace:
            row["samba_ext_kernels_us"] = kernel_us(ours)
        if queued:
            row["samba_ext_queued_ms"] = median_ms(ours, reps=reps, calls=queued)
        select_variant(None)
    if len(grads) > 1:  # the variants against each other (rounding order only)
        first = next(iter(grads))
        row["variant_err"] = max(rel_err(a, torch.from_dlpack(b)) for w in grads if w != first
                                 for a, b in zip(grads[w], grads[first]))
    row["samba_ext_fwd_ms"] = median_ms(
        lambda: grad.attention_fwd(q, k, v, None, True, ws), reps=reps)
    for peer in peers:
        try:
            if peer == "flex":
                run, back, forward = flex_backward(q, k, v, do, L, W, H != Hkv)
                name = "flex"
                row["flex_fwd_ms"] = median_ms(forward, reps=reps)
            else:
                run, back, name = sdpa_backward(q, k, v, do, L, W, H, Hkv)
            row[f"{peer}_name"] = name
            row[f"{peer}_ms"] = median_ms(run, reps=reps)
            if trace:
                row[f"{peer}_kernels_us"] = kernel_us(run)
            if queued:
                row[f"{peer}_queued_ms"] = median_ms(run, reps=reps, calls=queued)
            theirs = back(run())
            row[f"{peer}_err"] = max(rel_err(a, b) for a, b in zip(mine, theirs))
        except Exception as e:  # noqa: BLE001 - a peer that cannot run is reported, not fatal
            row[f"{peer}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
        torch.cuda.empty_cache()
    for key in ("samba_ext", *peers):
        if f"{key}_ms" in row:
            row[f"{key}_tflops"] = flops / (row[f"{key}_ms"] * 1e-3) / 1e12
    return row


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def variants_of(rows: list[dict]) -> list[str]:
    """The samba_ext variants timed in these rows, in VARIANT_ENV's order (none in old runs)."""
    return [v for v in VARIANT_ENV if any(f"samba_ext_{v}_ms" in r for r in rows)]


def table(rows: list[dict], peers: list[str]) -> list[str]:
    vs = variants_of(rows)
    lines = ["| case | " + "".join(f"{v} ms | " for v in vs) +
             "samba_ext bwd ms | TFLOP/s | (fwd+lse ms) | " + " | ".join(
                 f"{p} bwd ms | {p} TFLOP/s | samba_ext / {p}" for p in peers) +
             " | max rel. err vs peers |" + (" variants' rel. diff |" if len(vs) > 1 else ""),
             "|---" * (5 + len(vs) + 3 * len(peers) + (len(vs) > 1)) + "|"]
    for r in rows:
        name = (f"{r['kind']} L={r['L'] // K}K" + (f" W={r['W']}" if r["W"] else "") +
                f" ({r['H']},{r['Hkv']},d{r['hd']})")
        cells = [name, *(fmt(r.get(f"samba_ext_{v}_ms")) if f"samba_ext_{v}_ms" in r else
                         ("failed" if f"variant_{v}_error" in r else "-") for v in vs),
                 fmt(r["samba_ext_ms"]) + (f" ({r['samba_ext_variant']})" if vs else ""),
                 fmt(r.get("samba_ext_tflops"), ".0f"), fmt(r.get("samba_ext_fwd_ms"))]
        errs = []
        for p in peers:
            t = r.get(f"{p}_ms")
            label = r.get(f"{p}_name", p)
            cells += [(fmt(t) + ("" if label == p else f" ({label})")) if t
                      else r.get(f"{p}_error", "-")[:40],
                      fmt(r.get(f"{p}_tflops"), ".0f"),
                      fmt(r["samba_ext_ms"] / t, ".2f") + "x" if t else "-"]
            if f"{p}_err" in r:
                errs.append(r[f"{p}_err"])
        cells.append(fmt(max(errs), ".1e") if errs else "-")
        if len(vs) > 1:
            cells.append(fmt(r.get("variant_err"), ".1e"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def targets(rows: list[dict]) -> list[str]:
    out = ["## Target", "", "| target | case | ratio | met |", "|---|---|---|---|"]
    for r in rows:
        if r.get("flex_ms"):
            x = r["samba_ext_ms"] / r["flex_ms"]
            out.append(f"| backward <= 1.0x FlexAttention's | {r['kind']} L={r['L'] // K}K "
                       f"({r['H']},{r['Hkv']},d{r['hd']}) | {x:.2f}x | "
                       f"{'yes' if x <= 1.0 else f'no, {100 * (x - 1):.0f}% slower'} |")
    return out + [""]


def render(meta: dict, rows: list[dict], peers: list[str]) -> list[str]:
    return ["# GPU attention backward: samba_ext vs FlexAttention and SDPA", "",
            (f"{meta['date']}, commit {meta['commit']}, {meta['device']}, torch {meta['torch']}, "
             f"command `{meta['command']}` (SAMBA_EXT_ATTN_BWD_SPLIT={meta['split']}, "
             f"SAMBA_EXT_ATTN_BWD_WARPS={meta.get('warps', '8')})."), "",
            ("bf16, batch 1; backward only (dq, dk, dv from saved out / lse); medians of "
             "CUDA-event timings after warm-up; TFLOP/s count 10 * hd * H FLOPs per (query, key) "
             "pair inside the window. The error column compares samba_ext's gradients with each "
             "peer's (relative norm, the largest of dq, dk, dv)."), "",
            *table(rows, peers), "", *targets(rows), *forward_table(rows),
            *queued_table(meta, rows, peers),
            *kernel_tables(rows, peers)]


def forward_table(rows: list[dict]) -> list[str]:
    """The forwards that produce what the backward needs: samba_ext's grad.attention_fwd (out
    and lse) against FlexAttention's forward on inputs that require gradients."""
    if not any(r.get("flex_fwd_ms") for r in rows):
        return []
    out = ["## Forward of a training step", "",
           "samba_ext's grad.attention_fwd (out and lse) against FlexAttention's forward on "
           "inputs that require gradients (it saves what its backward needs); single calls, "
           "timed as above.", "",
           "| case | samba_ext fwd ms | flex fwd ms | samba_ext / flex |", "|---|---|---|---|"]
    for r in rows:
        t, f = r.get("samba_ext_fwd_ms"), r.get("flex_fwd_ms")
        if t and f:
            out.append(f"| {r['kind']} L={r['L'] // K}K ({r['H']},{r['Hkv']},d{r['hd']}) | "
                       f"{fmt(t)} | {fmt(f)} | {t / f:.2f}x |")
    return out + [""]


def queued_table(meta: dict, rows: list[dict], peers: list[str]) -> list[str]:
    """--queued's times per call of N calls back to back (none without --queued)."""
    if not any("samba_ext_queued_ms" in r for r in rows):
        return []
    out = ["## Queued calls (--queued)", "",
           f"Milliseconds per call of {meta.get('queued', '?')} calls queued back to back in one "
           "sample (median over the samples): the device does not wait on the host between "
           "calls, so these ratios compare the work on the device.", "",
           "| case | samba_ext ms | " + " | ".join(f"{p} ms | samba_ext / {p}" for p in peers)
           + " |", "|---" * (2 + 2 * len(peers)) + "|"]
    for r in rows:
        if "samba_ext_queued_ms" not in r:
            continue
        t0 = r["samba_ext_queued_ms"]
        cells = [f"{r['kind']} L={r['L'] // K}K ({r['H']},{r['Hkv']},d{r['hd']})", fmt(t0)]
        for p in peers:
            t = r.get(f"{p}_queued_ms")
            cells += [fmt(t), fmt(t0 / t, ".2f") + "x" if t else "-"]
        out.append("| " + " | ".join(cells) + " |")
    return out + [""]


def kernel_tables(rows: list[dict], peers: list[str]) -> list[str]:
    """--trace's per-kernel device times, one table per case (none without --trace)."""
    out: list[str] = []
    for r in rows:
        for key in ("samba_ext", *peers):
            ks = r.get(f"{key}_kernels_us")
            if not ks:
                continue
            if not out:
                out = ["", "## Kernels (--trace: device us per call, torch.profiler)", "",
                       "The event-timed call minus the kernels' sum is about the time the "
                       "device sat idle inside the timed span (waiting on the host's launches "
                       "and Python, or between kernels)."]
            call_us = 1e3 * r[f"{key}_ms"]
            out += ["", f"{r['kind']} L={r['L'] // K}K ({r['H']},{r['Hkv']},d{r['hd']}), {key}: "
                    f"call {call_us:.0f} us, kernels {ks['(all kernels)']:.0f} us", "",
                    "| kernel | us per call |", "|---|---|"]
            out += [f"| `{n}` | {t:.1f} |" for n, t in sorted(ks.items(), key=lambda kv: -kv[1])
                    if n != "(all kernels)"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    ap.add_argument("--no-flex", action="store_true", help="skip FlexAttention (compile time)")
    ap.add_argument("--commit", default=os.environ.get("GIT_COMMIT"))
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--variants", default="mma,wgmma,wgmma2",
                    help="samba_ext kernels to time, comma-separated: mma, wgmma, wgmma2, "
                         "wgmma2-keys, wgmma2-heavy")
    ap.add_argument("--trace", action="store_true",
                    help="record each kernel's device time (torch.profiler) as well")
    ap.add_argument("--queued", type=int, default=0, metavar="N",
                    help="also time N calls queued back to back (N >= 2; 0: not)")
    ap.add_argument("--render", metavar="JSON",
                    help="rewrite DIR/gpu_backward_attention.md from a saved .json (no GPU)")
    args = ap.parse_args()
    if args.render:
        with open(args.render) as f:
            saved = json.load(f)
        write_atomic(os.path.join(args.out, "gpu_backward_attention.md"),
                     "\n".join(render(saved["meta"], saved["rows"], saved["peers"])))
        return 0
    if torch is None or not torch.cuda.is_available() or not samba_ext.cuda_available():
        print("needs a CUDA GPU, torch with CUDA and samba_ext built with CUDA", file=sys.stderr)
        return 2
    commit = git_commit(args.commit)
    peers = ["sdpa"] if args.no_flex else PEERS
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "commit": commit, "device": torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "command": command_line("gpu_backward_attention.py", sys.argv[1:]),
            "split": os.environ.get("SAMBA_EXT_ATTN_BWD_SPLIT", "auto"),
            "warps": os.environ.get("SAMBA_EXT_ATTN_BWD_WARPS", "8")}
    rows: list[dict] = []

    def report() -> list[str]:  # rewritten after every case, so a cut-short run keeps its rows
        md = render(meta, rows, peers)
        write_atomic(os.path.join(args.out, "gpu_backward_attention.md"), "\n".join(md))
        write_atomic(os.path.join(args.out, "gpu_backward_attention.json"),
                     json.dumps({"meta": meta, "rows": rows, "peers": peers}, indent=1) + "\n")
        return md

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANT_ENV]
    if bad or not variants:
        ap.error(f"--variants: names from {', '.join(VARIANT_ENV)}, got {args.variants!r}")
    meta["variants"] = variants
    if args.queued == 1 or args.queued < 0:
        ap.error(f"--queued: N >= 2 calls per sample (0: not timed), got {args.queued}")
    if args.queued:
        meta["queued"] = args.queued
    for L, W, H, Hkv, hd in ((4 * K, 2048, 32, 4, 64), (16 * K, 2048, 32, 4, 64),
                             (4 * K, None, 32, 4, 64), (4 * K, 2048, 12, 12, 128)):
        rows.append(case(L, H, Hkv, hd, W, peers, args.reps, variants, args.trace,
                         args.queued))
        torch.cuda.empty_cache()
        print(rows[-1], flush=True)
        report()
    print("\n".join(report()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
