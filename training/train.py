#!/usr/bin/env python3
"""Train the bundled byte-level models ``samba-tiny`` and ``llama-tiny`` (PyTorch: the ``train`` extra).

The training loop, as nanoGPT's train.py: the model is training/model_torch.py, the data are
training/data.py (built from the package's own passkey, phonebook and corpus code), the quick checks
after training are training/evals.py, and the recipes of the bundled models are training/recipes/.
docs/training.md describes the settings and what each option was for.

Each run writes one safetensors file whose metadata holds the config, the exact command
(``train_command``) and, with ``--init``, the commands of the files it continues (``lineage``).

Examples::

    python3 training/train.py --model samba-tiny --steps 20 --device cpu --out x.safetensors
    python3 training/train.py --model samba-tiny --minutes 7 --device cuda --out samba-tiny.safetensors \
        --eval-long
    python3 training/recipes/run.py samba_tiny --out OUTDIR       # the bundled samba-tiny, step by step
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from data import PASSKEY_ANSWER, DataMix, make_batch, training_text
from evals import quick_evals
from model_torch import (
    KERNELS,
    VOCAB,
    CausalSelfAttention,
    TorchSamba,
    grow_model,
    load_model,
    make_config,
    reinit_attention,
    save_checkpoint,
)


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------
def parse_stages(spec: str | None) -> list[tuple[float, int]] | None:
    """ "0.4:1024,0.7:2048,1:4096" -> [(0.4, 1024), (0.7, 2048), (1.0, 4096)] (end of stage as a fraction
    of the budget, stage length); None for None/""."""
    if not spec:
        return None
    out = []
    for part in spec.split(","):
        f, n = part.split(":")
        out.append((float(f), int(n)))
    if any(b[0] <= a[0] for a, b in zip(out, out[1:])) or out[-1][0] < 1.0:
        raise ValueError(f"--stages {spec!r}: fractions must increase and the last must be >= 1")
    return out


def curriculum_len(progress: float, max_len: int, stages: list[tuple[float, int]] | None = None) -> int:
    """Short-to-long stages: 1/8, 1/4, 1/2, 1 of max_len (or the explicit ``stages``)."""
    if stages:
        for end, n in stages:
            if progress < end:
                return min(n, max_len)
        return min(stages[-1][1], max_len)
    if progress < 0.12:
        return max(320, max_len // 8)
    if progress < 0.30:
        return max(320, max_len // 4)
    if progress < 0.50:
        return max(320, max_len // 2)
    return max_len


def parse_blocks(spec: str, n_layer: int, flag: str) -> list[int]:
    """ "1,3" -> [1, 3]; each index must name a block (0..n_layer-1)."""
    try:
        out = [int(t) for t in spec.split(",") if t.strip()]
    except ValueError:
        raise SystemExit(f'{flag}: expected block indices like "1,3", got {spec!r}') from None
    bad = [i for i in out if not 0 <= i < n_layer]
    if bad or not out:
        raise SystemExit(f"{flag}: block indices must lie in 0..{n_layer - 1}, got {spec!r}")
    return out


def parse_digits(spec: str) -> tuple[int, int]:
    """ "10" -> (10, 10); "8-13" -> (8, 13)."""
    lo, _, hi = spec.partition("-")
    lo_i, hi_i = int(lo), int(hi or lo)
    if not 2 <= lo_i <= hi_i:
        raise SystemExit(f"--pb-digits: expected N or LO-HI with 2 <= LO <= HI, got {spec!r}")
    return lo_i, hi_i


def lr_at(progress: float, step: int, lr: float, warmup: int) -> float:
    w = min(1.0, (step + 1) / warmup)
    return lr * w * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def forward_loss(model, ids, kind, lm_weight: float, use_amp: bool, dt_scale=None, decay_only: bool = False):
    """The training objective of one batch: ids, kind (B, L) int64 (kind 1 = LM target, 2 = answer
    target at the next position). The model runs under bf16 autocast when ``use_amp``; the logits and
    the cross-entropy are float32. Returns (loss = loss_ans + lm_weight * loss_lm, loss_ans, loss_lm,
    logits (B, L-1, V))."""
    with torch.autocast(device_type=ids.device.type, dtype=torch.bfloat16, enabled=use_amp):
        hfin = model(ids, dt_scale=dt_scale, return_hidden=True, decay_only=decay_only)
    logits = model.logits(hfin[:, :-1].float())
    tgt = ids[:, 1:]
    k_ = kind[:, :-1]
    ce = F.cross_entropy(logits.reshape(-1, VOCAB), tgt.reshape(-1), reduction="none").view_as(tgt)
    m_ans = (k_ == 2).float()
    m_lm = (k_ == 1).float()
    loss_ans = (ce * m_ans).sum() / m_ans.sum().clamp(min=1)
    loss_lm = (ce * m_lm).sum() / m_lm.sum().clamp(min=1)
    return loss_ans + lm_weight * loss_lm, loss_ans, loss_lm, logits


def make_optimizer(model, lr: float, weight_decay: float):
    """AdamW (betas 0.9, 0.95), weight decay on the matrices except A_log."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "A_log" not in n else no_decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["samba-tiny", "llama-tiny"], required=True)
    ap.add_argument("--out", required=True, help="output .safetensors path")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=None, help="number of steps (default: until --minutes)")
    ap.add_argument("--minutes", type=float, default=None, help="wall-clock training budget")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--kernels",
        choices=KERNELS,
        default=None,
        help="samba_ext: the package's autograd ops (scan, conv, flash_attn_func; the default where "
        "samba_ext.torch imports); torch: the model file's own scans and SDPA / masked attention",
    )
    ap.add_argument(
        "--init",
        default=None,
        help="start from this samba-ext .safetensors (its config wins over the size options; "
        "the optimizer and the schedule start fresh)",
    )
    ap.add_argument(
        "--reinit-attn",
        default=None,
        metavar="BLOCKS",
        help="with --init: re-initialise the attention (QKV and output projection) of these "
        'blocks, e.g. "3" or "1,3" (a fresh start for a head whose softmax has settled)',
    )
    ap.add_argument(
        "--grow",
        type=int,
        default=None,
        metavar="N",
        help="with --init: append blocks up to N in all (the mamba/swa pattern continues); the new "
        "blocks' output projections start at zero, so training starts from the same function",
    )
    ap.add_argument(
        "--train-blocks",
        default=None,
        metavar="BLOCKS",
        help='train only the parameters of these blocks, e.g. "3"; the others are frozen',
    )
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--d-state", type=int, default=16)
    ap.add_argument(
        "--window",
        type=int,
        default=None,
        help="SWA window (default 256; with --init: the file's, or this value to change it)",
    )
    ap.add_argument("--max-len", type=int, default=None, help="training length (default 4096; cpu 384)")
    ap.add_argument("--tokens-per-step", type=int, default=None, help="default 32768 (cpu 768)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--lm-weight", type=float, default=0.25, help="weight of the LM loss vs the answer loss")
    ap.add_argument("--p-passkey", type=float, default=0.5)
    ap.add_argument("--p-phonebook", type=float, default=0.15)
    ap.add_argument(
        "--pb-max-entries",
        type=int,
        default=None,
        help="cap the phonebook size (default: as many entries as fit in the row); small "
        "books (e.g. 8: they fit in a 256-token window) for a lookup curriculum",
    )
    ap.add_argument(
        "--pb-min-entries",
        type=int,
        default=3,
        help="smallest phonebook size drawn where the row has room (default 3); e.g. 20 spends the "
        "steps on the long books a model fails on",
    )
    ap.add_argument(
        "--pb-fewshot-loss",
        action="store_true",
        help="weight the digits of the two re-stated phonebook entries like answers (they are "
        "lookups in the book too): three supervised lookups per phonebook row",
    )
    ap.add_argument(
        "--pb-seps",
        type=float,
        default=0.0,
        help="chance per digit gap of a separator (- . or space) inside training phone numbers, "
        "e.g. 0.2: each digit's distance from the ':' then varies, so a lookup by that "
        "distance stops working and a copy by content is needed (the evaluation uses none)",
    )
    ap.add_argument(
        "--pb-early",
        type=float,
        default=0.0,
        help="chance that a phonebook row's query and two re-stated entries all come from the "
        "first quarter of the book, e.g. 0.5: in a 4K-token book those lookups reach 3-4K tokens "
        "back, which uniformly drawn entries rarely do",
    )
    ap.add_argument(
        "--pb-digits",
        default="10",
        help='phone-number length in training books, N or "LO-HI" drawn per book (the '
        "evaluation uses 10; a range makes 10 an interior length, not the last one seen)",
    )
    ap.add_argument(
        "--pk-far",
        type=float,
        default=0.0,
        help="fraction of passkey rows whose key is placed >= window tokens before the answer "
        "(beyond the SWA window: only the Mamba state can carry it); samba only",
    )
    ap.add_argument(
        "--pk-edge",
        type=float,
        default=0.0,
        help="fraction of the passkey rows not made far by --pk-far whose key line straddles "
        "the window edge (part inside the SWA window, part only in the Mamba state: the "
        "hand-over between the two); samba only",
    )
    ap.add_argument(
        "--stages",
        default=None,
        help='curriculum "END:LEN,...", END = fraction of the budget, e.g. "0.4:1024,0.7:2048,1:4096" '
        "(default: max_len/8 to 12%%, /4 to 30%%, /2 to 50%%, then max_len; at least 320)",
    )
    ap.add_argument(
        "--dt-aug",
        type=float,
        default=0.0,
        help="fraction of rows whose Mamba dt is multiplied by exp(U(0, ln dt_aug_max)) "
        "(time-dilation augmentation for length extrapolation)",
    )
    ap.add_argument("--dt-aug-max", type=float, default=64.0)
    ap.add_argument(
        "--dt-aug-mode",
        choices=["all", "decay"],
        default="all",
        help="all: scale dt everywhere; decay: scale only the decay exp(dt*A), i.e. the key must "
        "survive up to dt_aug_max times more filler than the row holds",
    )
    ap.add_argument(
        "--dt-aug-rows",
        choices=["all", "no-phonebook"],
        default="all",
        help="which rows may be dilated: all, or all but phonebook rows (the dilation is for "
        "the passkey's long-range memory; it blurs the local features a lookup needs)",
    )
    ap.add_argument("--text-bytes", type=int, default=None, help="cap on stdlib training text (cpu: 2 MB)")
    ap.add_argument("--amp-cpu", action="store_true", help="bf16 autocast on the cpu too (debugging)")
    ap.add_argument("--threads", type=int, default=None, help="torch cpu threads")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--eval-long", action="store_true", help="quick long-context evals after training")
    ap.add_argument("--eval-max-len", type=int, default=262144)
    ap.add_argument(
        "--eval-ppl-tokens",
        type=int,
        default=None,
        help="held-out stream length for the ppl check (default 1M samba, 32K llama)",
    )
    ap.add_argument("--eval-json", default=None, help="also write the eval results to this JSON file")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    cmd = "python3 training/train.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    dev = torch.device(args.device)
    cpu = dev.type == "cpu"
    max_len = args.max_len or (384 if cpu else 4096)
    tps = args.tokens_per_step or (768 if cpu else 32768)
    if args.steps is None and args.minutes is None:
        args.steps = 20 if cpu else 1000
    if args.threads:
        torch.set_num_threads(args.threads)
        try:  # the samba_ext kernels' OpenMP threads too (their runtime is not torch's)
            import samba_ext.threads

            samba_ext.threads.set_num_threads(args.threads)
        except ImportError:
            pass
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    if args.init:
        model = load_model(args.init, str(dev), kernels=args.kernels)
        cfg = dict(model.cfg)
        if cfg.get("name") != args.model:
            raise SystemExit(f"--init {args.init} holds {cfg.get('name')!r}, not --model {args.model!r}")
        print(f"[{args.model}] initialised from {args.init}", flush=True)
        # the commands that made the --init file, oldest first, so the saved file names its whole recipe
        lineage = json.loads(model.file_meta.get("lineage", "[]")) + [model.file_meta.get("train_command", "?")]
        if args.window is not None and cfg.get("window") is not None and args.window != cfg["window"]:
            print(f"[{args.model}] window {cfg['window']} -> {args.window}", flush=True)
            cfg["window"] = args.window
            model.cfg["window"] = args.window
            for m in model.modules():
                if isinstance(m, CausalSelfAttention) and m.window is not None:
                    m.window = args.window
    else:
        cfg = make_config(
            args.model, args.d_model, args.n_layer, 256 if args.window is None else args.window, args.d_state
        )
        model = TorchSamba(cfg, kernels=args.kernels).to(dev)
    if not 0.0 <= args.pb_seps <= 1.0:
        raise SystemExit(f"--pb-seps is a probability in [0, 1], got {args.pb_seps}")
    if not 0.0 <= args.pb_early <= 1.0:
        raise SystemExit(f"--pb-early is a probability in [0, 1], got {args.pb_early}")
    if args.grow is not None:
        if not args.init:
            raise SystemExit("--grow needs --init (a trained file to grow)")
        try:
            model = grow_model(model, args.grow)
        except ValueError as e:
            raise SystemExit(str(e)) from None
        cfg = dict(model.cfg)
        print(f"[{args.model}] grown to {args.grow} blocks: {cfg['layer_types']}", flush=True)
    if args.reinit_attn:
        if not args.init:
            raise SystemExit("--reinit-attn needs --init")
        for i in parse_blocks(args.reinit_attn, len(model.transformer.h), "--reinit-attn"):
            reinit_attention(model, i)
            print(f"[{args.model}] block {i}: attention re-initialised", flush=True)
    if args.train_blocks:
        keep = {
            f"transformer.h.{i}." for i in parse_blocks(args.train_blocks, len(model.transformer.h), "--train-blocks")
        }
        for n, p in model.named_parameters():
            p.requires_grad_(any(n.startswith(k) for k in keep))
    # the longest document the model has been trained on, over its whole --init history
    cfg["max_train_len"] = max(max_len, int(cfg.get("max_train_len") or 0)) if args.init else max_len
    n_params = model.num_parameters()
    t0 = time.time()
    text = training_text(args.text_bytes or (2_000_000 if cpu else None))
    mix = DataMix(
        p_passkey=args.p_passkey,
        p_phonebook=args.p_phonebook,
        text=text,
        pk_far=args.pk_far,
        pk_edge=args.pk_edge,
        pb_max_entries=args.pb_max_entries,
        pb_min_entries=args.pb_min_entries,
        pb_fewshot_loss=args.pb_fewshot_loss,
        pb_digits=parse_digits(args.pb_digits),
        pb_seps=args.pb_seps,
        pb_early=args.pb_early,
        window=cfg["window"] if "swa" in cfg["layer_types"] else None,
    )
    stages = parse_stages(args.stages)
    print(
        f"[{args.model}] params {n_params} | train text {len(text)} tokens ({time.time() - t0:.1f}s) | "
        f"device {dev} | kernels {model.kernels} | max_len {max_len} | tokens/step {tps}",
        flush=True,
    )

    opt = make_optimizer(model, args.lr, args.weight_decay)
    use_amp = dev.type == "cuda" or args.amp_cpu
    has_mamba = "mamba" in cfg["layer_types"]
    log = []
    t_start = time.time()
    step = 0
    interrupted = False
    # Ctrl-C stops training and still saves the model as it is (no evals then); a Ctrl-C that lands
    # inside opt.step() can leave that one step half applied
    try:
        while True:
            el = time.time() - t_start
            prog_s = step / args.steps if args.steps else 0.0
            prog_t = el / (args.minutes * 60) if args.minutes else 0.0
            progress = max(prog_s, prog_t)
            if progress >= 1.0:
                break
            Lmax = curriculum_len(progress, max_len, stages)
            L = Lmax if rng.random() < 0.5 else max(320, int(rng.uniform(0.25, 1.0) * Lmax) // 64 * 64)
            B = max(1, tps // L)
            infos: list = []
            ids, kind = make_batch(rng, B, L, mix, infos)
            if dev.type == "cuda":
                ids, kind = ids.pin_memory().to(dev, non_blocking=True), kind.pin_memory().to(dev, non_blocking=True)
            dt_scale = None
            if has_mamba and args.dt_aug > 0:
                on = torch.rand(B, generator=None) < args.dt_aug
                if args.dt_aug_rows == "no-phonebook":  # lookups need the Mamba's undilated local features
                    on &= torch.tensor([d["task"] != "phonebook" for d in infos])
                k = torch.exp(torch.rand(B) * math.log(args.dt_aug_max))
                dt_scale = torch.where(on, k, torch.ones(B)).to(dev)
            lr = lr_at(progress, step, args.lr, args.warmup)
            for g in opt.param_groups:
                g["lr"] = lr
            loss, loss_ans, loss_lm, logits = forward_loss(
                model, ids, kind, args.lm_weight, use_amp, dt_scale, args.dt_aug_mode == "decay"
            )
            tgt = ids[:, 1:]
            k_ = kind[:, :-1]
            m_ans = (k_ == 2).float()
            n_ans = m_ans.sum().clamp(min=1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            if step % args.log_every == 0 or step == 1 or (args.steps and step == args.steps):
                with torch.no_grad():
                    acc = ((logits.argmax(-1) == tgt).float() * m_ans).sum() / n_ans
                    # rows whose whole answer is right, for passkey rows with the key beyond the window
                    row_ok = ((logits.argmax(-1) == tgt) | (k_ != 2)).all(1).cpu()
                    far_rows = [i for i, d in enumerate(infos) if d["far"]]
                    far_acc = (sum(float(row_ok[i]) for i in far_rows) / len(far_rows)) if far_rows else None
                    edge_rows = [i for i, d in enumerate(infos) if d["edge"]]
                    edge_acc = (sum(float(row_ok[i]) for i in edge_rows) / len(edge_rows)) if edge_rows else None
                    pb_rows = [i for i, d in enumerate(infos) if d["task"] == "phonebook"]
                    pb_acc = (sum(float(row_ok[i]) for i in pb_rows) / len(pb_rows)) if pb_rows else None
                rec = dict(
                    step=step,
                    t=round(time.time() - t_start, 1),
                    L=L,
                    B=B,
                    lr=round(lr, 6),
                    loss=round(loss.item(), 4),
                    loss_ans=round(loss_ans.item(), 4),
                    loss_lm=round(loss_lm.item(), 4),
                    ans_acc=round(acc.item(), 4),
                    far_rows=len(far_rows),
                    far_exact=None if far_acc is None else round(far_acc, 3),
                    edge_rows=len(edge_rows),
                    edge_exact=None if edge_acc is None else round(edge_acc, 3),
                    pb_rows=len(pb_rows),
                    pb_exact=None if pb_acc is None else round(pb_acc, 3),
                    gnorm=round(float(gn), 3),
                )
                log.append(rec)
                print(json.dumps(rec), flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print(f"[{args.model}] interrupted at step {step}: saving what there is", flush=True)
    train_time = time.time() - t_start
    model.eval()
    meta = {
        "format": "samba-ext",
        "config": json.dumps(cfg),
        "tokenizer": "byte",
        "train_command": cmd,
        "seed": str(args.seed),
        "steps": str(step),
        "train_seconds": f"{train_time:.1f}",
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "kernels": model.kernels,
        "params": str(n_params),
        "data": "passkey (samba_ext.eval passkey prompt, answer ' {key}.'+<eos>), phonebook (samba_ext names), "
        "stdlib .py (crc32(relpath)%10!=0)",
        "final_log": json.dumps(log[-1] if log else {}),
        "passkey_answer_format": PASSKEY_ANSWER + "<eos>",
    }
    if interrupted:
        meta["interrupted"] = "true"
    if args.init:
        meta["lineage"] = json.dumps(lineage)
    save_checkpoint(args.out, model, meta)
    print(
        f"[{args.model}] saved {args.out} ({os.path.getsize(args.out)} bytes) after {step} steps, {train_time:.0f}s",
        flush=True,
    )
    result = dict(
        model=args.model, steps=step, train_seconds=train_time, params=n_params, log=log, interrupted=interrupted
    )
    if args.eval_long and not interrupted:
        result["eval"] = quick_evals(model, cfg, dev, args)
        if args.eval_json:
            with open(args.eval_json, "w") as f:
                json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
