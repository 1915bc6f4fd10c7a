"""Perplexity evaluation against an independent computation from full-forward logits
(streaming, segmented streaming, sliding windows), the stdlib corpus and its split, and
input handling."""
from __future__ import annotations

import math
import os
import zlib

import numpy as np
import pytest

from samba_ext import Samba, SambaConfig
from samba_ext.eval import corpus, load_result, perplexity
from samba_ext.tokenizer import ByteTokenizer


@pytest.fixture(scope="module")
def model():
    return Samba(SambaConfig.preset("samba-test"), seed=3)


def ref_nll(model, x: np.ndarray) -> np.ndarray:
    """NLL of x[1:] from one full forward, log-softmax in float64 (written here, not shared
    with the code under test). Returns (len(x) - 1,)."""
    z = model.forward(x[None])[0].astype(np.float64)[:-1]
    zmax = z.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(z - zmax).sum(axis=-1)) + zmax[:, 0]
    return lse - z[np.arange(len(x) - 1), x[1:]]


# The model computes in float32; the mean NLL over ~1000 tokens agrees with the float64
# log-softmax of the float32 full-forward logits to ~1e-7 relative (only chunking and the
# summation order differ), so 1e-6 is a safe bound that still catches a dropped / shifted
# token (which moves the mean by ~1e-3).
RTOL = 1e-6


def test_streaming_equals_full_forward(model, rng):
    x = rng.integers(0, 256, 1000)
    ref = ref_nll(model, x)
    for seg, chunk in ((10_000, 2048), (300, 128), (257, 100)):
        r = perplexity(model, tokens=x, segment=seg, chunk_size=chunk, buckets=[0, 100, 500, 1000],
                       context_lengths=[50, 1000], progress=False)
        ctx = r.cells_of("context")
        assert ctx[-1]["context_length"] == 1000 and ctx[-1]["tokens"] == 999
        assert ctx[-1]["ppl"] == pytest.approx(math.exp(ref.mean()), rel=RTOL)
        assert ctx[0]["ppl"] == pytest.approx(math.exp(ref[:49].mean()), rel=RTOL)
        b = r.cells_of("bucket")
        assert [(c["start"], c["end"], c["tokens"]) for c in b] == \
            [(0, 100, 99), (100, 500, 400), (500, 1000, 500)]
        # bucket [lo, hi) holds the NLLs of tokens lo..hi-1, i.e. ref[lo-1 : hi-1]
        assert b[0]["mean_nll"] == pytest.approx(ref[:99].mean(), rel=RTOL)
        assert b[1]["mean_nll"] == pytest.approx(ref[99:499].mean(), rel=RTOL)
        assert b[2]["mean_nll"] == pytest.approx(ref[499:].mean(), rel=RTOL)
        assert r.summary()["ppl"] == ctx[-1]["ppl"]


def test_streaming_several_rows(model, rng):
    x = rng.integers(0, 256, (2, 300))
    r = perplexity(model, tokens=x, segment=128, progress=False)
    ref = np.concatenate([ref_nll(model, x[0]), ref_nll(model, x[1])])
    assert r.summary()["ppl"] == pytest.approx(math.exp(ref.mean()), rel=RTOL)


def test_sliding_windows(model, rng):
    x = rng.integers(0, 256, 700)
    W, S = 256, 100
    starts = list(range(0, 700 - W + 1, S))
    starts.append(700 - W)                                 # the tail window
    per_window = {s: ref_nll(model, x[s:s + W]) for s in starts}
    # score="new" (Press): each target once, from the first window reaching past the last one
    total, count, until = 0.0, 0, 0
    for s in starts:
        v = per_window[s]                                  # v[j] = NLL of x[s + j + 1]
        first = max(until, s + 1)
        total += v[first - s - 1:].sum()
        count += len(v[first - s - 1:])
        until = s + W
    assert count == 699
    r = perplexity(model, tokens=x, mode="sliding", context_lengths=[W], stride=S,
                   progress=False)
    (c,) = r.cells_of("window")
    assert (c["window"], c["stride"], c["windows"], c["tokens"]) == (W, S, len(starts), 699)
    assert c["ppl"] == pytest.approx(math.exp(total / count), rel=RTOL)
    # score="window" (LongLoRA / ArchScale): every target of every window, no tail window
    ws = starts[:-1]
    allv = np.concatenate([per_window[s] for s in ws])
    r2 = perplexity(model, tokens=x, mode="sliding", context_lengths=[W], stride=S,
                    score="window", batch_size=2, progress=False)
    (c2,) = r2.cells_of("window")
    assert c2["tokens"] == allv.size and c2["windows"] == len(ws)
    assert c2["ppl"] == pytest.approx(math.exp(allv.mean()), rel=RTOL)
    # a window as long as the stream is the plain full-stream perplexity
    r3 = perplexity(model, tokens=x, mode="sliding", context_lengths=[700], progress=False)
    assert r3.cells_of("window")[0]["ppl"] == pytest.approx(math.exp(ref_nll(model, x).mean()),
                                                            rel=RTOL)


