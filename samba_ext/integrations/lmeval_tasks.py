"""lm-eval task data for the package's passkey and phonebook evaluations.

The task YAMLs in ``samba_ext/integrations/lm_eval_tasks/`` (``samba_passkey``,
``samba_phonebook``) load their documents with the functions below (lm-eval's
``custom_dataset``), built by the same generators and seeds as :func:`samba_ext.eval.passkey`
and :func:`samba_ext.eval.phonebook`, and score with the same rules
(:func:`~samba_ext.eval.passkey.score_passkey`, :func:`~samba_ext.eval.phonebook.score_phonebook`).
So lm-eval's ``acc`` equals the package's accuracy on the same grid.

Grid options come from lm-eval's ``--metadata`` JSON (or ``TaskManager(metadata=...)``):
passkey ``lengths`` (tokens; a list or a string such as ``"1K,2K"``), ``depths`` (list),
``trials``, ``seed``, ``key_digits``; phonebook ``entries``, ``trials``, ``seed``. Passkey
lengths are counted with the tokenizer of the model named by ``pretrained`` (lm-eval puts the
model arguments into the metadata), the byte tokenizer when there is none.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["TASK_DIR", "passkey_docs", "phonebook_docs", "passkey_dataset", "phonebook_dataset",
           "passkey_process_results", "phonebook_process_results"]

#: Directory of the task YAMLs (pass it to lm-eval's ``--include_path``).
TASK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lm_eval_tasks")

PASSKEY_LENGTHS = (1024, 2048, 4096)
PASSKEY_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
PASSKEY_TRIALS = 2
PHONEBOOK_ENTRIES = (20, 40, 80)
PHONEBOOK_TRIALS = 5


def _int_list(value: Any, name: str) -> list[int]:
    if isinstance(value, str):
        from ..cli import CliError, parse_lengths

        try:
            return parse_lengths(value, name)
        except CliError as e:
            raise ValueError(str(e)) from None
    if isinstance(value, (int, np.integer)):
        return [int(value)]
    return [int(v) for v in value]


def _tokenizer(pretrained: Any):
    if pretrained is None:
        from ..tokenizer import ByteTokenizer

        return ByteTokenizer()
    if hasattr(pretrained, "tokenizer"):
        return pretrained.tokenizer
    from ..eval._common import get_model

    return get_model(str(pretrained), warn=False).tokenizer


def passkey_docs(tokenizer: Any = None, lengths: Any = PASSKEY_LENGTHS,
                 depths: Any = PASSKEY_DEPTHS, trials: int = PASSKEY_TRIALS, seed: int = 0,
                 key_digits: int = 5) -> list[dict]:
    """One document per (length, depth, trial): ``{"text", "key", "length", "depth", "trial",
    "tokens"}``; keys drawn exactly as :func:`samba_ext.eval.passkey` draws them."""
    from ..eval.passkey import _seed_key, build_passkey_prompt, draw_key

    tok = tokenizer if tokenizer is not None else _tokenizer(None)
    if isinstance(depths, str):
        from ..cli import CliError, parse_depths

        try:
            depths = parse_depths(depths)
        except CliError as e:
            raise ValueError(str(e)) from None
        if depths == "random":
            raise ValueError("depths: the lm-eval passkey task takes fixed depths, not 'random'")
    docs = []
    for length in _int_list(lengths, "lengths"):
        for d in [float(x) for x in depths]:
            for t in range(int(trials)):
                rng = np.random.default_rng([int(seed), length, _seed_key(d), t])
                key = draw_key(rng, int(key_digits))
                pr = build_passkey_prompt(tok, length, d, key)
                docs.append({"text": pr.text, "key": str(key), "length": length, "depth": d,
                             "trial": t, "tokens": pr.n_tokens})
    return docs


def phonebook_docs(entries: Any = PHONEBOOK_ENTRIES, trials: int = PHONEBOOK_TRIALS,
                   seed: int = 0) -> list[dict]:
    """One document per (entries, trial): ``{"text", "number", "query", "entries", "trial"}``,
    the books of :func:`samba_ext.eval.phonebook` for the same seed."""
    from ..eval.phonebook import load_names, make_phonebook, phonebook_prompt

    names = load_names()
    docs = []
    for n in _int_list(entries, "entries"):
        for t in range(int(trials)):
            rng = np.random.default_rng([int(seed), n, t])
            book = make_phonebook(rng, n, names)
            a, b, c = (int(i) for i in rng.choice(n, size=3, replace=False))
            docs.append({"text": phonebook_prompt(book, a, b, c), "number": book[c][1],
                         "query": book[c][0], "entries": n, "trial": t})
    return docs


def _dataset(docs: list[dict]) -> dict:
    import datasets

    return {"test": datasets.Dataset.from_list(docs)}


def passkey_dataset(**kw: Any) -> dict:
    """lm-eval ``custom_dataset`` of ``samba_passkey`` (keyword arguments: the metadata)."""
    return _dataset(passkey_docs(
        _tokenizer(kw.get("pretrained")), lengths=kw.get("lengths", PASSKEY_LENGTHS),
        depths=kw.get("depths", PASSKEY_DEPTHS), trials=int(kw.get("trials", PASSKEY_TRIALS)),
        seed=int(kw.get("seed", 0)), key_digits=int(kw.get("key_digits", 5))))


def phonebook_dataset(**kw: Any) -> dict:
    """lm-eval ``custom_dataset`` of ``samba_phonebook``."""
    return _dataset(phonebook_docs(entries=kw.get("entries", PHONEBOOK_ENTRIES),
                                   trials=int(kw.get("trials", PHONEBOOK_TRIALS)),
                                   seed=int(kw.get("seed", 0))))


def passkey_process_results(doc: dict, results: list[str]) -> dict:
    from ..eval.passkey import score_passkey

    return {"acc": float(score_passkey(results[0], int(doc["key"])))}


def phonebook_process_results(doc: dict, results: list[str]) -> dict:
    from ..eval.phonebook import score_phonebook

    return {"acc": float(score_phonebook(results[0], doc["number"]))}
