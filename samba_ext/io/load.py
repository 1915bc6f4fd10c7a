"""One entry point for every checkpoint format, with one error contract.

:func:`load_checkpoint` reads a Hugging Face-style folder, a safetensors file or a
lit_gpt ``.pth`` (the format from the content where the suffix does not say it; see
samba_ext/io/sniff.py), resolves the config (stored, inferred or given) and validates what
``Samba`` will need *at load time*: the config fields (finite positive ``rope_base`` /
``norm_eps``, a string tokenizer, ...) and every weight being finite. Anything wrong with the
file raises :class:`~samba_ext.errors.CheckpointError` whose message starts with the file name
and names the field or tensor; no other exception type escapes for a bad file (a last guard
turns any stray ValueError / IndexError / ZeroDivisionError / RecursionError / ... into one,
naming the exception; an OSError, e.g. a file removed by a concurrent save while it is
being read, becomes one too).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..config import SambaConfig
from ..errors import CheckpointError

__all__ = ["load_checkpoint", "check_finite", "config_from_json"]

# Exceptions a malformed file can provoke in parsing / numpy / config code.
_STRAY = (ValueError, TypeError, IndexError, KeyError, ZeroDivisionError, RecursionError,
          OverflowError, AttributeError, MemoryError, UnicodeError)


class _OverrideError(ValueError):
    """The caller's field overrides make the stored config invalid (not the file's fault)."""


def _named(fname: str, e: BaseException) -> CheckpointError:
    msg = str(e)
    if isinstance(e, CheckpointError):
        return CheckpointError(msg if msg.startswith(fname) else f"{fname}: {msg}")
    return CheckpointError(f"{fname}: invalid checkpoint ({type(e).__name__}: {msg[:500]})")


def config_from_json(text: str, fname: str, what: str, overrides: dict[str, Any]
                     ) -> SambaConfig:
    """A SambaConfig from the JSON ``text`` of a samba-ext config (``to_dict`` field names)
    plus ``overrides``; CheckpointError naming ``fname`` and ``what`` otherwise."""
    try:
        d = json.loads(text)
    except RecursionError:
        raise CheckpointError(f"{fname}: invalid config in {what}: JSON nested too deeply") \
            from None
    except ValueError as e:
        raise CheckpointError(f"{fname}: invalid config in {what}: not valid JSON ({e})") \
            from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{fname}: invalid config in {what}: expected a JSON object, got "
                              f"{type(d).__name__}")
    stored = dict(d)
    d.update(overrides)
    try:
        return SambaConfig.from_dict(d)
    except (ValueError, TypeError) as e:
        if overrides and _valid(stored):   # the caller's overrides are wrong, not the file
            raise _OverrideError(f"{', '.join(sorted(overrides))}: {e} (given to replace the "
                                 f"stored config of {fname})") from None
        raise CheckpointError(f"{fname}: invalid config in {what} ({e})") from None


def _valid(d: dict[str, Any]) -> bool:
    try:
        SambaConfig.from_dict(d)
    except (ValueError, TypeError):
        return False
    return True


def check_finite(sd: dict[str, np.ndarray], fname: str) -> None:
    """CheckpointError naming the first tensor that holds NaN or +-inf. One float64 sum per
    tensor (NaN and inf propagate; finite float32 values cannot overflow a float64 sum), so
    no array-sized temporary; the exact position is looked up only for a bad tensor."""
    for k in sorted(sd):
        a = sd[k]
        if a.dtype.kind != "f" or a.size == 0:
            continue
        if np.isfinite(np.add.reduce(a, axis=None, dtype=np.float64)):
            continue
        bad = ~np.isfinite(a)
        idx = np.unravel_index(int(np.argmax(bad)), a.shape)
        raise CheckpointError(f"{fname}: tensor {k!r} holds {int(bad.sum())} non-finite "
                              f"value(s) (first at index {tuple(int(i) for i in idx)}: "
                              f"{a[idx]}); the weights are corrupt")


def load_checkpoint(path: str | os.PathLike, config: Optional[SambaConfig] = None,
                    **overrides: Any) -> tuple[SambaConfig, dict[str, np.ndarray],
                                               dict[str, str]]:
    """(config, {lit_gpt key: float32 array}, metadata) of the checkpoint at ``path``:
    a folder (config.json + model.safetensors or a sharded index), a ``.safetensors`` file
    (config from its metadata, else inferred from lit_gpt shapes) or a lit_gpt ``.pth``
    (config inferred). The format comes from the content when the suffix does not name one,
    and a suffix that disagrees with the content is refused (samba_ext/io/sniff.py).
    ``config`` replaces the stored / inferred config, ``overrides`` single fields."""
    fname = os.fspath(path)
    if config is not None and overrides:    # the caller's arguments: their errors stay theirs
        config = dataclasses.replace(config, **overrides)
        overrides = {}
    try:
        return _load(Path(fname), fname, config, overrides)
    except _OverrideError as e:
        raise ValueError(str(e)) from None
    except CheckpointError as e:
        raise _named(fname, e) from None
    except _STRAY as e:
        raise _named(fname, e) from None
    except OSError as e:    # a file that vanished or changed while it was being read
        raise CheckpointError(f"{fname}: cannot read ({e})") from None


def _load(path: Path, fname: str, config: Optional[SambaConfig], overrides: dict[str, Any]
          ) -> tuple[SambaConfig, dict[str, np.ndarray], dict[str, str]]:
    from .. import litgpt
    from ..safetensors_io import read_safetensors
    from .sniff import FOLDER, SAFETENSORS, checkpoint_format

    explicit = config is not None
    meta: dict[str, str] = {}
    kind = checkpoint_format(path)
    if kind == FOLDER:
        from .hf_folder import read_folder

        config, sd, meta = read_folder(path, overrides, config)
    elif kind == SAFETENSORS:
        sd, meta = read_safetensors(path)
        if not explicit and "config" in meta:
            config = config_from_json(meta["config"], fname, "the metadata field 'config'",
                                      overrides)
        elif not explicit:   # a safetensors file without our metadata: lit_gpt keys
            sd = litgpt.normalize_state_dict(sd, fname)
            config = litgpt.infer_config(sd, fname, **overrides)
    else:                    # a torch zip or legacy pickle: the lit_gpt .pth reader
        sd = litgpt.load_litgpt_state_dict(path)
        if not explicit:
            config = litgpt.infer_config(sd, fname, **overrides)
    assert config is not None
    check_finite(sd, fname)
    return config, sd, meta
