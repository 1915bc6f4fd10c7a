"""Training data, generated on the fly from the package's own task builders (no network).

Three kinds of rows, each one document:

* passkey: the package's Landmark prompt (:func:`samba_ext.eval.passkey.passkey_text`) with the answer
  ``" {key}."`` + <eos>; the key line may be placed beyond the attention window (``pk_far``) or across
  its edge (``pk_edge``);
* phonebook: the package's phonebook format (:func:`samba_ext.eval.phonebook.phonebook_prompt`), names
  from ``samba_ext/data/names.txt``, answer ``" {number}\n"`` + <eos>; training variants change the
  number's length or put separators inside it;
* text: the training split of the Python standard library (:mod:`samba_ext.eval.corpus`: files whose
  ``crc32(path) % 10 != 0``; the held-out files are what the perplexity evaluation reads).

``make_doc`` returns the token ids and a per-position ``kind`` (0 pad, 1 language-model target,
2 answer target) from which train.py weights the loss.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from model_torch import BOS, EOS, PAD, TOKENIZER
from samba_ext.eval.corpus import stdlib_tokens
from samba_ext.eval.passkey import INSTRUCTION, KEY_LINE, QUESTION, passkey_text
from samba_ext.eval.phonebook import load_names
from samba_ext.eval.phonebook import phonebook_prompt as format_phonebook

PASSKEY_ANSWER = " {key}."  # the trained continuation, followed by <eos>


def encode(text: str) -> list[int]:
    """Text -> byte ids (no specials), the package's byte tokenizer."""
    return TOKENIZER.encode(text)


def decode(ids) -> str:
    """Ids -> text; specials are dropped, invalid UTF-8 is replaced."""
    return TOKENIZER.decode(ids)


def template_len(key: int) -> int:
    """Tokens of the passkey prompt without filler (bytes: the tokenizer is byte-level)."""
    return len(INSTRUCTION) + len(KEY_LINE.format(key=key)) + len(QUESTION) + 4


def passkey_prompt(n_tokens: int, depth: float, key: int) -> str:
    """The package's passkey prompt of exactly ``n_tokens`` bytes (when n_tokens >= the template),
    the key line after round(depth * filler) filler characters."""
    n_filler = max(0, n_tokens - template_len(key))
    pre = int(round(depth * n_filler))
    return passkey_text(pre, n_filler - pre, key)


