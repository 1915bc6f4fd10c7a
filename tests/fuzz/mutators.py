"""Deterministic input mutators for the fuzz harnesses (no third-party dependency).

Every mutator takes ``(data: bytes, rng: random.Random, corpus: list[bytes])`` and returns new
bytes. Three families:

* generic byte-level mutations (bit flips, interesting integers, insert/delete/duplicate,
  truncate, splice) that work on any input;
* safetensors-aware mutations: parse the 8-byte header length + JSON header + data section,
  change one field (dtype, shape, data_offsets, names, ``__metadata__``, the embedded model
  config), and serialise again, so most mutants get past the JSON parser into the checks
  that matter;
* pickle / zip aware mutations for torch ``.pth`` files: rewrite one opcode argument or
  GLOBAL of ``data.pkl``, delete/duplicate/swap opcodes, or change the zip members.

The same seed always produces the same sequence of mutants.
"""
from __future__ import annotations

import io
import json
import pickletools
import random
import struct
import warnings
import zipfile
from typing import Callable, List

warnings.filterwarnings("ignore", message="Duplicate name", module="zipfile")

Mutator = Callable[[bytes, random.Random, List[bytes]], bytes]

INTERESTING_INTS = [0, 1, -1, 2, 7, 8, 255, 256, 65535, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
                    2**40, 2**53, 2**62, 2**63 - 1, 2**63, 2**64 - 1, -(2**31), -(2**63),
                    10**12]

# ------------------------------------------------------------------------------ generic ---


def _pos(rng: random.Random, data: bytes) -> int:
    return rng.randrange(len(data)) if data else 0


def flip_bit(data: bytes, rng: random.Random, corpus: List[bytes]) -> bytes:
    if not data:
        return bytes([rng.randrange(256)])
    b = bytearray(data)
    i = _pos(rng, b)
    b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def set_byte(data: bytes, rng: random.Random, corpus: List[bytes]) -> bytes:
    if not data:
        return bytes([rng.randrange(256)])
    b = bytearray(data)
    b[_pos(rng, b)] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, ord("{"), ord('"'), ord("]"),
                                  rng.randrange(256)])
    return bytes(b)


def set_int(data: bytes, rng: random.Random, corpus: List[bytes]) -> bytes:
    """Overwrite 1/2/4/8 bytes at a random offset with an interesting little-endian integer."""
    if not data:
        return data
    width = rng.choice([1, 2, 4, 8])
    v = rng.choice(INTERESTING_INTS + [len(data), len(data) - 8, len(data) + 8])
    raw = (v % (1 << (8 * width))).to_bytes(width, "little")
    i = rng.randrange(max(1, len(data) - width + 1))
    return data[:i] + raw + data[i + width:]


def insert_bytes(data: bytes, rng: random.Random, corpus: List[bytes]) -> bytes:
    i = rng.randrange(len(data) + 1)
    n = rng.choice([1, 2, 4, 8, rng.randrange(1, 64)])
    chunk = bytes(rng.randrange(256) for _ in range(n))
    return data[:i] + chunk + data[i:]


def delete_bytes(data: bytes, rng: random.Random, corpus: List[bytes]) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    n = rng.choice([1, 2, 4, 8, rng.randrange(1, max(2, len(data) - i + 1))])
    return data[:i] + data[i + n:]


def duplicate_bytes(data: bytes, rng: random.Random, corpus: List[bytes]) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    n = rng.randrange(1, min(256, len(data) - i) + 1)
    j = rng.randrange(len(data) + 1)
    return data[:j] + data[i:i + n] + data[j:]


def truncate(data: bytes, rng: random.Random, corpus: List[bytes]) -> bytes:
    if not data:
        return data
    return data[:rng.randrange(len(data))]


def append_garbage(data: bytes, rng: random.Random, corpus: List[bytes]) -> bytes:
    return data + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 32)))


def splice(data: bytes, rng: random.Random, corpus: List[bytes]) -> bytes:
    if not corpus or not data:
        return data
    other = rng.choice(corpus)
    if not other:
        return data
    i = rng.randrange(len(data))
    j = rng.randrange(len(other))
    return data[:i] + other[j:]


