"""training/phonebook_depth.py: the trials' books are rebuilt as the evaluation draws them, and each
trial lands in the depth bin of its queried entry."""
from __future__ import annotations

import os
import sys

import pytest

from samba_ext.eval.phonebook import load_names, trial_book

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "training"))
import phonebook_depth  # noqa: E402


def _doc(seed: int, sizes: list[int], trials: int) -> tuple[dict, dict]:
    """A result file shaped like `samba-ext phonebook`'s, marked correct when the queried entry is
    in the first half of the book; also the expected (correct, trials) per size and fifth."""
    names, cells, want = load_names(), [], {}
    for n in sizes:
        res, counts = [], [[0, 0] for _ in range(5)]
        for t in range(trials):
            book, _, _, c = trial_book(seed, n, t, names)
            ok = c < n / 2
            res.append({"query": book[c][0], "number": book[c][1], "correct": ok})
            counts[min(4, c * 5 // n)][0] += ok
            counts[min(4, c * 5 // n)][1] += 1
        cells.append({"entries": n, "results": res})
        want[n] = [tuple(x) for x in counts]
    return {"seed": seed, "cells": cells}, want


def test_bins_follow_the_queried_entry():
    doc, want = _doc(3, [10, 23], 40)
    got = dict(phonebook_depth.by_depth(doc))
    assert got == want
    assert sum(b for _, b in got[23]) == 40
    assert got[10][0][0] == got[10][0][1] and got[10][4][0] == 0  # first fifth right, last wrong


def test_a_file_from_another_seed_is_refused():
    doc, _ = _doc(3, [12], 4)
    doc["seed"] = 4
    with pytest.raises(ValueError, match="rebuilt book"):
        phonebook_depth.by_depth(doc)
