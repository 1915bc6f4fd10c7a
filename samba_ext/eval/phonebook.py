"""Phonebook lookup (Jelassi et al. 2024, "Repeat After Me"; Samba/ArchScale
``eval_phonebook.py``).

A book is ``n`` lines ``"<First> <Last>: <10-digit number>"`` (distinct names, first digit of the
number 6-9). The prompt restates two entries as few-shot examples and asks for a third::

    "\\n".join(book) + "\\n\\n" + entry_a + "\\n" + entry_b + "\\n\\n" + "<name of entry_c>:"

Greedy decoding for up to ``max_new_tokens`` (20, as ArchScale's ``max_length = input + 20``);
the prediction is the first line of the continuation, stripped; the score is exact string
equality with entry_c's number. Names are drawn from the list shipped in
``samba_ext/data/names.txt`` (no network, no extra dependency).
"""
from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np

from ._common import (Progress, Timer, as_int_list, call_prefill, greedy_decode, model_info,
                      notes_for, resolve_model)
from .results import EvalResult, format_table

__all__ = ["phonebook", "PhonebookResult", "load_names", "make_phonebook", "phonebook_prompt",
           "score_phonebook", "DEFAULT_ENTRIES"]

DEFAULT_ENTRIES = (20, 40, 80, 160, 320, 480)
_NAMES_CACHE: dict[str, tuple[list[str], list[str]]] = {}


def _names_path() -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                        "names.txt")


def load_names(path: str | None = None) -> tuple[list[str], list[str]]:
    """(first_names, last_names) from a names file with ``[first]`` / ``[last]`` sections
    (``#`` comments). Default: the list shipped with the package."""
    path = _names_path() if path is None else path
    if path in _NAMES_CACHE:
        return _NAMES_CACHE[path]
    sections: dict[str, list[str]] = {"first": [], "last": []}
    cur = None
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("[") and line.endswith("]"):
                cur = line[1:-1]
                if cur not in sections:
                    raise ValueError(f"{path}: unknown section [{cur}] (expected [first], [last])")
                continue
            if cur is None:
                raise ValueError(f"{path}: name {line!r} before a [first]/[last] section")
            sections[cur].append(line)
    first = list(dict.fromkeys(sections["first"]))
    last = list(dict.fromkeys(sections["last"]))
    if not first or not last:
        raise ValueError(f"{path}: needs at least one first and one last name")
    _NAMES_CACHE[path] = (first, last)
    return first, last


def phone_number(rng: np.random.Generator) -> str:
    """10 digits, the first one 6-9."""
    return str(int(rng.integers(6, 10))) + "".join(str(int(d)) for d in rng.integers(0, 10, 9))


def make_phonebook(rng: np.random.Generator, n_entries: int,
                   names: tuple[list[str], list[str]] | None = None) -> list[tuple[str, str]]:
    """``n_entries`` (full name, number) pairs with distinct names, in random order."""
    first, last = names if names is not None else load_names()
    cap = len(first) * len(last)
    if not 3 <= n_entries <= cap:
        raise ValueError(f"entries: expected 3..{cap} (distinct full names available), "
                         f"got {n_entries}")
    idx = rng.choice(cap, size=n_entries, replace=False)
    return [(f"{first[i // len(last)]} {last[i % len(last)]}", phone_number(rng)) for i in idx]


def phonebook_prompt(book: Sequence[tuple[str, str]], a: int, b: int, c: int) -> str:
    """The prompt for ``book`` with examples ``a``, ``b`` and query ``c`` (indices)."""
    line = [f"{n}: {p}" for n, p in book]
    return "\n".join(line) + "\n\n" + line[a] + "\n" + line[b] + "\n\n" + book[c][0] + ":"


def score_phonebook(output: str, number: str) -> bool:
    """Exact match of the first line of ``output`` (stripped) with ``number``."""
    return output.split("\n", 1)[0].strip() == str(number)


class PhonebookResult(EvalResult):
    """Phonebook accuracy per number of entries.

    Each cell: ``{"entries", "trials", "n", "correct", "accuracy", "tokens_mean", "time_s",
    "prompt_tokens", "results": [{"query", "number", "output", "correct", "tokens"}]}``.
    """

    eval_name = "phonebook"

    @property
    def overall_accuracy(self) -> float:
        n = sum(c["n"] for c in self.cells)
        return sum(c["correct"] for c in self.cells) / n if n else math.nan

    def summary(self) -> dict:
        n = sum(c["n"] for c in self.cells)
        t = sum(c["time_s"] for c in self.cells)
        tok = sum(c["prompt_tokens"] for c in self.cells)
        return {"overall_accuracy": self.overall_accuracy if n else None, "trials_done": n,
                "by_entries": [{"entries": c["entries"], "accuracy": c["accuracy"],
                                "tokens_mean": c["tokens_mean"]} for c in self.cells],
                "prompt_tokens": tok, "cell_time_s": t,
                "tokens_per_s": tok / t if t > 0 else None}

    def _top_level(self) -> dict:
        n = sum(c["n"] for c in self.cells)
        return {"overall_accuracy": self.overall_accuracy if n else None}

    def table(self) -> str:
        rows = [[c["entries"], f"{c['tokens_mean']:.0f}", f"{c['correct']}/{c['n']}",
                 f"{100 * c['accuracy']:.0f}", f"{c['time_s']:.1f}"] for c in self.cells]
        out = format_table(["entries", "tokens", "correct", "acc %", "time s"], rows,
                           title="phonebook accuracy")
        s = self.summary()
        if s["trials_done"]:
            out += (f"\noverall accuracy: {100 * s['overall_accuracy']:.1f}% over "
                    f"{s['trials_done']} trials; {(s['tokens_per_s'] or 0):,.0f} tok/s")
        return out