GENERIC: List[Mutator] = [flip_bit, set_byte, set_int, insert_bytes, delete_bytes,
                          duplicate_bytes, truncate, append_garbage, splice]

# -------------------------------------------------------------------------- safetensors ---

SAFETENSORS_DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL",
                      "U16", "U32", "U64", "C64", "F8_E4M3", "F8_E5M2", "F4", "F6_E2M3"]


def split_safetensors(data: bytes):
    """(header dict, data section) of a well-formed file, or None."""
    if len(data) < 8:
        return None
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        return None
    try:
        hdr = json.loads(data[8:8 + n])
    except (ValueError, RecursionError):
        return None
    if not isinstance(hdr, dict):
        return None
    return hdr, data[8 + n:]


def join_safetensors(hdr, body: bytes, pad: bool = True, n_override: int | None = None) -> bytes:
    raw = json.dumps(hdr, separators=(",", ":")).encode()
    if pad:
        raw += b" " * (-len(raw) % 8)
    n = len(raw) if n_override is None else n_override
    return n.to_bytes(8, "little") + raw + body


def _weird_value(rng: random.Random):
    return rng.choice([None, True, -1, 0, 1.5, float(2**64), "", "x" * rng.randrange(1, 40),
                       [], {}, [[]], {"a": 1}, 2**70, -(2**63), "F32", [0, 1], [2**40]])


def _weird_shape(rng: random.Random, shape):
    if not isinstance(shape, list):
        shape = [3]
    opts = [
        [], [0], [-1], [2**40, 2**40], [2**63], [2**64 + 1], [1.5], ["3"], None, {}, [[2]],
        [1] * 40, [2**32, 2**32], [0, 2**62], list(shape) + [1], list(shape)[:-1],
        [s * 2 for s in shape] if isinstance(shape, list) and all(isinstance(s, int) for s in shape) else [3],
        [-(2**63)], [True],
    ]
    return rng.choice(opts)


def _weird_offsets(rng: random.Random, off, body_len: int, others: list):
    b, e = (off if isinstance(off, list) and len(off) == 2 else [0, 0])
    b = b if isinstance(b, int) else 0
    e = e if isinstance(e, int) else 0
    opts = [[0, 2**40], [e, b], [-8, 0], [b, e + 1], [b, e - 1], [b + 1, e + 1], [0], [0, 1, 2],
            ["0", "4"], [0.0, 4.0], None, [b, body_len + 8], [body_len, body_len + 4],
            [2**64 - 1, 2**64], [-(2**63), 0], [0, 0], [b, b]]
    if others:
        opts.append(list(rng.choice(others)))  # alias another tensor's bytes
    return rng.choice(opts)


def _mutate_config(cfg: dict, rng: random.Random) -> dict:
    cfg = dict(cfg)
    if not cfg or rng.random() < 0.1:
        cfg[rng.choice(["unknown_key", "n_layer", "d_model"])] = _weird_value(rng)
        return cfg
    k = rng.choice(sorted(cfg))
    v = cfg[k]
    r = rng.random()
    if r < 0.15:
        del cfg[k]
    elif isinstance(v, bool) or v is None:
        cfg[k] = _weird_value(rng)
    elif isinstance(v, int):
        cfg[k] = rng.choice([0, -1, 1, v + 1, v - 1, v * 2, 2**31, 10**6, 10**9, 2**63, 1.5,
                             str(v), None])
    elif isinstance(v, float):
        cfg[k] = rng.choice([0.0, -1.0, float("nan"), float("inf"), 1e308, -v, None, "x"])
    elif isinstance(v, str):
        cfg[k] = rng.choice(["", "../../../etc/passwd", "/dev/zero", "x" * 1000, "\x00",
                             "mamba", "swa", "attn", "gpt2", 5, None])
    elif isinstance(v, list):
        vv = list(v)
        choice = rng.random()
        if choice < 0.3 and vv:
            vv.pop(rng.randrange(len(vv)))
        elif choice < 0.6:
            vv.append(rng.choice(["mamba", "swa", "attn", "conv", 3, None]))
        elif vv:
            vv[rng.randrange(len(vv))] = rng.choice(["x", "", 0, None, "MAMBA"])
        cfg[k] = rng.choice([vv, vv * 100, "mamba", None])
    else:
        cfg[k] = _weird_value(rng)
    return cfg


