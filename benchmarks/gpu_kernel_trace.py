"""Which GPU kernels a model's prefill and decode run, and for how long (a CUPTI trace).

Usage (GPU machine, repository root, extension built, torch installed):
    python benchmarks/gpu_kernel_trace.py [--configs samba-1.7b,samba-1.7b:llama]
        [--length 131072] [--decode-steps 16] [--hf] [--top 25]

torch.profiler records every kernel that runs on the device through CUPTI, whoever launched
it, so it sees samba_ext's own kernels and cuBLAS's. For each config (random bfloat16
weights, batch 1): one prefill of ``--length`` tokens, then ``--decode-steps`` decode steps at
batch 1 (after warm-up, so they replay the captured CUDA graph), each traced on its own. The
table per phase lists the kernels by total device time (name shortened to 70 characters),
with call count, mean microseconds, and their share of the phase's summed kernel time; the
last line compares the summed kernel time with the phase's wall time (the gap is launch
latency and idle device). With ``--hf`` the prefill of transformers' ``LlamaForCausalLM``
with the first config's shapes is traced the same way.
"""
from __future__ import annotations

import argparse
import collections
import time

import numpy as np


def _table(prof, wall_s: float, title: str, top: int) -> None:
    agg: dict = collections.defaultdict(lambda: [0, 0.0])
    for ev in prof.events():
        if getattr(ev, "device_type", None) is None or str(ev.device_type) != "DeviceType.CUDA":
            continue
        name = ev.name
        if name.startswith(("Memcpy", "Memset")):
            key = name.split(" ")[0] + " " + name.split(" ")[1] if " " in name else name
        else:
            key = name
        a = agg[key[:70]]
        a[0] += 1
        a[1] += ev.device_time if hasattr(ev, "device_time") else ev.cuda_time
    tot = sum(v[1] for v in agg.values())
    print(f"\n## {title}: wall {wall_s * 1e3:.2f} ms, kernels {tot / 1e3:.2f} ms "
          f"({len(agg)} distinct, {sum(v[0] for v in agg.values())} launches)")
    print("| kernel | calls | us mean | ms total | share |")
    print("|---|---|---|---|---|")
    for k, (c, t) in sorted(agg.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"| `{k}` | {c} | {t / c:.1f} | {t / 1e3:.3f} | {100 * t / max(tot, 1e-9):.1f}% |")


def _trace(fn, sync):
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        fn()
        sync()
        wall = time.perf_counter() - t0
    torch.cuda.synchronize()
    return prof, wall


def samba(spec: str, L: int, steps: int, top: int) -> None:
    from samba_ext import Samba
    from samba_ext.backend_cuda import CUDABackend
    from samba_ext.cuda import runtime
    from samba_ext.eval.throughput import resolve_config

    be = CUDABackend()
    model = Samba(resolve_config(spec), seed=0, device=be)
    V = model.config.vocab_size
    rng = np.random.default_rng(0)
    sync = runtime.synchronize
    x = rng.integers(0, V, (1, L))
    model.prefill(x[:, :4096], model.new_state(1), logits="device")
    sync()
    prof, wall = _trace(lambda: model.prefill(x, model.new_state(1), logits="device"), sync)
    _table(prof, wall, f"{spec} prefill 1 x {L} (chunk {be.default_chunk(model.config, 1, L)})",
           top)
    del prof
    st = model.new_state(1)
    model.prefill(rng.integers(0, V, (1, 64)), st)
    tok = rng.integers(0, V, (1,))
    for _ in range(6):
        model.step(tok, st, logits="device")
    sync()

    def dec():
        for _ in range(steps):
            model.step(tok, st, logits="device")
    prof, wall = _trace(dec, sync)
    _table(prof, wall / steps, f"{spec} decode batch 1, per step (x{steps} steps summed in "
           "the kernel columns)", top)
    print(f"backend counters: {be.stats}")


def hf(spec: str, L: int, top: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from samba_ext.eval.throughput import resolve_config

    c = resolve_config(spec)
    cfg = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.d_model,
                      intermediate_size=c.intermediate_size, num_hidden_layers=c.n_layer,
                      num_attention_heads=c.n_head, num_key_value_heads=c.n_kv_head,
                      max_position_embeddings=L + 1, attn_implementation="sdpa")
    m = LlamaForCausalLM(cfg).to(device="cuda", dtype=torch.bfloat16).eval()
    x = torch.randint(0, c.vocab_size, (1, L), device="cuda")
    with torch.no_grad():
        m(x[:, :4096], logits_to_keep=1, use_cache=False)
        torch.cuda.synchronize()
        prof, wall = _trace(lambda: m(x, logits_to_keep=1, use_cache=False),
                            torch.cuda.synchronize)
    _table(prof, wall, f"transformers Llama ({spec} shapes) prefill 1 x {L}", top)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="samba-1.7b,samba-1.7b:llama")
    ap.add_argument("--length", type=int, default=131072)
    ap.add_argument("--decode-steps", type=int, default=16)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--hf", action="store_true")
    a = ap.parse_args()
    for spec in a.configs.split(","):
        samba(spec, a.length, a.decode_steps, a.top)
    if a.hf:
        hf(a.configs.split(",")[0], a.length, a.top)


if __name__ == "__main__":
    main()