def phonebook(model: Any, entries: Sequence[int] = DEFAULT_ENTRIES, trials: int = 10,
              seed: int = 0, max_new_tokens: int = 20, chunk_size: int = 2048,
              progress: bool = True, keep_outputs: bool = True, names_file: str | None = None,
              device: str = "cpu", ray: Any = None,
              out: Any = None) -> PhonebookResult:
    """Phonebook lookup accuracy vs number of entries.

    Args:
        model: a :class:`samba_ext.Samba`, or a name/path for ``Samba.load``.
        entries: book sizes (number of name: number lines), each >= 3.
        trials: books per size; each trial's book depends only on (seed, entries, trial).
        max_new_tokens: greedy budget (20). names_file: another names list (same format).
        ray / out: run the grid unit by unit, resumable in ``out`` and on Ray with
            ``ray`` (True, "auto" or an address); see :mod:`samba_ext.eval.grid`.
    Returns:
        :class:`PhonebookResult`; Ctrl-C returns the finished cells with ``partial=True``.
    """
    if ray is not None or out is not None:    # resumable / Ray grid (samba_ext.eval.grid)
        from .grid import grid_call
        return grid_call("phonebook", locals())  # type: ignore[return-value]
    model = resolve_model(model, device)
    tok = model.tokenizer
    entries = list(dict.fromkeys(as_int_list(list(entries), "entries", minimum=3)))
    if isinstance(trials, bool) or not isinstance(trials, (int, np.integer)) or trials < 1:
        raise ValueError(f"trials: expected an integer >= 1, got {trials!r}")
    names = load_names(names_file)
    cap = len(names[0]) * len(names[1])
    if max(entries) > cap:
        raise ValueError(f"entries: at most {cap} distinct names are available, got {max(entries)}")
    params = {"entries": entries, "trials": int(trials), "max_new_tokens": int(max_new_tokens),
              "chunk_size": int(chunk_size), "names": names_file or "samba_ext/data/names.txt",
              "scoring": "first output line (stripped) == number", "decoding": "greedy"}
    cells: list[dict] = []
    bar = Progress(progress, len(entries) * trials, desc="phonebook", unit="trial")
    timer = Timer()
    partial = False
    try:
        for n in entries:
            cell = {"entries": n, "trials": int(trials), "n": 0, "correct": 0, "accuracy": None,
                    "tokens_mean": 0.0, "time_s": 0.0, "prompt_tokens": 0, "results": []}
            cells.append(cell)
            for t in range(trials):
                tj = Timer()
                rng = np.random.default_rng([seed, n, t])
                book = make_phonebook(rng, n, names)
                a, b, c = (int(i) for i in rng.choice(n, size=3, replace=False))
                ids = np.asarray(tok.encode(phonebook_prompt(book, a, b, c)), dtype=np.int64)
                state = model.new_state(1)
                cb, close_cb = bar.prefill_bar(ids.size)
                try:
                    logits = call_prefill(model, ids[None], state, chunk_size, cb)
                    gen = greedy_decode(model, logits, state, max_new_tokens,
                                        done=lambda s: "\n" in s)[0]
                finally:
                    close_cb()
                output = tok.decode(gen)
                ok = score_phonebook(output, book[c][1])
                cell["n"] += 1
                cell["correct"] += int(ok)
                cell["accuracy"] = cell["correct"] / cell["n"]
                cell["prompt_tokens"] += int(ids.size)
                cell["tokens_mean"] = cell["prompt_tokens"] / cell["n"]
                cell["time_s"] += tj()
                if keep_outputs:
                    cell["results"].append({"query": book[c][0], "number": book[c][1],
                                            "output": output, "correct": bool(ok),
                                            "tokens": int(ids.size)})
                bar.update(1)
                bar.postfix(entries=n, acc=f"{cell['accuracy']:.2f}")
    except KeyboardInterrupt:
        partial = True
        bar.write("interrupted: keeping the finished trials (result marked partial)")
    finally:
        bar.close()
    cells = [c for c in cells if c["n"] > 0]
    if len(cells) < len(entries) or any(c["n"] < c["trials"] for c in cells):
        partial = True
    return PhonebookResult(params=params, cells=cells, model=model_info(model), seed=seed,
                           partial=partial, time_s=timer(), notes=notes_for(model))
