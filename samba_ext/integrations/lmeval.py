"""A ``samba-ext`` model for EleutherAI's lm-evaluation-harness (0.4.x).

The model is registered under the name ``samba-ext``. lm-eval 0.4.x has no plugin discovery;
an installed samba-ext puts a start-up hook into site-packages
(:mod:`samba_ext.integrations.lmeval_hook`) that registers the name as a lazy placeholder for
:class:`SambaLM` once lm-eval has loaded its own model list, so the plain command line works::

    lm_eval --model samba-ext --model_args pretrained=samba-tiny,device=cpu --tasks ...

and so does ``lm_eval.simple_evaluate(model="samba-ext", ...)``. Importing this module also
registers the model (for a source checkout without the hook, or with it turned off by
``SAMBA_EXT_NO_LM_EVAL_HOOK=1``). ``samba-ext-lm-eval``
(:mod:`samba_ext.integrations.lmeval_cli`) is ``lm_eval`` with this module imported and the
package's task YAMLs (``samba_passkey``, ``samba_phonebook``) on the include path.

Model arguments (``--model_args``): ``pretrained`` (bundled name, ``.safetensors``/``.pth``
file, or ``random:PRESET``), ``device`` (``cpu``/``cuda``), ``batch_size`` (requests per
forward pass, default 1), ``chunk_size`` (prefill chunk, default 2048), ``seed`` (random
weights and sampling), ``max_batch_tokens`` (cap on batch x padded length for
loglikelihood, default 65536).

Scoring, all with the package's own model code:

* ``loglikelihood(context, continuation)``: the tokens are ``encode(context)`` followed by the
  rest of ``encode(context + continuation)`` (lm-eval's split); the value is the sum of the
  continuation tokens' log-probabilities, the same float64 log-softmax as
  :meth:`samba_ext.Samba.nll`. An empty context is replaced by the tokenizer's BOS (else EOS)
  token. Requests are sorted by length and right-padded into batches (the model is causal, so
  padding after a row's end cannot change that row's values).
* ``loglikelihood_rolling(text)``: ``-sum(Samba.nll([prefix] + encode(text)))`` in one
  streaming pass (the state is carried, so no windowing is needed at any length).
* ``generate_until``: greedy decoding (or sampling when ``do_sample``) until one of the
  ``until`` strings, EOS, or ``max_gen_toks`` (default 256); the output is cut before the
  first stop string. Requests whose prompts have the same token length share a batch.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

import numpy as np

from ..eval._common import get_model, greedy_decode
from ..sampling import check_seed

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as e:  # tested in a subprocess (test_missing_lm_eval_says_how_to_install)
    raise ImportError(f"samba_ext.integrations.lmeval needs lm-evaluation-harness 0.4.x: "
                      f"pip install 'samba-ext[lm-eval]' ({e})") from e

__all__ = ["SambaLM", "MODEL_NAME", "register"]

MODEL_NAME = "samba-ext"
DEFAULT_MAX_GEN_TOKS = 256
#: Bytes of float32 logits (batch x padded length x vocab) one loglikelihood batch may hold.
LOGITS_BUDGET = 1 << 28


def _to_int(value: Any, name: str) -> int:
    """An int, or the text of one (lm-eval passes ``model_args`` as text); a float or bool is
    refused rather than truncated."""
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    raise ValueError(f"{name}: expected an integer, got {value!r}")


def _as_int(value: Any, name: str, minimum: int = 1) -> int:
    v = _to_int(value, name)
    if v < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {v}")
    return v


def _as_device(device: Any) -> str:
    d = "cpu" if device is None else str(device).lower()
    if d.startswith("cuda"):
        if d not in ("cuda", "cuda:0"):
            raise ValueError(f"device: samba-ext uses one GPU, pass device=cuda (got {device!r})")
        return "cuda"
    if d != "cpu":
        raise ValueError(f"device: expected cpu or cuda, got {device!r}")
    return d


def log_softmax_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """NLL of ``targets`` (int, shape S) under ``logits`` (float32, shape (S, V)), float64,
    with the same operations as :meth:`samba_ext.Samba.nll` (so the values are identical)."""
    z = logits.astype(np.float64)
    zmax = z.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(z - zmax).sum(axis=-1)) + zmax[..., 0]
    return lse - np.take_along_axis(z, targets[..., None], -1)[..., 0]


class SambaLM(LM):
    """lm-eval ``LM`` backed by a :class:`samba_ext.Samba` (see the module docstring)."""

    def __init__(self, pretrained: Any = "samba-tiny", device: Any = "cpu",
                 batch_size: Any = 1, chunk_size: Any = 2048, seed: Any = 0,
                 max_batch_tokens: Any = 65536, max_batch_size: Any = None,
                 **kwargs: Any) -> None:
        super().__init__()
        unknown = sorted(k for k in kwargs if k not in ("trust_remote_code", "dtype"))
        if unknown:
            raise ValueError(f"samba-ext model_args: unknown argument(s) {', '.join(unknown)}; "
                             "known: pretrained, device, batch_size, chunk_size, seed, "
                             "max_batch_tokens")
        if str(batch_size).startswith("auto"):
            batch_size = max_batch_size if max_batch_size is not None else 8
        self.batch_size = _as_int(batch_size, "batch_size")
        self.chunk_size = _as_int(chunk_size, "chunk_size")
        self.seed = check_seed(_to_int(seed, "seed"))
        self.max_batch_tokens = _as_int(max_batch_tokens, "max_batch_tokens")
        self._device = _as_device(device)
        if isinstance(pretrained, (str, os.PathLike)):
            self.model = get_model(os.fspath(pretrained), device=self._device, seed=self.seed)
        elif hasattr(pretrained, "nll") and hasattr(pretrained, "tokenizer"):
            self.model = pretrained          # an already-built Samba (Python API)
        else:
            raise TypeError(f"pretrained: expected a name/path or a samba_ext.Samba, got "
                            f"{type(pretrained).__name__}")
        self.tok = self.model.tokenizer
        prefix = getattr(self.tok, "bos_id", None)
        if prefix is None:
            prefix = getattr(self.tok, "eos_id", None)
        self.prefix_token_id = prefix

    # lm-eval passes --device/--batch_size as `additional_config`; model_args win over them
    # (LM's default would raise "got multiple values" when both name the device).
    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**{**extra, **dict(arg_dict)})

    @property
    def device(self) -> str:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return type(self.tok).__name__

    # ------------------------------------------------------------------ tokens ---
    def _encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tok.encode(text)]

    def _prefix(self) -> list[int]:
        if self.prefix_token_id is None:
            raise ValueError("this model's tokenizer has neither a BOS nor an EOS token, so an "
                             "empty context cannot be scored; give a non-empty context")
        return [int(self.prefix_token_id)]

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context tokens, continuation tokens) as lm-eval splits them: the continuation is
        ``encode(context + continuation)`` after the first ``len(encode(context))`` tokens
        (trailing spaces of the context move to the continuation first)."""
        n_space = len(context) - len(context.rstrip())
        if n_space:
            continuation = context[-n_space:] + continuation
            context = context[:-n_space]
        if not context:
            return self._prefix(), self._encode(continuation)
        whole = self._encode(context + continuation)
        ctx = self._encode(context)
        return ctx, whole[len(ctx):]

    # --------------------------------------------------------------- scoring ---
    def _score_batch(self, rows: Sequence[tuple[list[int], list[int]]]
                     ) -> list[tuple[float, bool]]:
        """Sum of continuation log-probs and greedy flag for rows of (context, continuation)
        tokens; one right-padded forward pass (float32 logits, float64 log-softmax)."""
        seqs = [c + x for c, x in rows]
        L = max(len(s) for s in seqs)
        pad = np.zeros((len(seqs), L), dtype=np.int64)
        for i, s in enumerate(seqs):
            pad[i, :len(s)] = s
        logits = self.model.forward(pad, chunk_size=self.chunk_size)      # (B, L, V) f32
        out = []
        for i, (c, x) in enumerate(rows):
            if not x:
                out.append((0.0, True))
                continue
            lo, hi = len(c) - 1, len(c) + len(x) - 1      # logits positions predicting x
            lg = logits[i, lo:hi]
            tgt = np.asarray(x, dtype=np.int64)
            nll = log_softmax_nll(lg, tgt)
            greedy = bool(np.all(np.argmax(lg, axis=-1) == tgt))
            out.append((float(-nll.sum()), greedy))
        return out

    def loglikelihood(self, requests: list, disable_tqdm: bool = False
                      ) -> list[tuple[float, bool]]:
        pairs = [self.encode_pair(*req.args) for req in requests]
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        results: list[tuple[float, bool] | None] = [None] * len(pairs)
        bar = self._bar(len(pairs), "samba-ext loglikelihood", disable_tqdm)
        i = 0
        while i < len(order):
            L = len(pairs[order[i]][0]) + len(pairs[order[i]][1])
            V = int(self.model.config.vocab_size)
            take = max(1, min(self.batch_size, self.max_batch_tokens // max(1, L),
                              LOGITS_BUDGET // max(1, 4 * L * V)))
            group = order[i:i + take]
            for j, r in zip(group, self._score_batch([pairs[j] for j in group])):
                results[j] = r
                self._cache("loglikelihood", requests[j].args, r)
            bar.update(len(group))
            i += take
        bar.close()
        return [r for r in results if r is not None]

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        out = []
        bar = self._bar(len(requests), "samba-ext loglikelihood_rolling", disable_tqdm)
        for req in requests:
            (text,) = req.args[:1]
            toks = self._prefix() + self._encode(text)
            v = float(-self.model.nll(np.asarray([toks], dtype=np.int64),
                                      chunk_size=self.chunk_size).sum())
            out.append(v)
            self._cache("loglikelihood_rolling", req.args, v)
            bar.update(1)
        bar.close()
        return out

    # ------------------------------------------------------------- generation ---
    @staticmethod
    def _gen_options(gen_kwargs: dict) -> tuple[list[str], int, dict]:
        kw = dict(gen_kwargs or {})
        until = kw.pop("until", None)
        if until is None:
            until = []
        elif isinstance(until, str):
            until = [until]
        elif not isinstance(until, (list, tuple)):
            raise ValueError(f"generate_until: 'until' must be a string or a list of strings, "
                             f"got {until!r}")
        max_gen = _as_int(kw.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS), "max_gen_toks")
        sample = {}
        do_sample = bool(kw.pop("do_sample", False))
        temperature = float(kw.pop("temperature", 0.0) or 0.0)
        if do_sample and temperature > 0:
            sample["temperature"] = temperature
            if kw.get("top_k") is not None:
                sample["top_k"] = int(kw["top_k"])
            if kw.get("top_p") is not None:
                sample["top_p"] = float(kw["top_p"])
        return [str(u) for u in until if u], max_gen, sample

    @staticmethod
    def _cut(text: str, until: Iterable[str]) -> str:
        cut = len(text)
        for u in until:
            k = text.find(u)
            if k != -1:
                cut = min(cut, k)
        return text[:cut]

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        items = []
        for req in requests:
            context, gen_kwargs = req.args[0], req.args[1] if len(req.args) > 1 else {}
            until, max_gen, sample = self._gen_options(gen_kwargs)
            ids = self._encode(context) if context else self._prefix()
            items.append((ids, until, max_gen, sample))
        results: list[str | None] = [None] * len(items)
        bar = self._bar(len(items), "samba-ext generate_until", disable_tqdm)
        # Batches: greedy requests with the same prompt length and the same options.
        groups: dict[tuple, list[int]] = {}
        for i, (ids, until, max_gen, sample) in enumerate(items):
            if sample:
                groups.setdefault(("sample", i), []).append(i)
            else:
                groups.setdefault((len(ids), tuple(until), max_gen), []).append(i)
        for key, idx in groups.items():
            for s in range(0, len(idx), self.batch_size):
                part = idx[s:s + self.batch_size]
                texts = (self._sample(items[part[0]]) if key[0] == "sample"
                         else self._greedy([items[j] for j in part]))
                for j, t in zip(part, texts):
                    results[j] = t
                    self._cache("generate_until", requests[j].args, t)
                bar.update(len(part))
        bar.close()
        return [r if r is not None else "" for r in results]

    def _greedy(self, batch: list[tuple[list[int], list[str], int, dict]]) -> list[str]:
        until, max_gen = batch[0][1], batch[0][2]
        x = np.asarray([b[0] for b in batch], dtype=np.int64)
        state = self.model.new_state(len(batch))
        logits = self.model.prefill(x, state, chunk_size=self.chunk_size)
        done = (lambda s: any(u in s for u in until)) if until else None
        gen = greedy_decode(self.model, logits, state, max_gen, done=done)
        return [self._cut(self.tok.decode(g), until) for g in gen]

    def _sample(self, item: tuple[list[int], list[str], int, dict]) -> list[str]:
        ids, until, max_gen, sample = item
        eos = getattr(self.tok, "eos_id", None)
        stop: list = list(until) + ([int(eos)] if eos is not None else [])
        out = self.model.generate([int(t) for t in ids], max_new_tokens=max_gen, seed=self.seed,
                                  chunk_size=self.chunk_size, stop=stop, **sample)
        return [self._cut(self.tok.decode([int(t) for t in out]), until)]

    # ----------------------------------------------------------------- helpers ---
    def _cache(self, attr: str, args: Any, value: Any) -> None:
        hook = getattr(self, "cache_hook", None)
        if hook is not None:
            hook.add_partial(attr, args, value)

    @staticmethod
    def _bar(total: int, desc: str, disable: bool):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, disable=disable)


def register() -> type[SambaLM]:
    """Register :class:`SambaLM` as ``samba-ext`` (idempotent; done on import).

    ``lm_eval.models`` (lm-eval's own lazy model entries) is imported first: ``get_model``
    imports it only while the registry is empty, so registering into an empty registry would
    hide ``hf``, ``dummy`` and the rest."""
    import lm_eval.models  # noqa: F401
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        register_model(MODEL_NAME)(SambaLM)
    return SambaLM


register()
