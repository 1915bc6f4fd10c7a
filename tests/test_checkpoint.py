"""Checkpoints: safetensors round trip and validation, lit_gpt .pth without torch, hostile pickles."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import assert_close
from samba_ext import CheckpointError
from samba_ext.config import SambaConfig
from samba_ext.litgpt import infer_config, load_litgpt_state_dict, read_torch_zip
from samba_ext.model import Samba
from samba_ext.safetensors_io import (bf16_to_f32, f32_to_bf16, read_safetensors,
                                      read_safetensors_header, write_safetensors)

FIX = Path(__file__).resolve().parent / "fixtures"
PTH = FIX / "litgpt_tiny.pth"


def _cfg() -> SambaConfig:
    return SambaConfig.preset("samba-test", n_layer=3, layer_types=("mamba", "swa", "attn"),
                              d_model=32, head_dim=8, intermediate_size=48)


# ----------------------------------------------------------------------- safetensors ---
def _raw_file(path, header: dict | bytes, data: bytes, hlen: int | None = None) -> None:
    hb = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write((len(hb) if hlen is None else hlen).to_bytes(8, "little"))
        f.write(hb)
        f.write(data)


def test_safetensors_roundtrip_dtypes(tmp_path, rng):
    t = {"a": rng.standard_normal((3, 5)).astype(np.float32),
         "b.c": rng.standard_normal(7).astype(np.float32),
         "empty": np.zeros((0, 4), np.float32),
         "scalar": np.array(1.5, np.float32)}
    meta = {"format": "samba-ext", "note": "x"}
    for dt in ("F32", "F16", "BF16"):
        p = tmp_path / f"t_{dt}.safetensors"
        write_safetensors(p, t, meta, dtype=dt)
        got, m = read_safetensors(p)
        assert m == meta
        assert set(got) == set(t)
        for k, v in t.items():
            assert got[k].shape == v.shape and got[k].dtype == np.float32
            if dt == "F32":
                np.testing.assert_array_equal(got[k], v)
            elif dt == "F16":
                np.testing.assert_array_equal(got[k], v.astype(np.float16).astype(np.float32))
            else:
                np.testing.assert_array_equal(got[k], bf16_to_f32(f32_to_bf16(v)))
        raw, _ = read_safetensors(p, dtype=None)
        assert raw["a"].dtype == {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}[dt]


def test_bf16_conversion_rounding():
    x = np.array([1.0, -2.5, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -9, np.inf, -np.inf, np.nan, 0.0],
                 np.float32)
    b = f32_to_bf16(x)
    y = bf16_to_f32(b)
    # 1 + 2^-8 is a tie between 1 and 1 + 2^-7: round to even -> 1.0; 1 + 3*2^-9 rounds up
    np.testing.assert_array_equal(y[:6], [1.0, -2.5, 1.0, 1.0 + 2 ** -7, np.inf, -np.inf])
    assert np.isnan(y[6]) and y[7] == 0.0


def _good_file(tmp_path) -> Path:
    p = tmp_path / "good.safetensors"
    write_safetensors(p, {"w": np.arange(12, dtype=np.float32).reshape(3, 4),
                          "v": np.ones(5, np.float32)}, {"k": "v"})
    return p


def test_truncated_file(tmp_path):
    p = _good_file(tmp_path)
    data = p.read_bytes()
    for cut in (1, 4, 20):
        q = tmp_path / f"cut{cut}.safetensors"
        q.write_bytes(data[:-cut])
        with pytest.raises(CheckpointError, match="truncated"):
            read_safetensors(q)
    q = tmp_path / "tiny.safetensors"
    q.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match="truncated"):
        read_safetensors(q)


def test_header_length_past_eof(tmp_path):
    p = tmp_path / "h.safetensors"
    _raw_file(p, {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4,
              hlen=10_000)
    with pytest.raises(CheckpointError, match="past the end"):
        read_safetensors(p)
    _raw_file(p, b"{}", b"", hlen=2 ** 63)     # absurd claim: refused before any allocation
    with pytest.raises(CheckpointError, match="exceeds"):
        read_safetensors(p)


@pytest.mark.parametrize("bad,match", [
    ({"w": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}, "unsupported dtype"),
    ({"w": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}, "unsupported dtype"),
    ({"w": {"dtype": "F16", "shape": [2], "data_offsets": [0, 8]}}, "needs 4 bytes"),
    ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, "needs 12 bytes"),
    ({"w": {"dtype": "F32", "shape": [2 ** 40, 2 ** 40], "data_offsets": [0, 8]}}, "needs"),
    ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, "non-negative"),
    ({"w": {"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]}}, "non-negative"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, "begin <= end"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, "data_offsets"),
    ({"w": {"dtype": "F32", "shape": [2]}}, "exactly"),
    ({"w": [1, 2]}, "exactly"),
    ({"__metadata__": {"a": 1}, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
     "__metadata__"),
])
def test_malformed_entries(tmp_path, bad, match):
    p = tmp_path / "bad.safetensors"
    _raw_file(p, bad, b"\0" * 8)
    with pytest.raises(CheckpointError, match=match):
        read_safetensors(p)


def test_overlapping_and_holes(tmp_path):
    p = tmp_path / "o.safetensors"
    _raw_file(p, {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                  "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12)
    with pytest.raises(CheckpointError, match="overlaps"):
        read_safetensors(p)
    _raw_file(p, {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                  "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}, b"\0" * 12)
    with pytest.raises(CheckpointError, match="hole"):
        read_safetensors(p)
    _raw_file(p, {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 12)
    with pytest.raises(CheckpointError, match="trailing"):
        read_safetensors(p)


def test_header_json_problems(tmp_path):
    p = tmp_path / "j.safetensors"
    entry = '{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'
    _raw_file(p, ('{"a": %s, "a": %s}' % (entry, entry)).encode(), b"\0" * 4)
    with pytest.raises(CheckpointError, match="duplicate"):
        read_safetensors(p)
    _raw_file(p, b"\xff\xfe{not json", b"")
    with pytest.raises(CheckpointError, match="JSON"):
        read_safetensors(p)
    _raw_file(p, b"[1, 2]", b"")
    with pytest.raises(CheckpointError, match="object"):
        read_safetensors(p)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_byte_mutations(tmp_path, data):
    """Random byte flips / truncations of a valid file: a CheckpointError or valid float32
    arrays of the declared sizes, never another exception or a crash."""
    good = _good_file(tmp_path).read_bytes()
    buf = bytearray(good)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        buf = buf[: data.draw(st.integers(0, len(buf)))]
    p = tmp_path / "fuzz.safetensors"
    p.write_bytes(bytes(buf))
    try:
        t, _ = read_safetensors(p)
    except CheckpointError:
        return
    assert sum(a.size * 4 for a in t.values()) <= len(buf)
    for a in t.values():
        assert a.dtype == np.float32


def test_model_save_load_roundtrip(tmp_path, rng):
    cfg = _cfg()
    m = Samba(cfg, seed=3)
    p = tmp_path / "m.safetensors"
    m.save(p, metadata={"train_command": "python train.py --steps 1"})
    ents, meta, _, _ = read_safetensors_header(p)
    assert meta["format"] == "samba-ext" and meta["tokenizer"] == "byte"
    assert meta["train_command"] == "python train.py --steps 1"
    assert SambaConfig.from_dict(json.loads(meta["config"])) == cfg
    assert "lm_head.weight" not in ents                   # tied
    assert ents["transformer.h.1.attn.attn.weight"]["shape"] == (cfg.qkv_size, cfg.d_model)
    assert ents["transformer.h.0.attn.conv1d.weight"]["shape"] == (cfg.d_inner, 1, cfg.d_conv)
    m2 = Samba.load(p)
    assert m2.config == cfg and m2.metadata["train_command"].startswith("python")
    sd1, sd2 = m.state_dict(), m2.state_dict()
    assert set(sd1) == set(sd2)
    for k in sd1:
        np.testing.assert_array_equal(sd1[k], sd2[k], err_msg=k)
    tok = rng.integers(0, cfg.vocab_size, (2, 20))
    np.testing.assert_array_equal(m.forward(tok), m2.forward(tok))


def test_untied_and_bf16_roundtrip(tmp_path):
    cfg = SambaConfig.preset("llama-tiny", n_layer=2, layer_types=("attn", "attn"),
                             d_model=32, n_head=2, n_kv_head=1, intermediate_size=32,
                             tie_embeddings=False)
    m = Samba(cfg, seed=1)
    p = tmp_path / "u.safetensors"
    m.save(p, dtype="BF16")
    ents, _, _, _ = read_safetensors_header(p)
    assert ents["lm_head.weight"]["dtype"] == "BF16"
    m2 = Samba.load(p)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(m2.state_dict()[k], bf16_to_f32(f32_to_bf16(v)), err_msg=k)


def test_load_wrong_shape_and_missing(tmp_path):
    cfg = _cfg()
    sd = Samba(cfg).state_dict()
    meta = {"format": "samba-ext", "config": json.dumps(cfg.to_dict())}
    bad = dict(sd)
    bad["transformer.h.0.attn.x_proj.weight"] = np.zeros((3, 3), np.float32)
    write_safetensors(tmp_path / "s.safetensors", bad, meta)
    with pytest.raises(CheckpointError, match=r"x_proj.weight: expected shape"):
        Samba.load(tmp_path / "s.safetensors")
    bad = dict(sd)
    del bad["transformer.h.2.attn.proj.weight"]
    write_safetensors(tmp_path / "m.safetensors", bad, meta)
    with pytest.raises(CheckpointError, match="missing"):
        Samba.load(tmp_path / "m.safetensors")
    bad = dict(sd, extra=np.zeros(2, np.float32))
    write_safetensors(tmp_path / "e.safetensors", bad, meta)
    with pytest.raises(CheckpointError, match="unexpected"):
        Samba.load(tmp_path / "e.safetensors")
    write_safetensors(tmp_path / "c.safetensors", sd, dict(meta, config="{nope"))
    with pytest.raises(CheckpointError, match="invalid config"):
        Samba.load(tmp_path / "c.safetensors")


def test_bundled_model_lookup():
    from samba_ext.data import BUNDLED_MODELS, bundled_path
    for name in BUNDLED_MODELS:
        try:
            p = bundled_path(name)
        except FileNotFoundError as e:
            assert "not included" in str(e) and name in str(e)
            with pytest.raises(FileNotFoundError, match="not included"):
                Samba.load(name)
        else:
            m = Samba.load(name)
            assert p.is_file() and m.config.vocab_size == 259
    with pytest.raises(FileNotFoundError, match="no such file"):
        Samba.load("no-such-model-name")


# -------------------------------------------------------------------------- lit_gpt ---
def test_litgpt_fixture_reader_without_torch():
    """The fixture is read in a subprocess where importing torch is impossible."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from samba_ext.litgpt import read_torch_zip, load_litgpt_state_dict\n"
        f"o = read_torch_zip({str(PTH)!r})\n"
        f"e = np.load({str(FIX / 'litgpt_tiny_expected.npz')!r})\n"
        "for k, v in o['probes'].items():\n"
        "    want = np.float16 if k == 'f16' else np.float32\n"
        "    assert v.dtype == want and np.array_equal(v, e['probe_' + k]), k\n"
        "assert o['iter_num'] == 7 and o['hparams']['model_name'] == 'Samba_tiny_fixture'\n"
        "assert o['optimizer']['param_groups'][0]['betas'] == (0.9, 0.95)\n"
        f"sd = load_litgpt_state_dict({str(PTH)!r})\n"
        "assert np.array_equal(sd['lm_head.weight'], sd['transformer.wte.weight'])\n"
        "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
        "print('ok', len(sd))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=str(Path(__file__).resolve().parent.parent), timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok 45")   # 3 + 2 x 14 (Mamba) + 2 x 7 (SWA) keys


