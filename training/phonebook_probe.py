"""Where does a checkpoint's phonebook lookup break? Teacher-forced accuracy per answer position, and
the attention of every local/global attention head at the last answer steps (needs torch).

    python3 training/phonebook_probe.py CHECKPOINT.safetensors [--books 30] [--entries 3,6,12]

For each book size: the fraction of books whose answer token at position k (" ", digit 1..10, "\\n")
is the argmax, the fraction right at every position, and the mean top probability per position.
Then, for one 5-entry book, the top-3 keys (token and offset from the query) of each head of each
attention layer at the steps that predict digits 7..10. With --features, also a linear probe: can the
residual stream entering each block tell the digit 1 and 2 positions back, at the book's newlines that
end a number and at its digit positions? With --shift, a copy-by-distance test: the queried entry's
book line gets 1 or 2 extra spaces after its ':', and the teacher-forced answer digits are scored both
as right and as equal to the previous digit (what a copy keyed on the distance from the ':' gives).
With --entry-attention, where each head looks inside the queried entry's line at each answer digit.
With --last, what the model predicts at digit 10 (is it a copy from the wrong place, or a guess?).
Books come from training/data.py's phonebook_prompt (the package's names); seed fixed, so the output is
reproducible.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data as D  # noqa: E402
import model_torch as M  # noqa: E402


def answer_probs(model, p: list[int], a: list[int]) -> torch.Tensor:
    """Teacher-forced next-token probabilities (len(a), vocab) at the answer tokens a after prompt p."""
    with torch.no_grad():
        return model(torch.tensor([p + a])[:, :-1])[0, len(p) - 1 :].softmax(-1)


def per_position(model, entries: int, books: int, seed: int) -> tuple[np.ndarray, float, np.ndarray]:
    """(accuracy per answer position (12,), exact-match rate, mean top probability per position)."""
    rng = random.Random(seed)
    acc, top, exact = np.zeros(12), np.zeros(12), 0
    for _ in range(books):
        prompt, phone = D.phonebook_prompt(rng, entries)
        a = D.encode(f" {phone}\n")
        prob = answer_probs(model, D.encode(prompt), a)
        ok = (prob.argmax(-1) == torch.tensor(a)).numpy()
        acc += ok
        top += prob.max(-1).values.numpy()
        exact += int(ok.all())
    return acc / books, exact / books, top / books


def attention_rows(model, p: list[int], a: list[int]) -> dict[int, torch.Tensor]:
    """Softmax attention (heads, L, L) of every attention layer (by block index) for the tokens p + a[:-1]."""
    rows: dict[int, torch.Tensor] = {}

    def hook(li):
        def f(mod, inp, out):
            q, k, _ = mod.qkv_rope(inp[0])
            k = k.repeat_interleave(mod.qpk, 1)
            L = q.shape[2]
            s = (q @ k.transpose(-1, -2)) / math.sqrt(mod.hd)
            i, j = torch.arange(L)[:, None], torch.arange(L)[None, :]
            keep = (j <= i) if mod.window is None else (j <= i) & (j > i - mod.window)
            rows[li] = s.masked_fill(~keep, float("-inf")).softmax(-1)[0]

        return f

    handles = [b.attn.register_forward_hook(hook(li)) for li, b in enumerate(model.transformer.h) if b.kind != "mamba"]
    try:
        with torch.no_grad():
            model(torch.tensor([p + a])[:, :-1])
    finally:
        for h in handles:
            h.remove()
    return rows


def attention_probe(model, seed: int) -> list[str]:
    """Top-3 keys per head of each attention layer at the steps predicting digits 7..10."""
    prompt, phone = D.phonebook_prompt(random.Random(seed), 5)
    p, a = D.encode(prompt), D.encode(f" {phone}\n")
    rows = attention_rows(model, p, a)
    text = prompt + f" {phone}\n"
    out = [f"book tail {prompt[-70:]!r} -> {phone}"]
    for li, A in rows.items():
        for k in (7, 8, 9, 10):  # the query at len(p)-1+k predicts answer token k (digit k)
            qpos = len(p) - 1 + k
            for h in range(A.shape[0]):
                w, idx = A[h, qpos].topk(3)
                keys = " ".join(f"{text[j]!r}@{j - qpos}:{v:.2f}" for v, j in zip(w.tolist(), idx.tolist()))
                out.append(f"layer {li} digit {k} ({chr(a[k])!r}) head {h}: {keys}")
    return out


def entry_attention_probe(
    model, books: int, seed: int, entries: int = 6, span: int = 40, min_mass: float = 0.2
) -> list[str]:
    """Where in the queried book line does each head look when it predicts digit k? Mean attention
    (over books) at offsets -span/2 .. span/2-1 from the line's digit 1 (offset 0 = digit 1, +9 = digit
    10, +10 = the newline); one row per (layer, head, k) whose mass there is at least min_mass."""
    rng = random.Random(seed)
    acc: dict[tuple[int, int, int], np.ndarray] = {}
    for _ in range(books):
        prompt, phone = D.phonebook_prompt(rng, entries)
        body, _, query = prompt.split("\n\n")
        lines = body.split("\n")
        i = lines.index(f"{query[:-1]}: {phone}")  # the whole line: a name can end another name
        d0 = sum(len(ln) + 1 for ln in lines[:i]) + len(query) + 1  # digit 1 of the queried line
        p, a = D.encode(prompt), D.encode(f" {phone}\n")
        lo = d0 - span // 2
        for li, A in attention_rows(model, p, a).items():
            for k in range(1, 11):
                seg = A[:, len(p) - 1 + k, max(lo, 0) : lo + span].numpy()
                for h in range(A.shape[0]):
                    v = acc.setdefault((li, h, k), np.zeros(span))
                    v[max(lo, 0) - lo : max(lo, 0) - lo + seg.shape[1]] += seg[h] / books
    out = [
        f"attention on the queried line ({books} books of {entries}; offset 0 = its digit 1, +10 = its "
        f"newline): layer, head, digit k, mass on the line, top offsets"
    ]
    for (li, h, k), v in sorted(acc.items()):
        if v.sum() >= min_mass:
            top = np.argsort(-v)[:3]
            out.append(
                f"layer {li} head {h} k{k:<2d}: mass {v.sum():.2f} | "
                + " ".join(f"{o - span // 2:+d}:{v[o]:.2f}" for o in top)
            )
    return out


def features_probe(model, books: int, seed: int, entries: int = 6) -> list[str]:
    """Held-out accuracy of a ridge-regression probe (one-hot targets, argmax) that reads the digit
    `back` positions before a book position from the residual (d_model,) entering each block. Positions:
    "nl" = the newline ending a book number, "dig" = digit positions whose `back` predecessors are digits.
    Fitted on the first half of the books, scored on the second (chance 0.10)."""
    resid: dict[int, torch.Tensor] = {}
    handles = [
        b.norm_1.register_forward_pre_hook((lambda i: lambda mod, args: resid.__setitem__(i, args[0][0].detach()))(i))
        for i, b in enumerate(model.transformer.h)
    ]
    rng = random.Random(seed)
    feats: dict[tuple[int, str, int], tuple[list, list]] = {}
    for book in range(books):
        prompt, _ = D.phonebook_prompt(rng, entries)
        body = prompt.rsplit("\n\n", 2)[0] + "\n"
        with torch.no_grad():
            model(torch.tensor([D.encode(prompt)]))
        for p in range(2, len(body)):
            kind = "nl" if body[p] == "\n" else "dig" if body[p].isdigit() else None
            for back in (1, 2):
                if kind is None or not body[p - back : p].isdigit():
                    continue
                for i, r in resid.items():
                    xs, ys = feats.setdefault((i, kind, back), ([], []))
                    xs.append((book, r[p].numpy()))
                    ys.append(int(body[p - back]))
    for h in handles:
        h.remove()
    out = [
        "linear probe of the digit k back (held-out accuracy, chance 0.10): block input | nl k=1, k=2 | dig k=1, k=2"
    ]
    for i in sorted(resid):
        cells = []
        for kind in ("nl", "dig"):
            for back in (1, 2):
                xs, ys = feats[(i, kind, back)]
                X = np.array([np.r_[x, 1.0] for _, x in xs])
                Y = np.eye(10)[ys]
                tr = np.array([b < books // 2 for b, _ in xs])
                mu, sd = X[tr].mean(0), X[tr].std(0) + 1e-6  # standardised: the newline rows have large norms
                mu[-1], sd[-1] = 0.0, 1.0
                Z = (X - mu) / sd
                W = np.linalg.solve(Z[tr].T @ Z[tr] + 0.05 * tr.sum() * np.eye(Z.shape[1]), Z[tr].T @ Y[tr])
                cells.append(f"{(np.argmax(Z[~tr] @ W, 1) == np.array(ys)[~tr]).mean():.2f}")
        out.append(f"block {i} ({model.transformer.h[i].kind}) | nl {cells[0]} {cells[1]} | dig {cells[2]} {cells[3]}")
    return out


def shift_probe(model, books: int, seed: int, entries: int = 6) -> list[str]:
    """Per answer digit j: the fraction right, and the fraction equal to digit j-1 (j >= 2), when the
    queried entry's book number sits 0, 1 or 2 positions further from its ':' than in training."""
    rng = random.Random(seed)
    out = ["shift test: extra spaces after the queried line's ':' | right d1..d10 | = digit j-1, d2..d10"]
    for extra in (0, 1, 2):
        right, prev, n = np.zeros(12), np.zeros(12), 0
        for _ in range(books):
            prompt, phone = D.phonebook_prompt(rng, entries)
            body, shots, query = prompt.split("\n\n")
            lines = [
                ln.replace(": ", ":" + " " * (extra + 1), 1) if ln.startswith(query[:-1] + ":") else ln
                for ln in body.split("\n")
            ]
            p = D.encode("\n".join(lines) + "\n\n" + shots + "\n\n" + query)
            a = D.encode(f" {phone}\n")
            pred = answer_probs(model, p, a).argmax(-1).tolist()
            right += [pred[k] == a[k] for k in range(12)]
            prev += [k >= 2 and pred[k] == a[k - 1] for k in range(12)]
            n += 1
        out.append(
            f"extra {extra} | right "
            + " ".join(f"{v:.2f}" for v in right[1:11] / n)
            + " | = digit j-1 "
            + " ".join(f"{v:.2f}" for v in prev[2:11] / n)
        )
    return out


