"""Where a GPU prefill spends its time: per backend method, with a synchronisation after each call.

Usage (GPU machine, repository root, extension built):
    python benchmarks/gpu_model_profile.py [--configs samba-1.7b,samba-1.7b:llama] [--lengths 4096,32768]

For each config (random bfloat16 weights) and prompt length (batch 1): the plain prefill time
(CUDA synchronised at the end only) and the host time of the same call with
``logits="device"`` (how long Python takes to queue the work: when it is close to the plain
time the prefill is host-bound), then one more prefill with every ``CUDABackend`` method
wrapped so that the device is synchronised after it; the table lists each method's share of
that time, with its call count and the mean wall time per call. Decode: ms per step at batch
1 and 16 after 4 warm-up steps, with the backend's graph counters (captures, replays, direct
replays that skipped the model's Python code, eager steps) over the timed steps. With
``--hf`` the same lengths are timed with transformers' ``LlamaForCausalLM`` of the config's
shapes (bf16, SDPA). ``--chunk 0`` (default) uses the backend's default prefill chunk;
``--act float32`` selects float32 activations (``SAMBA_EXT_CUDA_ACTIVATIONS``).
"""
from __future__ import annotations

import argparse
import collections
import functools
import os
import time

import numpy as np


def _wrap(backend, stats, sync):
    names = [n for n in dir(type(backend)) if not n.startswith("_") and
             callable(getattr(type(backend), n))]
    for n in names:
        fn = getattr(backend, n)

        @functools.wraps(fn)
        def w(*a, _fn=fn, _n=n, **k):
            t0 = time.perf_counter()
            r = _fn(*a, **k)
            sync()
            s = stats[_n]
            s[0] += 1
            s[1] += time.perf_counter() - t0
            return r
        setattr(backend, n, w)


def profile(spec: str, lengths: list[int], chunk: int) -> None:
    from samba_ext import Samba
    from samba_ext.cuda import runtime
    from samba_ext.eval.throughput import resolve_config

    from samba_ext.backend_cuda import CUDABackend

    be0 = CUDABackend()
    model = Samba(resolve_config(spec), seed=0, device=be0)
    print(f"\n# {spec}: {be0!r}", flush=True)
    V = model.config.vocab_size
    rng = np.random.default_rng(0)
    sync = runtime.synchronize
    cs = chunk or None
    model.prefill(rng.integers(0, V, (1, 512)), model.new_state(1), chunk_size=cs)
    sync()
    for L in lengths:
        x = rng.integers(0, V, (1, L))
        used = cs or be0.default_chunk(model.config, 1, L)
        t0 = time.perf_counter()
        model.prefill(x, model.new_state(1), chunk_size=cs)
        sync()
        t = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.prefill(x, model.new_state(1), chunk_size=cs, logits="device")
        th = time.perf_counter() - t0
        sync()
        print(f"\n## {spec} prefill 1 x {L} (chunk {used}): {t * 1e3:.1f} ms, "
              f"{L / t:,.0f} tokens/s (host time to queue it: {th * 1e3:.1f} ms)", flush=True)
        if L > 32768:
            continue
        stats: dict = collections.defaultdict(lambda: [0, 0.0])
        be = model.backend
        saved = dict(be.__dict__)
        _wrap(be, stats, sync)
        t0 = time.perf_counter()
        model.prefill(x, model.new_state(1), chunk_size=cs)
        sync()
        tw = time.perf_counter() - t0
        be.__dict__.clear()
        be.__dict__.update(saved)
        tot = sum(s[1] for s in stats.values())
        print(f"synchronised after each call: {tw * 1e3:.1f} ms ({tot * 1e3:.1f} ms in methods)")
        print("| method | calls | ms total | share | us per call |")
        print("|---|---|---|---|---|")
        for n, (c, s) in sorted(stats.items(), key=lambda kv: -kv[1][1]):
            print(f"| {n} | {c} | {s * 1e3:.1f} | {100 * s / tw:.1f}% | {1e6 * s / c:.0f} |")
    # decode, batch 1 and 16 (graph replay after warm-up)
    for B in (1, 16):
        st = model.new_state(B)
        model.prefill(rng.integers(0, V, (B, 64)), st, chunk_size=cs)
        tok = rng.integers(0, V, (B,))
        for _ in range(4):
            model.step(tok, st)
        sync()
        n = 32
        before = dict(be0.stats)
        t0 = time.perf_counter()
        for _ in range(n):
            model.step(tok, st)
        sync()
        dt = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        for _ in range(n):
            model.step(tok, st, logits="device")
        sync()
        dd = (time.perf_counter() - t0) / n
        diff = {k: v - before.get(k, 0) for k, v in be0.stats.items()}
        print(f"{spec} decode batch {B}: {dt * 1e3:.2f} ms/step (NumPy logits), "
              f"{dd * 1e3:.2f} ms/step (device logits); backend counters over these "
              f"{2 * n} steps: {diff}", flush=True)
    print(f"{spec} backend counters (whole run): {be0.stats}", flush=True)
    del model


def hf(spec: str, lengths: list[int]) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from samba_ext.eval.throughput import resolve_config

    c = resolve_config(spec)
    cfg = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.d_model,
                      intermediate_size=c.intermediate_size, num_hidden_layers=c.n_layer,
                      num_attention_heads=c.n_head, num_key_value_heads=c.n_kv_head,
                      max_position_embeddings=max(lengths) + 1, attn_implementation="sdpa")
    m = LlamaForCausalLM(cfg).to(device="cuda", dtype=torch.bfloat16).eval()
    with torch.no_grad():
        for L in lengths:
            x = torch.randint(0, c.vocab_size, (1, L), device="cuda")
            m(x[:, :512], logits_to_keep=1)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            m(x, logits_to_keep=1, use_cache=False)
            torch.cuda.synchronize()
            t = time.perf_counter() - t0
            print(f"transformers Llama ({spec} shapes) prefill 1 x {L}: {t * 1e3:.1f} ms, "
                  f"{L / t:,.0f} tokens/s", flush=True)
    del m
    torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="samba-1.7b,samba-1.7b:llama")
    ap.add_argument("--lengths", default="4096,32768")
    ap.add_argument("--chunk", type=int, default=0, help="prefill chunk (0: backend default)")
    ap.add_argument("--act", default=None, help="activation dtype: bfloat16 | float32")
    ap.add_argument("--hf", action="store_true")
    a = ap.parse_args()
    if a.act:
        os.environ["SAMBA_EXT_CUDA_ACTIVATIONS"] = a.act
    lengths = [int(v) for v in a.lengths.split(",")]
    for spec in a.configs.split(","):
        profile(spec, lengths, a.chunk)
    if a.hf:
        hf(a.configs.split(",")[0], lengths)


if __name__ == "__main__":
    main()
