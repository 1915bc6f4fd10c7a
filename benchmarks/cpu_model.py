"""CPU model benchmark: prefill and decode throughput of a ~10M-parameter Samba.

    python3 benchmarks/cpu_model.py            # writes benchmarks/results/cpu_model.md
    python3 benchmarks/cpu_model.py --quick    # 4K and 32K only (a smoke run)

What it measures (batch 1, float32, the ``samba-10m`` preset: 8 blocks = 4 Mamba + 4 SWA,
d_model 256, 4 heads x 64, SwiGLU 1152, window 2048, d_state 16, byte vocabulary):

* NumPy matmul FLOP/s in the same run: a 2048^3 float32 ``np.matmul`` (the BLAS NumPy links),
  and the model's own GEMM shapes at the prefill chunk size.
* Prefill tokens/s at 4K, 32K and 128K tokens (``model.prefill`` with chunk_size 4096) and the
  achieved FLOP/s from the counted flops (formula in the output), as a fraction of the matmul
  rate. Target: >= 0.5 at 128K.
* Decode tokens/s (``model.step``, 256 tokens) after each prefill, i.e. at 4K, 32K and 128K
  tokens of context, timed in 4 interleaved rounds (median). Target: the 128K rate within 10%
  of the 4K rate.

The C kernels use OpenMP and NumPy's BLAS has its own thread pool; both are given all cores.
OMP_WAIT_POLICY is set to PASSIVE unless already set (a spinning OpenMP pool starves the BLAS
threads on a 2-core machine; the results file records the value). ``--policy-compare`` also
runs the decode measurement in a subprocess with the OpenMP default, for comparison.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import samba_ext  # noqa: E402
from samba_ext import Samba, SambaConfig  # noqa: E402

CHUNK = 4096
LOAD0 = 0.0
DECODE_TOKENS = 256
DECODE_ROUNDS = 4


# ------------------------------------------------------------------------------ flops ---
def gemm_flops_per_token(c: SambaConfig) -> int:
    """2 x (multiply-adds of every weight matrix applied to each token), lm_head excluded."""
    D, E, N, R, F = c.d_model, c.d_inner, c.d_state, c.dt_rank, c.intermediate_size
    f = 0
    for t in c.layer_types:
        f += 2 * 3 * D * F                                       # SwiGLU w1, w2, w3
        if t == "mamba":
            f += 2 * (2 * E * D + (R + 2 * N) * E + E * R + D * E)  # in, x, dt, out proj
        else:
            f += 2 * (c.qkv_size * D + D * c.n_head * c.head_dim)   # qkv, proj
    return f


def attn_flops(c: SambaConfig, p0: int, L: int) -> int:
    """QK^T and PV: 4 * n_keys * n_head * head_dim per query per attention block, with
    n_keys = min(pos + 1, window) (the keys each query really sees)."""
    pos = np.arange(p0, p0 + L, dtype=np.int64)
    total = 0
    for t in c.layer_types:
        if t == "mamba":
            continue
        keys = pos + 1 if t == "attn" else np.minimum(pos + 1, c.window)
        total += int(keys.sum()) * 4 * c.n_head * c.head_dim
    return total


def scan_flops_per_token(c: SambaConfig) -> int:
    """Selective scan, 7 flops per (channel, state): dt*A, exp (counted as 1), *h, (dt*u)*B,
    +, *C, + ; plus the conv (2 * d_conv per channel)."""
    n_m = c.layer_types.count("mamba")
    return n_m * (7 * c.d_inner * c.d_state + 2 * c.d_conv * c.d_inner)


def prefill_flops(c: SambaConfig, L: int, chunk: int) -> dict[str, float]:
    n_chunks = -(-L // chunk)
    return {"gemm": gemm_flops_per_token(c) * L + n_chunks * 2 * c.vocab_size * c.d_model,
            "attention": attn_flops(c, 0, L),
            "scan+conv": scan_flops_per_token(c) * L}


# ---------------------------------------------------------------------------- timing ---
def matmul_rate(n: int = 2048, reps: int = 7) -> list[float]:
    """FLOP/s of each of ``reps`` n^3 float32 np.matmul calls (after one warm-up)."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    np.matmul(a, b)
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        np.matmul(a, b)
        out.append(2 * n ** 3 / (time.perf_counter() - t))
    return out


