"""Tensor-name maps between lit_gpt naming (the package's own, docs/specification.md section 7) and
Hugging Face naming (Llama-style attention and MLP, HF-Mamba-style mixer; docs/checkpoints.md).

HF naming splits lit_gpt's fused, KV-grouped ``attn.attn.weight`` into ``q_proj`` / ``k_proj``
/ ``v_proj`` in head order; both use the same (rotate-half, NeoX) RoPE, so no row permutation
is involved. All other tensors are renamed unchanged.
"""
from __future__ import annotations

import numpy as np

from ..config import SambaConfig
from ..errors import CheckpointError

__all__ = ["to_hf", "from_hf", "hf_names"]

_GLOBAL = {"transformer.wte.weight": "model.embed_tokens.weight",
           "transformer.ln_f.weight": "model.norm.weight",
           "lm_head.weight": "lm_head.weight"}
_BLOCK = {"norm_1.weight": "input_layernorm.weight",
          "norm_2.weight": "post_attention_layernorm.weight",
          "mlp.swiglu.w1.weight": "mlp.gate_proj.weight",
          "mlp.swiglu.w2.weight": "mlp.up_proj.weight",
          "mlp.swiglu.w3.weight": "mlp.down_proj.weight",
          "attn.proj.weight": "self_attn.o_proj.weight"}
_MAMBA = ("A_log", "D", "in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight",
          "dt_proj.weight", "dt_proj.bias", "out_proj.weight")
_BLOCK.update({f"attn.{n}": f"mixer.{n}" for n in _MAMBA})


def hf_names() -> tuple[dict[str, str], dict[str, str]]:
    """(global lit_gpt -> HF names, per-block suffix lit_gpt -> HF); the fused
    ``attn.attn.weight`` becomes ``self_attn.{q,k,v}_proj.weight``."""
    return dict(_GLOBAL), dict(_BLOCK)


def _split_qkv(w: np.ndarray, cfg: SambaConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from ..weights import qkv_grouped_to_split

    s = qkv_grouped_to_split(w, cfg)
    H, G, hd = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    return s[: H * hd], s[H * hd: (H + G) * hd], s[(H + G) * hd:]


def to_hf(sd: dict[str, np.ndarray], cfg: SambaConfig) -> dict[str, np.ndarray]:
    """lit_gpt-named state dict -> HF names."""
    out: dict[str, np.ndarray] = {}
    for k, a in sd.items():
        if k in _GLOBAL:
            out[_GLOBAL[k]] = a
            continue
        i, rest = _block_key(k)
        p = f"model.layers.{i}."
        if rest == "attn.attn.weight":
            q, kk, v = _split_qkv(a, cfg)
            out[p + "self_attn.q_proj.weight"] = q
            out[p + "self_attn.k_proj.weight"] = kk
            out[p + "self_attn.v_proj.weight"] = v
        elif rest in _BLOCK:
            out[p + _BLOCK[rest]] = a
        else:
            raise ValueError(f"to_hf: no HF name for {k!r}")
    return out


def _block_key(k: str) -> tuple[int, str]:
    parts = k.split(".", 3)
    if len(parts) != 4 or parts[0] != "transformer" or parts[1] != "h" or not parts[2].isdigit():
        raise ValueError(f"to_hf: unexpected key {k!r}")
    return int(parts[2]), parts[3]


def from_hf(sd: dict[str, np.ndarray], cfg: SambaConfig, source: str) -> dict[str, np.ndarray]:
    """HF-named state dict -> lit_gpt names (``cfg`` gives the head split for the QKV merge).
    A name outside the map, or an incomplete q/k/v triple, is a CheckpointError naming it."""
    from ..weights import qkv_split_to_grouped

    inv_g = {v: k for k, v in _GLOBAL.items()}
    inv_b = {v: k for k, v in _BLOCK.items()}
    out: dict[str, np.ndarray] = {}
    qkv: dict[int, dict[str, np.ndarray]] = {}
    for k, a in sd.items():
        if k in inv_g:
            out[inv_g[k]] = a
            continue
        parts = k.split(".", 3)
        if len(parts) != 4 or parts[:2] != ["model", "layers"] or not parts[2].isdigit():
            raise CheckpointError(f"{source}: tensor {k!r} has no lit_gpt equivalent "
                                  "(see docs/checkpoints.md for the HF key map)")
        i, rest = int(parts[2]), parts[3]
        if rest in ("self_attn.q_proj.weight", "self_attn.k_proj.weight",
                    "self_attn.v_proj.weight"):
            qkv.setdefault(i, {})[rest[10]] = a
        elif rest in inv_b:
            out[f"transformer.h.{i}.{inv_b[rest]}"] = a
        else:
            raise CheckpointError(f"{source}: tensor {k!r} has no lit_gpt equivalent "
                                  "(see docs/checkpoints.md for the HF key map)")
    H, G, hd, D = cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.d_model
    for i, t in sorted(qkv.items()):
        if set(t) != {"q", "k", "v"}:
            raise CheckpointError(f"{source}: block {i} has self_attn.{sorted(t)} projections; "
                                  "q_proj, k_proj and v_proj are needed together")
        want = {"q": (H * hd, D), "k": (G * hd, D), "v": (G * hd, D)}
        for n, shp in want.items():
            if t[n].shape != shp:
                raise CheckpointError(f"{source}: model.layers.{i}.self_attn.{n}_proj.weight "
                                      f"has shape {t[n].shape}, the config needs {shp}")
        fused = np.concatenate([t["q"], t["k"], t["v"]], axis=0)
        out[f"transformer.h.{i}.attn.attn.weight"] = qkv_split_to_grouped(fused, cfg)
    return out
