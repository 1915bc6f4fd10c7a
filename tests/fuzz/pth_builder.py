"""Hand-assembled torch ``.pth`` files (zip + pickle) for hostile-input tests, without torch.

:class:`Pickle` is a tiny protocol-2 pickle assembler (the protocol torch.save uses), so a test
can name any global, any persistent id and any tensor geometry, which ``pickle.dumps`` of
real objects cannot produce. :func:`torch_zip` wraps a pickle and its storages in the zip
layout of ``torch.save`` (``<prefix>/data.pkl``, ``<prefix>/data/<key>``, ``version``,
``byteorder``).
"""
from __future__ import annotations

import io
import struct
import zipfile
from typing import Dict, Optional


class Pickle:
    """Append-only pickle builder. Methods return self so calls chain."""

    def __init__(self, proto: int = 2):
        self.b = bytearray(b"\x80" + bytes([proto]))

    # values
    def global_(self, module: str, name: str) -> "Pickle":
        self.b += b"c" + module.encode() + b"\n" + name.encode() + b"\n"
        return self

    def stack_global(self, module: str, name: str) -> "Pickle":
        return self.str(module).str(name).raw(b"\x93")

    def int(self, v: int) -> "Pickle":
        if 0 <= v < 256:
            self.b += b"K" + bytes([v])
        elif -(2**31) <= v < 2**31:
            self.b += b"J" + struct.pack("<i", v)
        else:
            n = (v.bit_length() + 8) // 8
            self.b += b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True)
        return self

    def str(self, s: str) -> "Pickle":
        raw = s.encode()
        self.b += b"X" + struct.pack("<I", len(raw)) + raw
        return self

    def none(self) -> "Pickle":
        self.b += b"N"
        return self

    def false(self) -> "Pickle":
        self.b += b"\x89"
        return self

    # structure
    def mark(self) -> "Pickle":
        self.b += b"("
        return self

    def tuple(self) -> "Pickle":
        self.b += b"t"
        return self

    def empty_dict(self) -> "Pickle":
        self.b += b"}"
        return self

    def setitems(self) -> "Pickle":
        self.b += b"u"
        return self

    def reduce(self) -> "Pickle":
        self.b += b"R"
        return self

    def persid(self) -> "Pickle":
        self.b += b"Q"
        return self

    def put(self, i: int) -> "Pickle":
        self.b += b"q" + bytes([i])
        return self

    def get(self, i: int) -> "Pickle":
        self.b += b"h" + bytes([i])
        return self

    def raw(self, data: bytes) -> "Pickle":
        self.b += data
        return self

    def stop(self) -> bytes:
        return bytes(self.b + b".")

    # torch helpers
    def call(self, module: str, name: str, *args) -> "Pickle":
        """module.name(*args) where args are ints / strs / None."""
        self.global_(module, name).mark()
        for a in args:
            self._value(a)
        return self.tuple().reduce()

    def _value(self, a) -> None:
        if a is None:
            self.none()
        elif isinstance(a, bool):
            self.false() if not a else self.raw(b"\x88")
        elif isinstance(a, int):
            self.int(a)
        elif isinstance(a, str):
            self.str(a)
        elif isinstance(a, tuple):
            self.mark()
            for x in a:
                self._value(x)
            self.tuple()
        else:
            raise TypeError(a)

    def storage(self, key: str, numel: int, kind: str = "FloatStorage",
                memo: Optional[int] = None) -> "Pickle":
        """A persistent storage reference ('storage', torch.<kind>, key, 'cpu', numel)."""
        self.mark().str("storage").global_("torch", kind).str(key).str("cpu").int(numel)
        self.tuple().persid()
        if memo is not None:
            self.put(memo)
        return self

    def tensor(self, key: str, numel: int, offset: int, size: tuple, stride: tuple,
               kind: str = "FloatStorage", memo_get: Optional[int] = None,
               memo_put: Optional[int] = None) -> "Pickle":
        """torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())."""
        self.global_("torch._utils", "_rebuild_tensor_v2").mark()
        if memo_get is not None:
            self.get(memo_get)
        else:
            self.storage(key, numel, kind, memo=memo_put)
        self.int(offset)._value(tuple(size))
        self._value(tuple(stride))
        self.false().global_("collections", "OrderedDict").mark().tuple().reduce()
        return self.tuple().reduce()


def torch_zip(pkl: bytes, storages: Optional[Dict[str, bytes]] = None, prefix: str = "archive",
              pkl_compress: int = zipfile.ZIP_STORED,
              storage_compress: int = zipfile.ZIP_STORED) -> bytes:
    """The zip container of torch.save around a data.pkl and its storages."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(zipfile.ZipInfo(f"{prefix}/data.pkl"), pkl, compress_type=pkl_compress)
        z.writestr(zipfile.ZipInfo(f"{prefix}/byteorder"), b"little")
        for key, raw in (storages or {}).items():
            z.writestr(zipfile.ZipInfo(f"{prefix}/data/{key}"), raw,
                       compress_type=storage_compress)
        z.writestr(zipfile.ZipInfo(f"{prefix}/version"), b"3\n")
    return buf.getvalue()


def state_dict_pickle(entries: Dict[str, bytes]) -> bytes:
    """{"model": {name: <value pickled by the given opcode bytes>}} as a full pickle."""
    p = Pickle().empty_dict().mark().str("model").empty_dict().mark()
    for name, value_ops in entries.items():
        p.str(name).raw(value_ops)
    return p.setitems().setitems().stop()


def tensor_ops(key: str, numel: int, size: tuple, stride: tuple, offset: int = 0,
               kind: str = "FloatStorage") -> bytes:
    """Opcode bytes (no PROTO/STOP) of one tensor value."""
    p = Pickle()
    p.b = bytearray()
    p.tensor(key, numel, offset, size, stride, kind)
    return bytes(p.b)


def call_ops(module: str, name: str, *args) -> bytes:
    """Opcode bytes of the value module.name(*args)."""
    p = Pickle()
    p.b = bytearray()
    p.call(module, name, *args)
    return bytes(p.b)
