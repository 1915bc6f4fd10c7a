"""rms_norm (+ residual), swiglu and apply_rotary at samba-1.7b's exact shapes, dtypes and
strides, against torch's composition of the same operations and against copy bandwidth.

Cases (d_model 2048, intermediate 8196 and the padded 8256, 32 q + 4 kv heads of 64,
bfloat16 activations, float32 residual stream):

* rms_norm: bf16 x + float32 residual -> float32 sum, bf16 y (every layer's call);
  float32 x -> bf16 y (the first layer's); at 16384 rows (a prefill chunk), 16 and 1 rows
  (decode).
* swiglu: 16384 x 8196 as two contiguous arrays (the prefill GEMMs) and as the two halves of
  one (rows, 2 x 8196) GEMM output (row stride 16392: rows only 8-byte aligned), the same
  at the padded width 8256; 16 and 1 rows as halves (decode).
* apply_rotary: q (1, 16384, 32, 64) and k (1, 16384, 4, 64) bf16; decode: the q and k
  heads (36 of 64) as a view of the (B, 1, 40 x 64) qkv GEMM output, B = 1 and 16.
* causal_conv1d + SiLU (Mamba, width 4) on the channel-major half of the in_proj output,
  16384 tokens, with initial and final states.

Times are device (kernel) time per call from the torch profiler (CUPTI), so the Python call
overhead does not count and decode shapes show the kernels' own latency; the torch column is
the summed kernels of its composition. frac_copy_bw: the minimal bytes (each input read once,
each output written once) over the kernel time, as a fraction of a 2 GiB device-to-device
copy's bandwidth (bytes read + written). Outputs are compared with torch's (rel_diff, a
relative Frobenius norm; bf16 outputs differ by rounding, ~1e-3).

Usage (GPU machine, repository root, extension built, torch installed; ~30 s on an H200):
    python benchmarks/gpu_elementwise.py [--out benchmarks/results/gpu_elementwise]
writes <out>.json and <out>.md (atomically).
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from gpu_bench_util import copy_bandwidth_Bps, device_ms, rel
from samba_ext import kernels as K
from samba_ext.atomic import write_text_atomic

D, FF, FP, H, G, HD = 2048, 8196, 8256, 32, 4, 64
BF, F32 = torch.bfloat16, torch.float32


def t(x):
    return torch.from_dlpack(x) if not isinstance(x, torch.Tensor) else x


def rms_cases(add, gen):
    w = torch.rand(D, device="cuda", generator=gen).add_(0.5)
    for rows in (16384, 16, 1):
        x = torch.randn(rows, D, device="cuda", generator=gen).to(BF)
        res = torch.randn(rows, D, device="cuda", generator=gen)

        def ours():
            return K.rms_norm(x, w, 1e-5, res)

        def theirs():
            h = x.float() + res
            return F.rms_norm(h, (D,), w, 1e-5).to(BF), h

        add(f"rms_norm bf16 x + f32 residual, {rows}x{D}", "rms_norm", ours, theirs,
            rows * D * (2 + 4 + 4 + 2), rel(t(ours()[0]), theirs()[0]))
        out = torch.empty(rows, D, device="cuda", dtype=BF)

        def ours_plain():
            return K.rms_norm(res, w, 1e-5, out=out)

        def theirs_plain():
            return F.rms_norm(res, (D,), w, 1e-5).to(BF)

        add(f"rms_norm f32 x -> bf16 y, {rows}x{D}", "rms_norm", ours_plain, theirs_plain,
            rows * D * (4 + 2), rel(t(ours_plain()), theirs_plain()))


def swiglu_cases(add, gen):
    for rows, width, layout in [(16384, FF, "separate"), (16384, FF, "halves"),
                                (16384, FP, "separate"), (16384, FP, "halves"),
                                (16, FF, "halves"), (1, FF, "halves"), (1, FP, "halves")]:
        if layout == "separate":
            gate = torch.randn(rows, width, device="cuda", generator=gen).to(BF)
            up = torch.randn(rows, width, device="cuda", generator=gen).to(BF)
        else:
            gu = torch.randn(rows, 2 * width, device="cuda", generator=gen).to(BF)
            gate, up = gu[:, :width], gu[:, width:]

        def ours(gate=gate, up=up):
            return K.swiglu(gate, up)

        def theirs(gate=gate, up=up):
            return F.silu(gate) * up

        add(f"swiglu {rows}x{width} {layout}", "swiglu", ours, theirs, rows * width * 3 * 2,
            rel(t(ours()), theirs()))
        del gate, up
        if layout == "halves":
            del gu
        torch.cuda.empty_cache()


def rope_torch(x, p0, base=10000.0):
    """NeoX half-split rotary in torch (float32 math, angles in float64)."""
    L, hd = x.shape[1], x.shape[-1]
    half = hd // 2
    inv = torch.exp(-(2.0 * torch.arange(half, device="cuda", dtype=torch.float64) / hd)
                    * torch.log(torch.tensor(base, dtype=torch.float64)))
    ang = (torch.arange(L, device="cuda", dtype=torch.float64) + p0)[:, None] * inv
    c, s = ang.cos().float()[None, :, None, :], ang.sin().float()[None, :, None, :]
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], -1).to(x.dtype)


def rotary_cases(add, gen):
    for name, heads in (("q", H), ("k", G)):
        x = torch.randn(1, 16384, heads, HD, device="cuda", generator=gen).to(BF)
        add(f"apply_rotary {name} 1x16384x{heads}x{HD}", "apply_rotary",
            lambda x=x: K.apply_rotary(x, 4096, 10000.0), lambda x=x: rope_torch(x, 4096),
            x.numel() * 2 * 2, rel(t(K.apply_rotary(x, 4096, 10000.0)), rope_torch(x, 4096)))
    for B in (1, 16):
        qkv = torch.randn(B, 1, (H + 2 * G) * HD, device="cuda", generator=gen).to(BF)
        qk = qkv[:, :, : (H + G) * HD].view(B, 1, H + G, HD)
        pos = torch.full((B, 1), 5000, device="cuda", dtype=torch.int64)
        add(f"apply_rotary decode qk {B}x1x{H + G}x{HD} (qkv view)", "apply_rotary",
            lambda qk=qk, pos=pos: K.apply_rotary(qk, pos, 10000.0),
            lambda qk=qk: rope_torch(qk, 5000), qk.numel() * 2 * 2,
            rel(t(K.apply_rotary(qk, pos, 10000.0)), rope_torch(qk, 5000)))


def conv_cases(add, gen):
    """The Mamba conv + SiLU: x the first half (d_inner 4096 channels) of the channel-major
    (1, 8192, 16384) in_proj output, width 4, float32 weight / bias / states."""
    E, L, W = 4096, 16384, 4
    xz = torch.randn(1, 2 * E, L, device="cuda", generator=gen).to(BF)
    x = xz[:, :E]
    w = torch.randn(E, W, device="cuda", generator=gen) * 0.3
    b = torch.randn(E, device="cuda", generator=gen) * 0.1
    init = torch.randn(1, E, W - 1, device="cuda", generator=gen)

    def ours():
        return K.causal_conv1d(x, w, b, "silu", init, True)

    def theirs():
        xp = torch.cat([init.to(BF), x], -1)
        return F.silu(F.conv1d(xp, w[:, None, :].to(BF), b.to(BF), groups=E)), xp[..., -(W - 1):]

    add(f"causal_conv1d+silu 1x{E}x{L} (in_proj half)", "causal_conv1d", ours, theirs,
        E * L * 2 * 2, rel(t(ours()[0]), theirs()[0]))


def markdown(res: dict) -> str:
    lines = [f"# Element-wise kernels at samba-1.7b's shapes ({res['device']})", "",
             "Device time per call (torch profiler); torch = its composition's kernels; "
             f"copy bandwidth {res['copy_bandwidth_Bps'] / 1e12:.2f} TB/s (read + write). "
             "Produced by benchmarks/gpu_elementwise.py.", "",
             "| case | us | torch us | x torch | % copy bw | rel diff vs torch |",
             "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['case']} | {r['us']:.1f} | {r['torch_us']:.1f} | "
                     f"{r['x_torch']:.2f} | {100 * r['frac_copy_bw']:.0f}% | "
                     f"{r['rel_diff_vs_torch']:.1e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/gpu_elementwise")
    ap.add_argument("--only", default="rms,swiglu,rotary,conv")
    args = ap.parse_args()
    which = set(args.only.split(","))
    bw = copy_bandwidth_Bps()
    res = {"device": torch.cuda.get_device_name(0), "copy_bandwidth_Bps": bw, "rows": []}
    gen = torch.Generator(device="cuda").manual_seed(0)

    def add(case, kernel, ours, theirs, nbytes, err):
        ms, tms = device_ms(ours, calls=20), device_ms(theirs, calls=20)
        if ms is None or tms is None:
            raise SystemExit("gpu_elementwise: the torch profiler gave no device times")
        us, tus = 1e3 * ms, 1e3 * tms
        row = {"case": case, "kernel": kernel, "us": us, "torch_us": tus, "x_torch": us / tus,
               "bytes": nbytes, "frac_copy_bw": nbytes / (us * 1e-6) / bw,
               "rel_diff_vs_torch": err}
        res["rows"].append(row)
        print(f"{case:52s} {us:9.1f} us  torch {tus:9.1f} us  x{us / tus:5.2f}  "
              f"{100 * row['frac_copy_bw']:4.0f}% bw  diff {err:.1e}", flush=True)

    if "rms" in which:
        rms_cases(add, gen)
    if "swiglu" in which:
        swiglu_cases(add, gen)
    if "rotary" in which:
        rotary_cases(add, gen)
    if "conv" in which:
        conv_cases(add, gen)
    write_text_atomic(args.out + ".json", json.dumps(res, indent=1) + "\n")
    write_text_atomic(args.out + ".md", markdown(res))
    print(f"wrote {args.out}.json, {args.out}.md")


if __name__ == "__main__":
    main()