def safetensors_structured(data: bytes, rng: random.Random, corpus: List[bytes]) -> bytes:
    """Change one field of a parsed safetensors header (falls back to a byte mutation)."""
    parts = split_safetensors(data)
    if parts is None:
        return rng.choice(GENERIC)(data, rng, corpus)
    hdr, body = parts
    names = [k for k in hdr if k != "__metadata__"]
    entries = [hdr[k] for k in names if isinstance(hdr[k], dict)]
    offsets = [e.get("data_offsets") for e in entries if isinstance(e.get("data_offsets"), list)]
    what = rng.randrange(14)
    pad, n_override = True, None
    if what <= 3 and names:
        name = rng.choice(names)
        ent = hdr[name]
        if not isinstance(ent, dict):
            hdr[name] = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
        elif what == 0:
            ent["dtype"] = rng.choice(SAFETENSORS_DTYPES + ["", "f32", "F33", 7, None, ["F32"]])
        elif what == 1:
            ent["shape"] = _weird_shape(rng, ent.get("shape"))
        elif what == 2:
            ent["data_offsets"] = _weird_offsets(rng, ent.get("data_offsets"), len(body), offsets)
        else:
            key = rng.choice(["dtype", "shape", "data_offsets"])
            if rng.random() < 0.5:
                ent.pop(key, None)
            else:
                ent["extra_" + key] = _weird_value(rng)
    elif what == 4 and names:
        del hdr[rng.choice(names)]
    elif what == 5 and names:
        src = rng.choice(names)
        hdr[rng.choice([src + ".copy", "", "../../evil", "\u00e9" * 3, "x" * 300,
                        "transformer.h.999.attn.D", "__metadata__"])] = hdr[src]
    elif what == 6 and names:
        src = rng.choice(names)
        hdr[rng.choice([src.replace("weight", "wieght"), src + ".extra", src.upper()])] = hdr.pop(src)
    elif what == 7:
        meta = hdr.get("__metadata__")
        if isinstance(meta, dict) and "config" in meta and rng.random() < 0.8:
            try:
                cfg = json.loads(meta["config"])
            except (ValueError, TypeError, RecursionError):
                cfg = None
            if isinstance(cfg, dict):
                meta["config"] = json.dumps(_mutate_config(cfg, rng))
            else:
                meta["config"] = rng.choice(["{", "[]", "null", "1", '{"n_layer": "x"}'])
        else:
            hdr["__metadata__"] = rng.choice([None, [], "x", 1, {"config": 5},
                                              {"config": "{" * 10000},
                                              {"format": "pt"}, {"x": {"y": 1}}])
    elif what == 8:
        # The 8-byte header length disagrees with the header.
        raw_len = len(json.dumps(hdr, separators=(",", ":")).encode())
        n_override = rng.choice([0, 1, raw_len - 1, raw_len + 1, raw_len + 9, 2**32, 2**63,
                                 2**64 - 1, 100_000_001, len(data)])
        pad = False
    elif what == 9:
        # The header is not an object / is deeply nested / has duplicate keys.
        raw = rng.choice([b"[]", b"null", b'"x"', b"1e999", b"[" * 100_000, b"{" * 5000,
                          b'{"a":' * 3000 + b"1" + b"}" * 3000, b"\xff\xfe{}", b"{}\x00",
                          b'{"__metadata__":{"a":"b"},"__metadata__":{"c":1}}',
                          b'{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                          b'"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
                          b'{"x": NaN}', b'{"x": Infinity}'])
        return len(raw).to_bytes(8, "little") + raw + body
    elif what == 10:
        body = rng.choice([body[:rng.randrange(len(body) + 1)], body + b"\0" * rng.randrange(1, 9),
                           b""])
    elif what == 11:
        pad = False  # unpadded header: data start not 8-byte aligned
    elif what == 12 and names:
        # Many tensors (count amplification): each entry is tiny, so the file stays small.
        for i in range(rng.choice([100, 1000])):
            hdr[f"t{i}"] = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
    else:
        return rng.choice(GENERIC)(data, rng, corpus)
    return join_safetensors(hdr, body, pad=pad, n_override=n_override)


