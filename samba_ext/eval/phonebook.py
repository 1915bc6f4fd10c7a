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
from collections.abc import Callable
from typing import Any, Sequence

import numpy as np

from ._common import (Progress, Timer, as_int_list, as_trials, call_prefill, greedy_decode,
                      model_info, notes_for, resolve_model)
from ..sampling import check_seed
from ._pool import TrialPool, eval_workers
from ._run import CellRecorder
from .gridspec import GRIDS, as_lengths, grid_defaults
from ._format import format_table
from .results import EvalResult

__all__ = ["phonebook", "PhonebookResult", "load_names", "make_phonebook", "phonebook_prompt",
           "score_phonebook", "DEFAULT_ENTRIES"]

#: The default grid (the CLI's too): ``GRIDS["quick"]``; ``grid="paper"`` for a longer one.
DEFAULT_ENTRIES = GRIDS["quick"]["phonebook"]["entries"]
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


def trial_book(seed: int, n_entries: int, trial: int, names: tuple[list[str], list[str]]
               ) -> tuple[list[tuple[str, str]], int, int, int]:
    """Trial ``trial`` of the book size ``n_entries``: (book, a, b, c) with examples a, b and
    query c (indices into the book), drawn from ``default_rng([seed, n_entries, trial])``."""
    rng = np.random.default_rng([seed, n_entries, trial])
    book = make_phonebook(rng, n_entries, names)
    a, b, c = (int(i) for i in rng.choice(n_entries, size=3, replace=False))
    return book, a, b, c


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
    trials_key = "results"

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


