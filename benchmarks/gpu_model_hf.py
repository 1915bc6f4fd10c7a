"""The transformers baseline of benchmarks/gpu_model.py: ``LlamaForCausalLM`` with the shapes of
a samba_ext preset (default llama3-1.6b), bf16, SDPA attention, random weights.

* prefill: ``model(ids, use_cache=False, logits_to_keep=1)`` (``num_logits_to_keep`` on older
  versions) under ``torch.inference_mode``, then ``torch.cuda.synchronize``.
* decode: a cache holding ``ctx`` random bf16 keys / values per layer, (B, kv heads, ctx,
  head_dim), then ``model(ids (B, 1), <cache>=cache, use_cache=True)`` per step. ``dynamic``:
  a ``DynamicCache`` (the default of ``generate``; it grows by one position per step, i.e.
  a concatenation of the whole cache per layer and step, and attends with SDPA without a
  mask); ``static``: a ``StaticCache`` with room for the timed steps (written in place; SDPA
  over the whole preallocated length with a mask). The cache argument is ``cache`` in
  transformers >= 5.2x and ``past_key_values`` before; the first step checks that the cache
  grew by one position, so a silently ignored cache cannot pass as fast decoding.

Raises ImportError (caught by the caller, whose row then says so) without torch/transformers.
"""
from __future__ import annotations

import gc
import inspect
import time
from typing import Any, Callable

import numpy as np


def hf_llama_config(cfg: Any, attn: str = "sdpa") -> Any:
    """A transformers ``LlamaConfig`` with the shapes of the SambaConfig ``cfg``."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
                       intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.n_layer,
                       num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head,
                       head_dim=cfg.head_dim, max_position_embeddings=1 << 20,
                       rms_norm_eps=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings,
                       attn_implementation=attn)


class HFLlama:
    """transformers' LlamaForCausalLM under the benchmark's model interface (see Ours)."""

    kind = "transformers"

    def __init__(self, shapes: str, device: str, caches: tuple[str, ...] | list[str] =
                 ("dynamic", "static"), seed: int = 0):
        import torch
        import transformers
        from transformers import LlamaForCausalLM

        from samba_ext.eval.throughput import resolve_config

        from gpu_model_report import HF_LABEL

        self.torch = torch
        self.label = HF_LABEL
        self.shapes = shapes
        self.cfg = resolve_config(shapes)
        self.vocab = self.cfg.vocab_size
        self.full_attention = True
        self.cache_kinds = list(caches)
        self.device = torch.device(device)
        self.version = transformers.__version__
        t = time.perf_counter()
        torch.manual_seed(seed)
        hf_cfg = hf_llama_config(self.cfg)
        old = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            with self.device:
                self.model = LlamaForCausalLM(hf_cfg)
        finally:
            torch.set_default_dtype(old)
        self.model.to(dtype=torch.bfloat16).eval()
        self.attn_impl = getattr(self.model.config, "_attn_implementation", None)
        params = inspect.signature(self.model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.keep_arg = "logits_to_keep" if "logits_to_keep" in params else "num_logits_to_keep"
        self.sync()
        self.build_s = time.perf_counter() - t

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def info(self) -> dict[str, Any]:
        from gpu_model import weight_read_bytes

        n = sum(p.numel() for p in self.model.parameters())
        return {"kind": self.kind, "transformers": self.version, "shapes_of": self.shapes,
                "num_parameters": int(n), "weight_read_bytes": weight_read_bytes(self.cfg),
                "build_s": self.build_s, "dtype": "bfloat16", "attn_implementation":
                self.attn_impl, "cache_argument": self.cache_arg,
                "logits_argument": self.keep_arg, "caches": self.cache_kinds}

    def prefill(self, tokens: np.ndarray) -> None:
        torch = self.torch
        ids = torch.as_tensor(np.ascontiguousarray(tokens), device=self.device)
        with torch.inference_mode():
            out = self.model(input_ids=ids, use_cache=False, **{self.keep_arg: 1})
        if out.logits.shape[1] != 1:
            raise RuntimeError(f"{self.keep_arg}=1 ignored: logits {tuple(out.logits.shape)}")
        del out
        self.sync()

    def make_cache(self, batch: int, ctx: int, n_steps: int, kind: str, seed: int = 0) -> Any:
        """A cache as if ``ctx`` tokens had been consumed: random bf16 keys / values."""
        torch = self.torch
        from transformers import DynamicCache, StaticCache

        c = self.cfg
        hf_cfg = self.model.config
        if kind == "dynamic":
            cache = DynamicCache()
        elif kind == "static":
            try:
                cache = StaticCache(config=hf_cfg, max_cache_len=ctx + n_steps + 1)
            except TypeError:       # transformers < 4.56
                cache = StaticCache(config=hf_cfg, max_batch_size=batch,
                                    max_cache_len=ctx + n_steps + 1, device=self.device,
                                    dtype=torch.bfloat16)
        else:
            raise ValueError(f"cache: expected 'dynamic' or 'static', got {kind!r}")
        g = torch.Generator(device=self.device).manual_seed(seed)
        shape = (batch, c.n_kv_head, ctx, c.head_dim)
        k = torch.randn(shape, generator=g, device=self.device, dtype=torch.bfloat16)
        v = torch.randn(shape, generator=g, device=self.device, dtype=torch.bfloat16)
        pos = {"cache_position": torch.arange(ctx, device=self.device)}
        with torch.inference_mode():
            for i in range(c.n_layer):
                cache.update(k, v, i, pos)     # copies: one random pair serves every layer
        del k, v
        if int(cache.get_seq_length()) != ctx:
            raise RuntimeError(f"{kind} cache holds {int(cache.get_seq_length())} positions "
                               f"after filling {ctx}")
        return cache

    def decoder(self, batch: int, ctx: int, n_steps: int, seed: int = 0,
                cache: str = "dynamic") -> tuple[Callable[[np.ndarray], None], dict[str, Any]]:
        torch = self.torch
        kv = self.make_cache(batch, ctx, n_steps, cache, seed)
        model, arg = self.model, self.cache_arg
        seen = {"n": 0}

        def step(tok: np.ndarray) -> None:
            ids = torch.as_tensor(np.asarray(tok).reshape(-1, 1), device=self.device)
            with torch.inference_mode():
                out = model(input_ids=ids, use_cache=True, **{arg: kv})
            if seen["n"] == 0:
                n = int(kv.get_seq_length())
                if n != ctx + 1 or out.logits.shape[:2] != (batch, 1):
                    raise RuntimeError(f"decode step: cache at {n} positions (expected "
                                       f"{ctx + 1}), logits {tuple(out.logits.shape)}: the "
                                       f"cache was not used")
            seen["n"] += 1
            del out
            self.sync()
        nbytes = 2 * self.cfg.n_layer * batch * self.cfg.n_kv_head * ctx * self.cfg.head_dim * 2
        return step, {"cache": cache, "state_bytes": int(nbytes)}

    def close(self) -> None:
        del self.model
        gc.collect()
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()
