#!/usr/bin/env python3
"""Train samba-tiny with each kernel path from one seed; compare the loss curves and the step time.

The training model (training/model_torch.py) runs either samba_ext.torch's autograd ops
(``--kernels samba_ext``: causal_conv1d_fn, selective_scan_fn, flash_attn_func) or its own torch
scan and attention (``torch``). This script trains the same model (samba-tiny's config: d_model 128,
4 blocks mamba/swa, window 256) from the same seed on the same batches (training/data.py's mix,
built offline from the package's passkey/phonebook builders and the Python standard library) for
``--steps`` steps with each path in turn, with train.py's objective, optimizer and schedule, bf16
autocast on a GPU. Per step it records the loss (kept on the device, printed every ``--log-every``
steps) and the step time (CUDA-synchronised before and after each step; the median skips the first
``--warmup-steps``).

Results: ``OUT/train_kernels.json`` and ``OUT/train_kernels.md`` (date, commit, device, both curves
summarised: the largest difference of their 50-step moving averages, the final losses, the per-step
noise of the loss around its moving average, the step-time ratio), and ``OUT/train_kernels.png`` when
matplotlib is installed. After 20 steps of the first run the total time is estimated; above
``--budget-s`` the script stops and writes what it has, with a note.

    python3 benchmarks/train_kernels.py                       # on the GPU: 2 x 1000 steps
    python3 benchmarks/train_kernels.py --device cpu --steps 20 --batch 2 --seq-len 96 --out-dir /tmp/tk
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import random
import subprocess
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "training"))
sys.path.insert(0, ROOT)

import model_torch as mt  # noqa: E402
from data import DataMix, make_batch, training_text  # noqa: E402
from train import forward_loss, lr_at, make_optimizer  # noqa: E402

import samba_ext.threads  # noqa: E402
from samba_ext.atomic import write_text_atomic  # noqa: E402

MA = 50  # moving-average width of the curve comparison


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=16, help="rows per step")
    ap.add_argument("--seq-len", type=int, default=512, help="tokens per row (longer than the window)")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=100, help="learning-rate warm-up steps")
    ap.add_argument("--lm-weight", type=float, default=0.25)
    ap.add_argument("--warmup-steps", type=int, default=10, help="steps left out of the median step time")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--budget-s", type=float, default=150.0, help="stop when the estimate exceeds this")
    ap.add_argument("--kernels", default="torch,samba_ext", help="the paths, in run order")
    ap.add_argument("--threads", type=int, default=None, help="torch cpu threads")
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "benchmarks", "results"))
    args = ap.parse_args(argv)
    args.kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    for k in args.kernels:
        mt.check_kernels(k)
    if args.steps < 1:
        raise SystemExit(f"--steps: expected >= 1, got {args.steps}")
    return args


def git_commit() -> str:
    """$GIT_COMMIT, else ``git rev-parse --short HEAD`` (+ a dirty mark), else 'unknown'."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        h = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return (h + (" (+ uncommitted changes)" if dirty else "")) if h else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def make_batches(args, dev):
    """The same batches for every run: ids (B, L) int64 and kind (B, L) int64 per step, on dev."""
    rng = random.Random(args.seed)
    mix = DataMix(text=training_text(2_000_000), window=args.window)
    out = []
    for _ in range(args.steps):
        ids, kind = make_batch(rng, args.batch, args.seq_len, mix)
        out.append((ids.to(dev), kind.long().to(dev)))
    return out


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def train_run(kernels, args, cfg, batches, dev, t_begin, n_runs, run_index):
    """One run; returns dict(losses, step_s, stopped). Stops (stopped = note) when the estimated total
    time of all runs exceeds --budget-s."""
    torch.manual_seed(args.seed)
    model = mt.TorchSamba(cfg, kernels=kernels).to(dev)
    opt = make_optimizer(model, args.lr, 0.01)
    use_amp = dev.type == "cuda"
    losses = torch.zeros(args.steps, dtype=torch.float32, device=dev)
    step_s = []
    stopped = None
    for step in range(args.steps):
        sync(dev)
        t0 = time.perf_counter()
        lr = lr_at(step / args.steps, step, args.lr, args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        ids, kind = batches[step]
        loss = forward_loss(model, ids, kind, args.lm_weight, use_amp)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses[step] = loss.detach()
        sync(dev)
        step_s.append(time.perf_counter() - t0)
        n = step + 1
        if n % args.log_every == 0 or n == 1 or n == args.steps:
            print(f"[{kernels}] step {n} loss {losses[step].item():.4f} ({step_s[-1] * 1e3:.1f} ms)", flush=True)
        if n == 20 or (n > 20 and n % 100 == 0):
            per = float(np.median(step_s[min(args.warmup_steps, n - 10) :]))
            left_runs = n_runs - run_index - 1
            est = (time.perf_counter() - t_begin) + per * (args.steps - n) + left_runs * per * args.steps * 1.2
            if n == 20:
                print(f"[{kernels}] {per * 1e3:.1f} ms/step: estimated total {est:.0f} s", flush=True)
            if est > args.budget_s:
                stopped = f"stopped at step {n} of run '{kernels}': estimated total {est:.0f} s > --budget-s {args.budget_s:g}"
                print(stopped, flush=True)
                break
    return dict(losses=losses[: len(step_s)].cpu().numpy().astype(np.float64), step_s=step_s, stopped=stopped)


def moving_average(x: np.ndarray, w: int = MA) -> np.ndarray:
    if len(x) < w:
        return np.array([x.mean()]) if len(x) else x
    return np.convolve(x, np.ones(w) / w, mode="valid")


def summarise(runs: dict, args) -> dict:
    """Per run: median / p10 / p90 step time after warm-up, final losses (last step and last-MA mean),
    the per-step noise (std of loss - moving average). Between the first two runs: max |difference| of
    the moving averages over the steps both completed, and the step-time ratio (first / second)."""
    out = {"runs": {}, "compare": None}
    for k, r in runs.items():
        s = np.array(r["step_s"][args.warmup_steps :] or r["step_s"])
        loss = r["losses"]
        ma = moving_average(loss)
        resid = loss[MA - 1 :] - ma if len(loss) >= MA else loss - loss.mean()
        out["runs"][k] = dict(
            steps=len(loss),
            median_step_ms=round(float(np.median(s)) * 1e3, 3),
            p10_step_ms=round(float(np.percentile(s, 10)) * 1e3, 3),
            p90_step_ms=round(float(np.percentile(s, 90)) * 1e3, 3),
            final_loss=round(float(loss[-1]), 5),
            final_ma_loss=round(float(ma[-1]), 5),
            loss_noise_std=round(float(resid.std()), 5),
            loss_every_10=[round(float(v), 6) for v in loss[9::10]],
            stopped=r["stopped"],
        )
    ks = list(runs)
    if len(ks) >= 2:
        a, b = runs[ks[0]]["losses"], runs[ks[1]]["losses"]
        n = min(len(a), len(b))
        d = np.abs(moving_average(a[:n]) - moving_average(b[:n])) if n else np.zeros(0)
        ra, rb = out["runs"][ks[0]], out["runs"][ks[1]]
        noise = max(ra["loss_noise_std"], rb["loss_noise_std"])
        out["compare"] = dict(
            first=ks[0],
            second=ks[1],
            steps_compared=n,
            max_abs_diff_ma50=round(float(d.max()), 7) if len(d) else None,
            step_of_max_diff=int(d.argmax()) + min(MA, n) if len(d) else None,
            mean_abs_diff_ma50=round(float(d.mean()), 7) if len(d) else None,
            # one 50-step average of independent per-step noise has std noise/sqrt(50); two of them
            # differ by sqrt(2) times that
            ma50_noise_std_of_difference=round(noise * math.sqrt(2.0 / MA), 5),
            final_loss_diff=round(float(runs[ks[0]]["losses"][-1] - runs[ks[1]]["losses"][-1]), 7),
            final_ma_loss_diff=round(float(moving_average(a)[-1] - moving_average(b)[-1]), 7),
            step_time_ratio=round(ra["median_step_ms"] / rb["median_step_ms"], 3),
        )
    return out


def write_results(res: dict, runs: dict, out_dir: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = [write_text_atomic(os.path.join(out_dir, "train_kernels.json"), json.dumps(res, indent=1) + "\n")]
    c = res["summary"]["compare"]
    lines = [
        "# Training with samba_ext.torch's kernels vs the pure-torch path",
        "",
        f"Written by `benchmarks/train_kernels.py` on {res['date']}, commit {res['commit']}, {res['device']}, "
        f"torch {res['torch']}.",
        "",
        f"Model {res['config']['name']} (d_model {res['config']['d_model']}, {res['config']['n_layer']} blocks "
        f"{'/'.join(res['config']['layer_types'][:2])}, window {res['config']['window']}); batch "
        f"{res['args']['batch']} x {res['args']['seq_len']} tokens; seed {res['args']['seed']}; the same batches "
        f"for both runs; train.py's objective, AdamW and schedule (lr {res['args']['lr']}, warm-up "
        f"{res['args']['warmup']}); {'bf16 autocast' if res['amp'] else 'float32'}.",
        "",
        "| kernels | steps | median step (ms) | p10 / p90 (ms) | final loss | final 50-step mean | loss noise (std) |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, r in res["summary"]["runs"].items():
        lines.append(
            f"| {k} | {r['steps']} | {r['median_step_ms']:.2f} | {r['p10_step_ms']:.2f} / {r['p90_step_ms']:.2f} | "
            f"{r['final_loss']:.4f} | {r['final_ma_loss']:.4f} | {r['loss_noise_std']:.4f} |"
        )
    lines.append("")
    if c:
        lines += [
            f"- 50-step moving averages over {c['steps_compared']} steps: max |difference| "
            f"{c['max_abs_diff_ma50']} (at step {c['step_of_max_diff']}), mean {c['mean_abs_diff_ma50']}; "
            f"the difference of two 50-step means of independent per-step noise would have std "
            f"{c['ma50_noise_std_of_difference']}.",
            f"- final loss difference ({c['first']} - {c['second']}): last step {c['final_loss_diff']}, "
            f"last 50-step mean {c['final_ma_loss_diff']}.",
            f"- step time {c['first']} / {c['second']}: {c['step_time_ratio']}x.",
        ]
    for k, r in res["summary"]["runs"].items():
        if r["stopped"]:
            lines.append(f"- note: {r['stopped']}")
    paths.append(write_text_atomic(os.path.join(out_dir, "train_kernels.md"), "\n".join(lines) + "\n"))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return paths
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, r in runs.items():
        ma = moving_average(r["losses"])
        ax.plot(np.arange(1, len(r["losses"]) + 1), r["losses"], alpha=0.25, lw=0.6)
        ax.plot(np.arange(len(ma)) + min(MA, len(r["losses"])), ma, label=f"{k} (50-step mean)")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(f"{res['config']['name']}: {res['device']}")
    ax.legend()
    png = os.path.join(out_dir, "train_kernels.png")
    tmp = png + ".tmp.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, png)
    paths.append(png)
    return paths


def main(argv=None) -> dict:
    args = parse_args(argv)
    t_begin = time.perf_counter()
    dev = torch.device(args.device)
    if args.threads:  # torch's intra-op threads and the C kernels' OpenMP threads alike
        torch.set_num_threads(args.threads)
        samba_ext.threads.set_num_threads(args.threads)
    cfg = mt.make_config("samba-tiny", args.d_model, args.n_layer, args.window)
    batches = make_batches(args, dev)
    print(f"{args.steps} batches of {args.batch} x {args.seq_len} ({time.perf_counter() - t_begin:.1f} s)", flush=True)
    runs = {}
    for i, k in enumerate(args.kernels):
        runs[k] = train_run(k, args, cfg, batches, dev, t_begin, len(args.kernels), i)
        if runs[k]["stopped"]:
            break
    res = dict(
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        commit=git_commit(),
        device=device_name(dev),
        torch=torch.__version__,
        amp=dev.type == "cuda",
        args={k: v for k, v in vars(args).items() if k != "out_dir"},
        config=cfg,
        summary=summarise(runs, args),
        total_s=round(time.perf_counter() - t_begin, 1),
    )
    for p in write_results(res, runs, args.out_dir):
        print("wrote", p, flush=True)
    print(json.dumps(res["summary"]["compare"]), flush=True)
    return res


if __name__ == "__main__":
    main()
