"""The Samba language model, composed from the package kernels through a small backend.

Architecture (docs/specification.md sections 2-5, checklist section 8)::

    x = wte[tokens]                                    # (B, L, D), float32 residual stream
    for each block i:   x = x + mixer_i(rmsnorm(x));   x = x + swiglu_mlp_i(rmsnorm(x))
    logits = rmsnorm(x) @ lm_head.T                    # lm_head = wte when tied

mixer "mamba": Mamba-1 (in_proj -> causal conv + SiLU -> x_proj -> dt_proj -> selective scan
with softplus(dt + bias) and the silu(z) gate -> out_proj); "swa": sliding-window attention
with grouped (lit_gpt) QKV rows, NeoX RoPE at absolute positions, ``window`` keys including
the token itself; "attn": full causal attention (the Llama / Transformer baselines).

Streaming. ``prefill`` runs the prompt in chunks with all state carried: the conv state (last
d_conv-1 inputs) and SSM state (E x N) of every Mamba block, a ring buffer of exactly ``window``
keys/values of every SWA block (keys stored after RoPE), and the position. Memory therefore
depends on chunk_size and window, not on the prompt length, and ``step`` decodes forever in
constant memory. "attn" blocks (full attention) necessarily keep every key/value: their cache
grows with the sequence (capacity doubles when full).

All tensor math goes through :mod:`samba_ext.backend` (NumPy/BLAS GEMMs + C kernels on the CPU).
"""
from __future__ import annotations

import itertools
import json
import os
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np

from .backend import Backend, get_backend
from .config import SambaConfig
from .errors import CheckpointError
from .memory import (available_memory, check_chunk, check_memory, check_state_memory,
                     memory_needed)
from .sampling import check_seed
from .state import SambaState, state_signature
from .weights import (expected_shapes, init_state_dict, pad_rows, qkv_grouped_to_split,
                      qkv_split_to_grouped)

__all__ = ["Samba", "SambaState", "init_state_dict", "expected_shapes", "available_memory"]


#: Config fields a checkpoint may not state; when missing they are guessed (defaults/presets).
GUESSABLE = ("window", "n_head", "n_kv_head", "head_dim", "rope_base", "norm_eps", "tokenizer")


def guessed_fields(cfg: SambaConfig, meta: dict[str, str], explicit: bool,
                   overrides: dict[str, Any]) -> dict[str, Any]:
    """The fields of ``cfg`` that :meth:`Samba.load` guessed -> their value: none for an
    explicit config; for a file with a stored config, the guessable fields it lacks; for
    a config inferred from tensor shapes, every field shapes cannot give (the window of SWA
    blocks, the head split of attention blocks, rope_base, norm_eps, the tokenizer).
    Fields given in ``overrides`` are never guessed."""
    if explicit:
        return {}
    stored: Any = None
    if "config" in meta:
        try:
            stored = json.loads(meta["config"])
        except ValueError:
            stored = None
    kinds = set(cfg.layer_types)
    relevant = {"rope_base", "norm_eps", "tokenizer"}
    if "swa" in kinds:
        relevant.add("window")
    if kinds & {"swa", "attn"}:
        relevant |= {"n_head", "n_kv_head", "head_dim"}
    if isinstance(stored, dict):
        missing = {f for f in relevant if f not in stored}
        if "head_dim" in missing and "n_head" in stored:
            missing.discard("head_dim")        # d_model // n_head, not a guess
    else:
        missing = set(relevant)
        if "n_head" in overrides or "head_dim" in overrides:   # the rest follows from shapes
            missing -= {"n_head", "n_kv_head", "head_dim"}
        if cfg.tokenizer == "byte" and cfg.vocab_size == 259:
            missing.discard("tokenizer")       # the 259-id byte vocabulary is unambiguous
    return {f: getattr(cfg, f) for f in GUESSABLE if f in missing and f not in overrides}


TokensLike = Union[np.ndarray, Sequence[int], Sequence[Sequence[int]]]

_UIDS = itertools.count(1)   # one per model: tags its recorded decode steps (never reused)


def _check_logits_mode(logits: str) -> None:
    if logits not in ("host", "device"):
        raise ValueError(f"logits: expected 'host' or 'device', got {logits!r}")


