"""Prefill and decode throughput of model configs with random weights (Samba paper §3.3).

* Prefill (prompt processing): for each prompt length ``L`` the batch is
  ``total_tokens // L`` (at least 1), so every measurement processes the same number of tokens
  (the paper: 128K tokens per measurement, prompts 1K..128K). tokens/s = batch * L / time of
  ``model.prefill``.
* Decode: ``batch_size`` sequences generate ``G`` tokens each with ``model.step`` after a short
  prompt; tokens/s = batch * G / time of the steps (the paper: batch 16, up to 64K tokens).

Configs are preset names (``SambaConfig.presets()``), optionally with a baseline suffix that
keeps the sizes and swaps the mixers: ``NAME:llama`` (every block full attention, no window),
``NAME:mistral`` (every block sliding-window attention), ``NAME:mamba`` (every block Mamba).
SambaConfig objects and Samba models are accepted too. Weights are random: speed does not
depend on them.
"""
from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from typing import Any, Sequence

import numpy as np

from ..sampling import check_seed
from ._common import Progress, Timer, as_int_list
from ._run import CellRecorder
from ._format import fmt_tokens, format_table
from .results import EvalResult

__all__ = ["throughput", "ThroughputResult", "resolve_config", "BASELINES"]

BASELINES = ("llama", "mistral", "mamba")


def resolve_config(spec: Any):
    """A SambaConfig from a preset name (with an optional ``:llama|:mistral|:mamba`` suffix)."""
    from ..config import SambaConfig

    if isinstance(spec, SambaConfig):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"configs: expected preset names, SambaConfig or Samba objects, got "
                        f"{type(spec).__name__}")
    name, _, variant = spec.partition(":")
    if name not in SambaConfig.presets():
        raise ValueError(f"configs: unknown config {name!r}; presets: "
                         f"{', '.join(SambaConfig.presets())}")
    if not variant:
        return SambaConfig.preset(name)
    base = SambaConfig.preset(name)
    n = base.n_layer
    if variant == "llama":
        over = dict(layer_types=("attn",) * n, window=None)
    elif variant == "mistral":
        over = dict(layer_types=("swa",) * n, window=base.window or 2048)
    elif variant == "mamba":
        over = dict(layer_types=("mamba",) * n)
    else:
        raise ValueError(f"configs: unknown baseline suffix {variant!r} in {spec!r}; expected one of "
                         f"{BASELINES}")
    cfg = SambaConfig.preset(name, **over)
    cfg.name = spec
    return cfg


class ThroughputResult(EvalResult):
    """Tokens/s per config. Cells: ``{"config", "kind": "prefill", "prompt_length", "batch",
    "tokens", "time_s", "tokens_per_s"}`` and ``{"config", "kind": "decode", "gen_length",
    "batch", "prompt_length", "time_s", "tokens_per_s", "ms_per_step", "state_bytes"}``."""

    eval_name = "throughput"

    def configs(self) -> list[str]:
        return list(dict.fromkeys(c["config"] for c in self.cells))

    def summary(self) -> dict:
        return {"configs": self.configs(),
                "models": self.params.get("models", {})}

    def table(self) -> str:
        parts = []
        pre = [c for c in self.cells if c["kind"] == "prefill"]
        if pre:
            Ls = sorted({c["prompt_length"] for c in pre})
            rows = []
            for name in self.configs():
                d = {c["prompt_length"]: c for c in pre if c["config"] == name}
                rows.append([name] + [f"{d[L]['tokens_per_s']:,.0f}" if L in d else "-"
                                      for L in Ls])
            parts.append(format_table(["config \\ prompt"] + [fmt_tokens(L) for L in Ls], rows,
                                      title=f"prefill tokens/s (total "
                                            f"{fmt_tokens(self.params.get('total_tokens', 0))} "
                                            f"tokens per measurement)"))
        dec = [c for c in self.cells if c["kind"] == "decode"]
        if dec:
            Gs = sorted({c["gen_length"] for c in dec})
            rows = []
            for name in self.configs():
                d = {c["gen_length"]: c for c in dec if c["config"] == name}
                rows.append([name] + [f"{d[G]['tokens_per_s']:,.0f}" if G in d else "-"
                                      for G in Gs])
            parts.append(format_table(["config \\ generated"] + [fmt_tokens(G) for G in Gs], rows,
                                      title=f"decode tokens/s (batch "
                                            f"{self.params.get('batch_size')})"))
        return "\n\n".join(parts) if parts else "(no finished cells)"