SAFETENSORS: List[Mutator] = [safetensors_structured] * 3 + GENERIC

# ------------------------------------------------------------------------- pickle / zip ---

# Globals a hostile or broken pickle might name; only a few are in any sane allowlist.
GLOBAL_CHOICES = [
    ("os", "system"), ("posix", "system"), ("builtins", "eval"), ("builtins", "exec"),
    ("builtins", "getattr"), ("builtins", "__import__"), ("subprocess", "Popen"),
    ("nt", "system"), ("shutil", "rmtree"), ("io", "open"), ("builtins", "open"),
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"), ("collections", "OrderedDict"),
    ("torch", "FloatStorage"), ("torch", "BFloat16Storage"), ("torch", "HalfStorage"),
    ("torch", "LongStorage"), ("torch", "DoubleStorage"), ("torch", "Tensor"),
    ("torch", "Size"), ("torch", "float32"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy", "dtype"), ("copyreg", "_reconstructor"), ("__main__", "X"),
    ("torch.nn.modules.linear", "Linear"), ("pathlib", "PosixPath"), ("", ""),
    ("torch._utils", "_rebuild_tensor_v3"), ("torch.serialization", "_get_layout"),
]


def pickle_ops(data: bytes):
    """[(opcode name, arg, raw bytes)] of a pickle, or None if it does not disassemble."""
    try:
        ops = list(pickletools.genops(data))
    except Exception:
        return None
    out = []
    for i, (op, arg, pos) in enumerate(ops):
        end = ops[i + 1][2] if i + 1 < len(ops) else len(data)
        out.append((op.name, arg, data[pos:end]))
    return out


def _enc_int(v: int) -> bytes:
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if 0 <= v < 65536:
        return b"M" + v.to_bytes(2, "little")
    if -(2**31) <= v < 2**31:
        return b"J" + struct.pack("<i", v)
    n = (v.bit_length() + 8) // 8
    return b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True)


def _enc_str(s: str) -> bytes:
    raw = s.encode("utf-8", "surrogatepass")
    if len(raw) < 256:
        return b"\x8c" + bytes([len(raw)]) + raw
    return b"X" + struct.pack("<I", len(raw)) + raw


