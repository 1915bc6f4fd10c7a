"""microsoft/Samba (lit_gpt) checkpoints: ``.pth`` files read WITHOUT torch, config inference.

A torch ``.pth`` (zip format, torch >= 1.6) is a zip archive ``<name>/data.pkl`` (a pickle)
plus one ``<name>/data/<key>`` entry per storage. Tensors are pickled as
``torch._utils._rebuild_tensor_v2(<persistent storage id>, offset, size, stride, ...)``.
:func:`read_torch_zip` unpickles with a *restricted* unpickler whose ``find_class`` returns
only tensor-rebuilding stand-ins and plain containers and refuses every other global with a
:class:`~samba_ext.errors.CheckpointError` naming it, so a hostile pickle cannot run code
(no ``os.system``, no ``builtins.eval``, no arbitrary constructors), bounds nesting and
memory, and hands out only per-load read-only stand-ins (samba_ext/io/torch_pickle.py).
Storage bytes are read from the zip (torch writes them uncompressed) with plain file reads,
never memory-mapped (a file truncated during the load is a CheckpointError, not SIGBUS),
after checking every offset, size and stride.

Key names follow docs/specification.md section 7; lit_gpt checkpoints store the grouped QKV layout and
(for tied models) both ``transformer.wte.weight`` and ``lm_head.weight``.
"""
from __future__ import annotations

import io
import os
import pickle
import re
import struct
import zipfile
from typing import Any, Optional

import numpy as np

from .config import PRESETS, SambaConfig
from .errors import CheckpointError
from .io import fileread
from .io.torch_pickle import RestrictedUnpickler, StorageType, TensorBudget
from .safetensors_io import bf16_to_f32, open_regular_file

_MAX_RANK = 32   # numpy 1.x supports at most 32 dimensions; no checkpoint tensor comes close

__all__ = ["read_torch_zip", "load_litgpt_state_dict", "infer_config", "normalize_state_dict"]

class _Storage:
    """A storage of the open checkpoint: where its elements lie in the file (read on demand
    with file reads, never memory-mapped: see samba_ext/io/fileread.py), their dtype as
    stored, and its torch kind."""

    __slots__ = ("key", "start", "numel", "dtype", "kind")

    def __init__(self, key: str, start: int, numel: int, dtype: np.dtype, kind: str):
        self.key, self.start, self.numel, self.dtype, self.kind = key, start, numel, dtype, kind


def _as_int(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise CheckpointError(f"tensor {what}: expected an int, got {type(v).__name__}")
    return v


def _make_rebuild(fh: Any, fname: str, budget: TensorBudget, storages: dict):
    """The ``_rebuild_tensor_v2`` of one load: a C-contiguous copy of a strided view of a
    storage, every index bounds-checked before any byte is read; bf16 becomes float32, other
    dtypes stay as stored (native byte order)."""

    def rebuild(storage: Any, storage_offset: Any, size: Any, stride: Any) -> np.ndarray:
        if not isinstance(storage, _Storage) or storages.get(storage.key) is not storage:
            raise CheckpointError(f"tensor storage: expected a persistent storage, got "
                                  f"{type(storage).__name__}")
        off = _as_int(storage_offset, "storage_offset")
        if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)) \
                or len(size) != len(stride):
            raise CheckpointError("tensor size/stride: expected two tuples of equal length")
        if len(size) > _MAX_RANK:
            raise CheckpointError(f"tensor: {len(size)} dimensions (at most {_MAX_RANK})")
        size = tuple(_as_int(s, "size") for s in size)
        stride = tuple(_as_int(s, "stride") for s in stride)
        if off < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
            raise CheckpointError(f"tensor: negative offset/size/stride ({off}, {size}, {stride})")
        native = storage.dtype.newbyteorder("=")
        numel = 1
        for s in size:
            numel *= s
        it = storage.dtype.itemsize
        if numel == 0:
            try:
                if any(s >= 2**31 for s in size):
                    raise ValueError("a dimension >= 2**31")
                out = np.zeros(size, dtype=native)
            except ValueError as err:   # numpy: "array is too big" even with a 0 dim
                raise CheckpointError(f"tensor: empty tensor with a huge size {size} "
                                      f"({err})") from None
        else:
            last = off + sum((sz - 1) * st for sz, st in zip(size, stride))
            if last >= storage.numel:
                raise CheckpointError(f"tensor of size {size}, stride {stride}, offset {off} "
                                      f"reads element {last} of a storage of {storage.numel} "
                                      "elements")
            budget.charge(numel * it, f"tensor of size {size}")
            contiguous = all(st == c for sz, st, c in zip(size, stride, _c_strides(size))
                             if sz != 1)
            span = numel if contiguous else last - off + 1
            if not contiguous:      # the bytes read to gather a strided view count too
                budget.charge(span * it, f"strided view of size {size}")
            raw = fileread.read_bytes(fh, storage.start + off * it, span * it, fname,
                                      f"storage {storage.key}")
            flat = raw.view(storage.dtype)
            if contiguous:
                out = flat.reshape(size)
            else:
                out = np.array(np.lib.stride_tricks.as_strided(
                    flat, shape=size, strides=tuple(s * it for s in stride), writeable=False),
                    order="C")
            if out.dtype != native:
                out = out.astype(native)
        if storage.kind == "BFloat16Storage":
            out = bf16_to_f32(out)
        return out

    return rebuild