def phonebook(model: Any, entries: Sequence[int] | str | None = DEFAULT_ENTRIES,
              trials: int | None = None, seed: int = 0, max_new_tokens: int = 20,
              chunk_size: int = 2048, progress: bool = True, keep_outputs: bool = True,
              names_file: str | None = None, device: str = "cpu", grid: str = "quick",
              save: str | os.PathLike | None = None,
              on_cell: Callable[[dict], Any] | None = None, ray: Any = None,
              out: Any = None, workers: int | None = None) -> PhonebookResult:
    """Phonebook lookup accuracy vs number of entries.

    Args:
        model: a :class:`samba_ext.Samba`, or a name/path for ``Samba.load``.
        entries: book sizes (number of name: number lines), each >= 3: ints or text
            ("20,40,80"). Default: the ``grid``'s.
        trials: books per size (default: the ``grid``'s); each trial's book depends only on
            (seed, entries, trial).
        grid: "quick" (the default here and in ``samba-ext phonebook``: 20..320 entries x 5
            trials) or "paper" (20..480 x 10).
        max_new_tokens: greedy budget (20). names_file: another names list (same format).
        save: a JSON path, rewritten atomically after every finished cell and at the end.
        ray / out: run the grid unit by unit, resumable in ``out`` (a folder) and on Ray with
            ``ray`` (True, "auto" or an address); see :mod:`samba_ext.eval.grid`.
        on_cell: called with each finished cell dict.
        workers: books run at once (default: for a model of up to 100M parameters on the CPU
            the kernels' thread count, each book then on one thread; else 1). The results are
            those of one at a time.
    Returns:
        :class:`PhonebookResult`.
    Raises:
        samba_ext.eval.EvalInterrupted (a KeyboardInterrupt) on Ctrl-C, after saving the
        finished cells to ``save``; its ``result`` holds them (``partial=True``).
    """
    g = grid_defaults(grid, "phonebook")   # arguments left at their defaults follow `grid`
    entries = g["entries"] if entries is None or entries is DEFAULT_ENTRIES \
        else as_lengths(entries, "entries")
    trials = g["trials"] if trials is None else trials
    if ray is not None or out is not None:    # resumable / Ray grid (samba_ext.eval.grid)
        from .grid import grid_call
        return grid_call("phonebook", locals())  # type: ignore[return-value]
    model = resolve_model(model, device)
    tok = model.tokenizer
    entries = list(dict.fromkeys(as_int_list(list(entries), "entries", minimum=3)))
    trials = as_trials(trials)
    seed = check_seed(seed)
    names = load_names(names_file)
    cap = len(names[0]) * len(names[1])
    if max(entries) > cap:
        raise ValueError(f"entries: at most {cap} distinct names are available, got {max(entries)}")
    params = {"entries": entries, "trials": int(trials), "max_new_tokens": int(max_new_tokens),
              "chunk_size": int(chunk_size), "names": names_file or "samba_ext/data/names.txt",
              "scoring": "first output line (stripped) == number", "decoding": "greedy"}
    cells: list[dict] = []
    recorder = CellRecorder(save, on_cell)
    bar = Progress(progress, len(entries) * trials, desc="phonebook", unit="trial")
    timer = Timer()
    info = model_info(model)

    def result() -> PhonebookResult:
        done = [c for c in cells if c["n"] > 0]
        partial = len(done) < len(entries) or any(c["n"] < c["trials"] for c in done)
        return PhonebookResult(params=params, cells=done, model=info, seed=seed,
                               partial=partial, time_s=timer(), notes=notes_for(model))

    n_workers = eval_workers(workers, model, len(entries) * trials)
    last_t = [timer()]  # the wall time already counted in the cells

    def trial(pool: TrialPool, ids: np.ndarray, slot: int) -> list[int]:
        """A worker's part of a trial: prefill the book, decode the answer."""
        state = model.new_state(1)
        cb, close_cb = bar.prefill_bar(ids.size, position=1 + slot + (pool.workers > 1))

        def progress_cb(done: int, total: int) -> None:
            pool.check()
            if cb is not None:
                cb(done, total)
        try:
            logits = call_prefill(model, ids[None], state, chunk_size, progress_cb)
            return greedy_decode(model, logits, state, max_new_tokens,
                                 done=lambda s: "\n" in s)[0]
        finally:
            close_cb()

    def finish(cell: dict, book: list, c: int, ids: np.ndarray, fut: Any) -> None:
        """Count a finished trial (in submission order, so the cells are the serial run's)."""
        output = tok.decode(fut.result())
        ok = score_phonebook(output, book[c][1])
        cell["n"] += 1
        cell["correct"] += int(ok)
        cell["accuracy"] = cell["correct"] / cell["n"]
        cell["prompt_tokens"] += int(ids.size)
        cell["tokens_mean"] = cell["prompt_tokens"] / cell["n"]
        now = timer()
        cell["time_s"] += now - last_t[0]
        last_t[0] = now
        if keep_outputs:
            cell["results"].append({"query": book[c][0], "number": book[c][1],
                                    "output": output, "correct": bool(ok),
                                    "tokens": int(ids.size)})
        bar.update(1)
        bar.postfix(entries=cell["entries"], acc=f"{cell['accuracy']:.2f}")
        if cell["n"] == cell["trials"]:
            recorder.cell_done(result(), cell)

    interrupted: BaseException | None = None
    try:
        with TrialPool(n_workers) as pool:
            pending: list[tuple] = []
            for n in entries:
                cell = {"entries": n, "trials": int(trials), "n": 0, "correct": 0,
                        "accuracy": None, "tokens_mean": 0.0, "time_s": 0.0,
                        "prompt_tokens": 0, "results": []}
                cells.append(cell)
                for t in range(trials):
                    book, a, b, c = trial_book(seed, n, t, names)
                    ids = np.asarray(tok.encode(phonebook_prompt(book, a, b, c)), dtype=np.int64)
                    pending.append((cell, book, c, ids, pool.submit(trial, pool, ids)))
                    while len(pending) >= n_workers:
                        finish(*pending.pop(0))
            while pending:
                finish(*pending.pop(0))
    except KeyboardInterrupt as e:
        interrupted = e
        bar.write("interrupted: keeping the finished trials (result marked partial)")
    finally:
        bar.close()
    return recorder.finish(result(), interrupted)