def pickle_structured(data: bytes, rng: random.Random, corpus: List[bytes]) -> bytes:
    ops = pickle_ops(data)
    if not ops:
        return rng.choice(GENERIC)(data, rng, corpus)
    raws = [r for _, _, r in ops]
    i = rng.randrange(len(ops))
    name, arg, raw = ops[i]
    what = rng.randrange(8)
    if what <= 2:
        # Rewrite an argument of a similar opcode.
        ints = [k for k, (n, _, _) in enumerate(ops) if n in ("BININT", "BININT1", "BININT2", "LONG1")]
        strs = [k for k, (n, _, _) in enumerate(ops) if n in ("BINUNICODE", "SHORT_BINUNICODE")]
        globs = [k for k, (n, _, _) in enumerate(ops) if n == "GLOBAL"]
        if what == 0 and ints:
            k = rng.choice(ints)
            raws[k] = _enc_int(rng.choice(INTERESTING_INTS + [ops[k][1] + 1, ops[k][1] - 1]))
        elif what == 1 and strs:
            k = rng.choice(strs)
            old = ops[k][1]
            raws[k] = _enc_str(rng.choice(
                [m + "." + n for m, n in GLOBAL_CHOICES] + [m for m, _ in GLOBAL_CHOICES]
                + [old + "x", "", "../" + old, "0", "1", "999", "cpu", "cuda", "model",
                   "transformer.wte.weight", "FloatStorage", "system", str(old)[::-1]]))
        elif globs or strs:
            if globs and rng.random() < 0.5:
                k = rng.choice(globs)
                m, n = rng.choice(GLOBAL_CHOICES)
                raws[k] = b"c" + m.encode() + b"\n" + n.encode() + b"\n"
            else:
                # STACK_GLOBAL (protocol 2+): the two strings before it name the global.
                sg = [k for k, (n, _, _) in enumerate(ops) if n == "STACK_GLOBAL"]
                if sg:
                    k = rng.choice(sg)
                    m, n = rng.choice(GLOBAL_CHOICES)
                    raws[k] = _enc_str(m) + _enc_str(n) + b"\x93"
                    # drop the two original string pushes (and their memo puts) if adjacent
                    j = k - 1
                    dropped = 0
                    while j >= 0 and dropped < 2:
                        if ops[j][0] in ("BINUNICODE", "SHORT_BINUNICODE"):
                            dropped += 1
                        raws[j] = b""
                        j -= 1
        else:
            return rng.choice(GENERIC)(data, rng, corpus)
    elif what == 3 and len(raws) > 1:
        del raws[i]
    elif what == 4:
        raws.insert(i, raw)
    elif what == 5 and len(raws) > 2:
        j = rng.randrange(len(raws))
        raws[i], raws[j] = raws[j], raws[i]
    elif what == 6:
        raws.insert(i, rng.choice([b"R", b"b", b"\x81", b"0", b"(", b"t", b"s", b"u", b"e",
                                   b"h\xff", b"j\xff\xff\xff\x7f", b"\x82\x01", b"Q", b"N",
                                   b"c__builtin__\neval\n", b"\x95" + b"\xff" * 8, b".",
                                   b"]", b"}", b"\x94", b"\x85", b"\x86", b"\x87", b"P"]))
    elif what == 7 and rng.random() < 0.5:
        # Attacks on the unpickler itself (issue 16.2-16.4), pushed and popped so that the
        # rest of the pickle still runs: deep nesting, BUILD on an allowed global (state that
        # would rename a storage type), runs of object-creating 1-byte opcodes.
        k = rng.choice([99, 150, 3000])
        m, n = rng.choice(GLOBAL_CHOICES[11:20])
        raws.insert(i, rng.choice([
            b")" + b"\x85" * k + b"0",                                   # tuple k deep
            b"]" * k + b"a" * (k - 1) + b"0",                             # list k deep
            b"c" + m.encode() + b"\n" + n.encode() + b"\n}" + _enc_str("name")
            + _enc_str("BFloat16Storage") + b"sb0",                       # BUILD on a global
            b"N}" + _enc_str("__defaults__") + b")sc" + m.encode() + b"\n" + n.encode()
            + b"\n" + b"(" + b")" + b"t0",
            b"\x8f" * k + b"0" * k,                                      # empty sets
            b")" + b"\x94" * k + b"0",                                   # memo entries
        ]))
    else:
        return rng.choice(GENERIC)(data, rng, corpus)
    return b"".join(raws)


def _zip_members(data: bytes):
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return [(info, z.read(info)) for info in z.infolist()]
    except Exception:
        return None


def _zip_build(members, compress: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compress) as z:
        for name, raw in members:
            z.writestr(zipfile.ZipInfo(name), raw)
    return buf.getvalue()


