"""ALiBi attention on the GPU: samba_ext.torch.flash_attn_func with and without alibi_slopes
against FlexAttention with an ALiBi score_mod, forward and backward, on the same tensors in
one run.

Usage (a machine with a CUDA GPU, torch installed, samba_ext built with CUDA):
    python3 benchmarks/gpu_attention_alibi.py [--out DIR] [--no-flex] [--no-alibi] [--reps N]
        [--tag NAME] [--commit SHA]

Cases: bfloat16, batch 1, 32 query heads, 4 kv heads, head dim 64 with a sliding window of
2048 at L = 4K and full causal at 4K; 12 heads of dim 128 (no GQA), window 2048, L = 4K.
Slopes: the ALiBi paper's geometric 2^(-8 (h + 1) / H). Timed, median of CUDA-event timings
in interleaved rounds (each sample 5 calls queued back to back): the forward (under
torch.no_grad) and the backward (torch.autograd.grad of one kept forward, retain_graph) of
samba_ext without ALiBi, samba_ext with ALiBi and FlexAttention with ALiBi (score_mod
``score - slope[h] |q - k|``, the window as a block mask, torch.compile'd). Every ALiBi case
also compares samba_ext's out, dq, dk, dv with FlexAttention's (relative Frobenius norm), so a
fast wrong kernel cannot pass unnoticed.
--no-alibi: samba_ext without ALiBi only (for an A/B against a build without ALiBi support);
--no-flex: no FlexAttention (compile time).
Writes DIR/gpu_attention_alibi{TAG}.md and .json (default DIR benchmarks/results) with the
date, commit, device and command.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from typing import Any, Callable

import torch

from gpu_bench_util import command_line, git_commit, median_ms_rounds, write_atomic

CASES = [
    # name, L, H, Hkv, hd, window (None = full causal)
    ("SWA 4K d64", 4096, 32, 4, 64, 2048),
    ("causal 4K d64", 4096, 32, 4, 64, None),
    ("SWA 4K d128", 4096, 12, 12, 128, 2048),
]


def rel(x: Any, ref: Any) -> float:
    x, ref = x.detach().float(), ref.detach().float()
    return float((x - ref).norm() / ref.norm().clamp_min(1e-30))


def slopes_of(H: int) -> torch.Tensor:
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / H) for h in range(H)], device="cuda")


def samba(q, k, v, do, W, alibi) -> tuple[Callable, Callable, Any, Callable]:
    """(forward, backward, out, grads) of samba_ext.torch.flash_attn_func."""
    import samba_ext.torch as st

    ws = (-1, -1) if W is None else (W - 1, 0)
    qt, kt, vt = (x.detach().requires_grad_() for x in (q, k, v))

    def fwd():
        with torch.no_grad():
            return st.flash_attn_func(q, k, v, causal=True, window_size=ws, alibi_slopes=alibi)
    out = st.flash_attn_func(qt, kt, vt, causal=True, window_size=ws, alibi_slopes=alibi)

    def bwd():
        return torch.autograd.grad(out, (qt, kt, vt), do, retain_graph=True)
    return fwd, bwd, out, bwd


def flex(q, k, v, do, W, alibi) -> tuple[Callable, Callable, Any, Callable]:
    """The same with FlexAttention (layout (B, H, L, hd))."""
    import torch._functorch.config as functorch_config
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    functorch_config.donated_buffer = False  # the timed backward reruns one kept graph
    L = q.shape[1]

    def mask(b, h, qi, ki):
        m = qi >= ki
        if W is not None:
            m = m & (qi - ki < W)
        return m

    def score_mod(score, b, h, qi, ki):
        return score - alibi[h] * (qi - ki).abs()

    bm = torch.compile(create_block_mask)(mask, None, None, L, L, device="cuda")
    fa = torch.compile(flex_attention, dynamic=False)
    gqa = q.shape[2] != k.shape[2]
    qt, kt, vt = (x.detach().transpose(1, 2).requires_grad_() for x in (q, k, v))

    def fwd():
        with torch.no_grad():
            return fa(qt, kt, vt, score_mod=score_mod, block_mask=bm, enable_gqa=gqa)
    out = fa(qt, kt, vt, score_mod=score_mod, block_mask=bm, enable_gqa=gqa)
    dot = do.transpose(1, 2)

    def bwd():
        return torch.autograd.grad(out, (qt, kt, vt), dot, retain_graph=True)

    def grads():
        return [g.transpose(1, 2) for g in bwd()]
    return fwd, bwd, out.transpose(1, 2), grads


def run_case(name, L, H, Hkv, hd, W, use_alibi, use_flex, reps) -> dict:
    gen = torch.Generator(device="cuda").manual_seed(0)

    def r(*s):
        return torch.randn(*s, device="cuda", dtype=torch.bfloat16, generator=gen)
    q, k, v, do = r(1, L, H, hd), r(1, L, Hkv, hd), r(1, L, Hkv, hd), r(1, L, H, hd)
    al = slopes_of(H)
    impls = {"samba_ext": samba(q, k, v, do, W, None)}
    if use_alibi:
        impls["samba_ext alibi"] = samba(q, k, v, do, W, al)
        if use_flex:
            impls["flex alibi"] = flex(q, k, v, do, W, al)
    row: dict = {"case": name, "L": L, "H": H, "Hkv": Hkv, "hd": hd, "window": W}
    for part, i in (("fwd", 0), ("bwd", 1)):
        t = median_ms_rounds({n: f[i] for n, f in impls.items()}, warmup=3, reps=reps, calls=5)
        for n, ms in t.items():
            row[f"{n} {part} ms"] = ms
    if "flex alibi" in impls:
        s, f = impls["samba_ext alibi"], impls["flex alibi"]
        row["rel out"] = rel(s[2], f[2])
        for g, name_ in zip(zip(s[3](), f[3]()), ("dq", "dk", "dv")):
            row[f"rel {name_}"] = rel(*g)
    return row


def render(res: dict) -> str:
    cols = [c for c in res["rows"][0] if c.endswith(" ms") or c.startswith("rel ")]
    lines = ["# ALiBi attention on the GPU: samba_ext and FlexAttention", "",
             "Produced by `benchmarks/gpu_attention_alibi.py` (its docstring has the method).", "",
             f"- date: {res['date']}", f"- commit: {res['commit']}", f"- device: {res['device']}",
             f"- torch: {res['torch']}", f"- command: `{res['command']}`", "",
             "| case | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for r in res["rows"]:
        lines.append(f"| {r['case']} | " + " | ".join(
            f"{r[c]:.3f}" if c.endswith(" ms") else f"{r[c]:.1e}" for c in cols) + " |")
    for r in res["rows"]:
        if "flex alibi fwd ms" in r:
            lines.append("")
            break
    for r in res["rows"]:
        parts = []
        for p in ("fwd", "bwd"):
            if f"flex alibi {p} ms" in r:
                parts.append(f"{p} {r[f'samba_ext alibi {p} ms'] / r[f'flex alibi {p} ms']:.2f}x "
                             f"FlexAttention, {r[f'samba_ext alibi {p} ms'] / r[f'samba_ext {p} ms']:.2f}x "
                             "samba_ext without ALiBi")
        if parts:
            lines.append(f"- {r['case']}: samba_ext with ALiBi takes " + "; ".join(parts)
                         + " (time ratios).")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--no-alibi", action="store_true")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--tag", default="")
    ap.add_argument("--commit", default=os.environ.get("GIT_COMMIT"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU", file=sys.stderr)
        return 1
    rows = []
    for c in CASES:
        rows.append(run_case(*c, not args.no_alibi, not args.no_flex, args.reps))
        print(rows[-1], flush=True)
    res = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "commit": git_commit(args.commit), "device": torch.cuda.get_device_name(0),
           "torch": torch.__version__,
           "command": command_line("gpu_attention_alibi.py", sys.argv[1:]), "rows": rows}
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"gpu_attention_alibi{args.tag}")
    write_atomic(base + ".json", json.dumps(res, indent=1) + "\n")
    text = render(res)
    write_atomic(base + ".md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
