"""Host time of one samba_ext GPU call: how long the Python and C wrappers take to check the
arguments, import the tensors, allocate and launch, on inputs so small that the device work
is negligible (so the host, not the GPU, sets the pace).

Usage (on a machine with a CUDA GPU, torch installed, samba_ext built with CUDA):
    python3 benchmarks/gpu_host_overhead.py [--calls N] [--out DIR] [--profile] [--real]

Cases: grad.attention_fwd and grad.attention_bwd (bf16 torch tensors, batch 1, L 128, 32 query
/ 4 kv heads of 64, window 64), attention_bwd on the same values as samba_ext's own DeviceArrays
(no torch tensor to read, no torch stream to ask for), the samba_ext.torch custom op of the
attention backward (torch's dispatcher, then attention_bwd, then its three results wrapped as
tensors), and for comparison an empty torch op (x.add_(0)). For each, the median over 5 rounds
of (wall time of N back-to-back calls) / N, with the device synchronised before and after each
round; the GPU is idle most of that time, so the figure is the host's cost per call. The op is
timed twice: as it is (samba_ext.torch's tensors(): one stream lookup per op, exports without a
stream wait), and with its results wrapped by plain torch.from_dlpack (one stream lookup and
export per tensor); two more cases time that wrapping alone for attention_bwd's three results,
both ways. --profile adds cProfile's top entries (by own time) for attention_bwd and for the
torch op, which
separates the Python layers from the C call (one entry, the extension's function), and the CUDA
runtime calls made inside that C call with their host times (torch.profiler's CPU activity, which
records the runtime API through CUPTI: cudaLaunchKernel, cudaMallocAsync, cudaMemsetAsync, ...).
--real adds the attention backward at a real size (SWA, L 4096, window 2048, 32 / 4 heads x
64: the first case of gpu_backward_attention.py) for samba_ext and FlexAttention: per call, the
host's enqueue time (wall time until the call returns, the queue empty before it), the
CUDA-event time of the call, and the device time of its kernels (torch.profiler); the event
time minus the kernels is how long the device waited inside the timed span.
Writes DIR/gpu_host_overhead.md (default: print only).
"""
from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import os
import pstats
import re
import statistics
import sys
import time
from typing import Any, Callable

import torch

from gpu_bench_util import (command_line, git_commit, kernel_us, median_ms, profile_calls,
                            write_atomic)

from samba_ext import cuda as samba_cuda
from samba_ext import grad
from samba_ext.torch import _ops
from samba_ext.torch._device import tensors as wrap
from samba_ext.torch._ops import attention_backward_op


def with_from_dlpack(fn: Callable[[], Any]) -> Any:
    """fn() with samba_ext.torch's ops wrapping their results by plain torch.from_dlpack (each
    tensor asks torch for its current stream and is exported for it), for comparison with
    samba_ext.torch's own tensors()."""
    saved = _ops.tensors
    _ops.tensors = lambda arrays, device: tuple(
        torch.empty(0, device=device) if a is None else torch.from_dlpack(a) for a in arrays)
    try:
        return fn()
    finally:
        _ops.tensors = saved


def host_us(fn: Callable[[], Any], calls: int) -> float:
    """Median over 5 rounds of the wall-clock microseconds per call of `calls` calls."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        rounds.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(rounds)


def enqueue_us(fn: Callable[[], Any], calls: int) -> float:
    """Median wall-clock microseconds until fn() returns, the device idle and its queue empty
    before each call: the host's part of a call timed alone."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(calls):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e6)
    torch.cuda.synchronize()
    return statistics.median(times)


def real_size_rows(calls: int) -> list[str]:
    """The --real table: samba_ext's and FlexAttention's attention backward at SWA 4K."""
    from gpu_backward_attention import flex_backward

    g = torch.Generator(device="cuda").manual_seed(1)
    L, H, Hkv, hd, W = 4096, 32, 4, 64, 2048
    q, do = (torch.randn(1, L, H, hd, device="cuda", dtype=torch.bfloat16, generator=g)
             for _ in range(2))
    k, v = (torch.randn(1, L, Hkv, hd, device="cuda", dtype=torch.bfloat16, generator=g)
            for _ in range(2))
    ws = (W - 1, 0)
    out, lse = grad.attention_fwd(q, k, v, None, True, ws)
    fns = {"samba_ext grad.attention_bwd": lambda: grad.attention_bwd(
        q, k, v, None, True, ws, dout=do, out=out, lse=lse)}
    try:
        run, _, _ = flex_backward(q, k, v, do, L, W, True)
        fns["FlexAttention backward (autograd.grad)"] = run
    except Exception as e:  # noqa: BLE001 - no FlexAttention here: samba_ext alone
        print(f"FlexAttention unavailable: {type(e).__name__}: {e}", file=sys.stderr)
    rows = ["", f"Real size: bf16, SWA L {L} W {W}, {H} / {Hkv} heads x {hd}, backward from "
            "saved out / lse (median of the calls):", "",
            "| call | host enqueue us | event-timed us | kernels us | device waits us |",
            "|---|---|---|---|---|"]
    for name, fn in fns.items():
        enq = enqueue_us(fn, calls)
        ev = median_ms(fn, reps=calls) * 1e3
        ker = kernel_us(fn)["(all kernels)"]
        rows.append(f"| {name} | {enq:.1f} | {ev:.1f} | {ker:.1f} | {ev - ker:.1f} |")
    return rows