def _c_strides(size: tuple) -> tuple:
    st, acc = [], 1
    for s in reversed(size):
        st.append(acc)
        acc *= s
    return tuple(reversed(st))


def _zip_data_offset(f: Any, fname: str, fsize: int, info: zipfile.ZipInfo) -> int:
    """File offset of a stored zip member's data (after its local header); ``f`` is the
    open checkpoint (binary, seekable)."""
    if not 0 <= info.header_offset <= fsize - 30:
        raise CheckpointError(f"{fname}: corrupt zip header offset for {info.filename}")
    f.seek(info.header_offset)
    lh = f.read(30)
    if len(lh) != 30 or lh[:4] != b"PK\x03\x04":
        raise CheckpointError(f"{fname}: corrupt zip local header for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", lh[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    if start + info.file_size > fsize:
        raise CheckpointError(f"{fname}: zip entry {info.filename} runs past the end of the "
                              "file (truncated)")
    return start


def _corrupt(fname: str, e: BaseException) -> CheckpointError:
    return CheckpointError(f"{fname}: corrupt checkpoint ({type(e).__name__}: {e})")


# Everything a hostile zip/pickle can make zipfile, struct, numpy or the unpickler raise.
# (UnicodeDecodeError is a ValueError; zipfile.BadZipFile and LargeZipFile are Exceptions.)
_CORRUPT = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, struct.error, zipfile.BadZipFile, zipfile.LargeZipFile,
            OSError, NotImplementedError, OverflowError, MemoryError, RecursionError)


def read_torch_zip(path: str | os.PathLike) -> Any:
    """Unpickle a torch zip checkpoint without torch; tensors become numpy arrays
    (float tensors: float32 for bf16 storages, else their own dtype).

    Anything wrong with the file raises CheckpointError naming it; nothing in the file can
    make the reader allocate more than a small multiple of the file size (data.pkl must be
    stored uncompressed, the pure-Python unpickler is used, and the bytes of materialised
    tensors are bounded by 4 x file size + 1 MiB)."""
    fname = os.fspath(path)
    try:
        fh = open_regular_file(fname)
    except OSError as e:
        raise CheckpointError(f"{fname}: cannot read ({e})") from e
    with fh:
        try:
            return _read_torch_zip(fname, fh)
        except CheckpointError as e:
            msg = str(e)
            raise CheckpointError(msg if msg.startswith(fname) else f"{fname}: {msg}") from None
        except _CORRUPT as e:
            raise _corrupt(fname, e) from None


def _read_torch_zip(fname: str, fh: Any) -> Any:
    fsize = os.fstat(fh.fileno()).st_size
    try:
        zf = zipfile.ZipFile(fh)
    except zipfile.BadZipFile as e:
        raise CheckpointError(f"{fname}: not a torch zip checkpoint ({e}); legacy (torch < 1.6) "
                              "files need torch: re-save them with torch.save") from None
    with zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise CheckpointError(f"{fname}: expected exactly one <archive>/data.pkl in the zip, "
                                  f"found {len(pkl)}")
        prefix = pkl[0][: -len("data.pkl")]
        big_endian = False
        if prefix + "byteorder" in names:
            bi = zf.getinfo(prefix + "byteorder")
            if bi.compress_type != zipfile.ZIP_STORED or bi.file_size > 16:
                raise CheckpointError(f"{fname}: invalid byteorder entry ({bi.file_size} bytes, "
                                      f"compression {bi.compress_type})")
            bo = zf.read(bi).decode("ascii", "replace").strip()
            if bo not in ("little", "big"):
                raise CheckpointError(f"{fname}: unknown byteorder {bo!r}")
            big_endian = bo == "big"
        cache: dict[str, _Storage] = {}
        budget = TensorBudget(4 * fsize + (1 << 20), fname)

        def load_storage(stype: StorageType, key: str, numel: Any) -> _Storage:
            if key in cache:
                if cache[key].kind != stype.name:
                    raise CheckpointError(f"{fname}: storage {key} used with two dtypes")
                return cache[key]
            if not re.fullmatch(r"[0-9A-Za-z_.]+", key):
                raise CheckpointError(f"{fname}: invalid storage key {key!r:.100}")
            member = f"{prefix}data/{key}"
            try:
                info = zf.getinfo(member)
            except KeyError:
                raise CheckpointError(f"{fname}: storage {member} is missing from the zip") from None
            if info.compress_type != zipfile.ZIP_STORED:
                raise CheckpointError(f"{fname}: storage {member} is compressed; torch writes "
                                      "storages uncompressed (re-save the file with torch.save)")
            it = stype.dtype.itemsize
            numel = _as_int(numel, "storage numel")
            if numel < 0 or numel * it != info.file_size:
                raise CheckpointError(f"{fname}: storage {key} should hold {numel} x {it} bytes "
                                      f"but its zip entry has {info.file_size}")
            dt = stype.dtype.newbyteorder(">") if big_endian and it > 1 else stype.dtype
            start = _zip_data_offset(fh, fname, fsize, info) if numel else 0
            st = _Storage(key, start, numel, dt, stype.name)
            cache[key] = st
            return st

        pinfo = zf.getinfo(pkl[0])
        if pinfo.compress_type != zipfile.ZIP_STORED or pinfo.file_size > fsize:
            raise CheckpointError(f"{fname}: {pkl[0]} is compressed or larger than the file "
                                  "(torch writes it uncompressed); re-save the file with "
                                  "torch.save")
        raw = zf.read(pinfo)
        rebuild = _make_rebuild(fh, fname, budget, cache)
        return RestrictedUnpickler(io.BytesIO(raw), len(raw), load_storage, rebuild).load()


_PREFIXES = ("_orig_mod.", "module.", "_forward_module.", "model.")


def normalize_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, np.ndarray]:
    """Find the model state dict in a loaded checkpoint ({"model": sd}, {"state_dict": sd}
    or a bare sd), strip wrapper prefixes (``module.``, ``_orig_mod.``, ...) and return
    {lit_gpt key: float32 array}. Non-float entries are dropped."""
    if isinstance(obj, dict):
        for k in ("model", "state_dict", "module"):
            if k in obj and isinstance(obj[k], dict):
                obj = obj[k]
                break
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: expected a state dict, got {type(obj).__name__}")
    sd: dict[str, np.ndarray] = {}
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, np.ndarray):
            continue
        for p in _PREFIXES:
            if k.startswith(p) and ("transformer." in k or "lm_head" in k):
                k = k[len(p):]
        if v.dtype.kind != "f":
            continue
        sd[k] = np.ascontiguousarray(v, dtype=np.float32)
    if "transformer.wte.weight" not in sd:
        if any(".mixer." in k for k in sd):
            raise CheckpointError(f"{source}: this looks like a mamba_ssm-style (MBlock, "
                                  "'mixer.*' keys) checkpoint; only Samba/lit_gpt GPT "
                                  "checkpoints are supported")
        raise CheckpointError(f"{source}: no 'transformer.wte.weight': not a lit_gpt Samba "
                              f"checkpoint (keys: {sorted(sd)[:5]}...)")
    return sd


