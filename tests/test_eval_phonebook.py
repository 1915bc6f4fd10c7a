"""Phonebook evaluation: book and prompt format (ArchScale / Jelassi et al.), scoring, the
shipped names list, an end-to-end run on the real model, JSON round trip."""
from __future__ import annotations

import re

import numpy as np
import pytest

from samba_ext import Samba, SambaConfig
from samba_ext.eval import load_result, phonebook
from samba_ext.eval.phonebook import (load_names, make_phonebook, phone_number,
                                      phonebook_prompt, score_phonebook)

ENTRY = re.compile(r"^[A-Z][a-z]+ [A-Z][a-z]+: [6-9]\d{9}$")


def test_names_list_is_shipped_and_clean():
    first, last = load_names()
    assert len(first) >= 150 and len(last) >= 150
    for n in first + last:
        assert re.fullmatch(r"[A-Z][a-z]+", n), n
    assert len(set(first)) == len(first) and len(set(last)) == len(last)


def test_names_file_errors(tmp_path):
    p = tmp_path / "names.txt"
    p.write_text("Alice\n[first]\nBob\n[last]\nSmith\n")
    with pytest.raises(ValueError, match="before a"):
        load_names(str(p))
    p.write_text("[first]\nBob\n[middle]\nX\n")
    with pytest.raises(ValueError, match="unknown section"):
        load_names(str(p))


def test_phone_numbers(rng):
    nums = [phone_number(rng) for _ in range(2000)]
    assert all(re.fullmatch(r"[6-9]\d{9}", n) for n in nums)
    assert {n[0] for n in nums} == set("6789")          # every allowed first digit occurs
    assert len({n[5] for n in nums}) == 10              # other digits are free


@pytest.mark.parametrize("n", [3, 20, 480])
def test_book_and_prompt_format(rng, n):
    book = make_phonebook(rng, n)
    assert len(book) == n and len({name for name, _ in book}) == n   # distinct names
    a, b, c = rng.choice(n, size=3, replace=False)
    text = phonebook_prompt(book, int(a), int(b), int(c))
    parts = text.split("\n\n")
    assert len(parts) == 3
    lines = parts[0].split("\n")
    assert lines == [f"{nm}: {ph}" for nm, ph in book]
    assert all(ENTRY.match(x) for x in lines)
    assert parts[1].split("\n") == [lines[a], lines[b]]         # two few-shot examples
    assert parts[2] == book[c][0] + ":"                         # the query, no space after ':'
    assert parts[2][:-1] not in (book[a][0], book[b][0])


def test_book_size_errors(rng):
    with pytest.raises(ValueError, match="entries"):
        make_phonebook(rng, 2)
    first, last = load_names()
    with pytest.raises(ValueError, match="entries"):
        make_phonebook(rng, len(first) * len(last) + 1)


@pytest.mark.parametrize("output,number,ok", [
    (" 6123456789\nAlice Smith: 7000000000", "6123456789", True),
    ("6123456789", "6123456789", True),
    (" 6123456789 \n", "6123456789", True),
    (" 61234567890", "6123456789", False),
    (" 612345678", "6123456789", False),
    ("\n6123456789", "6123456789", False),    # the first line is empty
    (" 6123456789.", "6123456789", False),
    ("", "6123456789", False),
])
def test_score_phonebook(output, number, ok):
    assert score_phonebook(output, number) is ok


def test_phonebook_end_to_end(tmp_path):
    model = Samba(SambaConfig.preset("samba-test"), seed=2)
    r = phonebook(model, entries=[5, 12], trials=3, seed=4, progress=False)
    assert not r.partial and [c["entries"] for c in r.cells] == [5, 12]
    total = 0
    for c in r.cells:
        assert c["n"] == 3 and len(c["results"]) == 3
        for t in c["results"]:
            assert t["correct"] == score_phonebook(t["output"], t["number"])
            assert re.fullmatch(r"[6-9]\d{9}", t["number"])
            assert t["tokens"] > 0
        assert c["correct"] == sum(t["correct"] for t in c["results"])
        assert c["tokens_mean"] == pytest.approx(np.mean([t["tokens"] for t in c["results"]]))
        total += c["correct"]
    d = r.to_dict()
    assert d["overall_accuracy"] == total / 6
    assert load_result(r.save_json(tmp_path / "p.json")).to_dict() == d
    # same seed -> same books and queries
    again = phonebook(model, entries=[5], trials=3, seed=4, progress=False)
    assert [t["query"] for t in again.cells[0]["results"]] == \
        [t["query"] for t in r.cells[0]["results"]]
    assert "phonebook accuracy" in r.table()


def test_books_side_by_side_equal_one_at_a_time():
    """workers > 1 runs books concurrently (one kernel thread each): the cells (queries,
    outputs, token counts) are those of the serial run, and the thread counts come back."""
    from samba_ext import threads

    m = Samba(SambaConfig.preset("samba-test"), seed=2)
    n0 = threads.get_num_threads()
    kw = dict(entries=[3, 6, 9], trials=3, seed=4, progress=False)
    a, b = phonebook(m, workers=1, **kw), phonebook(m, workers=3, **kw)
    assert threads.get_num_threads() == n0
    strip = [{k: v for k, v in c.items() if k != "time_s"} for c in a.cells]
    assert strip == [{k: v for k, v in c.items() if k != "time_s"} for c in b.cells]
    assert sum(c["n"] for c in b.cells) == 9
    with pytest.raises(ValueError, match="workers"):
        phonebook(m, entries=[3], trials=1, progress=False, workers=0)


@pytest.mark.parametrize("trials", [0, -1, True, 2.0, "3"])
def test_trials_must_be_a_positive_integer(trials):
    m = Samba(SambaConfig.preset("samba-test"), seed=2)
    with pytest.raises(ValueError, match="trials: expected an integer >= 1"):
        phonebook(m, entries=[3], trials=trials, progress=False)
