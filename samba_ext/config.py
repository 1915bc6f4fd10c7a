"""Model configuration: :class:`SambaConfig` and the named presets.

A config fully determines the architecture (docs/specification.md sections 1-5): the number of blocks,
which mixer each block has ("mamba", "swa" = sliding-window attention, "attn" = full causal
attention), the widths, the attention heads (GQA) and the Mamba hyper-parameters. Checkpoints
store ``dataclasses.asdict(config)`` as JSON in their metadata.

Terminology: the paper counts the mixer and the MLP as two "layers"; here (as in the lit_gpt
code) a *block* is one mixer followed by one SwiGLU MLP, so ``n_layer`` counts blocks.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Optional

LAYER_TYPES = ("mamba", "swa", "attn")
_F32_MAX = 3.4028234663852886e38   # largest finite float32 (the kernels compute in float32)


def samba_layer_types(n_layer: int) -> tuple[str, ...]:
    """Samba layout (docs/specification.md section 2): even blocks Mamba, odd blocks SWA."""
    return tuple("mamba" if i % 2 == 0 else "swa" for i in range(n_layer))


@dataclass
class SambaConfig:
    """Architecture of a Samba-family model (field names are the checkpoint contract).

    Fields left at 0 / empty are resolved in ``__post_init__``: ``head_dim`` -> d_model //
    n_head, ``dt_rank`` -> ceil(d_model / 16), ``layer_types`` -> the Samba layout (even
    blocks Mamba, odd blocks SWA).
    """

    name: str = "custom"
    vocab_size: int = 259          # byte tokenizer: 0..255 bytes, 256 <eos>, 257 <bos>, 258 <pad>
    n_layer: int = 4               # blocks; each block = mixer + SwiGLU MLP
    d_model: int = 128
    n_head: int = 4
    n_kv_head: int = 4             # GQA: query head h uses kv head h // (n_head // n_kv_head)
    head_dim: int = 0              # 0 -> d_model // n_head
    intermediate_size: int = 256   # SwiGLU hidden size
    window: Optional[int] = 128    # SWA window in keys including self (flash-attn (window-1, 0))
    layer_types: tuple[str, ...] = ()      # per block: "mamba" | "swa" | "attn"; () -> Samba layout
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2                # d_inner = expand * d_model
    dt_rank: int = 0               # 0 -> ceil(d_model / 16)
    tie_embeddings: bool = True
    tokenizer: str = "byte"        # "byte" or a path / name of a real tokenizer
    max_train_len: Optional[int] = None   # informational (training length)

    def __post_init__(self) -> None:
        for f in ("vocab_size", "n_layer", "d_model", "n_head", "n_kv_head", "intermediate_size",
                  "d_state", "d_conv", "expand"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"SambaConfig.{f}: expected a positive int, got {v!r}")
        for f in ("head_dim", "dt_rank"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"SambaConfig.{f}: expected an int >= 0 (0 = default), got {v!r}")
        if self.head_dim == 0:
            if self.d_model % self.n_head:
                raise ValueError(f"SambaConfig: d_model={self.d_model} is not divisible by "
                                 f"n_head={self.n_head}; set head_dim explicitly")
            self.head_dim = self.d_model // self.n_head
        if self.head_dim % 2:
            raise ValueError(f"SambaConfig.head_dim: RoPE needs an even head_dim, got {self.head_dim}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"SambaConfig: n_head={self.n_head} must be a multiple of "
                             f"n_kv_head={self.n_kv_head} (GQA)")
        if self.dt_rank == 0:
            self.dt_rank = math.ceil(self.d_model / 16)
        if not 2 <= self.d_conv <= 4:
            raise ValueError(f"SambaConfig.d_conv: the conv kernels support widths 2..4, "
                             f"got {self.d_conv}")
        if self.layer_types is None:          # JSON null: the default layout
            self.layer_types = ()
        if not isinstance(self.layer_types, (tuple, list)):
            raise ValueError(f"SambaConfig.layer_types: expected a list of mixer names, got "
                             f"{self.layer_types!r:.80}")
        lt = tuple(self.layer_types) if self.layer_types else samba_layer_types(self.n_layer)
        if len(lt) != self.n_layer:
            raise ValueError(f"SambaConfig.layer_types: expected {self.n_layer} entries "
                             f"(one per block), got {len(lt)}")
        bad = [t for t in lt if t not in LAYER_TYPES]
        if bad:
            raise ValueError(f"SambaConfig.layer_types: unknown mixer {bad[0]!r}; expected one "
                             f"of {LAYER_TYPES}")
        self.layer_types = lt
        if self.window is not None:
            if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
                raise ValueError(f"SambaConfig.window: expected a positive int or None, "
                                 f"got {self.window!r}")
        elif "swa" in lt:
            raise ValueError("SambaConfig.window: 'swa' blocks need a window (use 'attn' blocks "
                             "for full causal attention)")
        for f in ("rope_base", "norm_eps"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) \
                    or not 0 < float(v) <= _F32_MAX:
                raise ValueError(f"SambaConfig.{f}: expected a finite number > 0 (at most "
                                 f"{_F32_MAX:.3g}, the float32 range), got {v!r}")
            setattr(self, f, float(v))
        if not isinstance(self.name, str):
            raise ValueError(f"SambaConfig.name: expected a string, got {self.name!r:.80}")
        if not isinstance(self.tokenizer, str) or not self.tokenizer:
            raise ValueError(f"SambaConfig.tokenizer: expected a non-empty string (\"byte\" or "
                             f"a tokenizer file / name), got {self.tokenizer!r:.80}")
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(f"SambaConfig.tie_embeddings: expected true or false, got "
                             f"{self.tie_embeddings!r:.80}")
        m = self.max_train_len
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise ValueError(f"SambaConfig.max_train_len: expected a positive int or None, "
                             f"got {m!r:.80}")

    # ------------------------------------------------------------------ derived sizes ---
    @property
    def d_inner(self) -> int:
        """Mamba inner width E = expand * d_model."""
        return self.expand * self.d_model

    @property
    def q_per_kv(self) -> int:
        """Query heads per KV head (GQA group size)."""
        return self.n_head // self.n_kv_head

    @property
    def qkv_size(self) -> int:
        """Rows of the fused QKV weight: (n_head + 2 n_kv_head) * head_dim."""
        return (self.n_head + 2 * self.n_kv_head) * self.head_dim

    def num_parameters(self) -> int:
        """Parameter count implied by the config (tied embedding counted once)."""
        D, E, N, R, K = self.d_model, self.d_inner, self.d_state, self.dt_rank, self.d_conv
        n = self.vocab_size * D * (1 if self.tie_embeddings else 2) + D  # wte (+lm_head) + ln_f
        for t in self.layer_types:
            n += 2 * D + 3 * D * self.intermediate_size  # norms + SwiGLU
            if t == "mamba":
                n += 2 * E * D + E * K + E + (R + 2 * N) * E + E * R + E + E * N + E + D * E
            else:
                n += self.qkv_size * D + D * self.n_head * self.head_dim
        return n

    # ------------------------------------------------------------------ serialisation ---
    def to_dict(self) -> dict:
        """Plain dict (``dataclasses.asdict``; layer_types as a list for JSON)."""
        d = dataclasses.asdict(self)
        d["layer_types"] = list(self.layer_types)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> "SambaConfig":
        """Build from a dict; unknown keys raise ValueError naming them."""
        if not isinstance(d, dict):
            raise ValueError(f"SambaConfig.from_dict: expected a dict, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"SambaConfig.from_dict: unknown field(s) {unknown}")
        d = dict(d)
        if isinstance(d.get("layer_types"), list):
            d["layer_types"] = tuple(d["layer_types"])
        return cls(**d)

    @classmethod
    def from_json(cls, s: str) -> "SambaConfig":
        """A config from the JSON text of :meth:`to_dict` (ValueError naming ``s`` when it
        is not a JSON object)."""
        try:
            d = json.loads(s)
        except (TypeError, ValueError, RecursionError) as e:
            raise ValueError(f"s: not a JSON config ({e})") from None
        if not isinstance(d, dict):
            raise ValueError(f"s: expected a JSON object of SambaConfig fields, got "
                             f"{type(d).__name__}")
        return cls.from_dict(d)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "SambaConfig":
        """A named configuration (see :data:`PRESETS`); keyword overrides replace fields."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
        d = dict(PRESETS[name])
        d["name"] = name
        d.update(overrides)
        return cls.from_dict(d)

    @staticmethod
    def presets() -> list[str]:
        """Names accepted by :meth:`preset`."""
        return sorted(PRESETS)


