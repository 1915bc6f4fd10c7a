"""Memory planning: refuse up front a request that cannot fit, instead of running until the
operating system kills the process.

:func:`available_memory` is what this process can still allocate (best effort);
:func:`memory_needed` a lower estimate of what a chunked pass allocates; :func:`check_memory`
raises MemoryError naming the parts and the ways to shrink them.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np

from .config import SambaConfig

__all__ = ["available_memory", "memory_needed", "check_memory", "check_chunk"]

_GiB = float(1 << 30)


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path, encoding="ascii") as fh:
            v = fh.read().strip()
    except (OSError, ValueError):
        return None
    return int(v) if v.isdigit() else None


def available_memory() -> Optional[int]:
    """Bytes this process can still allocate, best effort: the minimum of MemAvailable
    (/proc/meminfo; elsewhere sysconf SC_AVPHYS_PAGES), the cgroup limit minus usage (v2 or
    v1) and RLIMIT_AS minus the current address-space size. None when nothing is known."""
    cands: list[int] = []
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    cands.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    if not cands:
        try:
            cands.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):
            pass
    for lim_f, use_f in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        lim, use = _read_int(lim_f), _read_int(use_f)
        if lim is not None and use is not None and lim < (1 << 60):
            cands.append(max(lim - use, 0))
            break
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            vm = 0
            with open("/proc/self/status", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("VmSize:"):
                        vm = int(line.split()[1]) * 1024
                        break
            cands.append(max(soft - vm, 0))
    except (ImportError, OSError, ValueError, IndexError):
        pass
    return min(cands) if cands else None


def check_chunk(chunk_size: Any) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) \
            or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")
    return int(chunk_size)


def memory_needed(cfg: SambaConfig, B: int, L: int, cs: int, state: Optional[Any],
                  logits: str) -> tuple[int, list[str]]:
    """Lower estimate of the bytes a chunked pass over (B, L) tokens allocates (not
    counting the weights), with a breakdown. logits: "last" (prefill), "chunk" (nll:
    per-chunk logits + float64 log-softmax) or "all" (forward: every position kept)."""
    c = min(cs, L)
    D, E, F, V = cfg.d_model, cfg.d_inner, cfg.intermediate_size, cfg.vocab_size
    R, N = cfg.dt_rank, cfg.d_state
    H, G, hd = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    kinds = cfg.layer_types
    per_tok = 5 * D + 3 * F        # residual stream (x, resid, n, mix, delta) + MLP
    mixer = 0
    if "mamba" in kinds:
        mixer = max(mixer, 5 * E + 2 * (R + 2 * N))
    if "swa" in kinds or "attn" in kinds:
        mixer = max(mixer, 2 * (H + 2 * G) * hd + H * hd)
    parts = [("activations", B * c * (per_tok + mixer) * 4)]
    if "swa" in kinds:     # keys/values of the previous window concatenated per chunk
        parts.append(("window keys/values", 2 * B * (c + cfg.window) * G * hd * 4))
    n_full = sum(k == "attn" for k in kinds)
    if n_full:             # full-attention cache, grown by doubling (as _grow does)
        p0 = int(state.pos.max()) if state is not None and B else 0
        cap = 0
        if state is not None:
            cap = max((st["k"].shape[1] for st, k in zip(state.layers, kinds)
                       if k == "attn"), default=0)
        end, prev = p0 + L, cap
        while cap < end:
            need = min(p0 + ((max(cap, p0) - p0) // c + 1) * c, end)
            prev, cap = cap, max(need, 2 * cap, 64)
        row = 2 * B * G * hd * 4          # one position of K and V, one layer
        parts.append(("full-attention KV cache", n_full * cap * row + prev * row))
    if logits == "last":
        parts.append(("logits", B * V * 4))
    elif logits == "chunk":
        parts.append(("logits + float64 log-softmax", B * c * V * (4 + 8 + 8)))
    else:
        parts.append(("logits", B * L * V * 4 + (B * L * V * 4 if c < L else 0)))
    total = sum(n for _, n in parts)
    return total, [f"{k} {n / _GiB:.2f} GiB" for k, n in parts if n >= (1 << 20)]


def check_state_memory(cfg: SambaConfig, batch: int, capacity: int, itemsize: int) -> None:
    """Refuse up front (MemoryError) a new state whose caches cannot fit in the memory
    available: the sliding-window ring buffers hold ``window`` positions and full-attention
    caches ``capacity`` (K and V, ``itemsize`` bytes each), Mamba states are float32."""
    if os.environ.get("SAMBA_EXT_NO_MEMCHECK") == "1":
        return
    kv = ssm = 0
    for t in cfg.layer_types:
        if t == "mamba":
            ssm += batch * cfg.d_inner * (cfg.d_conv - 1 + cfg.d_state) * 4
        else:
            pos = cfg.window if t == "swa" else capacity
            kv += 2 * batch * pos * cfg.n_kv_head * cfg.head_dim * itemsize
    need = kv + ssm
    if need < (256 << 20):
        return
    avail = available_memory()
    if avail is None or need <= avail:
        return
    raise MemoryError(
        f"new_state: {batch} sequence(s) need about {need / _GiB:.1f} GiB of caches (window "
        f"{cfg.window}, capacity {capacity}) but only {avail / _GiB:.1f} GiB of memory is "
        "available; use a smaller batch, window or capacity (SAMBA_EXT_NO_MEMCHECK=1 skips "
        "this check)")


def check_memory(cfg: SambaConfig, what: str, B: int, L: int, cs: int,
                 state: Optional[Any], logits: str) -> None:
    """Refuse up front (MemoryError) a request whose working set cannot fit in the memory
    available, instead of running until the OS kills the process. Skipped when the
    available memory is unknown or SAMBA_EXT_NO_MEMCHECK=1."""
    if B == 0 or L == 0 or os.environ.get("SAMBA_EXT_NO_MEMCHECK") == "1":
        return
    need, parts = memory_needed(cfg, B, L, cs, state, logits)
    if need < (256 << 20):
        return
    avail = available_memory()
    if avail is None or need <= avail:
        return
    hints = []
    if logits == "all":
        hints.append("nll() (per-token losses, memory ~ chunk_size x vocab) or "
                     "prefill() (last logits only) instead of forward()")
    if min(cs, L) > 2048:
        hints.append(f"a smaller chunk_size (now {cs}; e.g. 2048)")
    if "attn" in cfg.layer_types:
        hints.append("a model with sliding-window attention (full-attention caches grow "
                     "with the sequence)")
    hints.append(f"a shorter input (now {B} x {L} tokens)")
    raise MemoryError(
        f"{what}: needs about {need / _GiB:.1f} GiB ({', '.join(parts)}) but only "
        f"{avail / _GiB:.1f} GiB of memory is available; use " + "; or ".join(hints) +
        " (SAMBA_EXT_NO_MEMCHECK=1 skips this check)")