def test_litgpt_fixture_matches_torch_load():
    torch = pytest.importorskip("torch")
    ref = torch.load(PTH, map_location="cpu", weights_only=True)["model"]
    sd = load_litgpt_state_dict(PTH)
    assert set(sd) == set(ref)
    for k, v in ref.items():
        np.testing.assert_array_equal(sd[k], v.numpy(), err_msg=k)


def test_litgpt_fixture_parity():
    """Logits of the loaded lit_gpt checkpoint match the plain torch float64 forward made
    with the fixture (tests/fixtures/make_litgpt_fixture.py). float32 vs float64 through 4
    blocks: observed ~1e-6 relative; 2e-5 leaves margin while any layout error (QKV
    grouping, conv tap order, RoPE) gives O(1) errors."""
    e = np.load(FIX / "litgpt_tiny_expected.npz")
    m = Samba.load(PTH, n_head=4, window=8)
    c = m.config
    assert (c.n_layer, c.d_model, c.n_head, c.n_kv_head, c.head_dim, c.window) == (4, 16, 4, 2, 4, 8)
    assert c.layer_types == ("mamba", "swa", "mamba", "swa") and c.tie_embeddings
    assert (c.d_state, c.d_conv, c.dt_rank, c.expand, c.vocab_size) == (4, 4, 1, 2, 48)
    assert_close(m.forward(e["tokens"]), e["logits"], 2e-5, "lit_gpt logits")
    # also through chunked prefill + step (the streaming path)
    st = m.new_state(2)
    m.prefill(e["tokens"][:, :11], st, chunk_size=4)
    steps = [m.step(e["tokens"][:, t], st) for t in range(11, 21)]
    assert_close(np.stack(steps, 1), e["logits"][:, 11:], 2e-5, "lit_gpt streamed logits")


