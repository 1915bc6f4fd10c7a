"""The bundled checkpoints do what issue 7 says they do (fast CI checks on the CPU).

* samba-tiny retrieves the passkey at 2x and 8x its training length (8K and 32K tokens) at
  three depths, through the package's own passkey evaluation (greedy decoding, the C kernels).
  Inside the SWA window (512 tokens) attention could answer; at depths 0.1 and 0.5 of an 8K or
  32K prompt the key lies thousands of tokens back, so only the Mamba state can carry it.
* samba-tiny answers the phonebook exactly while the book fits in its window, and mostly not
  when the book is four times the window.
* llama-tiny (full attention, same size, same training length) retrieves at 2K but not at 8K:
  the baseline fails where the issue says it should, so a passing samba-tiny check is not an
  artefact of the task being trivial. Inside its training length it is a strong baseline: it
  looks up a phonebook of 40 entries (about 1,100 tokens, beyond samba-tiny's window).

Each check is exact (a key is right or wrong); keys are drawn from a fixed seed, so the runs
are deterministic. Both files must be installed as package data (``samba_ext/data``).
"""
from __future__ import annotations

import json
import os

import pytest

from samba_ext import Samba
from samba_ext.data import bundled_path
from samba_ext.eval import passkey

TRAIN_LEN = 4096
DEPTHS = [0.1, 0.5, 0.9]


@pytest.fixture(scope="module")
def samba_tiny() -> Samba:
    return Samba.load("samba-tiny")


def test_samba_tiny_is_the_trained_checkpoint(samba_tiny):
    cfg = samba_tiny.config
    assert list(cfg.layer_types) == ["mamba", "swa", "mamba", "swa"]
    assert 256 <= cfg.window <= 512
    meta = samba_tiny.metadata
    assert "train_command" in meta and "--model samba-tiny" in meta["train_command"]
    assert json.loads(meta["config"])["max_train_len"] == TRAIN_LEN
    # the size bound for a file shipped inside the package
    assert os.path.getsize(bundled_path("samba-tiny")) <= 16 * 2**20


@pytest.mark.parametrize("factor", [2, 8])
def test_samba_tiny_retrieves_beyond_training_length(samba_tiny, factor):
    L = factor * TRAIN_LEN
    r = passkey(samba_tiny, lengths=[L], depths=DEPTHS, trials=1, seed=7, progress=False)
    assert len(r.cells) == len(DEPTHS)
    wrong = [(c["depth"], c["results"]) for c in r.cells if c["correct"] != c["n"]]
    assert not wrong, f"samba-tiny missed the passkey at {L} tokens: {wrong}"
    # the key line lies outside the SWA window at these depths: only the Mamba state reaches it
    assert L * (1 - max(DEPTHS)) > samba_tiny.config.window


def test_samba_tiny_phonebook_inside_its_window(samba_tiny):
    """Issue 7's phonebook shape: a book that fits in the 512-token window (10 entries, ~325
    tokens) is looked up exactly; a book 4x the window (80 entries, ~2,140 tokens) is not, since the
    queried line is then usually outside the window and the Mamba state cannot hold a whole book."""
    from samba_ext.eval import phonebook

    r = phonebook(samba_tiny, entries=[10, 80], trials=10, seed=0, progress=False)
    acc = {c["entries"]: c["correct"] / c["n"] for c in r.cells}
    assert max(x["tokens"] for x in r.cells[0]["results"]) < samba_tiny.config.window
    assert acc[10] >= 0.9, r.cells[0]["results"]
    assert acc[80] <= 0.5, acc


def test_llama_tiny_baseline_collapses_beyond_training_length():
    m = Samba.load("llama-tiny")
    inside = passkey(m, lengths=[2048], depths=DEPTHS, trials=1, seed=7, progress=False)
    beyond = passkey(m, lengths=[2 * TRAIN_LEN], depths=DEPTHS, trials=1, seed=7, progress=False)
    assert inside.overall_accuracy == 1.0
    assert beyond.overall_accuracy == 0.0
    assert all(c["n"] == 1 for c in beyond.cells)


def test_llama_tiny_phonebook_inside_training_length():
    """The full-attention baseline looks books up inside its 4K training length, as the paper's
    Llama does: 40 entries (~1,105 tokens, beyond samba-tiny's 512-token window) at >= 90% of 10
    books. The bundled file scored 20/20 at 40 and at 80 entries with the CLI's draws; the bound allows
    one miss on these 10 (other books), while the earlier llama-tiny, which never learned books of more
    than 12 entries, scored 0/20 at 40."""
    from samba_ext.eval import phonebook

    m = Samba.load("llama-tiny")
    r = phonebook(m, entries=[40], trials=10, seed=0, progress=False)
    toks = [x["tokens"] for x in r.cells[0]["results"]]
    assert 512 < min(toks) and max(toks) < TRAIN_LEN
    assert r.cells[0]["correct"] / r.cells[0]["n"] >= 0.9, r.cells[0]["results"]


@pytest.mark.parametrize("name", ["samba-tiny", "llama-tiny"])
def test_preset_matches_the_bundled_file(name):
    """SambaConfig.preset(name) (used for random-weight fallbacks and throughput runs) has the
    shapes of the shipped checkpoint."""
    from samba_ext import SambaConfig

    stored = json.loads(Samba.load(name).metadata["config"])
    preset = SambaConfig.preset(name)
    for key in ("vocab_size", "n_layer", "d_model", "n_head", "n_kv_head", "head_dim",
                "intermediate_size", "window", "d_state", "d_conv", "expand", "dt_rank"):
        assert getattr(preset, key) == stored[key], key
    assert list(preset.layer_types) == stored["layer_types"]


def test_edge_probe_places_the_key_line(samba_tiny):
    """training/passkey_edge_probe.py's depths put the key line's end where it says (to one token),
    so its table of correct/trials per offset from the window edge means what it prints."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "training",
                        "passkey_edge_probe.py")
    spec = importlib.util.spec_from_file_location("passkey_edge_probe", path)
    ep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ep)
    tok = samba_tiny.tokenizer
    for L in (1024, 4096):
        pairs = ep.edge_depths(tok, L, [440, 500, 584])
        assert [e for e, _ in pairs] == [440, 500, 584]
        for e, d in pairs:
            assert abs(ep.tokens_after_key_line(tok, L, d) - e) <= 1, (L, e, d)
