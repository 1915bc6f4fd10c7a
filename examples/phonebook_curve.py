"""Phonebook lookup accuracy vs book size (Jelassi et al. 2024, as in ArchScale).

python3 examples/phonebook_curve.py --entries 20,40,80 --trials 5
"""

from __future__ import annotations

import argparse

from samba_ext.eval import get_model, phonebook
from samba_ext.eval.phonebook import make_phonebook, phonebook_prompt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--entries", default="20,40,80")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--png", default=None, help="save the accuracy curve here")
    args = ap.parse_args()

    # What one prompt looks like (a 4-entry book, examples 0 and 1, query 2):
    import numpy as np

    book = make_phonebook(np.random.default_rng(args.seed), 4)
    print(phonebook_prompt(book, 0, 1, 2), "<- the model continues here\n")

    model = get_model(args.model)
    result = phonebook(model, entries=[int(x) for x in args.entries.split(",")], trials=args.trials, seed=args.seed)
    print(result)
    if args.png:
        result.plot(args.png)
        print("wrote", args.png)


if __name__ == "__main__":
    main()
