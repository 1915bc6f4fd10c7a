"""Shared helpers of the evaluations: model resolution and provenance, progress bars,
greedy decoding with early stop."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

from ._format import fmt_tokens  # re-exported (one definition, in _format)

__all__ = [
    "fmt_tokens", "get_model", "load_model", "resolve_model", "model_info", "model_hash",
    "Progress", "greedy_decode", "mark_random_weights"
]

#: Prompts at least this long get their own prefill progress bar.
PREFILL_BAR_MIN_TOKENS = 32768

_RANDOM_ATTR = "_samba_ext_random_weights_note"


def load_model(spec: str | os.PathLike, device: str = "cpu", **overrides: Any):
    """``Samba.load(spec, device=device, **overrides)``, remembering the weights file it came
    from (so results can carry the file's SHA-256)."""
    from ..model import Samba

    from ..data import resolve_model_spec

    model = Samba.load(spec, device=device, **overrides)
    p, _ = resolve_model_spec(spec)      # the same name-or-path rule as Samba.load
    path = os.fspath(p) if p.is_file() else None
    if path is not None:
        try:
            model._samba_ext_source = os.path.abspath(path)
        except Exception:
            pass
    return model


DEFAULT_MODEL = "samba-tiny"


def _bundled_file(name: str) -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                        f"{name}.safetensors")


def get_model(spec: str | os.PathLike | None = None, device: str = "cpu", seed: int = 0,
              warn: bool = True, overrides: dict[str, Any] | None = None):
    """The model the CLI and the notebook use.

    * ``None``: the bundled ``samba-tiny``; when its weights are not installed, a
      RANDOM-weight model with the samba-tiny config, flagged so that every result says so
      (and a warning on stderr when ``warn``).
    * ``"random:PRESET"``: random weights with ``SambaConfig.preset(PRESET)`` (flagged).
    * anything else: ``Samba.load(spec, device=device)`` (bundled name, .safetensors, .pth).

    ``overrides``: config fields replacing the stored / inferred / preset ones.

    Raises KeyError (unknown preset), and whatever ``Samba.load`` raises for bad files.
    """
    over = dict(overrides or {})
    from ..config import SambaConfig
    from ..model import Samba

    if spec is None and not os.path.isfile(_bundled_file(DEFAULT_MODEL)):
        note = (f"the bundled {DEFAULT_MODEL} weights are not in this installation, so this run "
                f"uses a RANDOM-WEIGHT model with the {DEFAULT_MODEL} config; its accuracy is "
                f"meaningless (pass --model PATH to evaluate a trained checkpoint)")
        model = Samba(SambaConfig.preset(DEFAULT_MODEL, **over), seed=seed, device=device)
        mark_random_weights(model, note)
        if warn:
            print(f"WARNING: {note}", file=sys.stderr)
        return model
    spec = DEFAULT_MODEL if spec is None else os.fspath(spec)
    if spec.startswith("random:"):
        preset = spec.split(":", 1)[1]
        if preset not in SambaConfig.presets():
            raise KeyError(f"--model {spec}: unknown preset {preset!r}; presets: "
                           f"{', '.join(SambaConfig.presets())}")
        model = Samba(SambaConfig.preset(preset, **over), seed=seed, device=device)
        mark_random_weights(model, f"model {spec}: RANDOM weights (preset {preset}); accuracy "
                                   "and perplexity are meaningless")
        return model
    return load_model(spec, device, **over)


def resolve_model(model: Any, device: str = "cpu"):
    """A Samba instance, or a name/path given to ``Samba.load(model, device=device)``."""
    if isinstance(model, (str, os.PathLike)):
        return load_model(model, device)
    for attr in ("tokenizer", "new_state", "prefill", "step"):
        if not hasattr(model, attr):
            raise TypeError(f"model: expected a samba_ext.Samba (or a name/path to load), got "
                            f"{type(model).__name__} without .{attr}")
    return model


def mark_random_weights(model: Any, note: str) -> None:
    """Flag a model as carrying random (untrained) weights; results then say so."""
    setattr(model, _RANDOM_ATTR, note)


