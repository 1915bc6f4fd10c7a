"""Quick long-context checks run by training/train.py after training (``--eval-long``), in PyTorch.

They are teacher-forced (greedy decoding would emit the same answer) and small, to follow a run; the
package's own evaluations (``samba-ext passkey`` etc.) are the measurements that count.
"""

from __future__ import annotations

import json
import math
import random
import time

import numpy as np
import torch

from data import PASSKEY_ANSWER, encode, heldout_text, passkey_prompt, phonebook_prompt
from model_torch import PAD, TorchSamba, run_chunked


@torch.no_grad()
def eval_passkey(
    model: TorchSamba, lengths, depths, trials: int, device, seed: int = 1234, chunk: int = 8192, max_batch: int = 16
) -> dict[int, float]:
    """Teacher-forced greedy check: prompt + " {key}." and all answer positions' argmax must equal
    the next token, i.e. greedy decoding emits " {key}." (so the first integer is the key).
    Returns {length: accuracy}."""
    rng = random.Random(seed)
    res = {}
    for L in lengths:
        items = []
        for d in depths:
            for _ in range(trials):
                key = rng.randint(10000, 99999)
                p = encode(passkey_prompt(L, d, key))
                a = encode(PASSKEY_ANSWER.format(key=key))
                items.append((p, a))
        ok = 0
        for s in range(0, len(items), max_batch):
            grp = items[s : s + max_batch]
            n = max(len(p) + len(a) for p, a in grp)
            lp = len(grp[0][0])
            assert all(len(p) == lp for p, _ in grp)
            toks = torch.full((len(grp), n), PAD, dtype=torch.long)
            for r, (p, a) in enumerate(grp):
                toks[r, : len(p) + len(a)] = torch.tensor(p + a)
            toks = toks.to(device)
            pred = run_chunked(model, toks[:, :-1], chunk=chunk, want="argmax_from", targets_from=lp - 1)
            for r, (p, a) in enumerate(grp):
                ok += int(pred[r, : len(a)].tolist() == a)
        res[L] = ok / len(items)
    return res


@torch.no_grad()
def eval_phonebook(model: TorchSamba, entries, books: int, device, seed: int = 4321) -> dict[int, float]:
    """Teacher-forced greedy check on phonebook prompts (docs/specification.md section 6.2 format): all answer
    positions of " {phone}\n" must be the argmax. Returns {entries: accuracy} (one book per row)."""
    rng = random.Random(seed)
    res = {}
    for n in entries:
        ok = 0
        for _ in range(books):
            prompt, phone = phonebook_prompt(rng, n)
            p, a = encode(prompt), encode(f" {phone}\n")
            toks = torch.tensor([p + a], dtype=torch.long, device=device)
            logits = model(toks[:, :-1])
            pred = logits[0, len(p) - 1 :].argmax(-1).tolist()
            ok += int(pred == a)
        res[n] = ok / books
    return res


@torch.no_grad()
def eval_ppl(
    model: TorchSamba,
    stream: np.ndarray,
    total: int,
    device,
    seg: int = 4096,
    chunk: int = 8192,
    buckets=(4096, 16384, 65536, 262144, 1048576),
) -> dict:
    """NLL of one long held-out stream read with the state carried vs. the same tokens read in
    independent `seg`-token pieces (state reset). Returns per position bucket ppl for both and ratio."""
    total = min(total, len(stream) - 1) // seg * seg
    toks = torch.from_numpy(stream[: total + 1].astype(np.int64)).to(device)
    nll_long = run_chunked(model, toks[None, : total + 1], chunk=chunk, want="nll")[0]
    pieces = toks[:total].view(-1, seg)
    nxt = torch.cat([toks[1 : total + 1].view(-1, seg)], 0)
    nll_seg = []
    per = max(1, (64 * 1024) // seg)
    for s in range(0, pieces.shape[0], per):
        p = pieces[s : s + per]
        t = nxt[s : s + per]
        full = torch.cat([p, t[:, -1:]], 1)
        nll_seg.append(run_chunked(model, full, chunk=chunk, want="nll"))
    nll_seg = torch.cat(nll_seg, 0).reshape(-1)
    out = {}
    lo = 0
    for hi in buckets:
        if lo >= total:
            break
        hi2 = min(hi, total)
        a = nll_long[lo:hi2].double().mean().item()
        b = nll_seg[lo:hi2].double().mean().item()
        out[f"{lo}-{hi2}"] = dict(ppl_long=math.exp(a), ppl_reset=math.exp(b), ratio=math.exp(a - b))
        lo = hi2
    return out


def quick_evals(model: TorchSamba, cfg: dict, dev, args) -> dict:
    """Torch-side passkey accuracy by length and long-context perplexity stability."""
    is_samba = "mamba" in cfg["layer_types"]
    cap = args.eval_max_len if is_samba else min(args.eval_max_len, 32768)
    lengths = [n for n in (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144) if n <= cap]
    out: dict = {}
    t = time.time()
    with torch.autocast(device_type=dev.type, enabled=False):
        try:
            out["passkey"] = eval_passkey(model, lengths, [0.0, 0.25, 0.5, 0.75, 1.0], 2, dev)
        except Exception as e:  # keep going: the checkpoint is already saved
            out["passkey_error"] = repr(e)
        print(
            f"[{cfg['name']}] passkey {out.get('passkey', out.get('passkey_error'))} ({time.time() - t:.0f}s)",
            flush=True,
        )
        t = time.time()
        try:
            out["phonebook"] = eval_phonebook(model, [3, 4, 6, 8, 12, 16, 32, 64], 10, dev)
        except Exception as e:
            out["phonebook_error"] = repr(e)
        print(
            f"[{cfg['name']}] phonebook {out.get('phonebook', out.get('phonebook_error'))} ({time.time() - t:.0f}s)",
            flush=True,
        )
        t = time.time()
        try:
            held = heldout_text()
            total = args.eval_ppl_tokens or ((1 << 20) if is_samba else 32768)
            out["ppl"] = eval_ppl(model, held, total, dev)
        except Exception as e:
            out["ppl_error"] = repr(e)
        print(
            f"[{cfg['name']}] ppl {json.dumps(out.get('ppl', out.get('ppl_error')))} ({time.time() - t:.0f}s)",
            flush=True,
        )
    return out