def test_perplexity_inputs_and_json(model, tmp_path):
    text = "def f(x):\n    return x + 1\n" * 20
    p = tmp_path / "t.py"
    p.write_text(text)
    a = perplexity(model, file=str(p), progress=False)
    b = perplexity(model, text=text, progress=False)
    c = perplexity(model, tokens=np.array(list(text.encode())), progress=False)
    np.save(tmp_path / "t.npy", np.array(list(text.encode()), dtype=np.uint16))
    d = perplexity(model, file=str(tmp_path / "t.npy"), progress=False)
    assert a.summary()["ppl"] == b.summary()["ppl"] == c.summary()["ppl"] == d.summary()["ppl"]
    assert a.params["data"]["tokens_sha256"] == c.params["data"]["tokens_sha256"]
    js = a.to_dict()
    assert js["eval"] == "perplexity" and "overall_accuracy" not in js
    assert load_result(a.save_json(tmp_path / "r.json")).to_dict() == js


def test_perplexity_input_errors(model, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        perplexity(model, file=str(tmp_path / "missing.txt"), progress=False)
    with pytest.raises(ValueError, match="directory"):
        perplexity(model, file=str(tmp_path), progress=False)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(ValueError, match="UTF-8"):
        perplexity(model, file=str(bad), progress=False)
    with pytest.raises(ValueError, match="vocabulary"):
        perplexity(model, tokens=[1, 2, 100000], progress=False)
    with pytest.raises(ValueError, match="mode"):
        perplexity(model, tokens=[1, 2, 3], mode="fast", progress=False)
    with pytest.raises(ValueError, match="longer than the stream"):
        perplexity(model, tokens=[1, 2, 3], mode="sliding", context_lengths=[10],
                   progress=False)
    with pytest.raises(ValueError, match="at least 2"):
        perplexity(model, tokens=[1], progress=False)


def test_stdlib_corpus_split():
    allf = corpus.stdlib_files("all")
    held = corpus.stdlib_files("heldout")
    train = corpus.stdlib_files("train")
    assert allf == sorted(allf) and len(allf) > 100
    assert sorted(held + train) == allf and not set(held) & set(train)
    assert all(zlib.crc32(f.encode()) % 10 == 0 for f in held)
    assert all(zlib.crc32(f.encode()) % 10 != 0 for f in train)
    assert 0.03 < len(held) / len(allf) < 0.2
    assert not any(f.startswith(("site-packages/", "dist-packages/")) for f in allf)
    assert all(f.endswith(".py") and "\\" not in f for f in allf)
    root = corpus.stdlib_dir()
    assert os.path.isfile(os.path.join(root, held[0]))
    with pytest.raises(ValueError, match="split"):
        corpus.stdlib_files("test")


def test_stdlib_tokens_match_text():
    tok = ByteTokenizer()
    n = 50_000
    t = corpus.stdlib_tokens(tok, n, split="heldout")
    assert t.shape == (n,) and t.dtype == np.int64
    text = corpus.stdlib_text("heldout", max_chars=n * 2)
    assert t.tolist() == tok.encode(text)[:n]
    # deterministic, and the two splits differ
    assert np.array_equal(corpus.stdlib_tokens(tok, 1000, "heldout"), t[:1000])
    assert not np.array_equal(corpus.stdlib_tokens(tok, 1000, "train"), t[:1000])
    info = corpus.corpus_info("heldout", t)
    assert info["tokens"] == n and len(info["tokens_sha256"]) == 64
    with pytest.raises(ValueError, match="only"):
        corpus.stdlib_tokens(tok, 10**10, "heldout")


def test_default_corpus_run(model):
    r = perplexity(model, n_tokens=2000, progress=False)
    assert r.params["data"]["source"] == "python-stdlib"
    assert r.params["data"]["split"] == "heldout" and r.params["data"]["tokens"] == 2000
    assert r.cells_of("context")[-1]["tokens"] == 1999


def test_streaming_interrupt_keeps_finished_segments(model, rng):
    class Interrupting:
        """Wraps the real model; Ctrl-C during the 3rd nll call (segment)."""

        def __init__(self, m):
            self.m, self.calls = m, 0

        def __getattr__(self, name):
            return getattr(self.m, name)

        def nll(self, *a, **k):
            self.calls += 1
            if self.calls == 3:
                raise KeyboardInterrupt
            return self.m.nll(*a, **k)

    from samba_ext.eval import EvalInterrupted

    x = rng.integers(0, 256, 1000)
    with pytest.raises(EvalInterrupted) as ei:
        perplexity(Interrupting(model), tokens=x, segment=300, buckets=[0, 256, 512, 1000],
                   context_lengths=[256, 600, 1000], progress=False)
    r = ei.value.result
    # tokens 0..600 are scored (token 600 from the logits before the interrupted call)
    assert r.partial and r.params["tokens_done"] == 601
    ref = ref_nll(model, x)
    assert [c["end"] for c in r.cells_of("bucket")] == [256, 512]
    assert [c["context_length"] for c in r.cells_of("context")] == [256, 600]
    assert r.cells_of("context")[-1]["ppl"] == pytest.approx(math.exp(ref[:599].mean()),
                                                             rel=RTOL)


# ------------------------------------------------------------------ hostile --file inputs ---
def _cli(*args, cwd=None, timeout=120):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "samba_ext.cli", *args], cwd=cwd or root,
                          env=env, capture_output=True, text=True, timeout=timeout)


