"""Speed of the CPU selective scan vs a NumPy implementation vectorised over (dim, dstate).

Workload (the foundation issue's): batch 1, dim 3072, dstate 16, seqlen 4096, with D, z,
delta_bias and delta_softplus. Reports state updates per second (batch*dim*dstate*seqlen /
time, best of `--repeat`). Usage: python benchmarks/scan_speed.py [--threads 2] [--numpy]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import samba_ext


def numpy_scan(u, delta, A, B, C, D, z, delta_bias):
    """(dim, dstate)-vectorised NumPy scan, batch 1, float32: a Python loop over time."""
    dim, L = u.shape
    dt = delta + delta_bias[:, None]
    dt = np.where(dt <= 20, np.log1p(np.exp(np.minimum(dt, 20))), dt)
    dtT, duT = np.ascontiguousarray(dt.T), np.ascontiguousarray((dt * u).T)
    BT, CT = np.ascontiguousarray(B.T), np.ascontiguousarray(C.T)
    h = np.zeros(A.shape, np.float32)
    y = np.empty((L, dim), np.float32)
    for t in range(L):
        h = np.exp(dtT[t][:, None] * A) * h + duT[t][:, None] * BT[t][None, :]
        y[t] = h @ CT[t]
    y = y.T + D[:, None] * u
    return y * (z / (1 + np.exp(-z)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--dim", type=int, default=3072)
    ap.add_argument("--dstate", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--numpy", action="store_true", help="also time the NumPy baseline")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    b, d, n, L = args.batch, args.dim, args.dstate, args.seqlen
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    u, z, B, C = f(b, d, L), f(b, d, L), f(b, n, L), f(b, n, L)
    delta = (0.5 * f(b, d, L) - 3.0).astype(np.float32)
    A = -np.tile(np.arange(1, n + 1, dtype=np.float32), (d, 1))
    D, bias = np.ones(d, np.float32), (0.5 * f(d)).astype(np.float32)
    samba_ext.set_num_threads(args.threads)
    updates = b * d * n * L
    best, cpu = np.inf, np.inf  # wall-clock and process CPU time (all threads), best of N
    for _ in range(args.repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        samba_ext.selective_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True)
        best = min(best, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    print(f"samba_ext  threads={args.threads} batch={b} dim={d} dstate={n} seqlen={L}: "
          f"wall {best * 1e3:.1f} ms = {updates / best / 1e9:.2f} G state-updates/s; "
          f"cpu {cpu * 1e3:.1f} ms = {updates / cpu / 1e9:.2f} G per cpu-second")
    if args.numpy:
        nb, ncpu = np.inf, np.inf
        for _ in range(2):
            c0, t0 = time.process_time(), time.perf_counter()
            numpy_scan(u[0], delta[0], A, B[0], C[0], D, z[0], bias)
            nb = min(nb, time.perf_counter() - t0)
            ncpu = min(ncpu, time.process_time() - c0)
        print(f"numpy      (dim, dstate) vectorised, batch 1: wall {nb * 1e3:.0f} ms = "
              f"{d * n * L / nb / 1e9:.3f} G state-updates/s; cpu {ncpu * 1e3:.0f} ms; "
              f"wall ratio {nb * b / best:.1f}x")


if __name__ == "__main__":
    main()
