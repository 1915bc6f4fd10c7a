"""On a GPU machine with Ray installed: one grid run on the GPU locally and through Ray must agree.

Usage (repository root, extension built with CUDA):
    python benchmarks/ray_gpu_check.py [--out DIR] [--results benchmarks/results/ray_gpu.md]

Runs ``samba-ext passkey`` and ``samba-ext perplexity`` on the bundled samba-tiny with
``--device cuda``, once locally and once with ``--ray`` (a local Ray cluster with the machine's
GPUs: one actor per GPU), then compares the two ``results.json`` files cell by cell (every
field but the timings). Writes a Markdown record (date, commit, device, commands, cell counts,
the largest difference) to ``--results`` and the raw comparison to ``--out``. Exit status 0 only
when every cell agrees.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

JOBS = {
    "passkey": ["passkey", "--lengths", "1K,4K,16K", "--depths", "0,0.5,1", "--trials", "2",
                "--no-plot", "--no-progress"],
    "perplexity": ["perplexity", "--mode", "sliding", "--lengths", "256,1024", "--tokens", "8192",
                   "--no-plot", "--no-progress"],
}
TIME_KEYS = {"time_s", "tokens_per_s", "elapsed_s"}


def _run(args: list[str], out: str, device: str) -> tuple[int, float, str]:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "samba_ext.cli", *args, "--device", device,
                        "--no-resume", "--out", out], env=env, capture_output=True, text=True, timeout=900)
    return p.returncode, time.perf_counter() - t0, (p.stdout + p.stderr)[-4000:]


def _diff(a: object, b: object, path: str, worst: list) -> None:
    """Record mismatches of b against a; numbers compared exactly, the worst gap kept."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) - TIME_KEYS != set(b) - TIME_KEYS:
            worst.append((math.inf, f"{path}: keys {sorted(set(a) ^ set(b))}"))
        for k in set(a) & set(b):
            if k not in TIME_KEYS:
                _diff(a[k], b[k], f"{path}.{k}", worst)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{path}[{i}]", worst)
    elif isinstance(a, float) and isinstance(b, (int, float)):
        if not (a == b or (math.isnan(a) and math.isnan(b))):
            worst.append((abs(a - b), f"{path}: {a!r} vs {b!r}"))
    elif a != b:
        worst.append((math.inf, f"{path}: {a!r:.80} vs {b!r:.80}"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="ray_gpu_out")
    ap.add_argument("--device", default="cuda", help="cpu only to try the script itself")
    ap.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "results", "ray_gpu.md"))
    a = ap.parse_args()
    import ray

    from samba_ext.atomic import write_text_atomic

    rows, ok_all, record = [], True, {}
    for name, args in JOBS.items():
        outs = {m: os.path.join(a.out, f"{name}_{m}") for m in ("local", "ray")}
        rc_l, t_l, log_l = _run(args, outs["local"], a.device)
        rc_r, t_r, log_r = _run(args + ["--ray"], outs["ray"], a.device)
        if rc_l or rc_r:
            print(f"{name}: local rc {rc_l}, ray rc {rc_r}\n{log_l}\n{log_r}")
            rows.append(f"| {name} | failed (local rc {rc_l}, ray rc {rc_r}) | - | - | no |")
            ok_all = False
            continue
        res = {m: json.load(open(os.path.join(o, "results.json"))) for m, o in outs.items()}
        worst: list = []
        _diff(res["local"]["cells"], res["ray"]["cells"], "cells", worst)
        _diff(res["local"].get("params"), res["ray"].get("params"), "params", worst)
        n = len(res["local"]["cells"])
        same = not worst
        ok_all &= same
        gap = max((w[0] for w in worst), default=0.0)
        rows.append(f"| {name} | {n} | {t_l:.1f} / {t_r:.1f} | {gap:.3g} | "
                    f"{'yes' if same else 'no: ' + worst[0][1]} |")
        record[name] = {"cells": n, "local_s": t_l, "ray_s": t_r, "mismatches": worst[:20],
                        "command": "samba-ext " + " ".join(args) + " --device " + a.device}
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "ray_gpu.json"), "w") as f:
        json.dump(record, f, indent=1, default=str)
    try:
        dev = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip() or "unknown GPU"
    except OSError:
        dev = "no nvidia-smi"
    text = "\n".join([
        "# Evaluation grids on one GPU: local run vs Ray",
        "",
        f"Date (UTC): {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M}; commit "
        f"{os.environ.get('GIT_COMMIT', 'unknown')}; device {dev}; Ray {ray.__version__}.",
        f"Command: `python benchmarks/ray_gpu_check.py` (each job once with `--device {a.device}`, "
        "once "
        f"with `--device {a.device} --ray`, a local Ray cluster, one actor per GPU).",
        "",
        "| job | cells | wall s local / Ray (incl. start-up) | largest difference | equal |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "Jobs: " + "; ".join(f"`samba-ext {' '.join(v)} --device {a.device}`" for v in JOBS.values()),
        "",
    ])
    write_text_atomic(a.results, text)
    print(text)
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
