"""Passkey accuracy where the key line crosses samba-tiny's SWA window edge.

The SWA layers see the last ``window`` tokens; beyond them only the Mamba state carries the key. This
probe places the key line so that it ends 440..590 tokens before the end of the prompt (every 12
tokens), at three prompt lengths, and prints correct/trials per depth. A model that hands the key over
cleanly between attention and the Mamba state scores 100% everywhere; round 9's ``pk3`` failed in a
band of ~20-30 tokens just beyond the 512-token window (benchmarks/results/train_tiny.md, round 9).

    python3 python/passkey_edge_probe.py [MODEL] [--trials 3] [--seed 1]

MODEL: a bundled name or a .safetensors file (default samba-tiny). Package kernels, CPU.
"""
from __future__ import annotations

import argparse

from samba_ext import Samba
from samba_ext.eval import passkey

FIXED = 170  # bytes of the passkey template outside the filler (byte tokenizer)


def edge_depths(length: int, ends=range(440, 600, 12)) -> list[float]:
    """Depths whose key line ends about ``e`` tokens before the end of a ``length``-token prompt."""
    n = length - FIXED
    return [d for d in (round(1 - (e + 20) / n, 3) for e in ends) if 0 <= d <= 1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default="samba-tiny")
    ap.add_argument("--lengths", default="1024,2048,4096")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    m = Samba.load(args.model)
    print(f"window {m.config.window}; cells are depth:correct/trials")
    bad = 0
    for L in (int(x) for x in args.lengths.split(",")):
        r = passkey(m, lengths=[L], depths=edge_depths(L), trials=args.trials, seed=args.seed,
                    progress=False)
        bad += sum(c["n"] - c["correct"] for c in r.cells)
        print(L, " ".join(f"{c['depth']:.3f}:{c['correct']}/{c['n']}" for c in r.cells), flush=True)
    print(f"wrong: {bad}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
