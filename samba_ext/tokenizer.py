"""Tokenizers: the built-in byte tokenizer and loaders for real ones (optional extras).

Every tokenizer has ``encode(text) -> list[int]``, ``decode(ids) -> str``, ``vocab_size``,
``eos_id`` and ``bos_id`` (``None`` when the tokenizer has no such token).

* :class:`ByteTokenizer`: UTF-8 bytes are ids 0..255; specials 256 ``<eos>``, 257 ``<bos>``,
  258 ``<pad>``. ``decode`` skips specials and replaces invalid UTF-8.
* ``tokenizer.json`` through the ``tokenizers`` package, ``tokenizer.model`` through
  ``sentencepiece`` (``pip install "samba-ext[tokenizers]"``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional, Protocol, Sequence

from .errors import CheckpointError

__all__ = ["Tokenizer", "ByteTokenizer", "HFTokenizer", "SentencePieceTokenizer",
           "load_tokenizer"]


class Tokenizer(Protocol):
    vocab_size: int
    eos_id: Optional[int]
    bos_id: Optional[int]

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 byte-level tokenizer: 256 byte ids plus <eos>=256, <bos>=257, <pad>=258."""

    name = "byte"
    vocab_size = 259
    eos_id = 256
    bos_id = 257
    pad_id = 258

    def encode(self, text: str) -> list[int]:
        """Text -> list of byte ids (no BOS/EOS added)."""
        if not isinstance(text, str):
            raise TypeError(f"text: expected str, got {type(text).__name__}")
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; special ids (>= 256) are skipped, invalid UTF-8 is replaced."""
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=259)"


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` (fast tokenizer) through the ``tokenizers`` package."""

    def __init__(self, path: str | os.PathLike):
        try:
            from tokenizers import Tokenizer as _Tok
        except ImportError as e:
            raise ImportError(
                f"loading {os.fspath(path)!r} needs the 'tokenizers' package: "
                "pip install tokenizers  (or pip install \"samba-ext[tokenizers]\")") from e
        try:
            self._tok = _Tok.from_file(os.fspath(path))
        except Exception as e:  # the package raises its own Exception type
            raise CheckpointError(f"{os.fspath(path)}: not a valid tokenizer.json ({e})") from e
        self.name = os.fspath(path)
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        self.eos_id = self._special(("</s>", "<|endoftext|>", "<eos>", "<|end_of_text|>"))
        self.bos_id = self._special(("<s>", "<|begin_of_text|>", "<bos>"))

    def _special(self, names: Sequence[str]) -> Optional[int]:
        for n in names:
            i = self._tok.token_to_id(n)
            if i is not None:
                return int(i)
        return None

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"HFTokenizer({self.name!r}, vocab_size={self.vocab_size})"


class SentencePieceTokenizer:
    """A SentencePiece ``tokenizer.model`` (e.g. the Llama-2 tokenizer of Samba 421M/1.3B)."""

    def __init__(self, path: str | os.PathLike):
        try:
            import sentencepiece as spm
        except ImportError as e:
            raise ImportError(
                f"loading {os.fspath(path)!r} needs the 'sentencepiece' package: "
                "pip install sentencepiece  (or pip install \"samba-ext[tokenizers]\")") from e
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(os.fspath(path))
        except Exception as e:
            raise CheckpointError(f"{os.fspath(path)}: not a valid SentencePiece model ({e})") from e
        self.name = os.fspath(path)
        self.vocab_size = int(self._sp.GetPieceSize())
        eos, bos = int(self._sp.eos_id()), int(self._sp.bos_id())
        self.eos_id = eos if eos >= 0 else None
        self.bos_id = bos if bos >= 0 else None

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self._sp.EncodeAsIds(text)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.DecodeIds([int(i) for i in ids])

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({self.name!r}, vocab_size={self.vocab_size})"


def load_tokenizer(spec, base_dir: str | os.PathLike | None = None):
    """Return a tokenizer for ``spec``.

    spec: ``"byte"`` (built in), a tokenizer object (returned as is), a path to a
    ``tokenizer.json`` / ``tokenizer.model`` file, or a directory holding one of them.
    Relative paths are tried against ``base_dir`` (e.g. the checkpoint's folder) first.
    Raises ValueError for names that are neither "byte" nor an existing file, ImportError
    (with the pip command) when the optional package is missing.
    """
    if spec is None or spec == "byte":
        return ByteTokenizer()
    if not isinstance(spec, (str, os.PathLike)):
        if all(hasattr(spec, a) for a in ("encode", "decode", "vocab_size")):
            return spec
        raise TypeError(f"tokenizer: expected 'byte', a path or a tokenizer object, "
                        f"got {type(spec).__name__}")
    cands = [Path(spec)]
    if base_dir is not None and not Path(spec).is_absolute():
        cands.insert(0, Path(base_dir) / spec)
    for p in cands:
        if p.is_dir():
            for fname in ("tokenizer.json", "tokenizer.model"):
                if (p / fname).is_file():
                    return load_tokenizer(p / fname)
            raise ValueError(f"tokenizer: {p} holds neither tokenizer.json nor tokenizer.model")
        if p.is_file():
            if p.suffix == ".json":
                return HFTokenizer(p)
            if p.suffix == ".model":
                return SentencePieceTokenizer(p)
            raise ValueError(f"tokenizer: {p}: expected a tokenizer.json or a SentencePiece "
                             ".model file")
    raise ValueError(f"tokenizer {os.fspath(spec)!r}: not 'byte' and no such file; pass "
                     "tokenizer=<path to tokenizer.json or tokenizer.model>")