def _one_line_error(p, *needles):
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("samba-ext: error:")]
    assert len(lines) == 1, p.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_file_fifo_and_devices_are_refused(model, tmp_path):
    """issue 16.7: a FIFO blocked forever (nobody writes); /dev/zero was read without end.
    (The subprocess timeout only guards the test run against the old hang.)"""
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    for f in (fifo, "/dev/zero"):
        if not os.path.exists(f):
            continue
        with pytest.raises(ValueError, match="not a regular file"):
            perplexity(model, file=f, n_tokens=100, progress=False)
        link = tmp_path / f"link-{os.path.basename(str(f))}"
        os.symlink(f, link)
        with pytest.raises(ValueError, match="not a regular file"):
            perplexity(model, file=link, n_tokens=100, progress=False)
    p = _cli("perplexity", "--model", "random:samba-test", "--no-progress", "--file",
             str(fifo), "--tokens", "100", "--out", str(tmp_path / "o"), timeout=120)
    _one_line_error(p, "not a regular file")


def test_file_reads_only_what_tokens_needs(model, tmp_path, monkeypatch):
    """issue 16.7: the whole file was read and tokenised whatever --tokens said. Counted:
    the characters handed to the tokenizer stay bounded by a multiple of n_tokens."""
    big = tmp_path / "big.txt"
    line = "the quick brown fox jumps over the lazy dog 0123456789\n"
    big.write_text(line * 200_000)                 # 11 MB
    tok = model.tokenizer
    seen = {"chars": 0}
    real = type(tok).encode

    def counting(self, text):
        seen["chars"] += len(text)
        return real(self, text)

    monkeypatch.setattr(type(tok), "encode", counting)
    r = perplexity(model, file=big, n_tokens=1024, progress=False)
    assert r.params["data"]["tokens"] == 1024
    assert seen["chars"] <= 64 * 1024, seen
    want = np.frombuffer((line * 200)[:1024].encode(), np.uint8).astype(np.int64)
    assert r.params["data"]["tokens_sha256"] == __import__("hashlib").sha256(
        want.tobytes()).hexdigest()


def _npy_with_header(path, shape, dtype="<i8", payload=b""):
    hdr = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode("latin1")
    hdr += b" " * (-(10 + len(hdr) + 1) % 64) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(hdr).to_bytes(2, "little") + hdr + payload)


def test_npy_header_is_validated(model, tmp_path):
    """issue 16.7: a .npy whose header claims a huge shape ended in a traceback (or tried to
    allocate it). The claim is checked against the file size; other bad headers are named."""
    cases = {"huge.npy": ((1 << 40,), "<i8", b"\0" * 64, "claims shape"),
             "huge2d.npy": ((1 << 20, 1 << 20), "<i4", b"", "claims shape"),
             "float.npy": ((8,), "<f4", b"\0" * 32, "integer array"),
             "obj.npy": ((8,), "|O", b"\0" * 64, "integer array"),
             "neg.npy": ((-5,), "<i8", b"", "shape")}
    for name, (shape, dt, payload, msg) in cases.items():
        _npy_with_header(tmp_path / name, shape, dt, payload)
        with pytest.raises(ValueError, match=msg):
            perplexity(model, file=tmp_path / name, n_tokens=4, progress=False)
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY\x01\x00\xff\xff{'descr'")
    with pytest.raises(ValueError, match="not a valid .npy"):
        perplexity(model, file=tmp_path / "junk.npy", n_tokens=4, progress=False)
    p = _cli("perplexity", "--model", "random:samba-test", "--no-progress", "--file",
             str(tmp_path / "huge.npy"), "--tokens", "100", "--out", str(tmp_path / "o"))
    _one_line_error(p, "huge.npy")
    # a valid one still reads, 1-D and 2-D, only the first n tokens of each row
    a = np.arange(3 * 50, dtype=np.int32).reshape(3, 50) % 250
    np.save(tmp_path / "ok.npy", a)
    r = perplexity(model, file=tmp_path / "ok.npy", n_tokens=20, progress=False)
    assert (r.params["data"]["rows"], r.params["data"]["tokens"]) == (3, 20)
