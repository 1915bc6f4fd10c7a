"""Perplexity vs context for the bundled models, with the package's API.

The same held-out stdlib tokens (files with crc32(relpath) % 10 == 0, never trained on) are
scored twice per model:

* ``long``: one streaming pass over the first N tokens with the state carried, so the token at
  position p sees p tokens of context (up to 1M for samba-tiny);
* ``4K``: sliding windows of 4096 tokens (the training length) every 2048 tokens, scoring only
  the new tokens of each window (Press et al.), so every token sees 2K..4K tokens of context.

Both readings score the same tokens, so ``ratio = ppl_long / ppl_4K`` per position bucket
isolates the effect of the extra context: > 1 means the long context hurts. The check
"perplexity at 64K, 256K and 1M tokens of context stays within 5% of its value at the training
length" is read off the buckets [32K, 64K), [128K, 256K) and [512K, 1M): ratio <= 1.05.

    python3 benchmarks/bundled_ppl.py --out benchmarks/results/bundled/ppl [--threads 2]

Writes ``ppl.json`` (per-bucket values, the command, the machine) and ``ppl.png`` (both models,
one plot) in --out.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

import samba_ext
from samba_ext.eval.corpus import stdlib_tokens
from samba_ext.model import Samba

TRAIN_LEN = 4096
STRIDE = 2048


def sliding_nll(model: Samba, tok: np.ndarray, window: int = TRAIN_LEN, stride: int = STRIDE,
                batch: int = 8) -> np.ndarray:
    """nll[t] = -log p(tok[t+1] | at most `window` tokens ending at t), (N-1,) float64.

    Windows start every `stride` tokens; each scores the tokens it sees first (Press et al.)."""
    n = tok.size
    out = np.full(n - 1, np.nan)
    starts = list(range(0, max(n - window, 0) + 1, stride))
    if starts[-1] + window < n:
        starts.append(n - window)
    for i in range(0, len(starts), batch):
        group = starts[i:i + batch]
        rows = np.stack([tok[s:s + window] for s in group])
        nll = model.nll(rows)  # (b, window - 1)
        for s, r in zip(group, nll):
            # r[j] predicts token s+j+1 from j+1 tokens of context; a window scores the targets
            # from j = window - stride - 1 on (all of them for the first window), i.e. each
            # target with >= window - stride tokens of context; earlier windows keep theirs.
            lo = 0 if s == 0 else window - stride - 1
            dst = out[s + lo:s + r.size]
            out[s + lo:s + r.size] = np.where(np.isnan(dst), r[lo:], dst)
    assert not np.isnan(out).any(), "sliding windows left a token unscored"
    return out


def edges_for(n: int) -> list[int]:
    e = [0, TRAIN_LEN]
    while e[-1] * 2 <= n:
        e.append(e[-1] * 2)
    if e[-1] < n:
        e.append(n)
    return e


def buckets(nll_long: np.ndarray, nll_4k: np.ndarray, edges: list[int]) -> list[dict]:
    rows = []
    for a, b in zip(edges[:-1], edges[1:]):
        # nll index t predicts token t+1, which sees t+1 tokens of context: bucket by position t+1
        sl = slice(max(a - 1, 0), b - 1)
        lo, sh = float(np.mean(nll_long[sl])), float(np.mean(nll_4k[sl]))
        rows.append({"positions": [a, b], "tokens": int(nll_long[sl].size),
                     "ppl_long": float(np.exp(lo)), "ppl_4k": float(np.exp(sh)),
                     "ratio": float(np.exp(lo - sh))})
    return rows


def fmt(n: int) -> str:
    if n == 0:
        return "0"
    return f"{n >> 20}M" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n >> 10}K" if n % 1024 == 0 else str(n)


def run_model(name: str, n: int, chunk: int) -> dict:
    model = Samba.load(name)
    tok = stdlib_tokens(model.tokenizer, n, split="heldout")
    t0 = time.time()
    nll_long = model.nll(tok[None], chunk_size=chunk)[0]
    t_long = time.time() - t0
    t0 = time.time()
    nll_4k = sliding_nll(model, tok)
    t_4k = time.time() - t0
    rows = buckets(nll_long, nll_4k, edges_for(n))
    print(f"\n{name}: {n} held-out tokens; long pass {t_long:.1f} s, 4K sliding {t_4k:.1f} s")
    print(f"{'positions':>16} {'tokens':>8} {'ppl long':>9} {'ppl 4K':>8} {'ratio':>7}")
    for r in rows:
        a, b = r["positions"]
        print(f"{'[' + fmt(a) + ', ' + fmt(b) + ')':>16} {r['tokens']:>8} {r['ppl_long']:>9.3f} "
              f"{r['ppl_4k']:>8.3f} {r['ratio']:>7.3f}")
    return {"model": name, "tokens": n, "seconds_long": t_long, "seconds_4k": t_4k, "buckets": rows}


def plot(results: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for r, c in zip(results, ["tab:blue", "tab:red", "tab:green"]):
        b = r["buckets"][1:]  # from [4K, 8K) on
        x = [q["positions"][1] for q in b]
        ax[0].plot(x, [q["ppl_long"] for q in b], "o-", color=c, label=f"{r['model']}: full context")
        ax[0].plot(x, [q["ppl_4k"] for q in b], "s--", color=c, alpha=0.6,
                   label=f"{r['model']}: 4K sliding window")
        ax[1].plot(x, [q["ratio"] for q in b], "o-", color=c, label=r["model"])
    for a in ax:
        a.set_xscale("log", base=2)
        a.set_xlabel("position in the held-out stream (end of bucket, tokens)")
        a.axvline(TRAIN_LEN, color="gray", lw=0.8, ls=":")
    ax[0].set_yscale("log")
    ax[0].set_ylabel("perplexity (bucket)")
    ax[0].set_title("held-out stdlib text, byte tokens")
    ax[1].set_yscale("log")
    ax[1].axhline(1.05, color="gray", lw=0.8, ls="--")
    ax[1].set_ylabel("ppl with full context / ppl with 4K context")
    ax[1].set_title("same tokens; trained at 4K (dotted line)")
    ax[0].legend(fontsize=7)
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--samba-tokens", type=int, default=1 << 20)
    ap.add_argument("--llama-tokens", type=int, default=64 << 10,
                    help="llama-tiny is full attention: O(L^2) on the CPU (default 64K)")
    ap.add_argument("--chunk-size", type=int, default=4096)
    args = ap.parse_args(argv)
    if args.threads:
        samba_ext.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    res = [run_model("samba-tiny", args.samba_tokens, args.chunk_size),
           run_model("llama-tiny", args.llama_tokens, args.chunk_size)]
    check = {}
    for r in res:
        for q in r["buckets"]:
            if r["model"] == "samba-tiny" and q["positions"][1] in (64 << 10, 256 << 10, 1 << 20):
                check[fmt(q["positions"][1])] = {"ratio": q["ratio"], "pass": q["ratio"] <= 1.05}
    print("\nsamba-tiny, ppl at context C (tokens [C/2, C)) / ppl of the same tokens at 4K context:")
    for k, v in check.items():
        print(f"  {k:>5}: {v['ratio']:.4f}  {'PASS' if v['pass'] else 'FAIL'} (<= 1.05)")
    doc = {"command": "python3 benchmarks/bundled_ppl.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "package_version": samba_ext.__version__,
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                       "threads": args.threads, "loadavg_end": os.getloadavg()},
           "seconds": time.time() - t0, "check_samba_tiny": check, "results": res}
    with open(os.path.join(args.out, "ppl.json"), "w") as f:
        json.dump(doc, f, indent=1)
    try:
        plot(res, os.path.join(args.out, "ppl.png"))
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
    print(f"wrote {args.out}/ppl.json ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