def test_litgpt_config_inference_needs_heads():
    sd = load_litgpt_state_dict(PTH)
    with pytest.raises(CheckpointError, match="n_head"):
        infer_config(sd, "fixture")
    c = infer_config(sd, "fixture", head_dim=4, window=8)
    assert (c.n_head, c.n_kv_head) == (4, 2)
    with pytest.raises(CheckpointError, match="n_head"):
        Samba.load(PTH)


def test_litgpt_preset_match(tmp_path):
    """A state dict with Samba-421M-like head shapes infers heads from the preset table."""
    cfg = SambaConfig.preset("samba-421m")
    shapes = {"transformer.wte.weight": (32000, 1536),
              "transformer.h.0.attn.A_log": (3072, 16),
              "transformer.h.0.attn.conv1d.weight": (3072, 1, 4),
              "transformer.h.0.attn.dt_proj.weight": (3072, 96),
              "transformer.h.0.mlp.swiglu.w1.weight": (4096, 1536),
              "transformer.h.1.attn.attn.weight": (4608, 1536),
              "transformer.h.1.attn.proj.weight": (1536, 1536),
              "transformer.h.1.mlp.swiglu.w1.weight": (4096, 1536)}
    sd = {k: np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), s, [0] * len(s))
          for k, s in shapes.items()}
    c = infer_config(sd, "fake")
    assert (c.n_head, c.n_kv_head, c.head_dim, c.window) == (cfg.n_head, 12, 128, 2048)
    assert c.layer_types == ("mamba", "swa") and c.dt_rank == 96 and c.tokenizer == "unknown"


