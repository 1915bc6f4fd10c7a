"""Passkey evaluation: prompt construction (Landmark template), scoring, end-to-end runs on
the real model (small random-weight configs), exactness of the prefix sharing, JSON."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from samba_ext import Samba, SambaConfig
from samba_ext.eval import load_result, passkey
from samba_ext.eval.passkey import (FILLER, FILLER_SENTENCES, INSTRUCTION, QUESTION,
                                    build_passkey_prompt, filler_sentence_tokens, filler_text,
                                    score_passkey, template_tokens)
from samba_ext.tokenizer import ByteTokenizer

BYTE = ByteTokenizer()


class WordTokenizer:
    """A test-only non-byte tokenizer (words, punctuation and whitespace runs are tokens),
    so the length search has to work with chars != tokens."""

    vocab_size = 1 << 30
    eos_id = None
    bos_id = None

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}
        self.inv: list[str] = []

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in re.findall(r"\w+|[^\w\s]|\s+", text):
            if piece not in self.vocab:
                self.vocab[piece] = len(self.inv)
                self.inv.append(piece)
            ids.append(self.vocab[piece])
        return ids

    def decode(self, ids) -> str:
        return "".join(self.inv[i] for i in ids)


def _check_template(text: str, key: int, depth: float) -> tuple[str, str]:
    key_line = f"The pass key is {key}. Remember it. {key} is the pass key."
    lines = text.split("\n")
    assert len(lines) == 5
    assert lines[0] == INSTRUCTION and lines[2] == key_line and lines[4] == QUESTION
    for part in (INSTRUCTION, key_line, QUESTION):
        assert text.count(part) == 1, part
    prefix, suffix = lines[1], lines[3]
    # Landmark: both filler slices are cut from the beginning of the repeated filler
    assert filler_text(len(prefix)) == prefix and filler_text(len(suffix)) == suffix
    n = len(prefix) + len(suffix)
    assert abs(len(prefix) - depth * n) <= 0.5 + 1e-9   # the cut is at round(depth * n)
    return prefix, suffix


@pytest.mark.parametrize("length", [260, 1000, 4096, 10000])
@pytest.mark.parametrize("depth", [0.0, 0.13, 0.5, 1.0])
def test_prompt_byte_tokenizer_exact_length(length, depth):
    key = 54321
    pr = build_passkey_prompt(BYTE, length, depth, key)
    _check_template(pr.text, key, depth)
    # bytes are tokens: the length is hit exactly
    assert pr.n_tokens == length == len(pr.text.encode())
    assert pr.ids.tolist() == BYTE.encode(pr.text)
    # the key-independent prefix is the instruction line plus the filler before the key
    assert pr.shared_tokens == len(INSTRUCTION) + 1 + pr.prefix_chars


@pytest.mark.parametrize("length", [120, 700, 3000])
@pytest.mark.parametrize("depth", [0.0, 0.37, 1.0])
def test_prompt_word_tokenizer_within_one_sentence(length, depth):
    tok = WordTokenizer()
    key = 1234
    pr = build_passkey_prompt(tok, length, depth, key)
    _check_template(pr.text, key, depth)
    assert pr.ids.tolist() == tok.encode(pr.text)
    assert pr.n_tokens <= length
    assert length - pr.n_tokens <= filler_sentence_tokens(tok)
    # the shared prefix really is key-independent
    other = build_passkey_prompt(tok, length, depth, 9876)
    k = pr.shared_tokens
    assert np.array_equal(pr.ids[:k], other.ids[:k])


def test_filler_is_the_landmark_sentence_repeated():
    s = filler_text(3 * len(FILLER) + 4)
    assert s == FILLER + " " + FILLER + " " + FILLER + " T"
    assert " ".join(FILLER_SENTENCES) == FILLER


def test_prompt_errors():
    base = template_tokens(BYTE, 12345)
    with pytest.raises(ValueError, match="smaller than the passkey template"):
        build_passkey_prompt(BYTE, base - 1, 0.5, 12345)
    assert build_passkey_prompt(BYTE, base, 0.5, 12345).n_tokens == base  # no filler at all
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="outside"):
            build_passkey_prompt(BYTE, 1000, bad, 12345)


@pytest.mark.parametrize("output,key,ok", [
    (" 12345. Remember it.", 12345, True),
    ("12345", 12345, True),
    (" is 12345 and 999", 12345, True),
    (" 999 then 12345", 12345, False),     # the FIRST integer counts
    (" 1234", 12345, False),
    (" 123456", 12345, False),
    (" 12 345", 12345, False),
    ("", 12345, False),
    (" no digits here", 12345, False),
    (" 012345", 12345, True),              # int comparison, as Landmark's int(...) == key
])
def test_score_passkey(output, key, ok):
    assert score_passkey(output, key) is ok


@pytest.fixture(scope="module")
def model():
    return Samba(SambaConfig.preset("samba-test"), seed=1)


def test_passkey_end_to_end_and_json(model, tmp_path):
    lengths, depths = [300, 700], [0.0, 0.5, 1.0]
    r = passkey(model, lengths=lengths, depths=depths, trials=2, seed=3, progress=False)
    assert not r.partial
    assert [(c["length"], c["depth"]) for c in r.cells] == [(L, d) for L in lengths
                                                          for d in depths]
    n_correct = 0
    for c in r.cells:
        assert c["n"] == c["trials"] == 2 and len(c["results"]) == 2
        for t in c["results"]:
            assert t["tokens"] == c["length"]
            assert 10000 <= t["key"] <= 99999
            assert t["correct"] == score_passkey(t["output"], t["key"])
            assert abs(t["depth"] - c["depth"]) < 0.01
        assert c["correct"] == sum(t["correct"] for t in c["results"])
        assert c["accuracy"] == c["correct"] / 2
        n_correct += c["correct"]
    d = r.to_dict()
    assert d["overall_accuracy"] == n_correct / 12
    assert d["eval"] == "passkey" and d["seed"] == 3 and d["cells"] == r.cells
    assert d["model"]["hash"].startswith("sha256:") and d["model"]["hash_of"] == "parameters"
    assert d["model"]["config"]["name"] == "samba-test"
    assert "version" in d["machine"] and d["package_version"]
    p = r.save_json(tmp_path / "r.json")
    back = load_result(p)
    assert type(back) is type(r) and back.to_dict() == d
    assert json.loads(back.to_json()) == json.loads(json.dumps(d))
    table = r.table()
    assert "300" in table and "700" in table and "overall accuracy" in table


class _Recorder:
    """Wraps the real model; records the logits of every prefill that ends a prompt."""

    def __init__(self, m, length):
        self.m, self.length, self.logits = m, length, []

    def __getattr__(self, name):
        return getattr(self.m, name)

    def prefill(self, tokens, state, **kw):
        out = self.m.prefill(tokens, state, **kw)
        if int(state.pos[0]) == self.length:
            self.logits.append(np.array(out))
        return out


def test_prefix_sharing_is_exact(model):
    # Every trial must see exactly its own tokens: the last-position logits of each prompt
    # agree with and without reusing the shared-prefix state (and so do the outputs).
    # (one trial at a time: the recorders keep the logits in the order the prefills end)
    kw = dict(lengths=[400], depths=[0.0, 0.3, 0.31, 1.0], trials=2, seed=5, progress=False,
              workers=1)
    ra, rb = _Recorder(model, 400), _Recorder(model, 400)
    a = passkey(ra, share_prefix=True, **kw)
    b = passkey(rb, share_prefix=False, **kw)
    assert len(ra.logits) == len(rb.logits) == 8
    la, lb = np.stack(ra.logits), np.stack(rb.logits)
    # Only the chunk boundaries differ between the two runs, so the logits (|logit| < 1 for
    # this random model) agree to float32 rounding (~1e-7 measured); 3e-6 leaves headroom.
    assert np.all(np.isfinite(la))
    assert np.max(np.abs(la - lb)) <= 3e-6
    # ... while the two keys of a cell change the logits by ~3e-5..1e-4 (measured), so a
    # state mix-up between trials would show: the comparison above is not vacuous.
    for i in range(0, 8, 2):
        assert np.max(np.abs(la[i] - la[i + 1])) > 1e-5
    outs_a = [t["output"] for c in a.cells for t in c["results"]]
    outs_b = [t["output"] for c in b.cells for t in c["results"]]
    assert outs_a == outs_b
    sa, sb = a.summary(), b.summary()
    assert sa["processed_tokens"] < sb["processed_tokens"]


def test_cells_independent_of_grid_and_random_depth(model):
    small = passkey(model, lengths=[300], depths=[0.5], trials=2, seed=7, progress=False)
    big = passkey(model, lengths=[260, 300], depths=[0.0, 0.5], trials=2, seed=7,
                  progress=False)
    cell = [c for c in big.cells if c["length"] == 300 and c["depth"] == 0.5][0]
    assert [t["key"] for t in cell["results"]] == [t["key"] for t in small.cells[0]["results"]]
    r = passkey(model, lengths=[300], depths="random", trials=3, seed=7, progress=False,
                key_range=(1, 50000))
    assert len(r.cells) == 1 and r.cells[0]["depth"] == "random" and r.cells[0]["n"] == 3
    ds = [t["depth"] for t in r.cells[0]["results"]]
    assert all(0 <= d <= 1 for d in ds) and len(set(ds)) >= 2   # actual depths (rounded)
    assert all(1 <= t["key"] <= 50000 for t in r.cells[0]["results"])


class _ByPrompt:
    """Wraps the real model; keeps each prompt's last-position logits keyed by its tokens
    (trials run side by side finish in any order)."""

    def __init__(self, m):
        self.m, self.logits, self.prefills = m, {}, 0

    def __getattr__(self, name):
        return getattr(self.m, name)

    def prefill(self, tokens, state, **kw):
        self.prefills += 1
        out = self.m.prefill(tokens, state, **kw)
        self.logits[(int(state.pos[0]), tokens.tobytes())] = np.array(out)
        return out


@pytest.mark.parametrize("share_prefix", [True, False])
def test_trials_side_by_side_equal_one_at_a_time(model, share_prefix):
    """workers > 1 runs trials concurrently (one kernel thread each); the cells, keys,
    outputs and token counts are those of the serial run, every prompt's logits agree to
    float32 rounding (3e-6, as in test_prefix_sharing_is_exact), and the thread counts are
    put back afterwards."""
    from samba_ext import threads

    n0, blas0 = threads.get_num_threads(), threads.blas_info()["threads"]
    kw = dict(lengths=[400, 700], depths=[0.0, 0.5, 1.0], trials=3, seed=7, progress=False,
              share_prefix=share_prefix)
    ma, mb = _ByPrompt(model), _ByPrompt(model)
    a = passkey(ma, workers=1, **kw)
    b = passkey(mb, workers=3, **kw)
    assert threads.get_num_threads() == n0 and threads.blas_info()["threads"] == blas0
    strip = [{k: v for k, v in c.items() if k != "time_s"} for c in a.cells]
    assert strip == [{k: v for k, v in c.items() if k != "time_s"} for c in b.cells]
    assert sum(c["n"] for c in b.cells) == 18 and ma.prefills == mb.prefills
    assert ma.logits.keys() == mb.logits.keys()
    assert max(np.max(np.abs(ma.logits[k] - mb.logits[k])) for k in ma.logits) <= 3e-6


def test_trials_side_by_side_stop_on_interrupt(model):
    """A KeyboardInterrupt in one of the concurrent trials stops the others at their next
    prefill chunk, keeps the finished cells and restores the thread counts."""
    from samba_ext import threads
    from samba_ext.eval import EvalInterrupted

    n0 = threads.get_num_threads()

    class Interrupting(_ByPrompt):
        def prefill(self, tokens, state, **kw):
            if self.prefills == 5:
                self.prefills += 1
                raise KeyboardInterrupt
            return super().prefill(tokens, state, **kw)

    m = Interrupting(model)
    with pytest.raises(EvalInterrupted) as ei:
        passkey(m, lengths=[700], depths=[0.0, 1.0], trials=4, share_prefix=False,
                chunk_size=64, progress=False, workers=2)
    r = ei.value.result
    assert r.partial and 0 < sum(c["n"] for c in r.cells) < 8
    assert threads.get_num_threads() == n0


def test_workers_argument(model):
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="workers"):
            passkey(model, lengths=[300], trials=1, progress=False, workers=bad)


def test_interrupt_keeps_finished_cells(model, tmp_path):
    """issue 19.4: Ctrl-C in Python saves the finished cells (to save=) and then raises a
    KeyboardInterrupt (EvalInterrupted) carrying them, instead of returning normally (a loop
    over evaluations would otherwise go on)."""
    from samba_ext.eval import EvalInterrupted, load_result

    class Interrupting:
        """Wraps the real model; raises KeyboardInterrupt on the 4th prefill call."""

        def __init__(self, m):
            self.m, self.calls = m, 0

        def __getattr__(self, name):
            return getattr(self.m, name)

        def prefill(self, *a, **k):
            self.calls += 1
            if self.calls == 4:
                raise KeyboardInterrupt
            return self.m.prefill(*a, **k)

    done: list = []
    out = tmp_path / "pk.json"
    with pytest.raises(KeyboardInterrupt) as ei:
        passkey(Interrupting(model), lengths=[300], depths=[0.0, 1.0], trials=2,
                share_prefix=False, progress=False, save=out, on_cell=done.append)
    assert isinstance(ei.value, EvalInterrupted)
    r = ei.value.result
    assert r.partial
    assert [c["n"] for c in r.cells] == [2, 1]
    assert r.to_dict()["partial"] is True
    assert [c["depth"] for c in done] == [0.0]          # one finished cell reported
    saved = load_result(out)
    assert saved.partial and [c["n"] for c in saved.cells] == [2, 1]
    assert ei.value.path == str(out)


def test_passkey_argument_errors(model):
    with pytest.raises(ValueError, match="smaller than the passkey template"):
        passkey(model, lengths=[50], progress=False)
    with pytest.raises(ValueError, match="outside"):
        passkey(model, lengths=[300], depths=[1.5], progress=False)
    with pytest.raises(ValueError, match="random"):
        passkey(model, lengths=[300], depths="middle", progress=False)
    with pytest.raises(ValueError, match="trials"):
        passkey(model, lengths=[300], trials=0, progress=False)


def test_python_and_cli_share_grid_and_syntax(model):
    """issue 19.4: passkey(model) ran the paper grid (28.6M tokens) while the CLI ran a
    quick one, and Python rejected the CLI's "4K,8K". One default, one syntax. (The runs
    are stopped after their first cell through on_cell; params record the whole grid.)"""
    from samba_ext.cli import PASSKEY_DEPTHS, PASSKEY_LENGTHS, PASSKEY_TRIALS, parse_depths, \
        parse_lengths
    from samba_ext.eval import GRIDS, EvalInterrupted, phonebook

    def stop(cell):
        raise KeyboardInterrupt

    def params(**kw):
        with pytest.raises(EvalInterrupted) as ei:
            passkey(model, progress=False, on_cell=stop, **kw)
        return ei.value.result.params

    p = params()
    assert p["lengths"] == parse_lengths(PASSKEY_LENGTHS)
    assert p["depths"] == parse_depths(PASSKEY_DEPTHS) and p["trials"] == PASSKEY_TRIALS
    assert tuple(p["lengths"]) == GRIDS["quick"]["passkey"]["lengths"]
    p = params(grid="paper")
    assert p["lengths"][0] == 4096 and p["lengths"][-1] == 262144 and p["trials"] == 5
    p = params(lengths="300, 1K", depths="0:1:0.5", trials=1)
    assert p["lengths"] == [300, 1024] and p["depths"] == [0.0, 0.5, 1.0]
    with pytest.raises(EvalInterrupted) as ei:
        phonebook(model, entries="5,8", trials=1, progress=False, on_cell=stop)
    assert ei.value.result.params["entries"] == [5, 8]
    for bad in ("4X", "1.3"):
        with pytest.raises(ValueError, match="lengths"):
            passkey(model, lengths=bad, progress=False)
    with pytest.raises(ValueError, match="grid"):
        passkey(model, grid="huge", progress=False)