def pth_structured(data: bytes, rng: random.Random, corpus: List[bytes]) -> bytes:
    """Mutate the pickle inside a torch zip checkpoint, or the zip members themselves."""
    members = _zip_members(data)
    if not members:
        return rng.choice(GENERIC)(data, rng, corpus)
    items = [(info.filename, raw) for info, raw in members]
    pk = [k for k, (n, _) in enumerate(items) if n.endswith("data.pkl")]
    what = rng.randrange(10)
    if what <= 4 and pk:
        k = pk[0]
        name, raw = items[k]
        for _ in range(rng.choice([1, 1, 2, 3])):
            raw = pickle_structured(raw, rng, [])
        items[k] = (name, raw)
    elif what == 5:
        k = rng.randrange(len(items))
        name, raw = items[k]
        items[k] = (name, rng.choice([raw[:rng.randrange(len(raw) + 1)], raw + b"\0" * 4,
                                      raw * 2, b""]))
    elif what == 6 and len(items) > 1:
        del items[rng.randrange(len(items))]
    elif what == 7:
        k = rng.randrange(len(items))
        name, raw = items[k]
        items[k] = (rng.choice([name + "x", "../" + name, "/" + name, name.upper(),
                                name.replace("archive", "other")]), raw)
    elif what == 8:
        k = rng.randrange(len(items))
        items.append(items[k])  # duplicate member name
    else:
        return _zip_build(items, compress=zipfile.ZIP_DEFLATED)
    return _zip_build(items)


PTH: List[Mutator] = [pth_structured] * 4 + GENERIC


def mutate(data: bytes, rng: random.Random, corpus: List[bytes], mutators: List[Mutator],
           max_stack: int = 3) -> bytes:
    """Apply 1..max_stack mutators; keeps the result under 4 MiB."""
    for _ in range(rng.randint(1, max_stack)):
        m = rng.choice(mutators)
        try:
            data = m(data, rng, corpus)
        except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError):
            data = flip_bit(data, rng, corpus)   # a structured mutator met a shape it
                                                 # does not handle: still deterministic
        if len(data) > 4 << 20:
            data = data[:4 << 20]
    return data


# ------------------------------------------------------------------- checkpoint folders ---

def _mutate_index(d, rng: random.Random):
    wm = d.get("weight_map") if isinstance(d, dict) else None
    if not isinstance(wm, dict) or not wm:
        return rng.choice([{}, [], {"weight_map": []}, {"weight_map": {"x": 5}}, "[" * 3000])
    wm = dict(wm)
    k = rng.choice(sorted(wm))
    r = rng.randrange(7)
    if r == 0:
        del wm[k]
    elif r == 1:
        wm[k] = rng.choice(["../" + str(wm[k]), "/etc/passwd", "", ".hidden.safetensors",
                            "missing.safetensors", "config.json", 5, None, "a/b.safetensors"])
    elif r == 2:
        wm[k + ".extra"] = wm[k]
    elif r == 3:
        wm[rng.choice(["model.layers.0.self_attn.q_proj.weight", "lm_head.weight", ""])] = wm[k]
    else:
        md = dict(d.get("metadata") or {})
        md["total_size"] = rng.choice([0, -1, 2**63, "1", None, md.get("total_size", 0) + 2])
        return dict(d, metadata=md, weight_map=wm)
    return dict(d, weight_map=wm)


def folder_structured(data: bytes, rng: random.Random, corpus: List[bytes]) -> bytes:
    """Mutate a checkpoint folder stored as a zip of its files: its config.json (the model
    config mutator), its index (shard names, keys, total_size), a shard (the safetensors
    mutators), or the set of files (drop, duplicate, rename)."""
    members = _zip_members(data)
    if not members:
        return rng.choice(GENERIC)(data, rng, corpus)
    items = [(info.filename, raw) for info, raw in members]
    k = rng.randrange(len(items))
    name, raw = items[k]
    what = rng.randrange(6)
    if what <= 2 and name.endswith(".json"):
        try:
            d = json.loads(raw)
        except ValueError:
            d = None
        if name == "config.json" and isinstance(d, dict):
            d = _mutate_config(d, rng)
        else:
            d = _mutate_index(d, rng)
        items[k] = (name, d.encode() if isinstance(d, str) else
                    json.dumps(d, allow_nan=True).encode())
    elif what <= 3 and name.endswith(".safetensors"):
        items[k] = (name, rng.choice(SAFETENSORS)(raw, rng, []))
    elif what == 4 and len(items) > 1:
        del items[k]
    else:
        items[k] = (rng.choice([name + "x", "model.safetensors", "config.json",
                                "model.safetensors.index.json"]), raw)
    return _zip_build(items)


FOLDER: List[Mutator] = [folder_structured]   # byte flips would only break the zip's CRCs