def phonebook_prompt(
    rng: random.Random, n_entries: int, digits: int = 10, seps: float = 0.0, early: float = 0.0
) -> tuple[str, str]:
    """A phonebook prompt in the package's format (docs/specification.md section 6.2): "Name: number"
    lines, a blank line, two entries re-stated, a blank line, "<query name>:". Names come from the
    package's list. number = ``digits`` digits (the evaluation's 10 by default), the first 6-9.
    seps: the chance that a gap between two digits gets a separator ("-", " " or "."), drawn per
    number (a training variant: it moves each digit's distance from the ":" at random).
    early: the chance that the query and the two re-stated entries all come from the first quarter
    of the book (at least 3 entries), i.e. the lookups farthest from the question.
    Returns (prompt, number of the query, as written in the book)."""
    first, last = load_names()
    n_entries = max(3, n_entries)
    names: set[str] = set()
    while len(names) < n_entries:
        names.add(f"{rng.choice(first)} {rng.choice(last)}")
    names_l = sorted(names)
    rng.shuffle(names_l)
    phones = [str(rng.randint(6, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(digits - 1)) for _ in names_l]
    if seps > 0:
        phones = [
            "".join(d + (rng.choice("- .") if i < len(p) - 1 and rng.random() < seps else "") for i, d in enumerate(p))
            for p in phones
        ]
    pool = n_entries
    if early > 0 and rng.random() < early:  # no draw without it: earlier recipes stay reproducible
        pool = max(3, n_entries // 4)
    a, b, c = rng.sample(range(pool), 3)
    return format_phonebook(list(zip(names_l, phones)), a, b, c), phones[c]


def fewshot_digit_spans(prompt: str) -> list[tuple[int, int]]:
    """(start, end) byte offsets of the phone numbers of the two re-stated entries in a
    phonebook_prompt (the two lines between the blank lines), i.e. the few-shot lookups."""
    body, shots, _ = prompt.rsplit("\n\n", 2)
    out, pos = [], len(body) + 2
    for line in shots.split("\n"):
        i = line.rindex(": ") + 2
        out.append((pos + i, pos + len(line)))
        pos += len(line) + 1
    return out


def training_text(max_tokens: int | None = None) -> np.ndarray:
    """The stdlib training split as one int16 token stream (files joined by blank lines)."""
    return _stream("train", max_tokens)


def heldout_text(max_tokens: int | None = None) -> np.ndarray:
    """The stdlib held-out split as one int16 token stream (the perplexity evaluation's text)."""
    return _stream("heldout", max_tokens)


def _stream(split: str, max_tokens: int | None) -> np.ndarray:
    try:
        toks = stdlib_tokens(TOKENIZER, max_tokens, split=split)
    except ValueError:  # fewer tokens than asked for: take all of them
        toks = stdlib_tokens(TOKENIZER, None, split=split)
    return toks.astype(np.int16)


@dataclass
class DataMix:
    p_passkey: float = 0.5
    p_phonebook: float = 0.15
    p_bos: float = 0.5
    text: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    # fraction of passkey rows whose key line is placed at least `window` tokens before the first answer
    # token (beyond the SWA window, so only the Mamba state can carry the key), where the row is long enough
    pk_far: float = 0.0
    # fraction of the other passkey rows whose key line straddles the window edge as seen from the first
    # answer token (part of the line inside the window, the rest only in the Mamba state)
    pk_edge: float = 0.0
    window: int | None = None
    # cap on the phonebook size (entries); None: as many as fit in the row (log-uniform from 3)
    pb_max_entries: int | None = None
    # floor on the phonebook size (entries), where the row has room: spends the steps on long books
    pb_min_entries: int = 3
    # also train on the digits of the two re-stated (few-shot) entries: they are lookups in the book too
    pb_fewshot_loss: bool = False
    # phone-number lengths drawn uniformly from this range per book (the evaluation uses 10)
    pb_digits: tuple[int, int] = (10, 10)
    # chance per digit gap of a separator inside a training phone number (see phonebook_prompt)
    pb_seps: float = 0.0
    # chance that a row's three lookups come from the first quarter of the book (see phonebook_prompt)
    pb_early: float = 0.0


def far_depth(rng: random.Random, n_tokens: int, key: int, window: int) -> float | None:
    """A depth for passkey_prompt(n_tokens, depth, key) that puts >= window filler characters between the
    key line and the question (so both copies of the key lie >= window tokens before every answer token),
    uniform over the possible amounts of filler; None if the prompt is too short for that."""
    fixed = template_len(key)
    n_garbage = n_tokens - fixed
    if n_garbage < window:
        return None
    post = rng.randint(window, n_garbage)
    return (n_garbage - post) / n_garbage if n_garbage else 0.0


def edge_depth(rng: random.Random, n_tokens: int, key: int, window: int) -> float | None:
    """A depth for passkey_prompt(n_tokens, depth, key) that puts the key line across the SWA window's
    edge as seen from the first answer token. The line ends post + len(question) + 2 tokens before that
    token, so it straddles the edge when post is in [window - len(info) - len(question) - 2,
    window - len(question) - 2); post is drawn uniformly from that range widened by 8 on each side.
    None if the prompt is too short for that."""
    fixed = template_len(key)
    n_garbage = n_tokens - fixed
    lo = max(0, window - len(KEY_LINE.format(key=key)) - len(QUESTION) - 10)
    hi = window - len(QUESTION) + 6
    if n_garbage < hi:
        return None
    post = rng.randint(lo, hi)
    return (n_garbage - post) / n_garbage


def make_doc(rng: random.Random, L: int, mix: DataMix, info: dict | None = None):
    """One training row of exactly L tokens. Returns (ids int64 (L,), kind (L,) int8) where
    kind: 0 = pad (no loss), 1 = LM token, 2 = answer token (weighted; target at this position).
    info (optional dict) receives "task" ("passkey"/"phonebook"/"text"), "far" (passkey key beyond
    the SWA window by construction) and "edge" (key line across the window's edge, see edge_depth)."""
    far = edge = False
    shots: list[tuple[int, int]] = []
    ids = np.full(L, PAD, dtype=np.int64)
    kind = np.zeros(L, dtype=np.int8)
    bos = [BOS] if rng.random() < mix.p_bos else []
    r = rng.random()
    if r < mix.p_passkey and L >= 320:
        key = rng.randint(10000, 99999) if rng.random() < 0.9 else rng.randint(1, 50000)
        ans = encode(PASSKEY_ANSWER.format(key=key)) + [EOS]
        u = rng.random()
        depth = 0.0 if u < 0.1 else 1.0 if u < 0.2 else rng.random()
        if mix.window and mix.pk_far > 0 and rng.random() < mix.pk_far:
            d_far = far_depth(rng, L - len(bos) - len(ans), key, mix.window)
            if d_far is not None:
                depth, far = d_far, True
        elif mix.window and mix.pk_edge > 0 and rng.random() < mix.pk_edge:
            d_edge = edge_depth(rng, L - len(bos) - len(ans), key, mix.window)
            if d_edge is not None:
                depth, edge = d_edge, True
        prompt = encode(passkey_prompt(L - len(bos) - len(ans), depth, key))
        task = "passkey"
        seq = bos + prompt + ans
        n_ans = len(ans)
    elif r < mix.p_passkey + mix.p_phonebook or len(mix.text) < L + 1:
        budget = L - len(bos) - 14
        # entries ~ 26 bytes; the book (+3 re-stated lines) must fit; log-uniform size favours small
        # books. max_e slightly over-estimates what fits, and a row that comes out too long loses an
        # entry or two per retry, so the largest books that fit the row are drawn too (4,096 tokens:
        # up to ~155 entries; every size of the evaluation grid that fits)
        max_e = max(3, (budget - 50) // 26)
        if mix.pb_max_entries is not None:
            max_e = max(3, min(max_e, mix.pb_max_entries))
        min_e = max(3, min(mix.pb_min_entries, max_e))
        n_e = int(round(math.exp(rng.uniform(math.log(min_e), math.log(max_e))))) if max_e > min_e else min_e
        while True:
            prompt, ph = phonebook_prompt(rng, n_e, rng.randint(*mix.pb_digits), mix.pb_seps, mix.pb_early)
            ans = encode(" " + ph + "\n") + [EOS]
            seq = bos + encode(prompt) + ans
            if len(seq) <= L or n_e <= 3:
                break
            n_e = max(3, n_e - 1 - n_e // 64)
        whole = len(seq) <= L
        seq = seq[:L]
        n_ans = len(ans)
        task = "phonebook"
        if mix.pb_fewshot_loss and whole:
            shots = [(len(bos) + a, len(bos) + b) for a, b in fewshot_digit_spans(prompt)]
    else:
        s = rng.randrange(0, len(mix.text) - L)
        seq = bos + mix.text[s : s + L - len(bos)].astype(np.int64).tolist()
        n_ans = 0
        task = "text"
    if info is not None:
        info.update(task=task, far=far, edge=edge)
    n = len(seq)
    ids[:n] = seq
    kind[: n - 1] = 1  # position t predicts seq[t+1]
    if n_ans:
        kind[n - 1 - n_ans : n - 1] = 2
    for a, b in shots:  # position t predicts seq[t+1]: targets a..b-1 sit at a-1..b-2
        kind[a - 1 : b - 1] = 2
    return ids, kind


def make_batch(rng: random.Random, B: int, L: int, mix: DataMix, infos: list | None = None):
    """B rows of make_doc: ids (B, L) int64, kind (B, L) int8; infos (optional list) gets each row's info."""
    rows = []
    for _ in range(B):
        d: dict = {}
        rows.append(make_doc(rng, L, mix, d))
        if infos is not None:
            infos.append(d)
    ids = torch.from_numpy(np.stack([r[0] for r in rows]))
    kind = torch.from_numpy(np.stack([r[1] for r in rows]))
    return ids, kind