# ---------------------------------------------------------------- hostile pickles ---
def _zip_with_pickle(path: Path, payload: bytes, extra: dict | None = None) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/byteorder", "little")
        for k, v in (extra or {}).items():
            z.writestr(k, v)


class _Evil:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("__import__('os').system('true')",))


def test_pickle_with_os_system_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"model": {"transformer.wte.weight": _Evil(f"touch {marker}")}},
                           protocol=2)
    p = tmp_path / "evil.pth"
    _zip_with_pickle(p, payload)
    with pytest.raises(CheckpointError, match=r"refusing to load the global '(posix|os|nt)\.system'"):
        read_torch_zip(p)
    with pytest.raises(CheckpointError, match="system"):
        Samba.load(p)
    assert not marker.exists()
    for proto in (0, 4):
        _zip_with_pickle(p, pickle.dumps([_EvalEvil()], protocol=proto))
        with pytest.raises(CheckpointError, match=r"(builtins|__builtin__)\.eval'"):
            read_torch_zip(p)


# raw pickle opcodes, so that the test can name torch globals without importing torch
def _op_str(s: str) -> bytes:
    b = s.encode()
    return b"X" + len(b).to_bytes(4, "little") + b


def _op_int(i: int) -> bytes:
    return b"J" + i.to_bytes(4, "little", signed=True)