def _config_dict(model: Any) -> dict:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return {}
    if hasattr(cfg, "to_dict"):
        d = cfg.to_dict()
    elif dataclasses.is_dataclass(cfg):
        d = dataclasses.asdict(cfg)
    else:
        d = dict(getattr(cfg, "__dict__", {}))
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def _weights_file(model: Any) -> str | None:
    for attr in ("_samba_ext_source", "path", "source_path", "weights_path", "source"):
        p = getattr(model, attr, None)
        if isinstance(p, (str, os.PathLike)) and os.path.isfile(p):
            return os.fspath(p)
    return None


def _display_source(path: str | None) -> str | None:
    """The weights file as recorded in results: bundled files relative to the package
    ("samba_ext/data/samba-tiny.safetensors"), so results do not carry this machine's paths."""
    if path is None:
        return None
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = os.path.abspath(path)
    if os.path.commonpath([ap, pkg]) == pkg:
        return "samba_ext/" + os.path.relpath(ap, pkg).replace(os.sep, "/")
    return path


def _param_arrays(model: Any) -> list[tuple[str, np.ndarray]] | None:
    for attr in ("state_dict", "parameters", "named_parameters"):
        f = getattr(model, attr, None)
        if callable(f):
            try:
                items = f()
                items = list(items.items()) if isinstance(items, dict) else list(items)
                return [(str(k), np.asarray(v)) for k, v in items]
            except Exception:
                continue
    params = getattr(model, "params", None)
    if isinstance(params, dict):
        return [(str(k), np.asarray(v)) for k, v in params.items()]
    return None


def model_hash(model: Any) -> tuple[str | None, str]:
    """("sha256:<hex>", "file" | "parameters") for a model; cached on the model object.

    The hash of the weights file when the model was loaded from one, else of its parameters
    (names and float32 bytes in sorted name order)."""
    cached = getattr(model, "_samba_ext_hash", None)
    if cached is not None:
        return cached
    out: tuple[str | None, str]
    path = _weights_file(model)
    if path is not None:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        out = ("sha256:" + h.hexdigest(), "file")
    else:
        arrs = _param_arrays(model)
        if arrs is None:
            out = (None, "unavailable")
        else:
            h = hashlib.sha256()
            for name, a in sorted(arrs, key=lambda kv: kv[0]):
                h.update(name.encode())
                h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
            out = ("sha256:" + h.hexdigest(), "parameters")
    try:
        model._samba_ext_hash = out
    except Exception:
        pass
    return out


def model_info(model: Any) -> dict:
    """Provenance dict stored under ``"model"`` in results JSON."""
    cfg = _config_dict(model)
    h, h_of = model_hash(model)
    try:
        nparams = int(model.num_parameters())
    except Exception:
        nparams = None
    note = getattr(model, _RANDOM_ATTR, None)
    meta = getattr(model, "metadata", None)
    meta = {str(k): str(v) for k, v in meta.items() if k != "config"} \
        if isinstance(meta, dict) else {}
    return {
        "name": getattr(model, "name", None) or cfg.get("name"),
        "source": _display_source(_weights_file(model)),
        "hash": h, "hash_of": h_of,
        "num_parameters": nparams,
        "device": str(getattr(model, "device", "cpu")),
        "random_weights": note is not None,
        "note": note,
        "config": cfg,
        "metadata": meta,     # free-form file metadata (e.g. train_command)
    }


def notes_for(model: Any) -> list[str]:
    note = getattr(model, _RANDOM_ATTR, None)
    return [note] if note else []


def _tqdm_class():
    """tqdm's notebook widget bar when ipywidgets is installed (Jupyter), else the text bar
    (tqdm.auto would warn in Jupyter without ipywidgets); None without tqdm."""
    try:
        import ipywidgets  # noqa: F401

        from tqdm.auto import tqdm
        return tqdm
    except ImportError:
        pass
    try:
        from tqdm import tqdm
        return tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None


