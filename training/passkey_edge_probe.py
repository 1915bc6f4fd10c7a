"""Passkey accuracy where the key line crosses samba-tiny's SWA window edge.

The SWA layers see the last ``window`` tokens; beyond them only the Mamba state carries the key. This
probe places the key line so that it ends ``window - 72 .. window + 72`` tokens before the end of the
prompt (every 12 tokens; the line itself is ~58 tokens, so about five of these positions straddle the
edge), at three prompt lengths, and prints correct/trials per position. A model that hands the key
over cleanly between attention and the Mamba state scores 100% everywhere (see
docs/training.md, "The window edge").

    python3 training/passkey_edge_probe.py [MODEL] [--lengths 1024,2048,4096] [--trials 3] [--seed 1]

MODEL: a bundled name or a .safetensors file (default samba-tiny). Package kernels, CPU.
"""

from __future__ import annotations

import argparse

from samba_ext import Samba
from samba_ext.eval import build_passkey_prompt, passkey

KEY_LINE_END = " is the pass key."  # the key line's last words in the package's template


def tokens_after_key_line(tokenizer, length: int, depth: float) -> int:
    """Tokens between the end of the key line and the end of the ``length``-token prompt."""
    text = build_passkey_prompt(tokenizer, length, depth, key=12345).text
    return len(tokenizer.encode(text[text.index(KEY_LINE_END) + len(KEY_LINE_END) :]))


def edge_depths(tokenizer, length: int, ends: list[int]) -> list[tuple[int, float]]:
    """(end, depth) pairs: the depth that puts the key line's end ``end`` tokens before the prompt's
    end (linear in depth between the two extremes, exact to about one token)."""
    e0, e1 = tokens_after_key_line(tokenizer, length, 0.0), tokens_after_key_line(tokenizer, length, 1.0)
    return [(e, round((e0 - e) / (e0 - e1), 4)) for e in ends if e1 <= e <= e0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default="samba-tiny")
    ap.add_argument("--lengths", default="1024,2048,4096")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    m = Samba.load(args.model)
    W = m.config.window
    if W is None:
        raise SystemExit(f"{args.model} has no attention window")
    ends = list(range(W - 72, W + 73, 12))
    print(f"window {W}; cells are E:correct/trials, E = tokens after the key line's end")
    bad = 0
    for L in (int(x) for x in args.lengths.split(",")):
        pairs = edge_depths(m.tokenizer, L, ends)
        r = passkey(m, lengths=[L], depths=[d for _, d in pairs], trials=args.trials, seed=args.seed, progress=False)
        bad += sum(c["n"] - c["correct"] for c in r.cells)
        print(L, " ".join(f"{e}:{c['correct']}/{c['n']}" for (e, _), c in zip(pairs, r.cells)), flush=True)
    print(f"wrong: {bad}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
