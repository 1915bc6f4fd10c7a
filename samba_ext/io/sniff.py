"""Which checkpoint format a local file holds, from its first bytes.

:func:`checkpoint_format` decides how :func:`samba_ext.io.load.load_checkpoint` reads a path.
The content decides when the suffix does not (no suffix, or one such as ``.bin``); a
recognised suffix (``.safetensors``, ``.pth`` / ``.pt`` / ``.ckpt``) must agree with the
content, or the file is refused with a :class:`~samba_ext.errors.CheckpointError` naming it,
what the suffix says and what the content looks like. Content that is too short or too broken to
recognise goes to the reader the suffix names (which reports what is wrong with it); without
such a suffix it is refused, listing the accepted formats.

Signatures (the first 9 bytes are enough for each):

* safetensors: an 8-byte little-endian header length, then the JSON header, which starts
  with ``{``;
* torch zip (``torch.save`` since torch 1.6, lit_gpt ``.pth``): a zip local-file header
  ``PK\\x03\\x04`` (or ``PK\\x05\\x06``, an empty archive);
* legacy torch pickle (``torch.save`` before 1.6): a pickle PROTO opcode ``\\x80`` with
  protocol 2 to 5.

A zip's 9th byte is part of its compression method (0 or 8), never ``{``, so no file matches
two signatures.
"""
from __future__ import annotations

import os

from ..errors import CheckpointError
from ..safetensors_io import open_regular_file

__all__ = ["checkpoint_format", "SAFETENSORS", "TORCH", "FOLDER", "ACCEPTED"]

SAFETENSORS = "safetensors"
TORCH = "torch"          # the lit_gpt .pth reader: torch zip, or a legacy pickle
FOLDER = "folder"

_SUFFIX = {".safetensors": SAFETENSORS, ".pth": TORCH, ".pt": TORCH, ".ckpt": TORCH}
ACCEPTED = ("a checkpoint folder (config.json + model.safetensors or a sharded "
            "model.safetensors.index.json), a safetensors file (8-byte header length, then a "
            "JSON header), a torch zip checkpoint (lit_gpt .pth, torch.save) or a legacy "
            "(torch < 1.6) torch pickle")


def _content(head: bytes) -> tuple[str | None, str]:
    """(format or None, what the content looks like, in words) of a file's first bytes."""
    if len(head) >= 9 and head[8:9] == b"{":
        return SAFETENSORS, "a safetensors file (header length, then a JSON object)"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return TORCH, "a zip archive (a torch .pth checkpoint)"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return TORCH, "a pickle (a legacy torch < 1.6 checkpoint)"
    if not head:
        return None, "an empty file"
    return None, f"none of the accepted formats (first bytes {head[:9]!r})"


def checkpoint_format(path: str | os.PathLike) -> str:
    """SAFETENSORS, TORCH or FOLDER for ``path``; CheckpointError naming the file when its
    suffix and its content disagree, when its content is unknown and its suffix names no
    format, or when it cannot be opened (missing, not a regular file: a FIFO is refused
    without blocking)."""
    fname = os.fspath(path)
    if os.path.isdir(fname):
        return FOLDER          # a folder's name says nothing about its format
    try:
        with open_regular_file(fname) as fh:
            head = fh.read(9)
    except OSError as e:
        raise CheckpointError(f"{fname}: cannot read ({e})") from None
    kind, looks = _content(head)
    suffix = os.path.splitext(fname)[1].lower()
    said = _SUFFIX.get(suffix)
    if kind is None:
        if said is not None:
            return said        # that reader says what is wrong with the file
        raise CheckpointError(f"{fname}: unknown checkpoint format: the content is {looks}; "
                              f"accepted: {ACCEPTED}")
    if said is not None and said != kind:
        says = "a safetensors file" if said == SAFETENSORS else "a torch checkpoint"
        raise CheckpointError(f"{fname}: the suffix {suffix!r} says {says}, but the content "
                              f"is {looks}; rename the file to match its content")
    return kind
