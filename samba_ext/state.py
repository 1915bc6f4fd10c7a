"""Recurrent state of the Samba model (:meth:`samba_ext.model.Samba.new_state`).

A state remembers the architecture it was made for (every config field that shapes the
state or its meaning, e.g. ``window``, ``d_state``, ``rope_base``), so a state made by one
model and handed to another is refused with the differing fields named, instead of giving
silently wrong logits when only the array shapes happen to match.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from .backend import Backend
from .config import SambaConfig

__all__ = ["SambaState", "state_signature", "NON_ARCH_FIELDS"]

#: Config fields that do not change what a state means (labels and provenance).
NON_ARCH_FIELDS = ("name", "tokenizer", "max_train_len")


def state_signature(cfg: SambaConfig) -> dict[str, Any]:
    """The config fields a state depends on, as a plain dict (a snapshot: later changes to
    ``cfg`` do not change it)."""
    d = cfg.to_dict()
    for k in NON_ARCH_FIELDS:
        d.pop(k, None)
    d["layer_types"] = tuple(d["layer_types"])
    return d


class SambaState:
    """Recurrent state of a batch of sequences (from :meth:`Samba.new_state`).

    ``pos`` (B,) int64: tokens consumed so far (the next token's absolute position).
    ``layers[i]``: dict of backend arrays for block i -- Mamba: ``conv`` (B, E, d_conv-1),
    ``ssm`` (B, E, N); SWA: ``k``, ``v`` ring buffers (B, window, n_kv_head, head_dim), the key
    of position p in slot p % window, stored after RoPE; full attention: ``k``, ``v``
    (B, capacity, n_kv_head, head_dim) growing caches. ``logits``: (B, vocab) float32 NumPy
    logits of the last consumed position (None before any token); the model keeps them as a
    backend array (:meth:`device_logits`, on the GPU a DeviceArray) and they are copied to
    the host when ``logits`` is first read. ``signature``: the architecture fields of the
    config the state was made for (see :func:`state_signature`).
    """

    def __init__(self, batch: int, kinds: Sequence[str], layers: list, backend: Backend,
                 signature: Optional[dict[str, Any]] = None):
        self.batch = int(batch)
        self.kinds = tuple(kinds)
        self.layers = layers
        self.pos = np.zeros(self.batch, dtype=np.int64)
        self._logits: Any = None     # backend array (see logits)
        self._host_logits: Optional[np.ndarray] = None   # its host copy, made when first read
        self.signature = dict(signature) if signature is not None else None
        self._backend = backend
        self._broken = False     # set while a call updates the state; stays set if it fails

    @property
    def logits(self) -> Optional[np.ndarray]:
        if self._logits is None:
            return None
        if self._host_logits is None:
            self._host_logits = np.array(self._backend.to_numpy(self._logits), dtype=np.float32)
        return self._host_logits

    @logits.setter
    def logits(self, value: Any) -> None:
        self._logits = value
        self._host_logits = None

    def has_logits(self) -> bool:
        """True once a token has been consumed (without copying the logits to the host)."""
        return self._logits is not None

    def device_logits(self) -> Any:
        """The last logits as the model keeps them (a backend array; None before any token)."""
        return self._logits

    def copy(self) -> "SambaState":
        """Deep copy (independent arrays)."""
        be = self._backend
        s = SambaState(self.batch, self.kinds,
                       [{k: be.copy(a) for k, a in d.items()} for d in self.layers], be,
                       self.signature)
        s.pos = self.pos.copy()
        s._logits = None if self._logits is None else be.copy(self._logits)
        s._broken = self._broken
        return s

    def nbytes(self) -> int:
        """Bytes held by the state arrays (caches, SSM/conv states, positions, logits)."""
        n = self.pos.nbytes + (0 if self._logits is None else int(self._logits.nbytes))
        for d in self.layers:
            n += sum(int(a.nbytes) for a in d.values())
        return n

    def shapes(self) -> list[dict[str, tuple]]:
        """Shapes of every layer's arrays (for inspection and tests)."""
        return [{k: tuple(a.shape) for k, a in d.items()} for d in self.layers]

    def check_for(self, cfg: SambaConfig, batch: int) -> None:
        """Raise unless this state can be used by a model with config ``cfg`` on ``batch``
        sequences: TypeError naming the differing config fields, ValueError for a broken
        state or another batch size."""
        want = state_signature(cfg)
        if self.signature is None or self.kinds != tuple(cfg.layer_types):
            raise TypeError("state: expected a SambaState from this model's new_state()")
        diff = [k for k in sorted(set(want) | set(self.signature))
                if want.get(k) != self.signature.get(k)]
        if diff:
            shown = ", ".join(f"{k}={self.signature.get(k)!r} (model: {want.get(k)!r})"
                              for k in diff[:4])
            raise TypeError(f"state: made for another model configuration ({shown}"
                            f"{', ...' if len(diff) > 4 else ''}); use this model's "
                            "new_state()")
        if self._broken:
            raise ValueError("state: an earlier prefill/step on this state was interrupted or "
                             "failed midway, leaving it inconsistent; start from a new state "
                             "(or a copy() taken before)")
        if self.batch != batch:
            raise ValueError(f"state: made for batch {self.batch}, tokens have batch {batch}")

    def __repr__(self) -> str:
        return (f"SambaState(batch={self.batch}, pos={self.pos.tolist()[:4]}"
                f"{'...' if self.batch > 4 else ''}, nbytes={self.nbytes()})")
