"""Bundled data files: the small pretrained byte-level models.

``Samba.load("samba-tiny")`` and ``Samba.load("llama-tiny")`` look up
``samba_ext/data/<name>.safetensors`` here. :func:`bundled_path` raises FileNotFoundError with
an explanation when the file is not part of this installation.

Names and paths (:func:`resolve_model_spec`): a bundled name always means the bundled model,
even when a file or folder of that name exists in the current directory; local files are
given as paths (``./samba-tiny``, ``dir/model``, ``model.safetensors``: anything that is not
exactly a bundled name is a path).
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["BUNDLED_MODELS", "bundled_path", "available_models", "resolve_model_spec"]

DATA_DIR = Path(__file__).resolve().parent

# name -> what it is
BUNDLED_MODELS = {
    "samba-tiny": "byte-level Samba (Mamba + SWA window 512), 4 blocks, d_model 128, ~0.8M "
                  "parameters, trained on documents of <= 4096 tokens (phonebook first, then "
                  "passkey and stdlib text)",
    "llama-tiny": "byte-level full-attention (RoPE) baseline of the same size, trained at the "
                  "same length on the same schedule (phonebook first, then passkey and stdlib "
                  "text)",
}


def available_models() -> list[str]:
    """Bundled model names whose weight file is present in this installation."""
    return [n for n in BUNDLED_MODELS if (DATA_DIR / f"{n}.safetensors").is_file()]


def bundled_path(name: str) -> Path:
    """Path of the bundled model ``name``'s safetensors file."""
    if name not in BUNDLED_MODELS:
        raise ValueError(f"unknown bundled model {name!r}; bundled names: {sorted(BUNDLED_MODELS)}"
                         " (or pass a path to a .safetensors / lit_gpt .pth file)")
    p = DATA_DIR / f"{name}.safetensors"
    if not p.is_file():
        raise FileNotFoundError(
            f"the bundled model {name!r} is not included in this installation (expected "
            f"{p}); its weights have not been trained/packaged yet. Use a random model "
            f"(Samba(SambaConfig.preset({name!r}))) or load a checkpoint file by path.")
    return p


def resolve_model_spec(spec: str | os.PathLike) -> tuple[Path, bool]:
    """(path, is_bundled) for a model argument: exactly a bundled name -> the bundled file
    (whatever exists in the current directory); anything else -> that path."""
    if isinstance(spec, str) and spec in BUNDLED_MODELS:
        return bundled_path(spec), True
    return Path(os.fspath(spec)), False