def throughput(configs: Sequence[Any] = ("samba-tiny", "samba-tiny:llama"),
               prompt_lengths: Sequence[int] = (1024, 2048, 4096, 8192, 16384),
               total_tokens: int = 16384, gen_lengths: Sequence[int] = (128, 512),
               batch_size: int = 4, decode_prompt: int = 16, repeats: int = 3,
               warmup: bool = True, seed: int = 0, chunk_size: int = 2048,
               progress: bool = True, device: str = "cpu",
               save: str | os.PathLike | None = None,
               on_cell: Callable[[dict], Any] | None = None, ray: Any = None,
            out: Any = None) -> ThroughputResult:
    """Prefill and decode tokens/s of ``configs`` with random weights.

    Args:
        configs: preset names (``"samba-10m"``, ``"samba-10m:llama"``, ...), SambaConfig
            objects or Samba models.
        prompt_lengths: prefill prompt lengths; batch = max(1, total_tokens // length).
        total_tokens: tokens per prefill measurement (paper: 128K).
        gen_lengths: decode lengths G; batch ``batch_size`` (paper: 16).
        decode_prompt: prompt tokens prefilled before decoding.
        repeats: timed repeats per measurement, the median reported (default 3).
        warmup: one untimed run of every measurement first (caches, thread pools, page
            faults of the buffers), so the first cell is not an outlier.
        save: a JSON path, rewritten atomically after every measurement and at the end.
        ray / out: run the grid unit by unit, resumable in ``out`` (a folder) and on Ray with
            ``ray`` (True, "auto" or an address); see :mod:`samba_ext.eval.grid`.
        on_cell: called with each finished cell dict.
    Raises:
        samba_ext.eval.EvalInterrupted (a KeyboardInterrupt) on Ctrl-C, after saving the
        finished cells to ``save``; its ``result`` holds them (``partial=True``).
    """
    if ray is not None or out is not None:    # resumable / Ray grid (samba_ext.eval.grid)
        from .grid import grid_call
        return grid_call("throughput", locals())  # type: ignore[return-value]
    from ..model import Samba

    prompt_lengths = as_int_list(list(prompt_lengths), "prompt_lengths") if prompt_lengths else []
    gen_lengths = as_int_list(list(gen_lengths), "gen_lengths") if gen_lengths else []
    for name, v in (("total_tokens", total_tokens), ("batch_size", batch_size),
                    ("repeats", repeats), ("decode_prompt", decode_prompt)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
    total_tokens = int(total_tokens)
    seed = check_seed(seed)
    models = []
    for spec in configs:
        if hasattr(spec, "prefill") and hasattr(spec, "config"):
            models.append((getattr(spec, "name", None) or spec.config.name, spec))
        else:
            cfg = resolve_config(spec)
            label = spec if isinstance(spec, str) else cfg.name
            models.append((label, cfg))
    if not models:
        raise ValueError("configs: expected at least one config")
    params: dict[str, Any] = {"configs": [m[0] for m in models],
                              "prompt_lengths": prompt_lengths, "total_tokens": total_tokens,
                              "gen_lengths": gen_lengths, "batch_size": int(batch_size),
                              "decode_prompt": int(decode_prompt), "repeats": int(repeats),
                              "chunk_size": int(chunk_size), "weights": "random",
                              "models": {}}
    work = sum(total_tokens for _ in prompt_lengths) + sum(g * batch_size for g in gen_lengths)
    bar = Progress(progress, work * len(models), desc="throughput")
    rng = np.random.default_rng(seed)
    cells: list[dict] = []
    timer = Timer()
    partial = False
    recorder = CellRecorder(save, on_cell)
    info = {"name": ", ".join(m[0] for m in models), "random_weights": True,
            "note": "throughput uses random weights (speed does not depend on them)",
            "hash": None, "hash_of": "unavailable", "num_parameters": None,
            "device": device, "config": {}, "source": None}

    def result() -> ThroughputResult:
        return ThroughputResult(params=params, cells=cells, model=info, seed=seed,
                                partial=partial, time_s=timer(), notes=[])

    interrupted: BaseException | None = None
    try:
        for label, m in models:
            model = m if hasattr(m, "prefill") else Samba(m, seed=seed, device=device)
            cfg = model.config
            V = int(cfg.vocab_size)
            params["models"][label] = {"num_parameters": int(model.num_parameters()),
                                       "layer_types": list(cfg.layer_types),
                                       "window": cfg.window, "d_model": cfg.d_model,
                                       "n_layer": cfg.n_layer}
            for L in prompt_lengths:
                B = max(1, total_tokens // L)
                x = rng.integers(0, V, (B, L))
                times = []
                if warmup:
                    model.prefill(x, model.new_state(B), chunk_size=chunk_size)
                for _ in range(repeats):
                    st = model.new_state(B)
                    t = Timer()
                    model.prefill(x, st, chunk_size=chunk_size)
                    times.append(t())
                t = statistics.median(times)
                cells.append({"config": label, "kind": "prefill", "prompt_length": L, "batch": B,
                              "tokens": B * L, "time_s": t, "tokens_per_s": B * L / t,
                              "repeats": len(times)})
                recorder.cell_done(result(), cells[-1])
                bar.update(total_tokens)
                bar.postfix(config=label, prefill=fmt_tokens(L))
            for G in gen_lengths:
                B = int(batch_size)
                times = []
                st = None
                for r in range(repeats + (1 if warmup else 0)):
                    st = model.new_state(B)
                    model.prefill(rng.integers(0, V, (B, decode_prompt)), st,
                                  chunk_size=chunk_size)
                    nxt = rng.integers(0, V, (B,))
                    t = Timer()
                    for _ in range(G):
                        logits = np.asarray(model.step(nxt, st))
                        nxt = np.argmax(logits, axis=-1)
                    if not (warmup and r == 0):     # the first run warms up, untimed
                        times.append(t())
                t = statistics.median(times)
                try:
                    sb = int(st.nbytes())
                except Exception:
                    sb = None
                cells.append({"config": label, "kind": "decode", "gen_length": G, "batch": B,
                              "prompt_length": int(decode_prompt), "time_s": t,
                              "tokens_per_s": B * G / t, "ms_per_step": 1000 * t / G,
                              "state_bytes": sb, "repeats": len(times)})
                recorder.cell_done(result(), cells[-1])
                bar.update(G * B)
                bar.postfix(config=label, decode=fmt_tokens(G))
    except KeyboardInterrupt as e:
        partial, interrupted = True, e
        bar.write("interrupted: keeping the finished measurements (result marked partial)")
    finally:
        bar.close()
    return recorder.finish(result(), interrupted)