def _torch_version(torch: Any) -> tuple[int, int]:
    """(major, minor) of ``torch.__version__`` ((0, 0) when it cannot be parsed)."""
    m = re.match(r"(\d+)\.(\d+)", str(getattr(torch, "__version__", "")))
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def load_litgpt_state_dict(path: str | os.PathLike, use_torch: bool = False
                           ) -> dict[str, np.ndarray]:
    """Read a lit_gpt ``.pth`` into {key: float32 array}. The default reader needs no torch;
    ``use_torch=True`` (or a legacy non-zip file with torch installed) uses
    ``torch.load(weights_only=True)`` instead."""
    fname = os.fspath(path)
    if not os.path.exists(fname):
        raise FileNotFoundError(f"{fname}: no such checkpoint file")
    try:
        with open_regular_file(fname) as fh:
            is_zip = zipfile.is_zipfile(fh)
    except OSError as e:
        raise CheckpointError(f"{fname}: cannot read ({e})") from e
    except _CORRUPT as e:     # e.g. BadZipFile("zipfiles that span multiple disks ...")
        raise _corrupt(fname, e) from None
    if use_torch or not is_zip:
        try:
            import torch
        except ImportError:
            if use_torch:
                raise
            raise CheckpointError(f"{fname}: not a torch zip checkpoint; legacy (torch < 1.6) "
                                  "files can only be read with torch installed") from None
        if _torch_version(torch) < (2, 6):
            # torch.load(weights_only=True) could run code before 2.6 (CVE-2025-32434)
            raise CheckpointError(
                f"{fname}: {'use_torch=True' if use_torch else 'this legacy (non-zip) file'} "
                f"needs torch.load, which is unsafe on untrusted files with torch "
                f"{torch.__version__} < 2.6 (CVE-2025-32434); upgrade torch, or re-save the "
                "file with torch >= 1.6 (zip format, read without torch)")
        try:
            obj = torch.load(fname, map_location="cpu", weights_only=True, mmap=False)
        except Exception as e:
            raise CheckpointError(f"{fname}: torch.load(weights_only=True) failed: {e}") from e

        def conv(o):
            if isinstance(o, torch.Tensor):
                return o.detach().float().numpy() if o.is_floating_point() else o.numpy()
            if isinstance(o, dict):
                return {k: conv(v) for k, v in o.items()}
            return o
        obj = conv(obj)
    else:
        obj = read_torch_zip(fname)
    return normalize_state_dict(obj, fname)