def last_digit_probe(model, books: int, seed: int, entries: int = 6) -> list[str]:
    """What does the model say at digit 10 (teacher-forced)? The fraction of books whose argmax there is
    the right digit, the queried number's digit 9, any digit of the queried number, or the last digit of
    some other entry; the mean top probability; and how often each digit is the argmax."""
    rng = random.Random(seed)
    hits = {"right": 0, "= its d9": 0, "in its number": 0, "= another entry's d10": 0}
    top, counts = 0.0, {str(d): 0 for d in range(10)}
    for _ in range(books):
        prompt, phone = D.phonebook_prompt(rng, entries)
        others = [ln.split(": ")[1] for ln in prompt.split("\n\n")[0].split("\n")]
        others = [x for x in others if x != phone]
        pr = answer_probs(model, D.encode(prompt), D.encode(f" {phone}\n"))[10]
        c = chr(int(pr.argmax()))
        top += float(pr.max())
        key = c if c.isdigit() else "other"  # an untrained model may not even say a digit
        counts[key] = counts.get(key, 0) + 1
        hits["right"] += c == phone[9]
        hits["= its d9"] += c == phone[8]
        hits["in its number"] += c in phone
        hits["= another entry's d10"] += any(c == x[9] for x in others)
    # causal check of a look-ahead copy: give the queried book number 1 or 3 extra digits (so the
    # positions after its digit 10 are digit keys, not the newline) and score digit 10 again
    ext = {}
    for n_ext in (1, 3):
        rng = random.Random(seed + 1)
        ext[n_ext] = 0
        for _ in range(books):
            prompt, phone = D.phonebook_prompt(rng, entries)
            body, shots, query = prompt.split("\n\n")
            lines = body.split("\n")
            i = lines.index(f"{query[:-1]}: {phone}")
            lines[i] += "".join(str(rng.randint(0, 9)) for _ in range(n_ext))
            p = D.encode("\n".join(lines) + "\n\n" + shots + "\n\n" + query)
            pr = answer_probs(model, p, D.encode(f" {phone}\n"))[10]
            ext[n_ext] += chr(int(pr.argmax())) == phone[9]
    return [
        f"digit 10 ({books} books of {entries} entries): "
        + ", ".join(f"{k} {v / books:.2f}" for k, v in hits.items())
        + f", mean top p {top / books:.2f} | argmax counts "
        + " ".join(f"{k}:{v}" for k, v in counts.items() if v),
        "digit 10 right when the queried book number gets extra digits: "
        + ", ".join(f"{n} more: {v / books:.2f}" for n, v in ext.items()),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--books", type=int, default=30)
    ap.add_argument("--entries", default="3,6,12")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--feature-books", type=int, default=200, help="books (6 entries) for --features")
    ap.add_argument(
        "--shift",
        action="store_true",
        help="also the copy-by-distance test (extra spaces after the queried line's ':')",
    )
    ap.add_argument(
        "--features",
        action="store_true",
        help="also the linear probe of the digits before each newline / digit of the book",
    )
    ap.add_argument(
        "--entry-attention",
        action="store_true",
        help="also where each head looks inside the queried book line, per answer digit",
    )
    ap.add_argument(
        "--last",
        action="store_true",
        help="also what the model predicts at digit 10 (right / its digit 9 / another entry's)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = M.load_model(args.checkpoint, "cpu").eval()
    print(f"{args.checkpoint}: window {model.cfg.get('window')}, {args.books} books per size, teacher-forced")
    print("position: ' ' d1 d2 d3 d4 d5 d6 d7 d8 d9 d10 '\\n'")
    for n in [int(e) for e in args.entries.split(",")]:
        acc, exact, top = per_position(model, n, args.books, args.seed)
        print(
            f"entries {n:3d}: exact {exact:.2f} | acc "
            + " ".join(f"{v:.2f}" for v in acc)
            + " | top p "
            + " ".join(f"{v:.2f}" for v in top)
        )
    print("\n".join(attention_probe(model, args.seed + 1)))
    if args.shift:
        print("\n".join(shift_probe(model, 40, args.seed + 3)))
    if args.entry_attention:
        print("\n".join(entry_attention_probe(model, 20, args.seed + 5)))
    if args.last:
        print("\n".join(last_digit_probe(model, 60, args.seed + 4)))
    if args.features:
        print("\n".join(features_probe(model, args.feature_books, args.seed + 2)))


if __name__ == "__main__":
    main()