def model_gemm_rate(c: SambaConfig, L: int, reps: int = 3) -> float:
    """FLOP/s of the model's prefill GEMM shapes at chunk L (same calls as the model)."""
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    D, E, N, R, F = c.d_model, c.d_inner, c.d_state, c.dt_rank, c.intermediate_size
    n, xc, y, dbl = f(1, L, D), f(1, E, L), f(1, E, L), f(1, R + 2 * N, L)
    Win, Wx, Wdt, Wout = f(E, D), f(R + 2 * N, E), f(E, R), f(D, E)
    W1, W3, h = f(F, D), f(D, F), f(1, L, F)
    Wq, Wo, o = f(c.n_head * c.head_dim, D), f(D, c.n_head * c.head_dim), f(1, L, D)
    calls = [(lambda: np.matmul(Win, n.swapaxes(-1, -2)), 2 * E * D * L),
             (lambda: np.matmul(Wx, xc), 2 * (R + 2 * N) * E * L),
             (lambda: np.matmul(Wdt, dbl[:, :R]), 2 * E * R * L),
             (lambda: np.matmul(y.swapaxes(-1, -2), Wout.T), 2 * L * E * D),
             (lambda: np.matmul(n, W1.T), 2 * L * D * F),
             (lambda: np.matmul(h, W3.T), 2 * L * F * D),
             (lambda: np.matmul(n, Wq.T), 2 * L * D * Wq.shape[0]),
             (lambda: np.matmul(o, Wo.T), 2 * L * D * D)]
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        for fn, _ in calls:
            fn()
        best = min(best, time.perf_counter() - t)
    return sum(fl for _, fl in calls) / best


def run(lengths: list[int], policy_compare: bool) -> str:
    global LOAD0
    LOAD0 = os.getloadavg()[0]
    cfg = SambaConfig.preset("samba-10m")
    model = Samba(cfg, seed=0)
    rng = np.random.default_rng(0)
    mms = matmul_rate()
    mg = model_gemm_rate(cfg, CHUNK)
    rows, states = [], []
    for L in lengths:
        if L != lengths[0]:
            mms += matmul_rate()
        tok = rng.integers(0, 256, (1, L))
        st = model.new_state(1)
        t0, c0 = time.perf_counter(), time.process_time()
        model.prefill(tok, st, chunk_size=CHUNK)
        tp, cp = time.perf_counter() - t0, time.process_time() - c0
        fl = prefill_flops(cfg, L, CHUNK)
        rows.append(dict(L=L, prefill_s=tp, prefill_cpu=cp, prefill_tps=L / tp, flops=fl,
                         achieved=sum(fl.values()) / tp, state_bytes=st.nbytes(), decode=[]))
        states.append(st)
        print(f"L={L}: prefill {L / tp:,.0f} tok/s ({sum(fl.values()) / tp / 1e9:.1f} GFLOP/s)",
              flush=True)
    mms += matmul_rate()
    mm = float(np.median(mms))
    print(f"matmul GFLOP/s: median {mm / 1e9:.1f}, best {max(mms) / 1e9:.1f}", flush=True)
    # decode: the contexts are timed in interleaved rounds, so that a change of machine load
    # during the run affects all of them alike; the median round counts
    nxt = rng.integers(0, 256, DECODE_TOKENS)
    per_round = DECODE_TOKENS // DECODE_ROUNDS
    for st in states:
        for i in range(8):                   # warm-up (not counted)
            model.step(nxt[i:i + 1], st)
    for r in range(DECODE_ROUNDS):
        for row, st in zip(rows, states):
            t0 = time.perf_counter()
            for i in range(r * per_round, (r + 1) * per_round):
                model.step(nxt[i:i + 1], st)
            row["decode"].append(per_round / (time.perf_counter() - t0))
    for row in rows:
        row["decode_tps"] = float(np.median(row["decode"]))
        print(f"L={row['L']}: decode {row['decode_tps']:.1f} tok/s (rounds "
              f"{', '.join(f'{v:.0f}' for v in row['decode'])})", flush=True)
    compare = None
    if policy_compare:
        env = dict(os.environ)
        env.pop("OMP_WAIT_POLICY", None)
        code = ("import sys, time, numpy as np; sys.path.insert(0, %r)\n"
                "from samba_ext import Samba, SambaConfig\n"
                "m = Samba(SambaConfig.preset('samba-10m')); st = m.new_state(1)\n"
                "m.prefill(np.arange(4096)[None] %% 256, st, chunk_size=%d)\n"
                "t = time.perf_counter(); m.prefill(np.arange(8192)[None] %% 256, st, chunk_size=%d)\n"
                "tp = time.perf_counter() - t\n"
                "t = time.perf_counter()\n"
                "for i in range(64): m.step([i], st)\n"
                "print(8192 / tp, 64 / (time.perf_counter() - t))\n") % (str(ROOT), CHUNK, CHUNK)
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        if r.returncode == 0:
            compare = [float(v) for v in r.stdout.split()]
    return report(cfg, model, mm, mms, mg, rows, compare)


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}"


def commit() -> str:
    try:
        h = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return h + (" (+ uncommitted changes)" if dirty else "")
    except OSError:
        return "?"


