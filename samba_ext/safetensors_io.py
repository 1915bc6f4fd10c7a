"""Safetensors reader and writer without torch and without the ``safetensors`` package.

File layout (huggingface/safetensors): 8 bytes little-endian u64 ``N``; ``N`` bytes of UTF-8
JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}``;
then the packed little-endian C-order tensor bytes, offsets relative to the end of the header.

The reader validates everything before reading tensor bytes (with file reads, never a memory
map: see samba_ext/io/fileread.py):
header length within the file and <= 100 MB, valid UTF-8 JSON object, no duplicate keys, known
dtypes, shapes of non-negative ints, byte sizes equal to prod(shape) * itemsize (Python ints:
no overflow), offsets contiguous from 0 with no holes or overlaps, the last one ending exactly
at the end of the file. Anything wrong raises :class:`~samba_ext.errors.CheckpointError` with a
message naming the file and the tensor. Nothing is allocated beyond what the file holds
(converted tensors are at most twice the size of their bytes: f16/bf16 -> f32).
"""
from __future__ import annotations

import json
import os
import stat
from typing import Any, BinaryIO, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from .errors import CheckpointError
from .io import fileread
from .atomic import atomic_write

__all__ = ["read_safetensors", "read_safetensors_checked", "read_safetensors_header",
           "write_safetensors",
           "bf16_to_f32", "f32_to_bf16", "open_regular_file", "MAX_HEADER_SIZE"]

MAX_HEADER_SIZE = 100_000_000  # bytes, as the reference implementation
# numpy 1.x supports at most 32 dimensions (numpy 2: 64); no checkpoint tensor comes close
_MAX_RANK = 32


