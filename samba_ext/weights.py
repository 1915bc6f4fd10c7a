"""Weights of the Samba model: the lit_gpt key layout, random initialisation, and the
conversion between lit_gpt's grouped QKV rows and the split [Q | K | V] layout the model uses."""
from __future__ import annotations

import math

import numpy as np

from .config import SambaConfig

__all__ = ["expected_shapes", "init_state_dict", "pad_rows", "qkv_grouped_to_split",
           "qkv_split_to_grouped"]


def expected_shapes(cfg: SambaConfig) -> dict[str, tuple[int, ...]]:
    """lit_gpt key -> shape for ``cfg`` (docs/specification.md section 7). lm_head.weight only when
    the embeddings are not tied."""
    D, E, N, R, K, F = (cfg.d_model, cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.d_conv,
                        cfg.intermediate_size)
    s: dict[str, tuple[int, ...]] = {"transformer.wte.weight": (cfg.vocab_size, D),
                                     "transformer.ln_f.weight": (D,)}
    if not cfg.tie_embeddings:
        s["lm_head.weight"] = (cfg.vocab_size, D)
    for i, t in enumerate(cfg.layer_types):
        p = f"transformer.h.{i}."
        s[p + "norm_1.weight"] = (D,)
        s[p + "norm_2.weight"] = (D,)
        s[p + "mlp.swiglu.w1.weight"] = (F, D)
        s[p + "mlp.swiglu.w2.weight"] = (F, D)
        s[p + "mlp.swiglu.w3.weight"] = (D, F)
        if t == "mamba":
            s[p + "attn.A_log"] = (E, N)
            s[p + "attn.D"] = (E,)
            s[p + "attn.in_proj.weight"] = (2 * E, D)
            s[p + "attn.conv1d.weight"] = (E, 1, K)
            s[p + "attn.conv1d.bias"] = (E,)
            s[p + "attn.x_proj.weight"] = (R + 2 * N, E)
            s[p + "attn.dt_proj.weight"] = (E, R)
            s[p + "attn.dt_proj.bias"] = (E,)
            s[p + "attn.out_proj.weight"] = (D, E)
        else:
            s[p + "attn.attn.weight"] = (cfg.qkv_size, D)
            s[p + "attn.proj.weight"] = (D, cfg.n_head * cfg.head_dim)
    return s


def init_state_dict(cfg: SambaConfig, seed: int | None = 0) -> dict[str, np.ndarray]:
    """Random Mamba/Samba initialisation (docs/specification.md section 3), lit_gpt keys, float32.

    Embedding N(0, 0.02); Linear weights PyTorch-default U(+-1/sqrt(fan_in)); Mamba:
    A_log = log(1..N), D = 1, dt_proj.weight U(+-dt_rank^-0.5), dt_proj.bias =
    softplus^-1(dt) with dt log-uniform in [1e-3, 0.1] floored at 1e-4, conv1d weight and bias
    U(+-1/sqrt(d_conv)); norms 1; out_proj / attention proj / SwiGLU w3 divided by
    sqrt(2 * n_layer).
    """
    rng = np.random.default_rng(seed)
    D, E, N, R, K = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.d_conv
    resid_scale = 1.0 / math.sqrt(2 * cfg.n_layer)

    def lin(out_f: int, in_f: int, scale: float = 1.0) -> np.ndarray:
        b = 1.0 / math.sqrt(in_f)
        return (rng.uniform(-b, b, (out_f, in_f)) * scale).astype(np.float32)

    sd: dict[str, np.ndarray] = {
        "transformer.wte.weight": rng.normal(0.0, 0.02, (cfg.vocab_size, D)).astype(np.float32),
        "transformer.ln_f.weight": np.ones(D, np.float32),
    }
    if not cfg.tie_embeddings:
        sd["lm_head.weight"] = lin(cfg.vocab_size, D)
    for i, t in enumerate(cfg.layer_types):
        p = f"transformer.h.{i}."
        sd[p + "norm_1.weight"] = np.ones(D, np.float32)
        sd[p + "norm_2.weight"] = np.ones(D, np.float32)
        if t == "mamba":
            sd[p + "attn.in_proj.weight"] = lin(2 * E, D)
            kb = 1.0 / math.sqrt(K)
            sd[p + "attn.conv1d.weight"] = rng.uniform(-kb, kb, (E, 1, K)).astype(np.float32)
            sd[p + "attn.conv1d.bias"] = rng.uniform(-kb, kb, E).astype(np.float32)
            sd[p + "attn.x_proj.weight"] = lin(R + 2 * N, E)
            db = R ** -0.5
            sd[p + "attn.dt_proj.weight"] = rng.uniform(-db, db, (E, R)).astype(np.float32)
            dt = np.exp(rng.uniform(0, 1, E) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            dt = np.maximum(dt, 1e-4)
            sd[p + "attn.dt_proj.bias"] = (dt + np.log(-np.expm1(-dt))).astype(np.float32)
            sd[p + "attn.A_log"] = np.log(np.tile(np.arange(1, N + 1, dtype=np.float64),
                                                  (E, 1))).astype(np.float32)
            sd[p + "attn.D"] = np.ones(E, np.float32)
            sd[p + "attn.out_proj.weight"] = lin(D, E, resid_scale)
        else:
            sd[p + "attn.attn.weight"] = lin(cfg.qkv_size, D)
            sd[p + "attn.proj.weight"] = lin(D, cfg.n_head * cfg.head_dim, resid_scale)
        F = cfg.intermediate_size
        sd[p + "mlp.swiglu.w1.weight"] = lin(F, D)
        sd[p + "mlp.swiglu.w2.weight"] = lin(F, D)
        sd[p + "mlp.swiglu.w3.weight"] = lin(D, F, resid_scale)
    return sd


def qkv_grouped_to_split(w: np.ndarray, cfg: SambaConfig) -> np.ndarray:
    """lit_gpt grouped rows [q_g0.., k_g, v_g] per KV group -> [Q (head order) | K | V]."""
    G, qpk, hd = cfg.n_kv_head, cfg.q_per_kv, cfg.head_dim
    g = w.reshape(G, qpk + 2, hd, -1)
    q = g[:, :qpk].reshape(G * qpk * hd, -1)
    k = g[:, qpk].reshape(G * hd, -1)
    v = g[:, qpk + 1].reshape(G * hd, -1)
    return np.ascontiguousarray(np.concatenate([q, k, v], axis=0), dtype=np.float32)


def qkv_split_to_grouped(w: np.ndarray, cfg: SambaConfig) -> np.ndarray:
    """Inverse of :func:`qkv_grouped_to_split`."""
    G, qpk, hd = cfg.n_kv_head, cfg.q_per_kv, cfg.head_dim
    H = G * qpk
    q = w[: H * hd].reshape(G, qpk, hd, -1)
    k = w[H * hd: (H + G) * hd].reshape(G, 1, hd, -1)
    v = w[(H + G) * hd:].reshape(G, 1, hd, -1)
    return np.concatenate([q, k, v], axis=1).reshape(cfg.qkv_size, -1)


def pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
    """2-D ``a`` (r, c) with zero rows appended up to (rows, c); ``a`` itself when r == rows.
    Used for the MLP padding of a device backend (:meth:`Backend.mlp_width`)."""
    r = a.shape[0]
    if rows < r:
        raise ValueError(f"rows: expected >= {r}, got {rows}")
    if rows == r:
        return a
    out = np.zeros((rows,) + tuple(a.shape[1:]), dtype=a.dtype)
    out[:r] = a
    return out
