"""GPU microbenchmarks of the model's kernels against their floors and against PyTorch.

* selective_scan (bf16 u/delta/z/B/C, float32 A/D/delta_bias, softplus, gate z, d_state 16)
  against the exp-unit floor: batch*dim*seqlen*dstate exponentials at 16 per clock per
  multiprocessor (the MUFU rate of sm_90) at the card's maximum SM clock. Each variant of
  the kernel (``SAMBA_EXT_SCAN_VARIANT``: split = 4 threads per channel, 8 steps per group;
  tile = blocks of channels walking 32-step tiles with B / C and softplus(delta) in shared
  memory, ``SAMBA_EXT_SCAN_LANES`` 4 or 8 threads per channel; tile2 = tile with 4 threads per
  channel and less shared-memory traffic, ``SAMBA_EXT_SCAN_CHUNKS`` N chunks over the sequence
  (1: none; unset: the library's choice by channel count); warp / warp8 = one warp per
  channel, parallel over the sequence in chunks of 512 / 256 steps; unset = the library's choice)
  is timed at the issue's five shapes and the model's 16384-token prefill chunk, as a whole
  call and as device time, and its output compared with the library's choice.
  ``SCAN_VARIANTS=default`` times the library's choice only.
* rms_norm with the residual add, swiglu and causal_conv1d + SiLU against torch's
  composition of the same operations, and against the copy bandwidth (bytes read + written
  by a large device-to-device copy): the minimal bytes (each input read once, each output
  written once) over the time.

Times: CUDA events on torch's current stream, median of ``--reps`` after warm-up (a whole
call, host overhead included); for the element-wise kernels also the device time of the
kernels alone (torch profiler), which the bandwidth fraction uses.
Usage: python benchmarks/gpu_kernels.py [--out results.json] [--only scan,rms,swiglu,conv]
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess

import torch

from gpu_bench_util import copy_bandwidth_Bps, device_ms, median_ms, rel
import torch.nn.functional as F

from samba_ext import kernels as K


def bench(fn, reps: int = 10, warmup: int = 3) -> float:
    """Median milliseconds of fn() (CUDA events)."""
    return median_ms(fn, warmup=warmup, reps=reps)


def max_sm_clock_hz() -> float:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=clocks.max.sm",
                              "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=30, check=False).stdout.split()[0]
        return float(out) * 1e6
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return 1.98e9  # H200 SXM maximum SM clock


def scan_cases(reps: int) -> list[dict]:
    props = torch.cuda.get_device_properties(0)
    rate = props.multi_processor_count * 16 * max_sm_clock_hz()  # exponentials per second
    rows = []
    g = torch.Generator(device="cuda").manual_seed(0)
    # the five shapes, then the model's prefill chunk (16384 tokens of samba-1.7b)
    for (b, d, L) in [(1, 4096, 32768), (8, 4096, 4096), (8, 4096, 32768),
                      (1, 6144, 131072), (8, 6144, 131072), (1, 4096, 16384)]:
        N = 16
        bf = torch.bfloat16
        r = lambda *s, dt=bf: torch.randn(*s, device="cuda", generator=g,
                                          dtype=dt)
        u, z = r(b, d, L), r(b, d, L)
        delta = r(b, d, L).mul_(0.5).sub_(3.0)
        Bm, Cm = r(b, N, L), r(b, N, L)
        A = -torch.exp(0.5 * r(d, N, dt=torch.float32))
        D, bias = r(d, dt=torch.float32), 0.5 * r(d, dt=torch.float32)
        part = (slice(0, 1), slice(None), slice(0, 4096))  # compared part of y (memory)
        floor_ms = b * d * L * N / rate * 1e3

        run = functools.partial(K.selective_scan, u, delta, A, Bm, Cm, D, z, bias, True)

        ref = None
        # (SAMBA_EXT_SCAN_VARIANT, _LANES, _CHUNKS); "" = unset (the library's choice); the
        # first row is the reference of the diff column
        variants = [("", "", ""), ("split", "4", "1"), ("tile", "4", "1"), ("tile", "8", "1"),
                    ("tile2", "4", "1"), ("tile2", "4", "2"), ("tile2", "4", "3"),
                    ("tile2", "4", "4"), ("tile2", "4", "6"), ("tile2", "4", "8"),
                    ("warp", "", "1"), ("warp8", "", "1")]
        if os.environ.get("SCAN_VARIANTS") == "default":  # the library's choice only
            variants = variants[:1]
        for kind, lanes, chunks in variants:
            for var, val in (("SAMBA_EXT_SCAN_VARIANT", kind), ("SAMBA_EXT_SCAN_LANES", lanes),
                             ("SAMBA_EXT_SCAN_CHUNKS", chunks)):
                if val:
                    os.environ[var] = val
                else:
                    os.environ.pop(var, None)
            y = torch.from_dlpack(run())[part].float()
            if ref is None:
                ref = y
            err = rel(y, ref)
            big = b * d * L > 2**31
            ms = bench(run, reps=3 if big else reps, warmup=1 if big else 3)
            kms = device_ms(run, calls=2 if big else 10)  # device time: no host overhead
            rows.append({"kernel": "selective_scan", "batch": b, "dim": d, "seqlen": L,
                         "dstate": N, "variant": kind or "default", "lanes": lanes or "default",
                         "chunks": chunks or "default", "ms": ms, "kernel_ms": kms,
                         "floor_ms": floor_ms, "x_floor": ms / floor_ms,
                         "x_floor_kernel": kms / floor_ms if kms else None,
                         "rel_diff_vs_default": err})
            del y
        for var in ("SAMBA_EXT_SCAN_VARIANT", "SAMBA_EXT_SCAN_LANES", "SAMBA_EXT_SCAN_CHUNKS"):
            os.environ.pop(var, None)
        del u, z, delta, Bm, Cm, ref
        torch.cuda.empty_cache()
    return rows


def elementwise_cases(bw: float, which: set, reps: int) -> list[dict]:
    rows = []
    bf = torch.bfloat16
    g = torch.Generator(device="cuda").manual_seed(1)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g).to(bf)

    def add(name, ours, theirs, nbytes, err):
        t_o, t_t = bench(ours, reps), bench(theirs, reps)
        k_o, k_t = device_ms(ours), device_ms(theirs)
        kt = k_o if k_o else t_o
        rows.append({"kernel": name, "ms": t_o, "torch_ms": t_t, "x_torch": t_o / t_t,
                     "kernel_ms": k_o, "torch_kernel_ms": k_t,
                     "x_torch_kernel": (k_o / k_t) if (k_o and k_t) else None,
                     "bytes": nbytes, "frac_copy_bw": nbytes / (kt * 1e-3) / bw,
                     "rel_diff_vs_torch": err})

    if "rms" in which:
        M, H = 32768, 2048
        x, res, w = r(M, H), r(M, H), r(H)

        def ours():
            return K.rms_norm(x, w, 1e-5, res)

        def theirs():
            h = x + res
            return F.rms_norm(h, (H,), w, 1e-5), h

        y, _ = ours()
        add("rms_norm+residual 32768x2048", ours, theirs, 4 * M * H * 2,
            rel(torch.from_dlpack(y), theirs()[0]))
    if "swiglu" in which:
        M, H = 32768, 8192
        gt, up = r(M, H), r(M, H)
        add("swiglu 32768x8192", lambda: K.swiglu(gt, up), lambda: F.silu(gt) * up,
            3 * M * H * 2, rel(torch.from_dlpack(K.swiglu(gt, up)), F.silu(gt) * up))
    if "conv" in which:
        b, d, L, W = 8, 4096, 4096, 4
        x, w, bias = r(b, d, L), r(d, W), r(d)

        def theirs():
            return F.silu(F.conv1d(x, w[:, None, :], bias, padding=W - 1, groups=d)[..., :L])

        def ours():
            return K.causal_conv1d(x, w, bias, "silu")

        add("causal_conv1d+silu 8x4096x4096", ours, theirs, 2 * b * d * L * 2,
            rel(torch.from_dlpack(ours()), theirs()))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", default="scan,rms,swiglu,conv")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    which = set(args.only.split(","))
    bw = copy_bandwidth_Bps()
    res = {"device": torch.cuda.get_device_name(0), "copy_bandwidth_Bps": bw,
           "max_sm_clock_hz": max_sm_clock_hz(), "rows": []}
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s (read + write)")
    if "scan" in which:
        res["rows"] += scan_cases(args.reps)
    res["rows"] += elementwise_cases(bw, which, args.reps)
    for row in res["rows"]:
        if row["kernel"] == "selective_scan":
            km = row["kernel_ms"]
            kern = f"kernel {km:8.3f} ms = {row['x_floor_kernel']:5.2f}x floor" if km else \
                "kernel time unavailable"
            print(f"scan b{row['batch']} d{row['dim']} L{row['seqlen']} {row['variant']:>7} "
                  f"lanes {row['lanes']:>7} chunks {row['chunks']:>7}: call {row['ms']:8.3f} ms "
                  f"({row['x_floor']:5.2f}x), {kern}, floor {row['floor_ms']:7.3f} ms, "
                  f"diff {row['rel_diff_vs_default']:.1e}")
        else:
            ko, kt = row["kernel_ms"], row["torch_kernel_ms"]
            kern = (f"kernels {ko:.3f} vs {kt:.3f} ms ({row['x_torch_kernel']:.2f}x)"
                    if ko and kt else "kernel times unavailable")
            print(f"{row['kernel']:32s}: call {row['ms']:7.3f} ms vs torch {row['torch_ms']:7.3f} "
                  f"ms ({row['x_torch']:.2f}x); {kern}; {100 * row['frac_copy_bw']:.0f}% of copy "
                  f"bw; diff {row['rel_diff_vs_torch']:.1e}")
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=1)
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