# Presets. Sources: docs/specification.md section 1 (microsoft/Samba config.py for 421M/1.3B, paper
# Table 10 for 1.7B/3.8B, Table 9 / section 6.5 for the 1.6B Transformer baselines).
PRESETS: dict[str, dict[str, Any]] = {
    # code: Samba_421M (12 blocks = 24 paper layers), MHA 12 x 128, Llama-2 tokenizer
    "samba-421m": dict(vocab_size=32000, n_layer=12, d_model=1536, n_head=12, n_kv_head=12,
                       intermediate_size=4096, window=2048, tokenizer="llama2",
                       max_train_len=4096),
    # code: Samba_1.3B (18 blocks)
    "samba-1.3b": dict(vocab_size=32000, n_layer=18, d_model=2304, n_head=18, n_kv_head=18,
                       intermediate_size=6144, window=2048, tokenizer="llama2",
                       max_train_len=4096),
    # paper Table 10: 48 layers = 24 blocks, GQA 32/4, head 64, MLP 8196 (sic), vocab 50304
    "samba-1.7b": dict(vocab_size=50304, n_layer=24, d_model=2048, n_head=32, n_kv_head=4,
                       intermediate_size=8196, window=2048, tokenizer="unknown",
                       max_train_len=4096),
    # paper Table 10: 64 layers = 32 blocks, 11 query heads x 256, 1 KV head, Phi-3 tokenizer
    "samba-3.8b": dict(vocab_size=32064, n_layer=32, d_model=2816, n_head=11, n_kv_head=1,
                       intermediate_size=9984, window=2048, tokenizer="phi3",
                       max_train_len=4096),
    # paper Table 9 Llama-3 baseline: 48 layers = 24 attention + 24 MLP, no window
    "llama3-1.6b": dict(vocab_size=50304, n_layer=24, d_model=2048, n_head=32, n_kv_head=4,
                        intermediate_size=8196, window=None, layer_types=("attn",) * 24,
                        tie_embeddings=False, tokenizer="unknown", max_train_len=4096),
    # Mistral baseline: the Llama-3 1.6B architecture with a 2048 sliding window
    "mistral-1.6b": dict(vocab_size=50304, n_layer=24, d_model=2048, n_head=32, n_kv_head=4,
                         intermediate_size=8196, window=2048, layer_types=("swa",) * 24,
                         tie_embeddings=False, tokenizer="unknown", max_train_len=4096),
    # the bundled byte-level tiny models (samba_ext/data/*.safetensors): 4 blocks, d 128, 4 x 32
    "samba-tiny": dict(vocab_size=259, n_layer=4, d_model=128, n_head=4, n_kv_head=4,
                       intermediate_size=256, window=512, dt_rank=8),
    "llama-tiny": dict(vocab_size=259, n_layer=4, d_model=128, n_head=4, n_kv_head=4,
                       intermediate_size=320, window=None, layer_types=("attn",) * 4, dt_rank=8),
    # small test config: 4 blocks, window 16, GQA 4:2
    "samba-test": dict(vocab_size=259, n_layer=4, d_model=64, n_head=4, n_kv_head=2,
                       head_dim=16, intermediate_size=128, window=16, d_state=8),
    # ~10M parameters, for the CPU model benchmark (benchmarks/cpu_model.py)
    "samba-10m": dict(vocab_size=259, n_layer=8, d_model=256, n_head=4, n_kv_head=4,
                      intermediate_size=1152, window=2048),
}