def _block_indices(sd: dict) -> list[int]:
    idx = set()
    for k in sd:
        m = re.match(r"transformer\.h\.(\d+)\.", k)
        if m:
            idx.add(int(m.group(1)))
    return sorted(idx)


def _shaped(sd: dict[str, np.ndarray], key: str, ndim: int, source: str) -> np.ndarray:
    """sd[key], checked to have ``ndim`` dimensions, none of them zero."""
    a = sd[key]
    if a.ndim != ndim or 0 in a.shape:
        raise CheckpointError(f"{source}: {key} has shape {tuple(a.shape)}; expected {ndim} "
                              "non-zero dimensions")
    return a


def infer_config(sd: dict[str, np.ndarray], source: str = "checkpoint",
                 **overrides: Any) -> SambaConfig:
    """Infer a :class:`SambaConfig` from lit_gpt tensor shapes.

    Shapes give everything except the attention head split and the window. Heads come from
    ``overrides`` (``n_head`` or ``head_dim``) or from a preset with the same d_model and
    vocabulary (samba-421m, samba-1.3b, ...); otherwise CheckpointError asks for them. The
    window defaults to 2048 (all Samba configs) for models with Mamba blocks; models without
    Mamba blocks default to full attention ("attn") unless ``window`` is given. Any field in
    ``overrides`` replaces the inferred value.
    """
    wte = _shaped(sd, "transformer.wte.weight", 2, source)
    V, D = wte.shape
    blocks = _block_indices(sd)
    if not blocks or blocks != list(range(len(blocks))):
        raise CheckpointError(f"{source}: block indices {blocks[:10]} are not 0..n-1")
    n_layer = len(blocks)
    types: list[str] = []
    mamba: dict[str, int] = {}
    attn_dims: Optional[tuple[int, int]] = None
    F = None
    for i in blocks:
        p = f"transformer.h.{i}."
        if p + "attn.A_log" in sd:
            types.append("mamba")
            E, N = _shaped(sd, p + "attn.A_log", 2, source).shape
            if p + "attn.conv1d.weight" not in sd or p + "attn.dt_proj.weight" not in sd:
                raise CheckpointError(f"{source}: block {i} has A_log but lacks conv1d/dt_proj")
            cw = _shaped(sd, p + "attn.conv1d.weight", 3, source)
            dtw = _shaped(sd, p + "attn.dt_proj.weight", 2, source)
            got = dict(E=E, d_state=N, d_conv=cw.shape[-1], dt_rank=dtw.shape[1])
            if mamba and got != mamba:
                raise CheckpointError(f"{source}: Mamba blocks differ in shape ({mamba} vs {got})")
            mamba = got
        elif p + "attn.attn.weight" in sd:
            types.append("attn")
            q = _shaped(sd, p + "attn.attn.weight", 2, source).shape[0]
            if p + "attn.proj.weight" not in sd:
                raise CheckpointError(f"{source}: block {i} lacks attn.proj.weight")
            o = _shaped(sd, p + "attn.proj.weight", 2, source).shape[1]
            if attn_dims and attn_dims != (q, o):
                raise CheckpointError(f"{source}: attention blocks differ in shape")
            attn_dims = (q, o)
        else:
            raise CheckpointError(f"{source}: block {i} has neither a Mamba (attn.A_log) nor an "
                                  "attention (attn.attn.weight) mixer")
        if p + "mlp.swiglu.w1.weight" not in sd:
            raise CheckpointError(f"{source}: block {i} lacks mlp.swiglu.w1.weight (only SwiGLU "
                                  "MLPs are supported)")
        w1 = _shaped(sd, p + "mlp.swiglu.w1.weight", 2, source)
        if F is not None and w1.shape[0] != F:
            raise CheckpointError(f"{source}: MLP sizes differ between blocks")
        F = w1.shape[0]
    cfg: dict[str, Any] = dict(name=f"litgpt:{os.path.basename(source)}", vocab_size=V,
                               n_layer=n_layer, d_model=D, intermediate_size=F,
                               tokenizer="byte" if V == 259 else "unknown")
    if mamba:
        if mamba["E"] % D:
            raise CheckpointError(f"{source}: d_inner {mamba['E']} is not a multiple of d_model {D}")
        cfg.update(expand=mamba["E"] // D, d_state=mamba["d_state"], d_conv=mamba["d_conv"],
                   dt_rank=mamba["dt_rank"])
    lm = sd.get("lm_head.weight")
    cfg["tie_embeddings"] = lm is None or (lm.shape == wte.shape and np.array_equal(lm, wte))
    has_attn = attn_dims is not None
    window = overrides.get("window", 2048 if mamba else None)
    if has_attn:
        types = [("swa" if window is not None else "attn") if t == "attn" else t for t in types]
    cfg["layer_types"] = tuple(types)
    cfg["window"] = window
    if has_attn:
        qrows, hq = attn_dims
        H = overrides.get("n_head")
        hd = overrides.get("head_dim") or None
        for k, v in (("n_head", H), ("head_dim", hd)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{k}: expected a positive int, got {v!r}")
        if hd is None and H is not None:
            if hq % H:
                raise CheckpointError(f"{source}: n_head={H} does not divide the {hq} attention "
                                      "output features")
            hd = hq // H
        if hd is None:
            for pname, pd in PRESETS.items():
                pc = SambaConfig.preset(pname)
                if pc.d_model == D and pc.vocab_size == V and pc.qkv_size == qrows \
                        and pc.n_head * pc.head_dim == hq:
                    hd = pc.head_dim
                    break
        if hd is None:
            raise CheckpointError(
                f"{source}: cannot infer the attention heads from the shapes (QKV rows {qrows}, "
                f"{hq} output features); pass n_head=... or head_dim=... (and n_kv_head) or a "
                "full config=SambaConfig(...)")
        if hq % hd or (qrows - hq) % (2 * hd):
            raise CheckpointError(f"{source}: head_dim {hd} does not fit the QKV shapes "
                                  f"({qrows} rows, {hq} output features)")
        cfg.update(head_dim=hd, n_head=hq // hd, n_kv_head=(qrows - hq) // (2 * hd))
    else:   # no attention blocks: the head fields are unused
        cfg.update(n_head=1, n_kv_head=1, head_dim=2)
    cfg.update({k: v for k, v in overrides.items() if k != "window"})
    try:
        return SambaConfig.from_dict(cfg)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{source}: inferred config is invalid ({e})") from e
