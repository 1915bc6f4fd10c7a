"""The checkpoint format comes from the content where the suffix does not name one
(samba_ext/io/sniff.py, docs/checkpoints.md "Which reader reads a file").

For each format (safetensors, torch zip, legacy torch pickle, folder): a file without a
suffix, or with a suffix that names no format, is read by the reader its content calls for; a
suffix that names another format is a CheckpointError naming the file, the suffix and what
the content looks like; truncated files of each format are CheckpointErrors naming the file
(with or without a suffix); content that matches no format is refused listing the accepted
formats.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from samba_ext.errors import CheckpointError
from samba_ext.io.load import load_checkpoint
from samba_ext.io.hf_folder import save_pretrained
from samba_ext.model import Samba

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))
import pth_builder as B  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PTH = ROOT / "tests" / "fixtures" / "litgpt_tiny.pth"     # a torch zip (lit_gpt keys)
PTH_ARGS = {"n_head": 4, "window": 8}                     # not inferable from the shapes


@pytest.fixture(scope="module")
def model() -> Samba:
    return Samba("samba-test", seed=3)


@pytest.fixture
def sources(tmp_path, model) -> dict[str, Path]:
    """format -> a valid file of that format (with its usual suffix)."""
    st = tmp_path / "src" / "m.safetensors"
    st.parent.mkdir()
    model.save(st)
    pth = tmp_path / "src" / "m.pth"
    shutil.copyfile(PTH, pth)
    legacy = tmp_path / "src" / "legacy.pth"       # protocol-2 pickle, as torch < 1.6 wrote
    legacy.write_bytes(B.Pickle().raw(b"}").stop())
    return {"safetensors": st, "zip": pth, "pickle": legacy}


def _copy(src: Path, dst: Path, nbytes: int | None = None) -> Path:
    raw = src.read_bytes()
    dst.write_bytes(raw if nbytes is None else raw[:nbytes])
    return dst


def _same_weights(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert np.asarray(a[k]).tobytes() == np.asarray(b[k]).tobytes(), k


@pytest.mark.parametrize("name", ["model", "model.bin", "model.weights", "m.SAFETENSORS.part"])
def test_safetensors_content_decides(tmp_path, sources, model, name):
    p = _copy(sources["safetensors"], tmp_path / name)
    cfg, sd, meta = load_checkpoint(p)
    assert cfg == model.config and meta["format"] == "samba-ext"
    _same_weights(sd, model.state_dict())


@pytest.mark.parametrize("name", ["model", "model.bin", "lit_model.pth.bak", "m.PT"])
def test_torch_zip_content_decides(tmp_path, sources, name):
    want = load_checkpoint(sources["zip"], **PTH_ARGS)
    got = load_checkpoint(_copy(sources["zip"], tmp_path / name), **PTH_ARGS)
    assert got[0].to_dict() | {"name": ""} == want[0].to_dict() | {"name": ""}   # name: file's
    _same_weights(got[1], want[1])


def test_legacy_pickle_goes_to_the_pth_reader(tmp_path, sources, monkeypatch):
    """A non-zip pickle without a suffix meets what the .pth reader does with it today:
    torch.load(weights_only=True) where torch >= 2.6 is installed, else a CheckpointError
    saying that legacy files need torch."""
    monkeypatch.setitem(sys.modules, "torch", None)          # as on a machine without torch
    for name in ("legacy.pth", "legacy", "legacy.bin"):
        p = _copy(sources["pickle"], tmp_path / name)
        with pytest.raises(CheckpointError, match="legacy") as ei:
            load_checkpoint(p)
        assert str(ei.value).startswith(str(p))


def test_a_folder_is_a_folder_whatever_its_name(tmp_path, model):
    for name in ("ckpt", "ckpt.safetensors", "ckpt.pth"):
        d = save_pretrained(model, tmp_path / name)
        cfg, sd, _ = load_checkpoint(d)
        assert cfg == model.config
        _same_weights(sd, model.state_dict())


WRONG = [("safetensors", "m.pth", "'.pth'", "safetensors file"),
         ("safetensors", "m.pt", "'.pt'", "safetensors file"),
         ("safetensors", "m.ckpt", "'.ckpt'", "safetensors file"),
         ("zip", "m.safetensors", "'.safetensors'", "zip archive"),
         ("pickle", "m.safetensors", "'.safetensors'", "pickle")]


@pytest.mark.parametrize("fmt,name,suffix,looks", WRONG)
def test_suffix_and_content_disagree(tmp_path, sources, fmt, name, suffix, looks):
    p = _copy(sources[fmt], tmp_path / name)
    with pytest.raises(CheckpointError) as ei:
        Samba.load(p)
    msg = str(ei.value)
    assert msg.startswith(str(p)), msg
    assert f"suffix {suffix}" in msg and looks in msg, msg


@pytest.mark.parametrize("fmt", ["safetensors", "zip", "pickle"])
@pytest.mark.parametrize("name", ["cut", "cut.bin", "usual"])
def test_truncated_files(tmp_path, sources, fmt, name, monkeypatch):
    """Every prefix length class: shorter than any signature, the signature only, within
    the header / zip directory / pickle, and all but the last byte. Each one, under any name,
    is a CheckpointError naming the file (never another exception, never a load)."""
    monkeypatch.setitem(sys.modules, "torch", None)
    src = sources[fmt]
    if name == "usual":
        name = "cut" + src.suffix
    size = src.stat().st_size
    for n in sorted({0, 1, 4, 8, 9, 24, 100, size // 2, size - 1}):
        p = _copy(src, tmp_path / name, n)
        with pytest.raises(CheckpointError) as ei:
            load_checkpoint(p, **(PTH_ARGS if fmt == "zip" else {}))
        assert str(ei.value).startswith(str(p)), (n, str(ei.value))


@pytest.mark.parametrize("content", [b"", b"\x00" * 64, b"hello world, not weights\n",
                                     b"GGUF\x03\x00\x00\x00" + b"\x00" * 32,
                                     b"\x89HDF\r\n\x1a\n" + b"\x00" * 32],
                         ids=["empty", "zeros", "text", "gguf", "hdf5"])
@pytest.mark.parametrize("name", ["weights", "weights.bin", "weights.gguf"])
def test_unknown_content_lists_the_formats(tmp_path, content, name):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(CheckpointError) as ei:
        load_checkpoint(p)
    msg = str(ei.value)
    assert msg.startswith(str(p)) and "unknown checkpoint format" in msg, msg
    for fmt in ("config.json", "safetensors", "torch zip", "pickle"):
        assert fmt in msg, (fmt, msg)


def test_unknown_content_with_a_recognised_suffix_meets_its_reader(tmp_path):
    """Content too broken to recognise, with a suffix that names a format: that format's
    reader says what is wrong with the file."""
    p = tmp_path / "short.safetensors"
    p.write_bytes(b"\x10\x00")
    with pytest.raises(CheckpointError, match="truncated safetensors file"):
        load_checkpoint(p)
    p = tmp_path / "junk.pth"
    p.write_bytes(b"junk" * 8)
    with pytest.raises(CheckpointError, match="not a torch zip"):
        load_checkpoint(p)


def test_odd_paths_stay_checkpoint_errors(tmp_path):
    """A missing path, a FIFO without a suffix (refused without blocking) and /dev/null."""
    import os

    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "missing")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint(tmp_path / "fifo")
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint("/dev/null")
