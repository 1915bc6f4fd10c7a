"""Phonebook accuracy by where the queried entry sits in the book.

Rebuilds each trial's book from a ``samba-ext phonebook`` result file (the evaluation draws trial t of
a book size n with ``samba_ext.eval.phonebook.trial_book``), finds the queried entry's line and
prints, per book size, the accuracy in each fifth of the book (first fifth = the entries farthest
from the question). Needs only NumPy and the package.

    python3 training/phonebook_depth.py benchmarks/results/llama_tiny_phonebook100/long10cpu/results.json
"""

from __future__ import annotations

import argparse
import json


from samba_ext.eval.phonebook import load_names, trial_book


def by_depth(doc: dict, bins: int = 5) -> list[tuple[int, list[tuple[int, int]]]]:
    """[(entries, [(correct, trials) per depth bin])] for every cell of a phonebook result."""
    seed, names = int(doc["seed"]), load_names()
    out = []
    for cell in doc["cells"]:
        n = int(cell["entries"])
        counts = [[0, 0] for _ in range(bins)]
        for t, r in enumerate(cell["results"]):
            book, _, _, c = trial_book(seed, n, t, names)
            if book[c][0] != r["query"]:
                raise ValueError(
                    f"{n} entries, trial {t}: the rebuilt book asks {book[c][0]!r}, "
                    f"the file {r['query']!r} (another names list or seed?)"
                )
            k = min(bins - 1, c * bins // n)
            counts[k][0] += bool(r["correct"])
            counts[k][1] += 1
        out.append((n, [(a, b) for a, b in counts]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", help="results.json of `samba-ext phonebook`")
    ap.add_argument("--bins", type=int, default=5)
    args = ap.parse_args(argv)
    with open(args.results) as f:
        doc = json.load(f)
    print(
        f"accuracy by the queried entry's place in the book ({args.bins} bins, first = farthest "
        f"from the question); correct/trials"
    )
    for n, counts in by_depth(doc, args.bins):
        cells = "  ".join(f"{a / b:4.0%} ({a}/{b})" if b else "   -" for a, b in counts)
        print(f"{n:4d} entries: {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
