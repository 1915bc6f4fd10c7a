"""Fast checks of the PyTorch training code (training/); skipped without torch.

The torch model's fast paths are compared with plain references written from the formulas:
the chunked selective scan against the step-by-step recurrence, the blocked sliding-window
attention against dense masked attention, chunk-by-chunk inference (state carried) against one
full forward, and a CPU smoke run of the training script (few steps, tiny batch) whose exported
safetensors file must reload with the same weights and the package's metadata keys.
"""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "training"))
import data  # noqa: E402
import model_torch as mt  # noqa: E402
import train  # noqa: E402
from samba_ext.safetensors_io import read_safetensors  # noqa: E402
from samba_ext.eval.passkey import INSTRUCTION  # noqa: E402

from conftest import assert_close  # noqa: E402


def _seq_scan_f64(x, dt, A, Bm, Cm, Dv, h0):
    """Plain float64 NumPy recurrence (docs/specification.md section 3)."""
    Bsz, L, E = x.shape
    h = h0.copy()
    y = np.zeros((Bsz, L, E))
    for t in range(L):
        h = np.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * x[:, t])[:, :, None] * Bm[:, t, None, :]
        y[:, t] = (h * Cm[:, t, None, :]).sum(-1) + Dv * x[:, t]
    return y, h


@pytest.mark.parametrize("L", [1, 16, 45, 100])
def test_chunked_scan_matches_recurrence(rng, L):
    B, E, N = 2, 6, 4
    x = rng.standard_normal((B, L, E))
    dt = rng.uniform(0.0, 1.0, (B, L, E))  # dt*A >= -3 > floor -5: the chunked form is exact here
    A = -rng.uniform(0.1, 3.0, (E, N))
    Bm, Cm = rng.standard_normal((B, L, N)), rng.standard_normal((B, L, N))
    Dv, h0 = rng.standard_normal(E), rng.standard_normal((B, E, N))
    yr, hr = _seq_scan_f64(x, dt, A, Bm, Cm, Dv, h0)
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    y, h = mt.scan_chunked(f(x), f(dt), f(A), f(Bm), f(Cm), f(Dv), f(h0))
    # float32 with exp(+-S) factors up to e^48 inside a chunk: relative error ~1e-6 observed
    assert_close(y.numpy(), yr, 1e-5, "y")
    assert_close(h.numpy(), hr, 1e-5, "final state")
    y2, _ = mt.scan_ref(f(x), f(dt), f(A), f(Bm), f(Cm), f(Dv), f(h0))
    assert_close(y2.numpy(), yr, 1e-5, "scan_ref y")