def _op_tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _op_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _tensor_pickle(size, stride, offset, numel_decl) -> bytes:
    """{"w": _rebuild_tensor_v2(<storage "0" FloatStorage numel_decl>, offset, size, stride,
    False, OrderedDict())} as a protocol-2 pickle."""
    pid = _op_tuple(_op_str("storage"), _op_global("torch", "FloatStorage"), _op_str("0"),
                    _op_str("cpu"), _op_int(numel_decl)) + b"Q"
    args = _op_tuple(pid, _op_int(offset), _op_tuple(*map(_op_int, size)),
                     _op_tuple(*map(_op_int, stride)), b"\x89",
                     _op_global("collections", "OrderedDict") + b")R")
    tensor = _op_global("torch._utils", "_rebuild_tensor_v2") + args + b"R"
    return b"\x80\x02}" + _op_str("w") + tensor + b"s."


def test_pickle_tensor_bounds_are_checked(tmp_path):
    """Hand-made tensor pickles whose size/stride/numel disagree with the storage bytes are
    refused before any out-of-bounds read; a consistent one loads."""
    p = tmp_path / "b.pth"
    data = {"archive/data/0": np.arange(4, dtype="<f4").tobytes()}
    _zip_with_pickle(p, _tensor_pickle((2, 2), (2, 1), 0, 4), data)
    np.testing.assert_array_equal(read_torch_zip(p)["w"], [[0, 1], [2, 3]])
    _zip_with_pickle(p, _tensor_pickle((2, 2), (1, 2), 0, 4), data)      # transposed view
    np.testing.assert_array_equal(read_torch_zip(p)["w"], [[0, 2], [1, 3]])
    _zip_with_pickle(p, _tensor_pickle((4, 4), (4, 1), 0, 4), data)      # needs 16 elements
    with pytest.raises(CheckpointError, match="reads element"):
        read_torch_zip(p)
    _zip_with_pickle(p, _tensor_pickle((2,), (1,), 3, 4), data)          # offset past the end
    with pytest.raises(CheckpointError, match="reads element"):
        read_torch_zip(p)
    _zip_with_pickle(p, _tensor_pickle((2,), (-1,), 1, 4), data)         # negative stride
    with pytest.raises(CheckpointError, match="negative"):
        read_torch_zip(p)
    _zip_with_pickle(p, _tensor_pickle((2,), (1,), 0, 8), data)          # 8 declared, 4 stored
    with pytest.raises(CheckpointError, match="should hold"):
        read_torch_zip(p)
    _zip_with_pickle(p, _tensor_pickle((2,), (1,), 0, 4))                # storage entry missing
    with pytest.raises(CheckpointError, match="missing"):
        read_torch_zip(p)


def test_not_a_checkpoint(tmp_path):
    p = tmp_path / "junk.pth"
    p.write_bytes(b"PK\x03\x04 this is not a zip at all")
    with pytest.raises(CheckpointError):
        Samba.load(p)
    _zip_with_pickle(p, b"\x80\x02not a pickle")
    with pytest.raises(CheckpointError, match="corrupt"):
        read_torch_zip(p)


def test_write_safetensors_is_atomic(tmp_path):
    """The writer never uses a fixed '<path>.tmp' (a symlink planted there is not followed),
    leaves no temporary file, and an interrupted write keeps the previous file whole."""
    import os

    import samba_ext.safetensors_io as st

    p = tmp_path / "m.safetensors"
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    os.symlink(victim, tmp_path / "m.safetensors.tmp")
    write_safetensors(p, {"a": np.arange(6, dtype=np.float32)})
    assert victim.read_bytes() == b"keep"
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors", "m.safetensors.tmp", "victim"]
    before = p.read_bytes()
    real = st.f32_to_bf16

    def boom(x):
        raise KeyboardInterrupt

    st.f32_to_bf16 = boom
    try:
        with pytest.raises(KeyboardInterrupt):
            write_safetensors(p, {"a": np.zeros(6, np.float32), "b": np.ones(3)}, dtype="BF16")
    finally:
        st.f32_to_bf16 = real
    assert p.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors", "m.safetensors.tmp", "victim"]