def report(cfg, model, mm, mms, mg, rows, compare) -> str:
    g = gemm_flops_per_token(cfg)
    out = ["# CPU model benchmark (`benchmarks/cpu_model.py`)", ""]
    out += [f"- Date: {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}",
            f"- Commit: {commit()}",
            f"- Machine: {machine()}; load average (1 min) at start {LOAD0:.2f}, at the end "
            f"{os.getloadavg()[0]:.2f} (other processes share the cores when > 0; CPU s below "
            "is this process's user + system time)",
            f"- Python {platform.python_version()}, NumPy {np.__version__}; kernel threads "
            f"{samba_ext.get_num_threads()}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
            f"- Model: `samba-10m` preset, {model.num_parameters() / 1e6:.2f}M parameters: "
            f"{cfg.n_layer} blocks ({cfg.layer_types.count('mamba')} Mamba + "
            f"{cfg.layer_types.count('swa')} SWA), d_model {cfg.d_model}, {cfg.n_head} heads x "
            f"{cfg.head_dim}, SwiGLU {cfg.intermediate_size}, window {cfg.window}, d_state "
            f"{cfg.d_state}, vocab {cfg.vocab_size}; float32, batch 1",
            f"- Prefill: `model.prefill(tokens, state, chunk_size={CHUNK})` (state carried across "
            f"chunks); decode: {DECODE_TOKENS} `model.step` calls after each prefill, in "
            f"{DECODE_ROUNDS} rounds interleaved across the contexts (median round)", ""]
    out += ["## Reference: NumPy matmul in the same run", "",
            f"- 2048 x 2048 x 2048 float32 `np.matmul`, 7 calls before each prefill and 7 after "
            f"the last ({len(mms)} calls): median **{mm / 1e9:.1f} GFLOP/s** (the denominator "
            f"of the ratios below), best {max(mms) / 1e9:.1f}, worst {min(mms) / 1e9:.1f}. The "
            "median, not the best, is used because the prefills themselves run through whatever "
            "load the machine has; on an idle machine the two agree.",
            f"- the model's own GEMM shapes at chunk {CHUNK} (in/x/dt/out proj, QKV, proj, "
            f"SwiGLU): {mg / 1e9:.1f} GFLOP/s", ""]
    out += ["## Results", "",
            "| tokens | prefill s (CPU s) | prefill tok/s | counted GFLOP | achieved GFLOP/s | "
            "ratio to matmul | decode tok/s | state bytes |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        tot = sum(r["flops"].values())
        out.append(f"| {r['L']:,} | {r['prefill_s']:.2f} ({r['prefill_cpu']:.2f}) | "
                   f"{r['prefill_tps']:,.0f} | "
                   f"{tot / 1e9:,.1f} | {r['achieved'] / 1e9:.1f} | {r['achieved'] / mm:.2f} | "
                   f"{r['decode_tps']:.1f} | {r['state_bytes']:,} |")
    out += ["", "Counted flops per prefill (GFLOP): " + "; ".join(
        f"{r['L']:,}: " + ", ".join(f"{k} {v / 1e9:,.1f}" for k, v in r["flops"].items())
        for r in rows), ""]
    out += ["FLOP formula (per token, batch 1): GEMM = 2 x (multiply-adds of all weight matrices) "
            f"= {g / 1e6:.2f} MFLOP (+ 2 x vocab x d_model for the last-position logits of each "
            "chunk); attention = 4 x n_keys x n_head x head_dim per SWA block with n_keys = "
            "min(position + 1, window); scan = 7 x d_inner x d_state (+ 2 x d_conv x d_inner conv) "
            "per Mamba block. Norms, RoPE, SwiGLU activation and copies are not counted.", ""]
    verdicts = []
    big = [r for r in rows if r["L"] == 131072]
    if big:
        ratio = big[0]["achieved"] / mm
        verdicts.append(f"- Prefill at 128K tokens reaches {ratio:.2f} of the matmul rate "
                        f"(target >= 0.5): **{'PASS' if ratio >= 0.5 else 'FAIL'}**")
    small = [r for r in rows if r["L"] == 4096]
    if big and small:
        d = big[0]["decode_tps"] / small[0]["decode_tps"]
        verdicts.append(f"- Decode at 128K context runs at {d:.2f} x the 4K rate (target: no drop "
                        f"beyond 10%, i.e. >= 0.90): **{'PASS' if d >= 0.9 else 'FAIL'}**")
    if verdicts:
        out += ["## Targets", ""] + verdicts + [""]
    if compare:
        out += ["## OpenMP wait policy", "",
                f"Same model, OMP_WAIT_POLICY unset (the OpenMP default) in a subprocess: prefill "
                f"of 8K tokens after 4K {compare[0]:,.0f} tok/s, decode {compare[1]:.1f} tok/s "
                "(compare with the PASSIVE rows above).", ""]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="4K and 32K only")
    ap.add_argument("--policy-compare", action="store_true",
                    help="also time decode with the default OpenMP wait policy")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cpu_model.md"))
    a = ap.parse_args()
    lengths = [4096, 32768] if a.quick else [4096, 32768, 131072]
    text = run(lengths, a.policy_compare)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