class Progress:
    """A tqdm bar (stderr) with an optional nested prefill bar; a no-op when disabled or
    when tqdm is not installed."""

    def __init__(self, enabled: bool, total: float, desc: str, unit: str = "tok"):
        self._tqdm = None
        self.bar = None
        if enabled:
            tqdm = _tqdm_class()
            if tqdm is not None:
                self._tqdm = tqdm
                self.bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True,
                                dynamic_ncols=True, file=sys.stderr, smoothing=0.05)

    def update(self, n: float) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def postfix(self, **kw: Any) -> None:
        if self.bar is not None:
            self.bar.set_postfix(kw, refresh=True)

    def write(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)

    def prefill_bar(self, total: int, desc: str = "prefill", position: int = 1):
        """(callback, close) for model.prefill(progress=...): a nested bar for long prompts
        (``position``: its line below the main bar; trials run side by side use 2, 3, ...)."""
        if self.bar is None or total < PREFILL_BAR_MIN_TOKENS:
            return None, (lambda: None)
        bar = self._tqdm(total=total, desc=desc, unit="tok", unit_scale=True, leave=False,
                         dynamic_ncols=True, file=sys.stderr, position=position)
        state = {"base": 0, "last": 0}

        def cb(done: int, tot: int) -> None:
            # Several prefill calls may share one bar: `base` is the offset of the current call.
            if done < state["last"]:
                state["base"] += state["last"]
            state["last"] = done
            bar.n = min(total, state["base"] + done)
            bar.refresh()

        def next_call() -> None:
            state["base"] += state["last"]
            state["last"] = 0

        cb.next_call = next_call  # type: ignore[attr-defined]
        return cb, bar.close

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def call_prefill(model: Any, tokens: np.ndarray, state: Any, chunk_size: int,
                 progress: Callable | None) -> np.ndarray:
    """model.prefill on a (B, L) int array, L >= 1; advances a shared prefill bar."""
    out = model.prefill(tokens, state, chunk_size=chunk_size, progress=progress)
    if progress is not None and hasattr(progress, "next_call"):
        progress.next_call()
    return np.asarray(out)


def greedy_decode(model: Any, logits: np.ndarray, state: Any, max_new_tokens: int,
                  done: Callable[[str], bool] | None = None) -> list[list[int]]:
    """Greedy continuation of a batch from the last-position ``logits`` (B, vocab).

    Stops a row at ``eos``, after ``max_new_tokens``, or once ``done(decoded_text)`` is true
    (used to stop when the answer is already determined, which never changes the score).
    Returns the generated token ids per row (eos excluded).
    """
    tok = model.tokenizer
    eos = getattr(tok, "eos_id", None)
    logits = np.asarray(logits)
    B = logits.shape[0]
    out: list[list[int]] = [[] for _ in range(B)]
    active = np.ones(B, dtype=bool)
    for i in range(max_new_tokens):
        nxt = np.argmax(logits, axis=-1).astype(np.int64)
        for b in range(B):
            if not active[b]:
                continue
            t = int(nxt[b])
            if eos is not None and t == eos:
                active[b] = False
                continue
            out[b].append(t)
            if done is not None and done(tok.decode(out[b])):
                active[b] = False
        if not active.any() or i + 1 == max_new_tokens:
            break
        logits = np.asarray(model.step(nxt, state))
    return out


def as_int_list(xs: Sequence[Any], name: str, minimum: int = 1) -> list[int]:
    out = []
    for x in xs:
        if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
            raise TypeError(f"{name}: expected integers, got {x!r}")
        if int(x) < minimum:
            raise ValueError(f"{name}: expected values >= {minimum}, got {int(x)}")
        out.append(int(x))
    if not out:
        raise ValueError(f"{name}: expected at least one value")
    return out


def as_trials(trials: Any) -> int:
    """``trials`` checked: an integer >= 1."""
    if isinstance(trials, bool) or not isinstance(trials, (int, np.integer)) or trials < 1:
        raise ValueError(f"trials: expected an integer >= 1, got {trials!r}")
    return int(trials)


class Timer:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0