def open_regular_file(fname: str):
    """Open ``fname`` for binary reading, refusing anything that is not a regular file
    (FIFO, device, socket, directory) with CheckpointError *without blocking*: the file is
    opened with O_NONBLOCK (a FIFO without a writer would otherwise block ``open`` forever)
    and checked with ``fstat`` on the opened descriptor (no stat-then-open race).
    OSError (missing file, permissions) propagates to the caller."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) \
        | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(fname, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise CheckpointError(f"{fname}: {kind} (a checkpoint must be a regular file)")
        if getattr(os, "O_NONBLOCK", 0) and hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise

# dtype name -> (numpy dtype of the stored bytes, itemsize)
_DTYPES = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),   # raw bits; converted with bf16_to_f32
    "F64": np.dtype("<f8"),
}


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """uint16 bf16 bit patterns -> float32 (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> uint16 bf16 bit patterns, round to nearest even; NaN stays NaN."""
    x = np.asarray(x, dtype=np.float32)
    u = np.ascontiguousarray(x.reshape(-1)).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    if nan.any():
        r[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return r.reshape(x.shape)


def _no_dup_pairs(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise CheckpointError(f"duplicate key {k!r} in the JSON header")
        d[k] = v
    return d


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict, dict, int, int]:
    """Parse and validate the header of ``path``.

    Returns (entries, metadata, data_start, file_size) where entries maps tensor name ->
    dict(dtype=str, shape=tuple, begin=int, end=int) (offsets relative to data_start) and
    metadata is the ``__metadata__`` dict of strings.
    """
    fname = os.fspath(path)
    try:
        fh = open_regular_file(fname)
    except OSError as e:
        raise CheckpointError(f"{fname}: cannot read ({e})") from e
    with fh:
        return _parse_header(fh, fname)


def _parse_header(f: BinaryIO, fname: str) -> tuple[dict, dict, int, int]:
    """read_safetensors_header on the open file ``f`` (read from its start)."""
    try:
        size = os.fstat(f.fileno()).st_size
        f.seek(0)
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{fname}: truncated safetensors file ({size} bytes; "
                                  "the 8-byte header length is missing)")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER_SIZE:
            raise CheckpointError(f"{fname}: header length {n} exceeds the {MAX_HEADER_SIZE}"
                                  "-byte limit (corrupt or not a safetensors file)")
        if 8 + n > size:
            raise CheckpointError(f"{fname}: header length {n} points past the end of the "
                                  f"file ({size} bytes): truncated or not a safetensors file")
        raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{fname}: cannot read ({e})") from e
    if len(raw) != n:
        raise CheckpointError(f"{fname}: truncated header")
    try:
        text = raw.decode("utf-8")
        hdr = json.loads(text, object_pairs_hook=_no_dup_pairs)
    except CheckpointError as e:
        raise CheckpointError(f"{fname}: {e}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{fname}: the header is not valid UTF-8 JSON ({e})") from None
    if not isinstance(hdr, dict):
        raise CheckpointError(f"{fname}: the header must be a JSON object, got "
                              f"{type(hdr).__name__}")
    meta = hdr.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                             for k, v in meta.items()):
        raise CheckpointError(f"{fname}: __metadata__ must map strings to strings")
    data_start = 8 + n
    data_len = size - data_start
    entries: dict = {}
    for name, t in hdr.items():
        where = f"{fname}: tensor {name!r}"
        if not isinstance(t, dict) or set(t) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(f"{where}: expected an object with exactly dtype, shape and "
                                  f"data_offsets, got {t!r:.200}")
        dt = t["dtype"]
        if not isinstance(dt, str) or dt not in _DTYPES:
            raise CheckpointError(f"{where}: unsupported dtype {dt!r} (supported: "
                                  f"{', '.join(_DTYPES)})")
        shape = t["shape"]
        if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
            raise CheckpointError(f"{where}: shape must be a list of non-negative ints, "
                                  f"got {shape!r:.200}")
        if len(shape) > _MAX_RANK or any(s >= 2**63 for s in shape):
            raise CheckpointError(f"{where}: shape {shape!r:.200} cannot be represented (at most "
                                  f"{_MAX_RANK} dimensions, each < 2**63)")
        off = t["data_offsets"]
        if (not isinstance(off, list) or len(off) != 2 or not all(_is_int(o) for o in off)
                or not 0 <= off[0] <= off[1]):
            raise CheckpointError(f"{where}: data_offsets must be [begin, end] with "
                                  f"0 <= begin <= end, got {off!r:.200}")
        numel = 1
        for s in shape:
            numel *= s          # Python ints: cannot overflow
        nbytes = numel * _DTYPES[dt].itemsize
        if off[1] - off[0] != nbytes:
            raise CheckpointError(f"{where}: shape {shape} as {dt} needs {nbytes} bytes but "
                                  f"data_offsets span {off[1] - off[0]}")
        if off[1] > data_len:
            raise CheckpointError(f"{where}: data ends at byte {off[1]} of the data section "
                                  f"but the file holds only {max(data_len, 0)} (truncated)")
        entries[name] = dict(dtype=dt, shape=tuple(shape), begin=off[0], end=off[1])
    # contiguous, non-overlapping, no holes, ending exactly at the end of the file
    pos = 0
    for name, e in sorted(entries.items(), key=lambda kv: (kv[1]["begin"], kv[1]["end"])):
        if e["begin"] != pos:
            kind = "overlaps the previous tensor" if e["begin"] < pos else "leaves a hole before it"
            raise CheckpointError(f"{fname}: tensor {name!r} starts at byte {e['begin']} and "
                                  f"{kind} (expected {pos}): corrupt data_offsets")
        pos = e["end"]
    if pos != data_len:
        raise CheckpointError(f"{fname}: the tensors end at data byte {pos} but the file has "
                              f"{data_len} data bytes ({'truncated' if pos > data_len else 'trailing garbage'})")
    return entries, dict(meta), data_start, size


def read_safetensors(path: str | os.PathLike, names: Optional[Iterable[str]] = None,
                     dtype=np.float32) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read tensors (validated; see the module docstring) and the metadata.

    Returns ({name: array}, metadata). With ``dtype=np.float32`` (default) every tensor is
    converted to a C-contiguous float32 array owned by the caller (F16/BF16/F64 converted);
    with ``dtype=None`` arrays are returned as stored (BF16 as uint16 bits). ``names``
    restricts which tensors are read. The header and the tensor bytes come from one open
    file, with plain file reads, not a memory map: a file replaced (renamed over) by another
    process during the load is read whole as it was when opened, and a file truncated in
    place is a CheckpointError, not SIGBUS.
    """
    out, meta, _ = read_safetensors_checked(path, names=names, dtype=dtype)
    return out, meta


def read_safetensors_checked(path: str | os.PathLike, names: Optional[Iterable[str]] = None,
                             dtype=np.float32,
                             check_meta: Optional[Callable[[dict[str, str]], None]] = None
                             ) -> tuple[dict[str, np.ndarray], dict[str, str], dict]:
    """read_safetensors, plus the parsed header entries (as read_safetensors_header returns
    them, from the same open file as the tensors). ``check_meta(metadata)`` runs after the
    header is parsed and before any tensor byte is read; it may raise CheckpointError."""
    fname = os.fspath(path)
    try:
        fh = open_regular_file(fname)
    except OSError as e:
        raise CheckpointError(f"{fname}: cannot read ({e})") from e
    out: dict[str, np.ndarray] = {}
    with fh:
        entries, meta, start, size = _parse_header(fh, fname)
        if check_meta is not None:
            check_meta(meta)
        want = set(entries) if names is None else set(names)
        missing = want - set(entries)
        if missing:
            raise CheckpointError(f"{fname}: missing tensor(s) {sorted(missing)[:5]}")
        fileread.check_size(fh, size, fname)
        for name in sorted(want, key=lambda k: entries[k]["begin"]):
            e = entries[name]
            sdt = _DTYPES[e["dtype"]]
            if e["end"] == e["begin"]:
                try:
                    if any(s >= 2**31 for s in e["shape"]):
                        raise ValueError("a dimension >= 2**31")
                    a = np.zeros(e["shape"], dtype=sdt)
                except ValueError as err:   # numpy: "array is too big" even with a 0 dim
                    raise CheckpointError(f"{fname}: tensor {name!r}: empty tensor with a huge "
                                          f"shape {list(e['shape'])} ({err})") from None
            else:
                raw = fileread.read_bytes(fh, start + e["begin"], e["end"] - e["begin"], fname,
                                          f"tensor {name!r}")
                a = raw.view(sdt).reshape(e["shape"])
            if dtype is None:
                out[name] = a
            elif e["dtype"] == "BF16":
                out[name] = np.array(bf16_to_f32(a), dtype=dtype, order="C")
            else:
                out[name] = np.asarray(a, dtype=dtype, order="C")
    return out, meta, entries


def check_dtype(dtype: Any) -> str:
    """A storage dtype argument checked: "F32", "F16" or "BF16" (any case), upper-cased."""
    if not isinstance(dtype, str) or dtype.upper() not in ("F32", "F16", "BF16"):
        raise ValueError(f"dtype: expected 'F32', 'F16' or 'BF16', got {dtype!r}")
    return dtype.upper()


def check_metadata(metadata: Any, reserved: Sequence[str] = ()) -> dict[str, str]:
    """A ``metadata`` argument checked: None or a mapping of str to str that sets none of the
    ``reserved`` keys (those the writer fills in itself). Returns a plain dict."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError(f"metadata: expected a mapping of str to str, got "
                        f"{type(metadata).__name__}")
    clash = sorted(set(metadata) & set(reserved))
    if clash:
        raise ValueError(f"metadata: {', '.join(map(repr, clash))} would replace the entry the "
                         f"writer stores there; use other keys")
    return dict(metadata)


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Optional[Mapping[str, str]] = None, dtype: str = "F32") -> None:
    """Write ``tensors`` (float arrays) as safetensors, converting to ``dtype``
    ("F32", "F16" or "BF16"). Tensors are stored in sorted-name order; the header is padded
    with spaces to a multiple of 8 bytes. The write is atomic (samba_ext/atomic.py: a unique
    temporary file in the same folder, fsynced, then renamed over ``path``).
    """
    dtype = check_dtype(dtype)
    metadata = check_metadata(metadata)
    itemsize = 4 if dtype == "F32" else 2
    hdr: dict = {}
    if metadata:
        hdr["__metadata__"] = dict(metadata)
    pos = 0
    order = sorted(tensors)
    for name in order:
        if name == "__metadata__":
            raise ValueError("a tensor cannot be named '__metadata__'")
        shape = list(np.shape(tensors[name]))
        nbytes = int(np.prod(shape, dtype=np.int64)) * itemsize
        hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [pos, pos + nbytes]}
        pos += nbytes
    hb = json.dumps(hdr, separators=(",", ":")).encode("utf-8")
    hb += b" " * (-len(hb) % 8)
    with atomic_write(path) as f:
        f.write(len(hb).to_bytes(8, "little"))
        f.write(hb)
        for name in order:   # one tensor converted at a time
            a = np.asarray(tensors[name])
            if dtype == "F32":
                b = np.ascontiguousarray(a, dtype="<f4")
            elif dtype == "F16":
                b = np.ascontiguousarray(a, dtype="<f2")
            else:
                b = f32_to_bf16(a).astype("<u2", copy=False)
            f.write(np.ascontiguousarray(b.reshape(-1)).view(np.uint8).data)