# -------------------------------------------------------------------------------- model ---
class Samba:
    """A Samba-family language model (see the module docstring).

    ``Samba(config, seed=0, device="cpu")`` builds a randomly initialised model (seed: an int
    >= 0, or None for fresh entropy);
    :meth:`load` reads a bundled name, a ``.safetensors`` file or a lit_gpt ``.pth``.
    """

    def __init__(self, config: SambaConfig, seed: int | None = 0, device: str | Backend = "cpu",
                 *, state_dict: Optional[dict[str, np.ndarray]] = None,
                 tokenizer: Any = None, base_dir: Optional[str] = None):
        if isinstance(config, str):
            config = SambaConfig.preset(config)
        if not isinstance(config, SambaConfig):
            raise TypeError(f"config: expected a SambaConfig, got {type(config).__name__}")
        self.config = config
        self.backend = get_backend(device)
        self.device = self.backend.device
        self._tokenizer = tokenizer
        self._base_dir = base_dir
        self.metadata: dict[str, str] = {}
        self._uid = next(_UIDS)
        #: config fields :meth:`load` could not read from the file and guessed -> value
        self.guessed: dict[str, Any] = {}
        if state_dict is None:
            state_dict = init_state_dict(config, check_seed(seed, allow_none=True))
        self._set_weights(state_dict)

    # ------------------------------------------------------------------ properties ---
    @property
    def name(self) -> str:
        return self.config.name

    @property
    def tokenizer(self):
        """The tokenizer named by ``config.tokenizer`` (loaded on first use)."""
        if self._tokenizer is None or isinstance(self._tokenizer, (str, os.PathLike)):
            from .tokenizer import load_tokenizer
            spec = self._tokenizer if self._tokenizer is not None else self.config.tokenizer
            self._tokenizer = load_tokenizer(spec, base_dir=self._base_dir)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tok) -> None:
        self._tokenizer = tok

    def num_parameters(self) -> int:
        """Number of parameters (a tied embedding counted once)."""
        return self.config.num_parameters()

    def __repr__(self) -> str:
        c = self.config
        kinds = {t: c.layer_types.count(t) for t in ("mamba", "swa", "attn") if t in c.layer_types}
        return (f"Samba({c.name!r}, {self.num_parameters() / 1e6:.2f}M params, blocks={kinds}, "
                f"d_model={c.d_model}, window={c.window}, device={self.device!r})")

    # --------------------------------------------------------------------- weights ---
    def _set_weights(self, sd: dict[str, np.ndarray]) -> None:
        """Validate a lit_gpt-keyed state dict against the config and upload it."""
        cfg, be = self.config, self.backend
        want = expected_shapes(cfg)
        sd = dict(sd)
        if cfg.tie_embeddings and "lm_head.weight" in sd:
            lm = np.asarray(sd.pop("lm_head.weight"))
            wte = np.asarray(sd.get("transformer.wte.weight"))
            if lm.shape != wte.shape or not np.array_equal(lm, wte):
                raise CheckpointError("lm_head.weight differs from transformer.wte.weight but "
                                      "config.tie_embeddings is True")
        missing = [k for k in want if k not in sd]
        extra = [k for k in sd if k not in want]
        if missing or extra:
            raise CheckpointError(
                f"checkpoint does not match the config ({cfg.name}): "
                + (f"missing {missing[:4]}{'...' if len(missing) > 4 else ''} " if missing else "")
                + (f"unexpected {extra[:4]}{'...' if len(extra) > 4 else ''}" if extra else ""))
        for k, shp in want.items():
            a = np.asarray(sd[k])
            if tuple(a.shape) != shp:
                raise CheckpointError(f"{k}: expected shape {shp} for config {cfg.name!r}, "
                                      f"got {tuple(a.shape)}")
            if a.dtype.kind != "f":
                raise CheckpointError(f"{k}: expected a float tensor, got dtype {a.dtype}")
        f32 = {k: np.ascontiguousarray(sd[k], dtype=np.float32) for k in want}
        up = be.asarray
        self._wte = up(f32["transformer.wte.weight"])
        self._head = self._wte if cfg.tie_embeddings else up(f32["lm_head.weight"])
        self._ln_f = up(f32["transformer.ln_f.weight"])
        E, F = cfg.d_inner, cfg.intermediate_size
        # the backend's MLP width (>= F; the padding is zero weights, see Backend.mlp_width)
        Fp = self._mlp_width = int(be.mlp_width(F))
        H, G, hd = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        blocks = []
        for i, t in enumerate(cfg.layer_types):
            p = f"transformer.h.{i}."
            b = SimpleNamespace(kind=t)
            b.norm_1 = up(f32[p + "norm_1.weight"])
            b.norm_2 = up(f32[p + "norm_2.weight"])
            w1, w2, w3 = (f32[p + f"mlp.swiglu.w{j}.weight"] for j in (1, 2, 3))
            b.w12 = up(np.concatenate([pad_rows(w1, Fp), pad_rows(w2, Fp)]))
            b.w1, b.w2 = b.w12[:Fp], b.w12[Fp:]
            b.w3 = up(np.ascontiguousarray(pad_rows(w3.T, Fp).T))
            if t == "mamba":
                b.in_proj = up(f32[p + "attn.in_proj.weight"])
                b.conv_w = up(f32[p + "attn.conv1d.weight"].reshape(E, cfg.d_conv))
                b.conv_b = up(f32[p + "attn.conv1d.bias"])
                b.x_proj = up(f32[p + "attn.x_proj.weight"])
                b.dt_proj = up(f32[p + "attn.dt_proj.weight"])
                b.dt_bias = up(f32[p + "attn.dt_proj.bias"])
                b.A_log = f32[p + "attn.A_log"]              # host copy, for saving exactly
                b.A = up(-np.exp(b.A_log.astype(np.float64)).astype(np.float32))
                b.Dskip = up(f32[p + "attn.D"])
                b.out_proj = up(f32[p + "attn.out_proj.weight"])
            else:
                b.wqkv = up(qkv_grouped_to_split(f32[p + "attn.attn.weight"], cfg))
                b.wq = b.wqkv[: H * hd]
                b.wk = b.wqkv[H * hd: (H + G) * hd]
                b.wv = b.wqkv[(H + G) * hd:]
                b.wo = up(f32[p + "attn.proj.weight"])
            blocks.append(b)
        self._blocks = blocks

    def state_dict(self) -> dict[str, np.ndarray]:
        """Weights as {lit_gpt key: float32 numpy array} (lm_head.weight only if untied)."""
        cfg, np_ = self.config, self.backend.to_numpy
        F, E = cfg.intermediate_size, cfg.d_inner
        sd = {"transformer.wte.weight": np.array(np_(self._wte)),
              "transformer.ln_f.weight": np.array(np_(self._ln_f))}
        if not cfg.tie_embeddings:
            sd["lm_head.weight"] = np.array(np_(self._head))
        for i, b in enumerate(self._blocks):
            p = f"transformer.h.{i}."
            sd[p + "norm_1.weight"] = np.array(np_(b.norm_1))
            sd[p + "norm_2.weight"] = np.array(np_(b.norm_2))
            w12, Fp = np.array(np_(b.w12)), self._mlp_width   # without the padding
            sd[p + "mlp.swiglu.w1.weight"] = w12[:F].copy()
            sd[p + "mlp.swiglu.w2.weight"] = w12[Fp:Fp + F].copy()
            sd[p + "mlp.swiglu.w3.weight"] = np.ascontiguousarray(np.array(np_(b.w3))[:, :F])
            if b.kind == "mamba":
                sd[p + "attn.in_proj.weight"] = np.array(np_(b.in_proj))
                sd[p + "attn.conv1d.weight"] = np.array(np_(b.conv_w)).reshape(E, 1, cfg.d_conv)
                sd[p + "attn.conv1d.bias"] = np.array(np_(b.conv_b))
                sd[p + "attn.x_proj.weight"] = np.array(np_(b.x_proj))
                sd[p + "attn.dt_proj.weight"] = np.array(np_(b.dt_proj))
                sd[p + "attn.dt_proj.bias"] = np.array(np_(b.dt_bias))
                sd[p + "attn.A_log"] = np.array(b.A_log)
                sd[p + "attn.D"] = np.array(np_(b.Dskip))
                sd[p + "attn.out_proj.weight"] = np.array(np_(b.out_proj))
            else:
                sd[p + "attn.attn.weight"] = qkv_split_to_grouped(np.array(np_(b.wqkv)), cfg)
                sd[p + "attn.proj.weight"] = np.array(np_(b.wo))
        return sd

    def save(self, path: str | os.PathLike, dtype: str = "F32",
             metadata: Optional[dict[str, str]] = None) -> None:
        """Write a safetensors file with lit_gpt key names and ``__metadata__`` = {"format":
        "samba-ext", "config": JSON of the config, "tokenizer": ..., **metadata}.
        dtype: "F32" (default), "F16" or "BF16". A ``path`` that is a folder (exists, or ends
        with "/") gets a Hugging Face-style folder instead (config.json + model.safetensors;
        samba_ext.io.hf_folder.save_pretrained has the naming and sharding options)."""
        from .safetensors_io import check_dtype, check_metadata, write_safetensors
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
        check_dtype(dtype)
        if os.path.isdir(path) or os.fspath(path).endswith(("/", os.sep)):
            from .io.hf_folder import save_pretrained
            save_pretrained(self, path, dtype=dtype, metadata=metadata)
            return
        tok = self.config.tokenizer
        meta = {"format": "samba-ext", "config": json.dumps(self.config.to_dict()),
                "tokenizer": tok if isinstance(tok, str) else "byte"}
        meta.update(check_metadata(metadata, reserved=tuple(meta)))
        write_safetensors(path, self.state_dict(), meta, dtype=dtype)

    @classmethod
    def load(cls, path_or_name: str | os.PathLike, device: str = "cpu",
             config: Optional[SambaConfig] = None, **overrides: Any) -> "Samba":
        """Load a model.

        path_or_name: a bundled name ("samba-tiny", "llama-tiny"), a Hugging Face-style folder
        (docs/checkpoints.md), a ``.safetensors`` file
        (config from its metadata) or a lit_gpt ``.pth`` checkpoint (config inferred from the
        tensor shapes; see :func:`samba_ext.litgpt.infer_config`). ``config`` replaces the
        stored/inferred config; ``overrides`` replace single fields (e.g. ``window=2048``,
        ``n_head=12``, ``tokenizer="path/to/tokenizer.model"``).

        A bundled name always means the bundled model, even when a file or folder of that
        name exists in the current directory; give local files as paths (``./samba-tiny``).
        """
        from .data import BUNDLED_MODELS, resolve_model_spec
        from .io.load import load_checkpoint      # formats, validation: samba_ext/io/

        if not isinstance(path_or_name, (str, os.PathLike)):
            raise TypeError(f"path_or_name: expected a bundled name, a str or os.PathLike path, "
                            f"got {type(path_or_name).__name__}")
        spec = os.fspath(path_or_name)
        # a bundled name always means the bundled model; local files are given as paths
        # (./samba-tiny), so a file planted in the current directory is never picked up
        path, _ = resolve_model_spec(path_or_name)
        if not path.exists():
            raise FileNotFoundError(f"{spec}: no such file, and not a bundled model name "
                                    f"({sorted(BUNDLED_MODELS)})")
        explicit = config is not None
        config, sd, meta = load_checkpoint(path, config, **overrides)
        tok = config.tokenizer
        try:
            m = cls(config, device=device, state_dict=sd, tokenizer=tok,
                    base_dir=str(path if path.is_dir() else path.parent))
        except CheckpointError as e:   # key / shape mismatches: name the file
            raise CheckpointError(f"{path}: {e}") from None
        m.metadata = dict(meta)
        # a folder's config.json states the config (its missing fields are the format's own
        # defaults), so only single files are checked for guessed fields
        m.guessed = {} if path.is_dir() else guessed_fields(config, meta, explicit, overrides)
        return m

    # ---------------------------------------------------------------------- state ---
    def new_state(self, batch: int = 1, capacity: int = 0) -> SambaState:
        """Empty state for ``batch`` sequences (all zeros, position 0).

        capacity: positions preallocated in the key/value caches of full-attention ("attn")
        blocks, which otherwise start empty and double when full; a state that will hold
        ``n`` tokens never reallocates with ``capacity >= n``. SWA ring buffers always hold
        ``window`` positions and Mamba states are fixed-size, so they ignore it."""
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 0:
            raise ValueError(f"batch: expected an int >= 0, got {batch!r}")
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) \
                or capacity < 0:
            raise ValueError(f"capacity: expected an int >= 0, got {capacity!r}")
        cfg, be = self.config, self.backend
        if be.device == "cpu":         # host memory; a GPU allocation reports its own error
            check_state_memory(cfg, int(batch), int(capacity), np.dtype(be.cache_dtype).itemsize)
        layers = []
        for t in cfg.layer_types:
            if t == "mamba":
                layers.append({"conv": be.zeros((batch, cfg.d_inner, cfg.d_conv - 1)),
                               "ssm": be.zeros((batch, cfg.d_inner, cfg.d_state))})
            else:
                cap = cfg.window if t == "swa" else int(capacity)
                shp = (batch, cap, cfg.n_kv_head, cfg.head_dim)
                layers.append({"k": be.zeros(shp, be.cache_dtype),
                               "v": be.zeros(shp, be.cache_dtype)})
        return SambaState(batch, cfg.layer_types, layers, be, state_signature(cfg))

    # ---------------------------------------------------------------------- input ---
    def _tokens2d(self, tokens: TokensLike, name: str = "tokens") -> np.ndarray:
        a = np.asarray(tokens)
        if a.dtype == object or (a.size and a.dtype.kind not in "iu"):
            raise TypeError(f"{name}: expected integer token ids, got dtype {a.dtype}")
        if a.ndim == 1:
            a = a[None, :]
        if a.ndim != 2:
            raise ValueError(f"{name}: expected shape (batch, seqlen), got {a.shape}")
        a = a.astype(np.int64, copy=False)
        if a.size and (a.min() < 0 or a.max() >= self.config.vocab_size):
            raise ValueError(f"{name}: token ids must lie in [0, {self.config.vocab_size}), got "
                             f"min {a.min()} max {a.max()}")
        return a

    def _check_state(self, state: SambaState, batch: int) -> None:
        if not isinstance(state, SambaState):
            raise TypeError("state: expected a SambaState from this model's new_state()")
        state.check_for(self.config, batch)

    # ------------------------------------------------------------------ the blocks ---
    def _mlp(self, b, n):
        """n (B, L, D) -> (B, L, D) (a decode step's MLP: _mlp_out)."""
        be = self.backend
        h = be.swiglu(be.matmul(n, b.w1, trans_b=True), be.matmul(n, b.w2, trans_b=True))
        return be.matmul(h, b.w3, trans_b=True)

    def _mlp_out(self, b, gu):
        """gu (B, 2F) = [gate | up] of a decode step's MLP -> (B, D)."""
        be, F = self.backend, self._mlp_width
        return be.swiglu_matmul(gu[:, :F], gu[:, F:], b.w3)

    def _mamba_chunk(self, b, n, st):
        """n (B, L, D) -> (B, L, D); updates st['conv'], st['ssm'].

        GEMM layouts (chosen for BLAS speed): in_proj writes channel-major (B, 2E, L) as the
        conv/scan kernels want; x_proj writes token-major (B, L, R + 2N) (a tall GEMM rather
        than a 48-row one), which is then transposed (R + 2N small rows) so that dt_proj and
        the scan read contiguous rows."""
        be, cfg = self.backend, self.config
        E, R, N = cfg.d_inner, cfg.dt_rank, cfg.d_state
        xz = be.matmul(b.in_proj, n, trans_b=True)          # (B, 2E, L)
        xc, st["conv"] = be.causal_conv1d(xz[:, :E], b.conv_w, b.conv_b, st["conv"])
        dbl = be.transpose(be.matmul(xc, b.x_proj, trans_a=True, trans_b=True))  # (B, R+2N, L)
        dt = be.matmul(b.dt_proj, dbl[:, :R])                # (B, E, L)
        y, st["ssm"] = be.selective_scan(xc, dt, b.A, dbl[:, R:R + N], dbl[:, R + N:], b.Dskip,
                                         xz[:, E:], b.dt_bias, st["ssm"])
        return be.matmul(y, b.out_proj, trans_a=True, trans_b=True)   # (B, L, D)

    def _attn_chunk(self, b, n, st, p0: int):
        """n (B, L, D) at absolute positions p0..p0+L-1 -> (B, L, D); updates the cache."""
        be, cfg = self.backend, self.config
        B, L = n.shape[0], n.shape[1]
        H, G, hd = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        q = be.apply_rotary(be.matmul(n, b.wq, trans_b=True).reshape(B, L, H, hd),
                            p0, cfg.rope_base)
        k = be.apply_rotary(be.matmul(n, b.wk, trans_b=True).reshape(B, L, G, hd),
                            p0, cfg.rope_base)
        v = be.matmul(n, b.wv, trans_b=True).reshape(B, L, G, hd)
        if b.kind == "swa":
            W = cfg.window
            n_prev = min(p0, W - 1)
            if n_prev > 0:   # the last window-1 keys, in position order, from the ring
                idx = np.arange(p0 - n_prev, p0, dtype=np.int64) % W
                kf = be.concat([be.take(st["k"], idx, 1), k], 1)
                vf = be.concat([be.take(st["v"], idx, 1), v], 1)
            else:
                kf, vf = k, v
            o = be.swa_attention(q, kf, vf, W)
            m = min(L, W)    # ring write: position p -> slot p % W
            idx = np.arange(p0 + L - m, p0 + L, dtype=np.int64) % W
            be.put(st["k"], idx, k[:, L - m:], 1)
            be.put(st["v"], idx, v[:, L - m:], 1)
        else:
            self._grow(st, p0 + L)
            idx = np.arange(p0, p0 + L, dtype=np.int64)
            be.put(st["k"], idx, k, 1)
            be.put(st["v"], idx, v, 1)
            o = be.swa_attention(q, st["k"][:, : p0 + L], st["v"][:, : p0 + L], None)
        return be.matmul(o.reshape(B, L, H * hd), b.wo, trans_b=True)

    def _grow(self, st, need: int) -> None:
        """Full-attention cache: make capacity >= need (doubling)."""
        cap = st["k"].shape[1]
        if cap >= need:
            return
        be = self.backend
        new_cap = max(need, 2 * cap, 64)
        for key in ("k", "v"):
            old = st[key]
            new = be.zeros((old.shape[0], new_cap) + tuple(old.shape[2:]), be.cache_dtype)
            if cap:
                be.put(new, np.arange(cap, dtype=np.int64), old, 1)
            st[key] = new

    def _chunk(self, tokens: np.ndarray, state: SambaState, want: str, tok_dev: Any = None):
        """Run tokens (B, L) (L >= 1) through the model, advancing ``state``.
        want: "all" -> logits (B, L, V) backend array; "last" -> (B, V). tok_dev: the same
        tokens already as a backend index array (:meth:`Backend.asarray`), else uploaded here.
        Nothing is copied to the host: ``state.logits`` keeps the last position's logits as
        a backend array (converted to NumPy when read)."""
        be, cfg = self.backend, self.config
        B, L = tokens.shape
        p0 = int(state.pos[0]) if B else 0
        if B and not np.all(state.pos == p0):
            raise ValueError("prefill: all sequences of the state must be at the same position")
        x = be.take(self._wte, tokens if tok_dev is None else tok_dev, 0,
                    np.float32)                            # (B, L, D) float32 residual
        resid, delta = x, None
        state._broken = True       # cleared below; stays set if interrupted (Ctrl-C) midway
        for b, st in zip(self._blocks, state.layers):
            if delta is None:
                n = be.rms_norm(resid, b.norm_1, cfg.norm_eps)
            else:
                n, resid = be.rms_norm(delta, b.norm_1, cfg.norm_eps, resid)
            mix = self._mamba_chunk(b, n, st) if b.kind == "mamba" else \
                self._attn_chunk(b, n, st, p0)
            n, resid = be.rms_norm(mix, b.norm_2, cfg.norm_eps, resid)
            delta = self._mlp(b, n)
        state.pos += L
        state._broken = False
        if want == "all":
            nf, _ = be.rms_norm(delta, self._ln_f, cfg.norm_eps, resid)
            logits = be.matmul(nf, self._head, trans_b=True, dtype=np.float32)
            state.logits = be.copy(logits[:, -1])
            return logits
        nf, _ = be.rms_norm(delta[:, -1], self._ln_f, cfg.norm_eps, resid[:, -1])
        logits = be.matmul(nf, self._head, trans_b=True, dtype=np.float32)
        state.logits = logits
        return logits

    # --------------------------------------------------------------- memory check ---
    def _memory_needed(self, B: int, L: int, cs: int, state: Optional[SambaState],
                       logits: str) -> tuple[int, list[str]]:
        """See :func:`samba_ext.memory.memory_needed`."""
        return memory_needed(self.config, B, L, cs, state, logits)

    def _check_memory(self, what: str, B: int, L: int, cs: int,
                      state: Optional[SambaState], logits: str) -> None:
        """See :func:`samba_ext.memory.check_memory`."""
        check_memory(self.config, what, B, L, cs, state, logits)

    # ------------------------------------------------------------------ public API ---
    def forward(self, tokens: TokensLike, chunk_size: Optional[int] = None) -> np.ndarray:
        """Logits for every position: tokens int (B, L) -> float32 (B, L, vocab).

        One pass over the whole sequence (chunk_size None) or in chunks of chunk_size with
        the state carried (same result; the logits themselves are B*L*vocab floats).
        """
        t = self._tokens2d(tokens)
        B, L = t.shape
        V = self.config.vocab_size
        if B == 0 or L == 0:
            return np.zeros((B, L, V), np.float32)
        cs = L if chunk_size is None else check_chunk(chunk_size)
        self._check_memory("forward", B, L, cs, None, "all")
        state = self.new_state(B)
        parts = [self.backend.to_numpy(self._chunk(t[:, c:c + cs], state, "all"))
                 for c in range(0, L, cs)]
        return np.ascontiguousarray(parts[0] if len(parts) == 1 else np.concatenate(parts, 1),
                                    dtype=np.float32)

    __call__ = forward

    def prefill(self, tokens: TokensLike, state: SambaState, chunk_size: Optional[int] = None,
                progress: Optional[Callable[[int, int], Any]] = None, *,
                logits: str = "host") -> Any:
        """Consume tokens (B, L) into ``state`` in chunks; returns the logits of the last
        position, float32 (B, vocab). Peak memory ~ chunk_size x (widths) + window, whatever L.
        chunk_size: None = the backend's default (2048 on the CPU; on the GPU the largest of
        16384 / 8192 / 4096 / 2048 that fits a quarter of the free device memory).
        progress(done_tokens, total_tokens) is called after each chunk.
        logits: "host" (default) returns a NumPy array; "device" returns the backend's array
        (a DeviceArray on the GPU: nothing is copied to the host and nothing waits for the
        GPU; NumPy on the CPU). ``state.logits`` (NumPy) is converted on first access."""
        _check_logits_mode(logits)
        t = self._tokens2d(tokens)
        B, L = t.shape
        self._check_state(state, B)
        be = self.backend
        cs = be.default_chunk(self.config, B, L) if chunk_size is None else \
            check_chunk(chunk_size)
        self._check_memory("prefill", B, L, cs, state, "last")
        # every chunk's tokens go to the device before the first chunk is queued
        dev = [be.asarray(t[:, c:c + cs], np.int64) for c in range(0, L, cs)] if B else []
        for i, c in enumerate(range(0, L, cs)):
            self._chunk(t[:, c:c + cs], state, "last", dev[i] if dev else None)
            if progress is not None:
                progress(min(c + cs, L), L)
        if not state.has_logits():
            if B == 0:
                z = np.zeros((0, self.config.vocab_size), np.float32)
                return z if logits == "host" else be.asarray(z)
            raise ValueError("prefill: no tokens given and the state has consumed none yet")
        if logits == "device":
            return be.copy(state.device_logits())
        return state.logits.copy()

    def step(self, tokens: TokensLike, state: SambaState, *, logits: str = "host") -> Any:
        """Decode one token per sequence: tokens (B,) -> logits float32 (B, vocab).

        Constant memory: Mamba blocks update their conv/SSM states in place, SWA blocks write
        the new key/value into slot pos % window of their ring buffer (RoPE at the absolute
        position) and attend over the last min(pos+1, window) keys.
        logits: "host" (default, NumPy) or "device" (the backend's array; see :meth:`prefill`).
        On the GPU a step is recorded into a CUDA graph; the next steps of the same state
        replay it with new inputs (samba_ext/backend_cuda.py).
        """
        _check_logits_mode(logits)
        tok = np.asarray(tokens)
        if tok.ndim == 0:
            tok = tok[None]
        if tok.ndim != 1:
            raise ValueError(f"tokens: expected shape (batch,), got {tok.shape}")
        tok = self._tokens2d(tok[:, None])[:, 0]
        B = tok.shape[0]
        self._check_state(state, B)
        be, cfg = self.backend, self.config
        if B == 0:
            z = np.zeros((0, cfg.vocab_size), np.float32)
            return z if logits == "host" else be.asarray(z)
        pos = state.pos
        for b, st in zip(self._blocks, state.layers):
            if b.kind == "attn":
                self._grow(st, int(pos.max()) + 1)   # before recording: new arrays, new key
        # Every per-step host value in one int64 array (the inputs a graph replay replaces):
        # tokens, positions, SWA ring slot and valid count, full-attention valid count (its
        # slot is the position: the cache holds every position).
        W = cfg.window if cfg.window else 1
        host = np.stack([tok, pos, pos % W, np.minimum(pos + 1, W), pos + 1]).astype(np.int64)
        key = be.step_key((self._uid, B), [a for d in state.layers for a in d.values()])
        state._broken = True
        out = be.replay_step(key, host) if key is not None else None
        if out is None:
            be.begin_step(key)                          # CUDA: record the step for a graph
            out = be.end_step(self._step_body(be.step_inputs(host), state))
        state.pos += 1
        state.logits = out
        state._broken = False
        if logits == "device":
            return be.copy(out)
        return state.logits.copy()

    def _step_body(self, ins: Any, state: SambaState) -> Any:
        """The decode step's backend calls: ins (5, B) int64 backend array (see step) ->
        logits (B, V) float32."""
        be, cfg = self.backend, self.config
        H, G, hd, E, R, N = (cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.d_inner,
                             cfg.dt_rank, cfg.d_state)
        B = state.batch
        tok, pos = ins[0], ins[1]
        x = be.take(self._wte, tok, 0, np.float32)      # (B, D) float32 residual
        resid, delta = x, None
        for b, st in zip(self._blocks, state.layers):
            # the block's pre-norm and its first product in one call (one kernel at B = 1 on
            # the GPU): (B, 2E) for Mamba, (B, (H + 2G) hd) for attention
            w_in = b.in_proj if b.kind == "mamba" else b.wqkv
            if delta is None:
                h = be.rms_norm_matmul(resid, b.norm_1, cfg.norm_eps, None, w_in)
            else:
                h, resid = be.rms_norm_matmul(delta, b.norm_1, cfg.norm_eps, resid, w_in)
            if b.kind == "mamba":
                xz = h                                                      # (B, 2E)
                xc = be.causal_conv1d_update(xz[:, :E], st["conv"], b.conv_w, b.conv_b)
                dbl = be.matmul(xc, b.x_proj, trans_b=True)                 # (B, R + 2N)
                # dt = dbl[:, :R] @ dt_proj^T feeds the state update (one kernel at B = 1)
                y = be.dt_state_update(st["ssm"], xc, dbl[:, :R], b.dt_proj, b.A,
                                       dbl[:, R:R + N], dbl[:, R + N:], b.Dskip, xz[:, E:],
                                       b.dt_bias)
                mix = be.matmul(y, b.out_proj, trans_b=True)
            else:
                # h = qkv (B, (H + 2G) hd): RoPE on the H query and G key heads (same position
                # per row), k and v into the caches at this step's slots
                slots, n_valid = (ins[2], ins[3]) if b.kind == "swa" else (pos, ins[4])
                q = be.rotary_write_kv(h, H, G, pos, cfg.rope_base, st["k"], st["v"], slots)
                o = be.swa_decode(q, st["k"], st["v"], pos, n_valid)
                mix = be.matmul(o.reshape(B, H * hd), b.wo, trans_b=True)
            gu, resid = be.rms_norm_matmul(mix, b.norm_2, cfg.norm_eps, resid, b.w12)
            delta = self._mlp_out(b, gu)
        lg, _ = be.rms_norm_matmul(delta, self._ln_f, cfg.norm_eps, resid, self._head,
                                   dtype=np.float32)
        return lg

    def nll(self, tokens: TokensLike, state: Optional[SambaState] = None,
            chunk_size: int = 2048, progress: Optional[Callable[[int, int], Any]] = None
            ) -> np.ndarray:
        """Per-token negative log-likelihood, float64 (B, L-1):
        out[:, t] = -log p(tokens[:, t+1] | tokens[:, :t+1]) (plus the state's context if a
        state is given; the tokens then continue it). Streams in chunks with the state
        carried: memory ~ chunk_size x vocab, whatever L."""
        t = self._tokens2d(tokens)
        B, L = t.shape
        if state is None:
            state = self.new_state(B)
        self._check_state(state, B)
        if L == 0 or B == 0:
            return np.zeros((B, max(L - 1, 0)), dtype=np.float64)
        cs = check_chunk(chunk_size)
        self._check_memory("nll", B, L, cs, state, "chunk")
        out = np.zeros((B, max(L - 1, 0)), dtype=np.float64)
        for c in range(0, L, cs):
            e = min(c + cs, L)
            lg = self.backend.to_numpy(self._chunk(t[:, c:e], state, "all"))
            m = min(e, L - 1) - c           # positions with a target
            if m > 0:
                z = lg[:, :m].astype(np.float64)
                zmax = z.max(axis=-1, keepdims=True)
                lse = np.log(np.exp(z - zmax).sum(axis=-1)) + zmax[..., 0]
                tgt = t[:, c + 1:c + 1 + m]
                out[:, c:c + m] = lse - np.take_along_axis(z, tgt[..., None], -1)[..., 0]
            if progress is not None:
                progress(e, L)
        return out

    def generate(self, prompt: Union[str, TokensLike], max_new_tokens: int = 32,
                 temperature: float = 0.0, top_k: Optional[int] = None,
                 top_p: Optional[float] = None, seed: Optional[int] = None,
                 stop: Union[None, int, str, Iterable[Union[int, str]]] = None,
                 stream: Optional[Callable[[Any], Any]] = None,
                 state: Optional[SambaState] = None, chunk_size: Optional[int] = None,
                 progress: Optional[Callable[[int, int], Any]] = None
                 ) -> Union[str, list[int], list[list[int]]]:
        """Generate a continuation of ``prompt``.

        prompt: text (encoded with ``model.tokenizer``), a list / 1-D array of token ids, or a
        2-D array (B, L) of ids (a batch). Returns the generated continuation only: a str for
        a text prompt, a list[int] for ids, a list of lists for a batch.

        temperature 0 = greedy; otherwise sampling from softmax(logits / temperature) cut to
        top_k / top_p, reproducible with ``seed``. stop: token id(s) and/or string(s); the
        default stops at the tokenizer's EOS id (``stop=[]`` never stops early). A stop token
        or string is not included in the output. stream: called as text arrives
        (``stream(piece: str)``) for a text prompt, ``stream(token_id)`` for ids, and
        ``stream(list_of_B_ids)`` for a batch (-1 for finished rows). state: continue this
        state (the prompt is appended to it; the prompt may then be empty). On return the
        state has consumed the prompt and every sampled token (including a stop token).
        """
        from .generation import generate

        return generate(self, prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                        top_k=top_k, top_p=top_p, seed=seed, stop=stop, stream=stream,
                        state=state, chunk_size=chunk_size, progress=progress)
