"""Passkey retrieval (Mohtashami & Jaggi 2023, "Landmark Attention"; Samba paper §3.3).

The prompt is the Landmark template verbatim (``epfml/landmark-attention: llama/run_test.py``),
five lines joined with ``"\\n"``::

    There is an important info hidden inside a lot of irrelevant text. Find it and ...
    <filler prefix>
    The pass key is 12345. Remember it. 12345 is the pass key.
    <filler suffix>
    What is the pass key? The pass key is

The filler is ``" ".join([FILLER] * k)``; as in Landmark both the prefix and the suffix are
slices from its beginning, cut at a character (so a cut may land mid-word). Unlike Landmark,
the target length is in **tokens** of the model's tokenizer: the filler is trimmed so the
whole prompt has ``length`` tokens (exactly for the byte tokenizer, within one filler sentence
otherwise), and ``depth`` is the fraction of the filler characters placed before the key line.

Decoding is greedy for up to ``max_new_tokens`` (10); the score is whether the first integer in
the output equals the key. Decoding stops early once that integer is complete, which cannot
change the score.

Work is shared exactly: the instruction and the filler before the key line do not depend on the
key, and a shallower prompt's prefix is a prefix of a deeper one's at the same length. The
trials of a length therefore run in depth order from one "trunk" state that is advanced
through the shared tokens and copied (``state.copy()``) for each trial; every trial still sees
exactly its own token sequence (checked token by token before any reuse).
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ._common import (Progress, Timer, as_int_list, as_trials, call_prefill, greedy_decode,
                      model_info, notes_for, resolve_model)
from ..sampling import check_seed
from ._pool import TrialPool, eval_workers
from ._run import CellRecorder
from .gridspec import GRIDS, as_depths, as_lengths, grid_defaults
from ._format import fmt_depth, fmt_tokens, format_table
from .results import EvalResult

__all__ = ["passkey", "PasskeyResult", "PasskeyPrompt", "build_passkey_prompt",
           "passkey_text", "score_passkey", "template_tokens", "filler_text", "draw_key",
           "INSTRUCTION", "FILLER", "KEY_LINE", "QUESTION", "DEFAULT_LENGTHS", "DEFAULT_DEPTHS"]

INSTRUCTION = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
               "memorize them. I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
KEY_LINE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"
#: The filler's sentences (the unit of the "within one filler sentence" length tolerance).
FILLER_SENTENCES = ("The grass is green.", "The sky is blue.", "The sun is yellow.",
                    "Here we go.", "There and back again.")

#: The default grid (the CLI's too): ``GRIDS["quick"]``; ``grid="paper"`` for the paper's.
DEFAULT_LENGTHS = GRIDS["quick"]["passkey"]["lengths"]
DEFAULT_DEPTHS = GRIDS["quick"]["passkey"]["depths"]

_filler_cache = [FILLER]


def filler_text(n_chars: int) -> str:
    """The first ``n_chars`` characters of ``" ".join([FILLER] * many)``."""
    if n_chars < 0:
        raise ValueError(f"n_chars: expected >= 0, got {n_chars}")
    s = _filler_cache[0]
    if len(s) < n_chars:
        reps = n_chars // (len(FILLER) + 1) + 2
        s = " ".join([FILLER] * reps)
        _filler_cache[0] = s
    return s[:n_chars]


def passkey_text(prefix_chars: int, suffix_chars: int, key: int) -> str:
    """The Landmark prompt with ``prefix_chars`` / ``suffix_chars`` filler characters."""
    return "\n".join([INSTRUCTION, filler_text(prefix_chars), KEY_LINE.format(key=key),
                      filler_text(suffix_chars), QUESTION])


def score_passkey(output: str, key: int) -> bool:
    """True when the first integer in ``output`` equals ``key`` (Landmark's scoring)."""
    m = re.search(r"\d+", output)
    return m is not None and int(m.group()) == int(key)


def _answer_complete(text: str) -> bool:
    """The first integer of ``text`` is complete (digits followed by a non-digit)."""
    return re.search(r"\d+\D", text) is not None


def draw_key(rng: np.random.Generator, key_digits: int = 5,
             key_range: tuple[int, int] | None = None) -> int:
    """A passkey: uniform ``key_digits``-digit integer (Samba), or uniform in the inclusive
    ``key_range`` (Landmark: (1, 50000))."""
    if key_range is not None:
        lo, hi = int(key_range[0]), int(key_range[1])
        return int(rng.integers(lo, hi + 1))
    return int(rng.integers(10 ** (key_digits - 1), 10 ** key_digits))


def _encode(tokenizer: Any, text: str) -> np.ndarray:
    return np.asarray(tokenizer.encode(text), dtype=np.int64)


def template_tokens(tokenizer: Any, key: int = 99999) -> int:
    """Token length of the prompt with no filler (the smallest possible ``length``)."""
    return int(_encode(tokenizer, passkey_text(0, 0, key)).size)


def filler_sentence_tokens(tokenizer: Any) -> int:
    """Tokens of the longest filler sentence (with its leading space)."""
    return max(len(tokenizer.encode(" " + s)) for s in FILLER_SENTENCES)


@dataclass
class PasskeyPrompt:
    """One passkey prompt.

    Attributes:
        text: the prompt string. ids: its tokens, int64 ``(n_tokens,)``.
        key: the pass key. depth: requested depth; ``actual_depth`` = prefix / filler chars.
        target_tokens: the requested length. prefix_chars / suffix_chars: filler characters.
        shared_tokens: leading tokens that do not depend on the key (instruction + prefix filler).
    """

    text: str
    ids: np.ndarray
    key: int
    depth: float
    target_tokens: int
    prefix_chars: int
    suffix_chars: int
    shared_tokens: int

    @property
    def n_tokens(self) -> int:
        return int(self.ids.size)

    @property
    def actual_depth(self) -> float:
        n = self.prefix_chars + self.suffix_chars
        return self.prefix_chars / n if n else float(self.depth)


def _split(n: int, depth: float) -> tuple[int, int]:
    p = int(round(depth * n))
    return p, n - p


def build_passkey_prompt(tokenizer: Any, length: int, depth: float, key: int,
                         n_hint: int | None = None) -> PasskeyPrompt:
    """Build the prompt of ``length`` tokens with the key line at ``depth`` in [0, 1].

    The total filler character count ``n`` is found by secant steps on the token count
    (one step for the byte tokenizer, where chars == tokens); the result has the largest
    token count <= ``length`` found, which is within one filler sentence of it.
    ``n_hint``: a starting ``n`` (e.g. from the previous trial of the same cell).

    Raises:
        ValueError: depth outside [0, 1], or ``length`` below the template's own length.
    """
    if not (0.0 <= float(depth) <= 1.0) or math.isnan(float(depth)):
        raise ValueError(f"depth: {depth!r} is outside [0, 1]")
    base = template_tokens(tokenizer, key)
    if length < base:
        raise ValueError(f"length: {length} is smaller than the passkey template itself "
                         f"({base} tokens with this tokenizer); use a length >= {base}")

    def measure(n: int) -> tuple[str, np.ndarray]:
        p, s = _split(n, depth)
        text = passkey_text(p, s, key)
        return text, _encode(tokenizer, text)

    # chars per token of the filler (1.0 for the byte tokenizer)
    probe = filler_text(4096)
    rate = len(probe) / max(1, len(tokenizer.encode(probe)))
    n = n_hint if n_hint is not None else int(round((length - base) * rate))
    best: tuple[int, str, np.ndarray] | None = None
    seen: set[int] = set()
    for _ in range(12):
        n = max(0, n)
        if n in seen:
            break
        seen.add(n)
        text, ids = measure(n)
        t = ids.size
        if t <= length and (best is None or t > best[2].size):
            best = (n, text, ids)
        if t == length:
            break
        step = int(round((length - t) * rate))
        if step == 0:
            step = 1 if t < length else -1
        n += step
    if best is None:  # every probe overshot: walk down (n = 0 gives `base` <= length)
        n = min(seen)
        while True:
            n = max(0, n - max(1, int(rate * 4)))
            text, ids = measure(n)
            if ids.size <= length or n == 0:
                best = (n, text, ids)
                break
    n, text, ids = best
    p, s = _split(n, depth)
    shared_text = INSTRUCTION + "\n" + filler_text(p)
    shared = _encode(tokenizer, shared_text)
    k = min(shared.size, ids.size - 1)
    # longest common prefix: BPE tokenizers may merge across the line boundary
    neq = np.nonzero(shared[:k] != ids[:k])[0]
    k = int(neq[0]) if neq.size else k
    return PasskeyPrompt(text=text, ids=ids, key=int(key), depth=float(depth),
                         target_tokens=int(length), prefix_chars=p, suffix_chars=s,
                         shared_tokens=max(0, k))


class PasskeyResult(EvalResult):
    """Passkey accuracy per (length, depth) cell.

    Each cell: ``{"length", "depth" (float, or "random"), "trials" (requested), "n" (done),
    "correct", "accuracy", "time_s", "prompt_tokens", "processed_tokens", "results":
    [{"key", "depth", "tokens", "output", "correct"}, ...]}``.
    """

    eval_name = "passkey"
    trials_key = "results"

    @property
    def overall_accuracy(self) -> float:
        n = sum(c["n"] for c in self.cells)
        return sum(c["correct"] for c in self.cells) / n if n else math.nan

    def lengths(self) -> list[int]:
        return sorted({c["length"] for c in self.cells})

    def depths(self) -> list:
        ds = {c["depth"] for c in self.cells}
        return sorted(ds, key=lambda d: -1 if d == "random" else d)

    def accuracy_grid(self) -> tuple[list[int], list, np.ndarray]:
        """(lengths, depths, acc) with acc[i_depth, i_length] (NaN for missing cells)."""
        L, D = self.lengths(), self.depths()
        acc = np.full((len(D), len(L)), np.nan)
        for c in self.cells:
            acc[D.index(c["depth"]), L.index(c["length"])] = c["accuracy"]
        return L, D, acc

    def _by(self, key: str) -> list[dict]:
        groups: dict[Any, list[dict]] = {}
        for c in self.cells:
            groups.setdefault(c[key], []).append(c)
        out = []
        for k in sorted(groups, key=lambda v: (-1 if v == "random" else v)):
            n = sum(c["n"] for c in groups[k])
            corr = sum(c["correct"] for c in groups[k])
            out.append({key: k, "n": n, "correct": corr, "accuracy": corr / n if n else None})
        return out

    def summary(self) -> dict:
        t = sum(c["time_s"] for c in self.cells)
        proc = sum(c["processed_tokens"] for c in self.cells)
        prompt = sum(c["prompt_tokens"] for c in self.cells)
        n = sum(c["n"] for c in self.cells)
        return {
            "overall_accuracy": self.overall_accuracy if n else None,
            "trials_done": n,
            "by_length": self._by("length"),
            "by_depth": self._by("depth"),
            "prompt_tokens": prompt,
            "processed_tokens": proc,
            "cell_time_s": t,
            "tokens_per_s": proc / t if t > 0 else None,
            "prompt_tokens_per_s": prompt / t if t > 0 else None,
        }

    def _top_level(self) -> dict:
        n = sum(c["n"] for c in self.cells)
        return {"overall_accuracy": self.overall_accuracy if n else None}

    def table(self) -> str:
        L, D, acc = self.accuracy_grid()
        rows = []
        for i, d in enumerate(D):
            label = fmt_depth(d)
            rows.append([label] + [("-" if np.isnan(a) else f"{100 * a:.0f}") for a in acc[i]])
        by_len = {r["length"]: r["accuracy"] for r in self._by("length")}
        if len(D) > 1:
            rows.append(["all"] + [f"{100 * by_len[x]:.0f}" if by_len.get(x) is not None else "-"
                                   for x in L])
        s = self.summary()
        out = format_table(["depth \\ length"] + [fmt_tokens(x) for x in L], rows,
                           title="passkey accuracy (%)")
        if s["trials_done"]:
            tps = s["tokens_per_s"] or 0.0
            out += (f"\noverall accuracy: {100 * s['overall_accuracy']:.1f}% over "
                    f"{s['trials_done']} trials; {s['prompt_tokens']:,} prompt tokens "
                    f"({s['processed_tokens']:,} processed after prefix sharing) in "
                    f"{s['cell_time_s']:.1f} s = {tps:,.0f} tok/s")
        return out


def _check_depths(depths: Any) -> tuple[bool, list[float]]:
    if isinstance(depths, str):
        if depths != "random":
            raise ValueError(f"depths: expected a list of floats in [0, 1] or 'random', "
                             f"got {depths!r}")
        return True, []
    ds = []
    for d in (depths if isinstance(depths, (list, tuple, np.ndarray)) else [depths]):
        if isinstance(d, bool) or not isinstance(d, (int, float, np.floating, np.integer)):
            raise TypeError(f"depths: expected numbers in [0, 1], got {d!r}")
        d = float(d)
        if math.isnan(d) or not 0.0 <= d <= 1.0:
            raise ValueError(f"depths: {d!r} is outside [0, 1]")
        ds.append(d)
    if not ds:
        raise ValueError("depths: expected at least one depth")
    return False, list(dict.fromkeys(ds))


def _seed_key(x: float) -> int:
    return int(round(x * 1_000_000))


def passkey(model: Any, lengths: Sequence[int] | str | None = DEFAULT_LENGTHS,
            depths: Sequence[float] | str | None = DEFAULT_DEPTHS, trials: int | None = None,
            seed: int = 0, key_digits: int = 5, key_range: tuple[int, int] | None = None,
            max_new_tokens: int = 10, chunk_size: int = 2048, progress: bool = True,
            share_prefix: bool = True, keep_outputs: bool = True, device: str = "cpu",
            grid: str = "quick", save: str | os.PathLike | None = None,
            on_cell: Callable[[dict], Any] | None = None, ray: Any = None,
            out: Any = None, workers: int | None = None) -> PasskeyResult:
    """Passkey retrieval accuracy over a (length x depth) grid.

    Args:
        model: a :class:`samba_ext.Samba`, or a name/path for ``Samba.load``.
        lengths: target prompt lengths in tokens of ``model.tokenizer``: ints or text
            ("4K,8K"). Default: the ``grid``'s.
        depths: key-line depths in [0, 1] (fraction of the filler before it): numbers, text
            ("0:1:0.1", "0,0.5,1"), or ``"random"`` (uniform per trial; then one cell per
            length). Default: the ``grid``'s.
        trials: trials (keys) per cell (default: the ``grid``'s). seed: base seed; each
            cell's keys depend only on (seed, length, depth, trial), not on the rest of the grid.
        grid: "quick" (the default of this function and of ``samba-ext passkey``: 1K..32K x
            11 depths x 2 trials) or "paper" (4K..256K x 11 depths x 5 trials); explicit
            lengths / depths / trials replace its values.
        key_digits: digits of the uniformly drawn key (Samba: 5). key_range: inclusive
            (lo, hi) instead, e.g. (1, 50000) for Landmark.
        max_new_tokens: greedy decoding budget (10 as in Landmark).
        chunk_size: prefill chunk. progress: tqdm bars (stderr) with ETA.
        share_prefix: reuse the key-independent prefix state across trials (exact).
        keep_outputs: store each trial's key/output in the cells.
        save: a JSON path, rewritten atomically after every finished cell and at the end.
        ray / out: run the grid unit by unit, resumable in ``out`` (a folder) and on Ray with
            ``ray`` (True, "auto" or an address); see :mod:`samba_ext.eval.grid`.
        on_cell: called with each finished cell dict.
        workers: trials run at once (default: for a model of up to 100M parameters on the
            CPU the kernels' thread count, each trial then on one thread, since a small model
            keeps one core per prompt busy; else 1). The results are those of one at a time;
            1 runs them one at a time with all threads.
    Returns:
        :class:`PasskeyResult`.
    Raises:
        samba_ext.eval.EvalInterrupted (a KeyboardInterrupt) on Ctrl-C, after saving the
        finished cells to ``save``; its ``result`` holds them (``partial=True``).
    """
    g = grid_defaults(grid, "passkey")     # arguments left at their defaults follow `grid`
    lengths = g["lengths"] if lengths is None or lengths is DEFAULT_LENGTHS \
        else as_lengths(lengths, "lengths")
    depths = g["depths"] if depths is None or depths is DEFAULT_DEPTHS \
        else as_depths(depths, "depths")
    trials = g["trials"] if trials is None else trials
    if ray is not None or out is not None:    # resumable / Ray grid (samba_ext.eval.grid)
        from .grid import grid_call
        return grid_call("passkey", locals())  # type: ignore[return-value]
    model = resolve_model(model, device)
    tok = model.tokenizer
    lengths = list(dict.fromkeys(as_int_list(list(lengths), "lengths")))
    random_depth, depth_list = _check_depths(depths)
    trials = as_trials(trials)
    seed = check_seed(seed)
    if key_range is not None:
        lo, hi = int(key_range[0]), int(key_range[1])
        if not 0 <= lo <= hi:
            raise ValueError(f"key_range: expected 0 <= lo <= hi, got {key_range!r}")
        key_range = (lo, hi)
        max_key = hi
    else:
        if not 1 <= int(key_digits) <= 18:
            raise ValueError(f"key_digits: expected 1..18, got {key_digits!r}")
        max_key = 10 ** int(key_digits) - 1
    base = template_tokens(tok, max_key)
    too_short = [x for x in lengths if x < base]
    if too_short:
        raise ValueError(f"lengths: {too_short[0]} is smaller than the passkey template itself "
                         f"({base} tokens with this tokenizer); use lengths >= {base}")

    params = {"lengths": lengths, "depths": "random" if random_depth else depth_list,
              "trials": int(trials), "key_digits": None if key_range else int(key_digits),
              "key_range": list(key_range) if key_range else None,
              "max_new_tokens": int(max_new_tokens), "chunk_size": int(chunk_size),
              "share_prefix": bool(share_prefix), "template": "landmark",
              "scoring": "first integer in the output == key", "decoding": "greedy"}

    # Jobs per length, sorted by depth so shallower prefixes feed deeper ones.
    cell_order: list[tuple[int, Any]] = []
    jobs_by_length: dict[int, list[tuple[Any, int, float, int]]] = {}
    for length in lengths:
        jobs = []
        if random_depth:
            cell_order.append((length, "random"))
            for t in range(trials):
                rng = np.random.default_rng([seed, length, 2_000_001, t])
                d = float(rng.random())
                jobs.append(("random", t, d, draw_key(rng, key_digits, key_range)))
        else:
            for d in depth_list:
                cell_order.append((length, d))
                for t in range(trials):
                    rng = np.random.default_rng([seed, length, _seed_key(d), t])
                    jobs.append((d, t, d, draw_key(rng, key_digits, key_range)))
        jobs.sort(key=lambda j: (j[2], j[1]))
        jobs_by_length[length] = jobs

    cells: dict[tuple[int, Any], dict] = {}
    for length, d in cell_order:
        cells[(length, d)] = {"length": length, "depth": d, "trials": int(trials), "n": 0,
                              "correct": 0, "accuracy": None, "time_s": 0.0,
                              "prompt_tokens": 0, "processed_tokens": 0, "results": []}

    total_tokens = sum(lengths) * trials * (1 if random_depth else len(depth_list))
    recorder = CellRecorder(save, on_cell)
    bar = Progress(progress, total_tokens, desc="passkey")
    timer = Timer()
    info = model_info(model)

    def result(partial: bool = False) -> PasskeyResult:
        done_cells = [c for c in cells.values() if c["n"] > 0]
        if any(c["n"] < c["trials"] for c in done_cells) or len(done_cells) < len(cells):
            partial = True
        return PasskeyResult(params=params, cells=done_cells, model=info, seed=seed,
                             partial=partial, time_s=timer(), notes=notes_for(model))

    n_jobs = sum(len(j) for j in jobs_by_length.values())
    n_workers = eval_workers(workers, model, n_jobs)
    last_t = [timer()]  # the wall time already counted in the cells

    def suffix_trial(pool: TrialPool, ids: np.ndarray, start: int, state: Any, length: int,
                     slot: int) -> tuple[list[int], int]:
        """A worker's part of a trial: the prompt after the shared prefix, then greedy decoding."""
        cb, close_cb = bar.prefill_bar(ids.size - start, desc=f"prefill {fmt_tokens(length)}",
                                       position=1 + slot + (pool.workers > 1))

        def progress_cb(done: int, total: int) -> None:
            pool.check()
            if cb is not None:
                cb(done, total)
        try:
            logits = call_prefill(model, ids[None, start:], state, chunk_size, progress_cb)
            gen = greedy_decode(model, logits, state, max_new_tokens, done=_answer_complete)[0]
        finally:
            close_cb()
        return gen, ids.size - start

    def finish(length: int, cell_d: Any, key: int, pr: Any, processed: int, fut: Any) -> None:
        """Count a finished trial (in submission order, so the cells are the serial run's)."""
        cell = cells[(length, cell_d)]
        gen, suffix = fut.result()
        processed += suffix + max(0, len(gen) - 1)
        output = tok.decode(gen)
        ok = score_passkey(output, key)
        cell["n"] += 1
        cell["correct"] += int(ok)
        cell["accuracy"] = cell["correct"] / cell["n"]
        now = timer()
        cell["time_s"] += now - last_t[0]
        last_t[0] = now
        cell["prompt_tokens"] += int(pr.ids.size)
        cell["processed_tokens"] += int(processed)
        if keep_outputs:
            cell["results"].append({"key": int(key), "depth": round(pr.actual_depth, 6),
                                    "tokens": int(pr.ids.size), "output": output,
                                    "correct": bool(ok)})
        bar.update(length)
        bar.postfix(len=fmt_tokens(length),
                    depth=("rand" if cell_d == "random" else f"{cell_d:.2f}"),
                    acc=f"{cell['accuracy']:.2f}")
        if cell["n"] == cell["trials"]:
            recorder.cell_done(result(), cell)

    interrupted: BaseException | None = None
    try:
        with TrialPool(n_workers) as pool:
            pending: list[tuple] = []
            for length in lengths:
                trunk = None            # state after trunk_ids
                trunk_ids = None        # np.ndarray of the tokens the trunk has consumed
                hint: dict[Any, int] = {}
                for cell_d, t, d, key in jobs_by_length[length]:
                    pr = build_passkey_prompt(tok, length, d, key, n_hint=hint.get(cell_d))
                    hint[cell_d] = pr.prefix_chars + pr.suffix_chars
                    ids = pr.ids
                    processed = 0
                    start = 0
                    if share_prefix and pr.shared_tokens > 0:
                        k = pr.shared_tokens
                        reuse = (trunk is not None and trunk_ids.size <= k
                                 and np.array_equal(trunk_ids, ids[:trunk_ids.size]))
                        if not reuse:
                            trunk = model.new_state(1)
                            trunk_ids = ids[:0]
                        if k > trunk_ids.size:
                            cb, close_cb = bar.prefill_bar(k - trunk_ids.size,
                                                           desc=f"prefix {fmt_tokens(length)}")
                            try:
                                call_prefill(model, ids[None, trunk_ids.size:k], trunk,
                                             chunk_size, cb)
                            finally:
                                close_cb()
                            processed += k - trunk_ids.size
                            trunk_ids = ids[:k]
                        state = trunk.copy()
                        start = k
                    else:
                        state = model.new_state(1)
                    fut = pool.submit(suffix_trial, pool, ids, start, state, length)
                    pending.append((length, cell_d, key, pr, processed, fut))
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
