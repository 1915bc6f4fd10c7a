"""Built-in real-text corpus: the Python standard library's own ``.py`` source files.

The files are read from the running interpreter's stdlib directory
(``sysconfig.get_paths()["stdlib"]``), ``site-packages`` / ``dist-packages`` excluded, in a
fixed order (sorted by their POSIX relative path). Nobody on this project wrote them, every
Python install has them, and they need no network.

The train / held-out split is a pure function of the relative path, so the training
scripts and the evaluations agree on it without sharing any state::

    held-out  <=>  zlib.crc32(relative_posix_path.encode("utf-8")) % 10 == 0

(about 10% of the files, ~3 MB on CPython 3.11). The text differs between Python versions;
:func:`corpus_info` returns the version and a SHA-256 of the selected text so results can
say exactly what they ran on.
"""
from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
import zlib
from typing import Iterator, Sequence

import numpy as np

__all__ = ["stdlib_dir", "stdlib_files", "is_heldout", "stdlib_text", "stdlib_tokens",
           "corpus_info", "SPLITS", "FILE_SEPARATOR"]

SPLITS = ("train", "heldout", "all")
#: Text placed between two files when they are concatenated into one stream.
FILE_SEPARATOR = "\n\n"
_EXCLUDED_TOP = ("site-packages", "dist-packages", "__pycache__")


def stdlib_dir() -> str:
    """Absolute path of the running interpreter's standard-library directory."""
    return os.path.realpath(sysconfig.get_paths()["stdlib"])


def is_heldout(relpath: str) -> bool:
    """True when the file with POSIX relative path ``relpath`` is in the held-out split."""
    return zlib.crc32(relpath.replace(os.sep, "/").encode("utf-8")) % 10 == 0


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")


def stdlib_files(split: str = "heldout", root: str | None = None) -> list[str]:
    """Relative POSIX paths of the stdlib ``.py`` files in ``split``, sorted.

    Args:
        split: "heldout" (crc32(path) % 10 == 0), "train" (the rest) or "all".
        root: directory to scan (default: :func:`stdlib_dir`).
    Returns:
        list of relative paths like ``"json/decoder.py"``; join with ``root`` to open.
    """
    _check_split(split)
    root = stdlib_dir() if root is None else root
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d not in _EXCLUDED_TOP]
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for f in filenames:
            if not f.endswith(".py"):
                continue
            rel = f if rel_dir == "." else f"{rel_dir}/{f}"
            rel = rel.replace(os.sep, "/")
            if split == "all" or (split == "heldout") == is_heldout(rel):
                out.append(rel)
    out.sort()
    return out


def _iter_texts(split: str, root: str | None) -> Iterator[tuple[str, str]]:
    root = stdlib_dir() if root is None else root
    for rel in stdlib_files(split, root):
        try:
            with open(os.path.join(root, rel), "rb") as fh:
                raw = fh.read()
            # Strict UTF-8: the few test files with deliberately broken encodings are skipped.
            yield rel, raw.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue


def stdlib_text(split: str = "heldout", max_chars: int | None = None,
                root: str | None = None) -> str:
    """The files of ``split`` concatenated in order, separated by :data:`FILE_SEPARATOR`.

    Args:
        max_chars: stop after this many characters (the last file is cut). None: everything.
    """
    _check_split(split)
    parts: list[str] = []
    n = 0
    for _, text in _iter_texts(split, root):
        if parts:
            parts.append(FILE_SEPARATOR)
            n += len(FILE_SEPARATOR)
        parts.append(text)
        n += len(text)
        if max_chars is not None and n >= max_chars:
            break
    out = "".join(parts)
    return out if max_chars is None else out[:max_chars]


def stdlib_tokens(tokenizer, n_tokens: int | None, split: str = "heldout",
                  root: str | None = None) -> np.ndarray:
    """The first ``n_tokens`` tokens of the ``split`` stream, as int64 array ``(n_tokens,)``.

    Files are tokenized one at a time (``tokenizer.encode``) and joined with the tokens of
    :data:`FILE_SEPARATOR`, so a long stream never needs one giant ``encode`` call.

    Raises:
        ValueError: if the split has fewer than ``n_tokens`` tokens (the message gives the count).
    """
    _check_split(split)
    if n_tokens is not None and n_tokens < 0:
        raise ValueError(f"n_tokens: expected >= 0, got {n_tokens}")
    sep = list(tokenizer.encode(FILE_SEPARATOR))
    chunks: list[np.ndarray] = []
    n = 0
    for _, text in _iter_texts(split, root):
        if n_tokens is not None and n >= n_tokens:
            break
        ids = (sep if chunks else []) + list(tokenizer.encode(text))
        chunks.append(np.asarray(ids, dtype=np.int64))
        n += len(ids)
    out = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
    if n_tokens is not None:
        if out.size < n_tokens:
            raise ValueError(f"the stdlib {split!r} split has only {out.size} tokens with this "
                             f"tokenizer; ask for n_tokens <= {out.size} or use split='all'")
        out = out[:n_tokens]
    return out


def corpus_info(split: str = "heldout", tokens: Sequence[int] | np.ndarray | None = None,
                root: str | None = None) -> dict:
    """Provenance of the stdlib corpus for results JSON: Python version, split, file count,
    and (when ``tokens`` is given) the SHA-256 of the int64 token stream."""
    files = stdlib_files(split, root)
    d = {"name": "python-stdlib", "python": sys.version.split()[0], "split": split,
         "root": stdlib_dir() if root is None else root, "files": len(files),
         "split_rule": "crc32(relative_posix_path) % 10 == 0 -> heldout"}
    if tokens is not None:
        arr = np.ascontiguousarray(np.asarray(tokens, dtype=np.int64))
        d["tokens"] = int(arr.size)
        d["tokens_sha256"] = hashlib.sha256(arr.tobytes()).hexdigest()
    return d