@pytest.mark.parametrize("W,P,L", [(4, 0, 37), (8, 7, 20), (16, 5, 16), (32, 0, 3)])
def test_local_attention_matches_dense(rng, W, P, L):
    B, H, hd = 2, 3, 8
    q = rng.standard_normal((B, H, L, hd))
    k = rng.standard_normal((B, H, P + L, hd))
    v = rng.standard_normal((B, H, P + L, hd))
    qpos = P + np.arange(L)[:, None]
    kpos = np.arange(P + L)[None, :]
    s = np.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(hd)
    s = np.where((kpos <= qpos) & (kpos > qpos - W), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    ref = np.einsum("bhqk,bhkd->bhqd", p / p.sum(-1, keepdims=True), v)
    got = mt.local_attention(*(torch.tensor(a, dtype=torch.float32) for a in (q, k, v)), P, W)
    assert_close(got.numpy(), ref, 1e-5, "swa")  # float32 softmax/matmul over <= 2W keys


@pytest.mark.parametrize("name", ["samba-tiny", "llama-tiny"])
def test_chunked_inference_matches_full_forward(name):
    torch.manual_seed(0)
    cfg = mt.make_config(name, d_model=32, window=8)
    m = mt.TorchSamba(cfg).eval()
    toks = torch.randint(0, mt.VOCAB, (2, 50))
    with torch.no_grad():
        full = m(toks, exact=True)
        parts, st, pos = [], None, 0
        for c in (13, 1, 20, 16):
            o, st = m(toks[:, pos : pos + c], state=st, pos0=pos, return_state=True)
            parts.append(o)
            pos += c
    assert_close(torch.cat(parts, 1).numpy(), full.numpy(), 1e-5, "chunked logits")


def test_passkey_prompt_template():
    p = data.passkey_prompt(1000, 0.5, 12345)
    assert len(data.encode(p)) == 1000
    lines = p.split("\n")
    assert lines[0] == INSTRUCTION and lines[-1] == "What is the pass key? The pass key is"
    assert lines[2] == "The pass key is 12345. Remember it. 12345 is the pass key."
    assert abs(len(lines[1]) - len(lines[3])) <= 1
    assert data.passkey_prompt(500, 0.0, 7).split("\n")[1] == ""


def test_train_smoke_cpu_and_export(tmp_path):
    out = str(tmp_path / "x.safetensors")
    res = train.main(
        [
            "--model",
            "samba-tiny",
            "--steps",
            "2",
            "--device",
            "cpu",
            "--out",
            out,
            "--tokens-per-step",
            "320",
            "--max-len",
            "320",
            "--text-bytes",
            "200000",
            "--threads",
            "1",
            "--log-every",
            "1",
        ]
    )
    assert res["steps"] == 2 and all(math.isfinite(r["loss"]) for r in res["log"])
    assert os.path.getsize(out) <= 16 * 1024 * 1024
    tensors, meta = read_safetensors(out)
    assert meta["format"] == "samba-ext" and meta["tokenizer"] == "byte"
    assert "--steps 2" in meta["train_command"] and meta["seed"] == "0"
    cfg = json.loads(meta["config"])
    assert tuple(cfg) == mt.CONFIG_FIELDS and cfg["layer_types"] == ["mamba", "swa", "mamba", "swa"]
    assert "lm_head.weight" not in tensors and "transformer.h.1.attn.attn.weight" in tensors
    assert tensors["transformer.h.0.attn.in_proj.weight"].shape == (4 * cfg["d_model"], cfg["d_model"])
    with open(out, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
    assert n % 8 == 0
    m = mt.load_model(out)
    assert m.num_parameters() == res["params"]


def test_chunked_scan_backward_matches_recurrence():
    """Gradients of the chunked scan (exp-cumsum chunks + affine scan across chunks, right padding)
    equal those of the step-by-step scan_ref for every input, in float64."""
    g = torch.Generator().manual_seed(1)
    B, L, E, N = 2, 45, 5, 4  # 45 = 2 full chunks of 16 + a padded one
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    x, Bm, Cm, Dv, h0 = mk(B, L, E), mk(B, L, N), mk(B, L, N), mk(E), mk(B, E, N)
    dt = torch.rand(B, L, E, generator=g, dtype=torch.float64)  # dt*A >= -3.1 > floor -5: exact
    A = -(0.1 + 3 * torch.rand(E, N, generator=g, dtype=torch.float64))
    gy, gh = mk(B, L, E), mk(B, E, N)
    ins = [t.requires_grad_() for t in (x, dt, A, Bm, Cm, Dv, h0)]
    grads = []
    for scan in (mt.scan_ref, mt.scan_chunked):
        y, h = scan(*ins)
        grads.append(torch.autograd.grad((y * gy).sum() + (h * gh).sum(), ins))
    for name, a, b in zip(("x", "dt", "A", "B", "C", "D", "h0"), *grads):
        # float64 throughout: observed ~1e-15; 1e-10 leaves room for exp(+-S) up to e^48 in a chunk
        assert_close(b.numpy(), a.numpy(), 1e-10, f"d/d{name}")


def test_decay_only_dilation_is_exactly_a_longer_gap():
    """--dt-aug-mode decay: scaling only the decay by k equals the plain recurrence with exp(k*dt*A) as
    decay and dt*B*x as write (checked against an explicit loop), and chunked == ref for it."""
    g = torch.Generator().manual_seed(2)
    B, L, E, N = 2, 37, 3, 4
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    x, Bm, Cm, Dv = mk(B, L, E), mk(B, L, N), mk(B, L, N), mk(E)
    dt = 0.05 * torch.rand(B, L, E, generator=g, dtype=torch.float64)
    A = -(0.1 + 3 * torch.rand(E, N, generator=g, dtype=torch.float64))
    k = torch.tensor([1.0, 7.5], dtype=torch.float64)
    h = torch.zeros(B, E, N, dtype=torch.float64)
    ys = []
    for t in range(L):
        h = (
            torch.exp(k.view(B, 1, 1) * dt[:, t, :, None] * A) * h
            + (dt[:, t] * x[:, t])[:, :, None] * Bm[:, t, None, :]
        )
        ys.append((h * Cm[:, t, None, :]).sum(-1) + x[:, t] * Dv)
    y_loop = torch.stack(ys, 1)
    for scan in (mt.scan_ref, mt.scan_chunked):
        y, hL = scan(x, dt, A, Bm, Cm, Dv, decay_scale=k)
        assert_close(y.numpy(), y_loop.numpy(), 1e-10, f"{scan.__name__} y")
        assert_close(hL.numpy(), h.numpy(), 1e-10, f"{scan.__name__} h")
    # and it is not a no-op: k = 7.5 on row 1 changes the output
    y1, _ = mt.scan_ref(x, dt, A, Bm, Cm, Dv)
    assert float((y1[1] - y_loop[1]).abs().max()) > 1e-3


@pytest.mark.parametrize("W,P,L", [(8, 0, 37), (16, 7, 40)])
def test_local_attention_backward_matches_dense(W, P, L):
    g = torch.Generator().manual_seed(W + P)
    B, H, hd = 2, 2, 8
    q, k, v = (torch.randn(B, H, n, hd, generator=g, dtype=torch.float64).requires_grad_() for n in (L, P + L, P + L))
    qpos, kpos = P + torch.arange(L)[:, None], torch.arange(P + L)[None, :]
    s = (q @ k.transpose(-1, -2) / math.sqrt(hd)).masked_fill(~((kpos <= qpos) & (kpos > qpos - W)), -math.inf)
    ref = torch.softmax(s, -1) @ v
    got = mt.local_attention(q, k, v, P, W)
    go = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    ga = torch.autograd.grad((ref * go).sum(), (q, k, v))
    gb = torch.autograd.grad((got * go).sum(), (q, k, v))
    for name, a, b in zip("qkv", ga, gb):
        assert_close(b.numpy(), a.numpy(), 1e-5, f"swa d/d{name}")  # scores/softmax in float32


def test_passkey_rows_answer_mask_and_far_placement():
    """kind == 2 marks exactly the positions predicting " {key}." + <eos>, and with pk_far = 1 every
    long-enough passkey row has both copies of the key >= window tokens before the first answer token
    (so the SWA layers cannot see it: the Mamba state must carry it)."""
    import random

    W = 128
    mix = data.DataMix(p_passkey=1.0, p_phonebook=0.0, text=np.zeros(0, np.int16), pk_far=1.0, window=W)
    rng = random.Random(0)
    n_far = 0
    for L in (320, 400, 700, 1024) * 10:
        info: dict = {}
        ids, kind = data.make_doc(rng, L, mix, info)
        assert info["task"] == "passkey" and len(ids) == L
        pos = np.nonzero(kind == 2)[0]
        assert np.array_equal(pos, np.arange(pos[0], pos[0] + len(pos))) and pos[-1] + 1 < L
        text = data.decode(ids[: pos[0] + 1])
        key = text.split("The pass key is ")[1].split(".")[0]
        assert ids[pos + 1].tolist() == data.encode(f" {key}.") + [mt.EOS]
        if info["far"]:
            n_far += 1
            off = int(ids[0] == mt.BOS)
            last = text.rindex(f"{key} is the pass key") + len(key) - 1 + off  # last key digit
            assert pos[0] + 1 - last >= W, (L, pos[0] + 1 - last)
    assert n_far >= 25  # all rows with >= W filler tokens (L >= ~380 here)


def test_passkey_edge_placement():
    """With pk_edge = 1 (and no far rows) every long-enough passkey row puts its key line across the
    window's edge, within the documented 8-token margin: the line starts >= window - 8 and ends
    <= window + 8 tokens before the first answer token; most rows truly straddle it (start beyond the
    window, end inside it)."""
    import random

    W = 256
    mix = data.DataMix(p_passkey=1.0, p_phonebook=0.0, text=np.zeros(0, np.int16), pk_edge=1.0, window=W)
    rng = random.Random(0)
    n_edge = n_straddle = 0
    for L in (320, 700, 1024, 2048) * 25:
        info: dict = {}
        ids, kind = data.make_doc(rng, L, mix, info)
        assert info["task"] == "passkey" and not info["far"]
        if not info["edge"]:
            continue
        n_edge += 1
        p = int(np.nonzero(kind == 2)[0][0]) + 1  # the first answer token
        text = data.decode(ids[:p])
        start = text.index("The pass key is ") + int(ids[0] == mt.BOS)
        end = text.index(" is the pass key.") + len(" is the pass key.") + int(ids[0] == mt.BOS)
        assert W - 8 <= p - start and p - end <= W + 8, (L, p - start, p - end)
        n_straddle += p - start >= W > p - end
    assert n_edge >= 70 and n_straddle >= n_edge // 2, (n_edge, n_straddle)


def test_phonebook_size_cap():
    """--pb-max-entries caps the book (3..cap entries); without it books grow with the row."""
    import collections
    import random

    def sizes(cap, floor=3, L=2048):
        mix = data.DataMix(p_passkey=0.0, p_phonebook=1.0, pb_max_entries=cap, pb_min_entries=floor)
        rng, c = random.Random(0), collections.Counter()
        for _ in range(100):
            ids, _ = data.make_doc(rng, L, mix)
            text = bytes(int(t) for t in ids if t < 256).decode("latin-1")
            c[text.split("\n\n")[0].count("\n") + 1] += 1
        return c

    capped = sizes(4)
    assert set(capped) <= {3, 4} and capped[4] > 0
    assert max(sizes(None)) > 8
    # --pb-min-entries: no book below the floor where the row has room, and still up to the cap;
    # a floor above what fits in the row gives the largest book that fits (2048 tokens: ~74 entries)
    floored = sizes(30, floor=20)
    assert min(floored) >= 20 and max(floored) > 25, floored
    assert min(sizes(None, floor=500)) >= 60
    # the largest books that fit a 4,096-token row are drawn (the evaluation's 150 entries, 3,947
    # tokens, among them)
    big = sizes(None, floor=140, L=4096)
    assert max(big) >= 152 and min(big) >= 140, big


def test_phonebook_fewshot_targets_and_number_lengths():
    """--pb-fewshot-loss marks exactly the digits of the two re-stated entries (and the answer) as
    answer targets, and those digits are the book's numbers for the re-stated names;
    --pb-digits LO-HI draws the number length per book."""
    import random

    mix = data.DataMix(p_passkey=0.0, p_phonebook=1.0, pb_max_entries=6, pb_fewshot_loss=True, pb_digits=(8, 13))
    rng, lengths = random.Random(3), set()
    for _ in range(40):
        ids, kind = data.make_doc(rng, 512, mix)
        text = bytes(int(t) for t in ids if t < 256).decode("latin-1")
        book, shots, query = text.split("\n\n")
        numbers = dict(line.split(": ") for line in book.split("\n"))
        shot_lines = shots.split("\n")
        answer = query.split(":")[1].strip()
        # the target tokens of answer-kind positions t are ids[t + 1]
        tgt = "".join(chr(int(ids[t + 1])) if ids[t + 1] < 256 else "<eos>" for t in np.nonzero(kind == 2)[0])
        want = "".join(line.split(": ")[1] for line in shot_lines) + f" {answer}\n<eos>"
        assert tgt == want
        for line in shot_lines:
            name, num = line.split(": ")
            assert numbers[name] == num
        lengths |= {len(n) for n in numbers.values()}
    assert lengths == set(range(8, 14))
    assert train.parse_digits("10") == (10, 10) and train.parse_digits("8-13") == (8, 13)
    with pytest.raises(SystemExit, match="pb-digits"):
        train.parse_digits("9-3")


def test_scan_seq_matches_recurrence_with_gradients():
    """scan_seq (the CPU training scan, hand-written backward) against scan_ref (plain autograd
    through the step-by-step recurrence), float64, with h0 and the decay-only dilation."""
    g = torch.Generator().manual_seed(5)
    B, L, E, N = 2, 29, 5, 3

    def mk(*s, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale).requires_grad_()

    x, Bm, Cm, Dv, h0 = mk(B, L, E), mk(B, L, N), mk(B, L, N), mk(E), mk(B, E, N)
    dt = (torch.rand(B, L, E, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
    A = (-torch.rand(E, N, generator=g, dtype=torch.float64) * 3).requires_grad_()
    scale = torch.rand(B, generator=g, dtype=torch.float64) * 5 + 1
    ins = [x, dt, A, Bm, Cm, Dv, h0]
    res = []
    for f in (mt.scan_ref, mt.scan_seq):
        y, h = f(x, dt, A, Bm, Cm, Dv, h0, decay_scale=scale)
        (y.sin().sum() + h.cos().sum()).backward()
        res.append([y.detach(), h.detach()] + [t.grad.clone() for t in ins])
        for t in ins:
            t.grad = None
    for a, b in zip(*res):
        assert torch.isfinite(b).all()
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    y, h = mt.scan_seq(x[:, :0], dt[:, :0], A, Bm[:, :0], Cm[:, :0], Dv, h0)
    assert y.shape == (B, 0, E) and torch.equal(h, h0)


# The arguments of a one-core training run on 320-token rows of samba-tiny.
SMALL_RUN = (
    "--model",
    "samba-tiny",
    "--device",
    "cpu",
    "--tokens-per-step",
    "320",
    "--max-len",
    "320",
    "--text-bytes",
    "200000",
    "--threads",
    "1",
    "--log-every",
    "1",
)


def test_reinit_attention_and_train_blocks(tmp_path):
    """--reinit-attn gives block 3 a fresh attention; --train-blocks 3 leaves every other block exactly
    as loaded and changes block 3."""
    base = str(tmp_path / "base.safetensors")
    common = list(SMALL_RUN)
    train.main(common + ["--steps", "1", "--out", base])
    out = str(tmp_path / "re.safetensors")
    res = train.main(
        common + ["--steps", "2", "--init", base, "--reinit-attn", "3", "--train-blocks", "3", "--out", out]
    )
    assert all(math.isfinite(r["loss"]) for r in res["log"])
    a, meta_a = read_safetensors(base)
    b, meta_b = read_safetensors(out)
    assert a.keys() == b.keys()
    # the --init file's command is kept, so the new file names its whole recipe
    assert "lineage" not in meta_a
    assert json.loads(meta_b["lineage"]) == [meta_a["train_command"]]
    # a fine-tune on shorter rows keeps the longest training length of the history
    short = str(tmp_path / "short.safetensors")
    train.main(common + ["--max-len", "160", "--steps", "1", "--init", out, "--out", short])
    assert json.loads(read_safetensors(short)[1]["config"])["max_train_len"] == 320
    train.main(common + ["--steps", "1", "--init", out, "--out", base])
    assert json.loads(read_safetensors(base)[1]["lineage"]) == [meta_a["train_command"], meta_b["train_command"]]
    for k in a:
        same = np.array_equal(a[k], b[k])
        assert same == (not k.startswith("transformer.h.3.")), k
    with pytest.raises(SystemExit, match="--reinit-attn needs --init"):
        train.main(common + ["--steps", "1", "--reinit-attn", "3", "--out", out])
    with pytest.raises(SystemExit, match="pb-seps"):
        train.main(common + ["--steps", "1", "--pb-seps", "1.5", "--out", out])
    with pytest.raises(SystemExit, match="0..3"):
        train.main(common + ["--steps", "1", "--train-blocks", "4", "--out", out])
    m = mt.load_model(base)
    with pytest.raises(ValueError, match="Mamba block"):
        mt.reinit_attention(m, 0)


def test_grow_keeps_the_function(tmp_path):
    """--grow 8 appends mamba/swa blocks whose output projections start at zero: before any step the
    grown model's logits equal the original's; after training steps it is a valid 8-block file."""
    base = str(tmp_path / "base.safetensors")
    common = list(SMALL_RUN)
    train.main(common + ["--steps", "1", "--out", base])
    m = mt.load_model(base)
    g = mt.grow_model(m, 8)
    assert g.cfg["n_layer"] == 8 and g.cfg["layer_types"] == ["mamba", "swa"] * 4
    tok = torch.randint(0, 256, (2, 37))
    with torch.no_grad():
        assert torch.equal(m(tok), g(tok))
    out = str(tmp_path / "grown.safetensors")
    res = train.main(common + ["--steps", "2", "--init", base, "--grow", "6", "--out", out])
    assert all(math.isfinite(r["loss"]) for r in res["log"])
    t, meta = read_safetensors(out)
    assert json.loads(meta["config"])["n_layer"] == 6 and "transformer.h.5.attn.proj.weight" in t
    assert np.abs(t["transformer.h.5.attn.proj.weight"]).max() > 0  # the new blocks did train
    with pytest.raises(SystemExit, match="already has 4 blocks"):
        train.main(common + ["--steps", "1", "--init", base, "--grow", "4", "--out", out])
    with pytest.raises(SystemExit, match="--grow needs --init"):
        train.main(common + ["--steps", "1", "--grow", "8", "--out", out])


def test_ctrl_c_saves_the_model(tmp_path, monkeypatch):
    """A KeyboardInterrupt during training stops it after the steps done so far, saves a loadable file
    marked interrupted, and skips the evals."""
    real, calls = train.make_batch, []

    def batch(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(train, "make_batch", batch)
    out = str(tmp_path / "int.safetensors")
    res = train.main([*SMALL_RUN, "--steps", "10", "--eval-long", "--out", out])
    assert res["interrupted"] and res["steps"] == 2 and "eval" not in res
    _, meta = read_safetensors(out)
    assert meta["interrupted"] == "true" and meta["steps"] == "2"
    assert mt.load_model(out).num_parameters() == res["params"]


def test_phonebook_separators():
    """--pb-seps: separators ("-", " ", ".") only between digits, the digits themselves unchanged in
    distribution (first 6-9, ten of them), the answer and few-shot targets are the numbers as written."""
    import random

    rng = random.Random(5)
    seen_sep = set()
    for _ in range(30):
        prompt, ph = data.phonebook_prompt(rng, 5, 10, seps=0.3)
        body, shots, query = prompt.split("\n\n")
        numbers = dict(line.split(": ") for line in body.split("\n"))
        assert ph == numbers[query[:-1]]
        for num in numbers.values():
            digits = "".join(c for c in num if c.isdigit())
            assert len(digits) == 10 and digits[0] in "6789"
            assert num[0].isdigit() and num[-1].isdigit()
            seen_sep |= set(num) - set("0123456789")
            assert "--" not in num and "  " not in num
        assert [prompt[a:b] for a, b in data.fewshot_digit_spans(prompt)] == [
            line.split(": ")[1] for line in shots.split("\n")
        ]
    assert seen_sep == {"-", " ", "."}
    plain, _ = data.phonebook_prompt(random.Random(5), 5, 10)
    assert all(line.split(": ")[1].isdigit() for line in plain.split("\n\n")[0].split("\n"))


def test_phonebook_early_lookups():
    """--pb-early: with early=1 the query and both re-stated entries are among the first quarter of
    the book's lines; with early=0 the same seed gives the same prompts as before the option (no
    extra draw), and lookups fall all over the book."""
    import random

    def positions(prompt):
        body, shots, query = prompt.split("\n\n")
        lines = body.split("\n")
        names = [line.split(": ")[0] for line in lines]
        asked = [line.split(": ")[0] for line in shots.split("\n")] + [query[:-1]]
        return [names.index(n) for n in asked], len(lines)

    rng = random.Random(9)
    for n in (3, 4, 12, 150):
        for _ in range(20):
            prompt, ph = data.phonebook_prompt(rng, n, early=1.0)
            idx, m = positions(prompt)
            assert m == n and len(set(idx)) == 3
            assert max(idx) < max(3, n // 4)
    # the numbers asked, and the generator's next draw, as the code before the option gave them
    r = random.Random(4)
    asked = [data.phonebook_prompt(r, 40, early=0.0)[1] for _ in range(3)]
    assert asked == ["9337670367", "7409559522", "7387852925"]
    assert r.random() == 0.7291690221452836
    rng = random.Random(11)
    late = [max(positions(data.phonebook_prompt(rng, 40)[0])[0]) for _ in range(30)]
    assert max(late) >= 10  # uniform lookups reach past the first quarter


def test_phonebook_probe_features_smoke():
    """training/phonebook_probe.py --features on a fresh (untrained) model: one row per block, accuracies
    in [0, 1] for both position kinds and both distances; --shift gives 10 + 9 rates per shift;
    per_position's shapes; --last gives 5 rates, one argmax per book, and 2 extra-digit rates."""
    import random
    import re

    import phonebook_probe as pp

    torch.manual_seed(0)
    model = mt.TorchSamba(mt.make_config("samba-tiny", d_model=32, n_layer=2, window=64)).eval()
    out = pp.features_probe(model, 12, seed=1, entries=4)
    assert len(out) == 3
    vals = [float(v) for line in out[1:] for v in re.findall(r"\d\.\d\d", line)]
    assert len(vals) == 8 and all(0.0 <= v <= 1.0 for v in vals)
    shift = pp.shift_probe(model, 2, seed=3, entries=3)
    assert len(shift) == 4
    assert all(len(re.findall(r"\d\.\d\d", line)) == 19 for line in shift[1:])
    acc, exact, top = pp.per_position(model, 3, 2, seed=random.Random(0).randint(0, 9))
    assert acc.shape == (12,) and 0.0 <= exact <= 1.0 and np.all((top > 0) & (top <= 1))
    last = pp.last_digit_probe(model, 5, seed=2, entries=3)
    assert len(last) == 2
    ext_rates = [float(v) for v in re.findall(r"\d\.\d\d", last[1])]
    assert len(ext_rates) == 2 and all(0.0 <= v <= 1.0 for v in ext_rates)
    rates = [float(v) for v in re.findall(r"\d\.\d\d", last[0])]
    assert len(rates) == 5 and all(0.0 <= v <= 1.0 for v in rates)
    ent = pp.entry_attention_probe(model, 3, seed=4, entries=3, min_mass=0.0)
    assert len(ent) == 1 + 4 * 10  # every (head, digit) row of the one SWA layer at min_mass 0
    masses = [float(m) for m in re.findall(r"mass (\d\.\d\d)", "\n".join(ent[1:]))]
    assert len(masses) == 40 and all(0.0 <= m <= 1.0 + 1e-6 for m in masses)
    counts = re.findall(r"(\d|other):(\d+)", last[0].split("argmax counts")[1])
    assert sum(int(c) for _, c in counts) == 5  # one argmax per book


@pytest.mark.parametrize("recipe", ["samba_tiny", "llama_tiny", "llama_tiny_pbfirst"])
def test_recipes_parse_and_chain(recipe, tmp_path):
    """Every step of a recipe is a valid train.py command, and each step continues the previous
    step's file (--init), as the bundled files' lineage records."""
    from recipes import run

    cmds = run.commands(recipe, str(tmp_path))
    assert len(cmds) >= 2
    prev = None
    for name, argv in cmds:
        args = train.parse_args(argv)
        assert args.out == str(tmp_path / f"{name}.safetensors")
        assert args.init == prev
        prev = args.out
    name, argv = cmds[1]
    only = run.commands(recipe, str(tmp_path), only=name, init="given.safetensors")
    assert [n for n, _ in only] == [name] and train.parse_args(only[0][1]).init == "given.safetensors"
    with pytest.raises(SystemExit, match="needs --init"):
        run.commands(recipe, str(tmp_path), only=name)
    first_two = run.commands(recipe, str(tmp_path), to=name)
    assert [n for n, _ in first_two] == [n for n, _ in cmds[:2]]
    with pytest.raises(SystemExit, match="no such step"):
        run.commands(recipe, str(tmp_path), to="nope")
