"""Next-token selection for generate(): greedy, temperature, top-k and top-p (nucleus)."""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

__all__ = ["sample_next", "check_sampling", "check_seed"]


def check_seed(seed: Any, allow_none: bool = False) -> Optional[int]:
    """``seed`` checked: an int >= 0 (or None where ``allow_none``: fresh entropy). The one
    rule for every seed argument (models, generation, evaluations)."""
    if seed is None and allow_none:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0{' or None' if allow_none else ''}, "
                         f"got {seed!r}")
    return int(seed)


def check_sampling(temperature: Any, top_k: Any = None, top_p: Any = None) -> None:
    """Validate the sampling options (whatever the temperature, so that a bad value is
    reported even when greedy decoding would not use it)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating,
                                                                      np.integer)) \
            or not math.isfinite(float(temperature)) or temperature < 0:
        raise ValueError(f"temperature: expected a finite number >= 0 (0 = greedy), got "
                         f"{temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer))
                              or top_k < 1):
        raise ValueError(f"top_k: expected a positive int or None, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool)
                              or not isinstance(top_p, (int, float, np.floating, np.integer))
                              or not 0.0 < float(top_p) <= 1.0):
        raise ValueError(f"top_p: expected a number with 0 < top_p <= 1, or None; got {top_p!r}")


def sample_next(logits: np.ndarray, temperature: float = 0.0, top_k: Optional[int] = None,
                top_p: Optional[float] = None,
                rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Pick one token per row of ``logits`` (B, V) float; returns int64 (B,).

    temperature <= 0: greedy (argmax; ties -> lowest id). Otherwise softmax(logits / T)
    restricted to the ``top_k`` largest logits and to the smallest set whose probability
    reaches ``top_p`` (the most likely token is always kept), sampled with ``rng``.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2:
        raise ValueError(f"logits: expected (batch, vocab), got shape {logits.shape}")
    if temperature is None:
        temperature = 0.0
    check_sampling(temperature, top_k, top_p)
    if temperature <= 0:
        return np.argmax(logits, axis=-1).astype(np.int64)
    if rng is None:
        rng = np.random.default_rng()
    B, V = logits.shape
    z = logits / float(temperature)
    out = np.empty(B, dtype=np.int64)
    for b in range(B):
        row = z[b]
        if not np.all(np.isfinite(row[~np.isneginf(row)])):
            raise FloatingPointError("logits contain NaN or +inf; cannot sample")
        order = np.argsort(-row, kind="stable")
        if top_k is not None:
            order = order[: int(top_k)]
        r = row[order]
        p = np.exp(r - r[0])
        p /= p.sum()
        if top_p is not None and float(top_p) < 1.0:
            keep = int(np.searchsorted(np.cumsum(p), float(top_p), side="left")) + 1
            order, p = order[:keep], p[:keep] / p[:keep].sum()
        out[b] = order[int(rng.choice(len(order), p=p))]
    return out