def runtime_calls(fn: Callable[[], Any], calls: int) -> list[tuple[str, float, float]]:
    """(CUDA runtime function, calls, host microseconds) per fn() call, largest first."""
    prof = profile_calls(fn, calls, warmup=1, host=True)
    agg: dict[str, list[float]] = {}
    for ev in prof.events():
        if str(getattr(ev, "device_type", "")) != "DeviceType.CPU" or not ev.name.startswith("cu"):
            continue
        a = agg.setdefault(ev.name, [0.0, 0.0])
        a[0] += 1.0 / calls
        a[1] += ev.cpu_time_total / calls
    return sorted(((n, c, t) for n, (c, t) in agg.items()), key=lambda r: -r[2])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--out", help="folder for gpu_host_overhead.md")
    ap.add_argument("--profile", action="store_true", help="cProfile attention_bwd")
    ap.add_argument("--real", action="store_true", help="add the real-size backward table")
    ap.add_argument("--commit", default=os.environ.get("GIT_COMMIT"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    g = torch.Generator(device="cuda").manual_seed(0)
    L, H, Hkv, hd = 128, 32, 4, 64

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device="cuda", dtype=torch.bfloat16, generator=g)
    q, k, v, do = rnd(1, L, H, hd), rnd(1, L, Hkv, hd), rnd(1, L, Hkv, hd), rnd(1, L, H, hd)
    ws = (63, 0)
    out, lse = grad.attention_fwd(q, k, v, None, True, ws)
    # the same values as samba_ext DeviceArrays (no torch tensor to read, no torch stream)
    dq_, dk_, dv_, ddo = (samba_cuda.to_device(t.float().cpu().numpy(), "bfloat16")
                          for t in (q, k, v, do))
    dout_, dlse = grad.attention_fwd(dq_, dk_, dv_, None, True, ws)
    tout, tlse = torch.from_dlpack(out), torch.from_dlpack(lse)
    x = torch.zeros(16, device="cuda")
    res = grad.attention_bwd(q, k, v, None, True, ws, dout=do, out=out, lse=lse)
    dev = q.device
    cases = {
        "torch x.add_(0) (reference)": lambda: x.add_(0),
        "grad.attention_fwd": lambda: grad.attention_fwd(q, k, v, None, True, ws),
        "grad.attention_bwd": lambda: grad.attention_bwd(q, k, v, None, True, ws, dout=do,
                                                         out=out, lse=lse),
        "grad.attention_bwd (DeviceArray inputs)": lambda: grad.attention_bwd(
            dq_, dk_, dv_, None, True, ws, dout=ddo, out=dout_, lse=dlse),
        "samba_ext.torch op attention_backward": lambda: attention_backward_op(
            q, k, v, tout, tlse, do, hd ** -0.5, ws[0], ws[1], 0.0),
        "the same op, results wrapped by torch.from_dlpack": lambda: with_from_dlpack(
            lambda: attention_backward_op(q, k, v, tout, tlse, do, hd ** -0.5, ws[0], ws[1],
                                          0.0)),
        # the op's pieces besides attention_bwd: wrapping its three results as tensors
        "3 x torch.from_dlpack(DeviceArray)": lambda: [torch.from_dlpack(a) for a in res],
        "samba_ext.torch tensors() of 3 DeviceArrays": lambda: wrap(res, dev),
    }
    lines = ["# Host time per samba_ext GPU call", "",
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M:%SZ}, commit "
             f"{git_commit(args.commit)}, {torch.cuda.get_device_name()}, torch {torch.__version__}, "
             f"command `{command_line('gpu_host_overhead.py', sys.argv[1:])}`.", "",
             f"bf16, batch 1, L {L}, {H} / {Hkv} heads x {hd}, window 64: the device work is a few "
             "microseconds, so this is the host's cost per call (median of 5 rounds of "
             f"{args.calls} calls).", "", "| call | host us per call |", "|---|---|"]
    for name, fn in cases.items():
        lines.append(f"| {name} | {host_us(fn, args.calls):.1f} |")
    if args.profile:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
        for case, top in (("grad.attention_bwd", 25), ("samba_ext.torch op attention_backward", 40)):
            pr = cProfile.Profile()
            fn = cases[case]
            pr.enable()
            for _ in range(args.calls):
                fn()
            pr.disable()
            torch.cuda.synchronize()
            s = io.StringIO()
            pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(top)
            lines += ["", f"cProfile of {args.calls} calls of {case} (own time):", "", "```",
                      *[re.sub(r"\S*site-packages/", "", ln.rstrip().replace(root, ""))
                        for ln in s.getvalue().splitlines() if ln.strip()][:top + 20], "```"]
        fn = cases["grad.attention_bwd"]
        lines += ["", "CUDA runtime calls per attention_bwd call (torch.profiler, host us):", "",
                  "| runtime call | calls per call | host us per call |", "|---|---|---|",
                  *[f"| `{n}` | {c:.1f} | {t:.1f} |" for n, c, t in runtime_calls(fn, 20)]]
    if args.real:
        lines += real_size_rows(min(args.calls, 50))
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        write_atomic(os.path.join(args.out, "gpu_host_overhead.md"), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
