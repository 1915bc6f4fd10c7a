"""Where does a checkpoint's phonebook lookup break? Teacher-forced accuracy per answer position, and
the attention of every local/global attention head at the last answer steps (needs torch).

    python3 python/phonebook_probe.py CHECKPOINT.safetensors [--books 30] [--entries 3,6,12]

For each book size: the fraction of books whose answer token at position k (" ", digit 1..10, "\\n")
is the argmax, the fraction right at every position, and the mean top probability per position.
Then, for one 5-entry book, the top-3 keys (token and offset from the query) of each head of each
attention layer at the steps that predict digits 7..10. Books come from train_tiny.phonebook_prompt
(the training names); seed fixed, so the output is reproducible.
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
import train_tiny as T  # noqa: E402


def per_position(model, entries: int, books: int, seed: int) -> tuple[np.ndarray, float, np.ndarray]:
    """(accuracy per answer position (12,), exact-match rate, mean top probability per position)."""
    rng = random.Random(seed)
    acc, top, exact = np.zeros(12), np.zeros(12), 0
    for _ in range(books):
        prompt, phone = T.phonebook_prompt(rng, entries)
        p, a = T.encode(prompt), T.encode(f" {phone}\n")
        with torch.no_grad():
            logits = model(torch.tensor([p + a])[:, :-1])
        prob = logits[0, len(p) - 1:].softmax(-1)
        ok = (prob.argmax(-1) == torch.tensor(a)).numpy()
        acc += ok
        top += prob.max(-1).values.numpy()
        exact += int(ok.all())
    return acc / books, exact / books, top / books


def attention_probe(model, seed: int) -> list[str]:
    """Top-3 keys per head of each attention layer at the steps predicting digits 7..10."""
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

    handles = [b.attn.register_forward_hook(hook(li)) for li, b in enumerate(model.transformer.h)
               if b.kind != "mamba"]
    prompt, phone = T.phonebook_prompt(random.Random(seed), 5)
    p, a = T.encode(prompt), T.encode(f" {phone}\n")
    with torch.no_grad():
        model(torch.tensor([p + a])[:, :-1])
    for h in handles:
        h.remove()
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--books", type=int, default=30)
    ap.add_argument("--entries", default="3,6,12")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = T.load_model(args.checkpoint, "cpu").eval()
    print(f"{args.checkpoint}: window {model.cfg.get('window')}, {args.books} books per size, teacher-forced")
    print("position: ' ' d1 d2 d3 d4 d5 d6 d7 d8 d9 d10 '\\n'")
    for n in [int(e) for e in args.entries.split(",")]:
        acc, exact, top = per_position(model, n, args.books, args.seed)
        print(f"entries {n:3d}: exact {exact:.2f} | acc " + " ".join(f"{v:.2f}" for v in acc)
              + " | top p " + " ".join(f"{v:.2f}" for v in top))
    print("\n".join(attention_probe(model, args.seed + 1)))


if __name__ == "__main__":
    main()
