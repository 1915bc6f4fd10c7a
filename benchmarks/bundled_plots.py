"""Side-by-side passkey heatmaps of the bundled models on the paper's grid (1K..256K x 11 depths).

Reads the result JSONs written by ``benchmarks/bundled_eval.sh`` (CPU) and, where present, the GPU
run's ``gpu/passkey-llama-tiny-long`` for llama-tiny's cells beyond 32K (``benchmarks/cuda_bundled.sh``);
cells that were not run are drawn grey and labelled "n/a".

    python3 benchmarks/bundled_plots.py [--results benchmarks/results/bundled]

Writes ``passkey_grid.png`` in the results folder.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

LENGTHS = [1 << k for k in range(10, 19)]  # 1K .. 256K
DEPTHS = [round(0.1 * i, 1) for i in range(11)]


def grid(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy %, trials) arrays of shape (depths, lengths) merged from result files; NaN /
    0 where no file has the cell. Later files do not overwrite cells already filled, and a file
    measured on other weights than the first one found (another model hash) is left out."""
    acc = np.full((len(DEPTHS), len(LENGTHS)), np.nan)
    n = np.zeros_like(acc)
    ref: object = grid  # no file read yet (a value no hash can equal)
    for p in paths:
        if not os.path.isfile(p):
            continue
        with open(p) as f:
            doc = json.load(f)
        h = doc.get("model", {}).get("hash")
        ref = h if ref is grid else ref
        if h != ref:
            print(f"bundled_plots: leaving out {p}: model {h}, not {ref}")
            continue
        for c in doc["cells"]:
            if c["length"] not in LENGTHS or c["n"] == 0:
                continue
            i, j = DEPTHS.index(round(c["depth"], 1)), LENGTHS.index(c["length"])
            if np.isnan(acc[i, j]):
                acc[i, j], n[i, j] = 100.0 * c["correct"] / c["n"], c["n"]
    return acc, n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="benchmarks/results/bundled")
    args = ap.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    R = args.results
    panels = [
        ("samba-tiny (CPU, 2 threads)", [f"{R}/passkey-samba-tiny/results.json"]),
        ("llama-tiny (CPU to 32K, GPU beyond where run; grey: not run on this file)",
         [f"{R}/passkey-llama-tiny-cpu/results.json",
          f"{R}/gpu/passkey-llama-tiny-long/results.json"]),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    for ax, (title, paths) in zip(axes, panels):
        acc, n = grid(paths)
        shown = np.ma.masked_invalid(acc)
        cmap = matplotlib.colormaps["RdYlGn"].copy()
        cmap.set_bad("#dddddd")
        ax.imshow(shown, cmap=cmap, vmin=0, vmax=100, aspect="auto")
        for i in range(len(DEPTHS)):
            for j in range(len(LENGTHS)):
                txt = "n/a" if np.isnan(acc[i, j]) else f"{acc[i, j]:.0f}"
                ax.text(j, i, txt, ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(LENGTHS)), [f"{L >> 10}K" for L in LENGTHS])
        ax.set_yticks(range(len(DEPTHS)), [f"{d:.1f}" for d in DEPTHS])
        ax.set_xlabel("prompt length (tokens); trained at <= 4K")
        ax.set_ylabel("key depth")
        done = ~np.isnan(acc)
        overall = np.nansum(acc * n) / n[done].sum() if done.any() else float("nan")
        ax.set_title(f"{title}\n{int(n.sum())} trials, {overall:.1f}% correct", fontsize=10)
        ax.axvline(2.5, color="black", lw=1, ls=":")  # between 4K and 8K
    fig.suptitle("Passkey retrieval of the bundled models "
                 "(samba-ext passkey; 5 trials per cell, fewer where a run was stopped)")
    fig.tight_layout()
    out = os.path.join(R, "passkey_grid.png")
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
