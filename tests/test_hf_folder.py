"""Hugging Face-style checkpoint folders (issue 19.2): ``config.json`` + ``model.safetensors``
or a sharded ``model.safetensors.index.json``, lit_gpt or HF tensor names (docs/checkpoints.md).

Round trips must give bit-identical weights and logits; a bad folder (missing file or shard,
tensors that disagree with the index or the config, a shard outside the folder, bad JSON) is a
CheckpointError naming the file; writes are atomic.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from samba_ext.errors import CheckpointError
from samba_ext.io import hf_folder as H
from samba_ext.io.keymap import from_hf, to_hf
from samba_ext.model import Samba
from samba_ext.safetensors_io import read_safetensors, write_safetensors

TOKENS = np.random.default_rng(19_2).integers(0, 259, (2, 40))


@pytest.fixture(scope="module")
def model() -> Samba:
    return Samba("samba-test", seed=11)     # GQA 4:2, Mamba + SWA blocks


def _same(a: Samba, b: Samba) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for k in sa:
        assert sa[k].tobytes() == sb[k].tobytes(), k
    assert a.config == b.config
    np.testing.assert_array_equal(a.forward(TOKENS), b.forward(TOKENS))


@pytest.mark.parametrize("naming", ["litgpt", "hf"])
@pytest.mark.parametrize("shard", [None, 30_000])
def test_round_trip(tmp_path, model, naming, shard):
    out = H.save_pretrained(model, tmp_path / "m", naming=naming, max_shard_bytes=shard)
    files = sorted(os.listdir(out))
    assert "config.json" in files
    if shard is None:
        assert files == ["config.json", "model.safetensors"]
    else:
        idx = json.loads((out / H.INDEX).read_text())
        shards = sorted(set(idx["weight_map"].values()))
        assert len(shards) > 2 and files == sorted(shards + ["config.json", H.INDEX])
        assert all(s.startswith("model-") and s.endswith(f"-of-{len(shards):05d}.safetensors")
                   for s in shards)
        total = 0
        for s in shards:   # every shard within the bound (or a single bigger tensor)
            sd, _ = read_safetensors(out / s)
            assert 4 * sum(a.size for a in sd.values()) <= shard or len(sd) == 1
            assert all(idx["weight_map"][k] == s for k in sd)
            total += 4 * sum(a.size for a in sd.values())
        assert idx["metadata"]["total_size"] == total
    keys = set()
    for f in files:
        if f.endswith(".safetensors"):
            keys |= set(read_safetensors(out / f)[0])
    assert all(k.startswith("transformer.") for k in keys) == (naming == "litgpt")
    if naming == "hf":
        assert "model.layers.1.self_attn.q_proj.weight" in keys
        assert "model.layers.0.mixer.A_log" in keys
    _same(model, Samba.load(out))


def test_model_save_to_folder(tmp_path, model):
    """Samba.save on an existing folder, or a path ending with '/', writes a folder."""
    d = tmp_path / "existing"
    d.mkdir()
    model.save(d)
    assert (d / "config.json").is_file() and (d / "model.safetensors").is_file()
    _same(model, Samba.load(d))
    model.save(str(tmp_path / "new") + "/")
    _same(model, Samba.load(tmp_path / "new"))


def test_bf16_folder_matches_bf16_file(tmp_path, model):
    H.save_pretrained(model, tmp_path / "f", dtype="BF16", naming="hf")
    model.save(tmp_path / "b.safetensors", dtype="BF16")
    _same(Samba.load(tmp_path / "b.safetensors"), Samba.load(tmp_path / "f"))


def test_hf_config_names(tmp_path, model):
    """config.json uses Hugging Face key names; a samba-ext-named config also loads."""
    out = H.save_pretrained(model, tmp_path / "m")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["hidden_size"] == 64 and cfg["num_key_value_heads"] == 2
    assert cfg["layer_types"] == ["mamba", "sliding_attention"] * 2
    assert cfg["sliding_window"] == 16 and cfg["model_type"] == "samba"
    (out / "config.json").write_text(json.dumps(model.config.to_dict()))
    _same(model, Samba.load(out))


def test_keymap_inverse(model):
    sd = model.state_dict()
    hf = to_hf(sd, model.config)
    back = from_hf(hf, model.config, "x")
    assert sorted(back) == sorted(sd)
    for k in sd:
        assert back[k].tobytes() == sd[k].tobytes(), k


def test_resave_removes_stale_shards(tmp_path, model):
    """Sharded then single (and back): the folder holds only the new save's files, and
    loads it (a stale index would otherwise shadow the new model.safetensors)."""
    d = tmp_path / "m"
    H.save_pretrained(model, d, max_shard_bytes=30_000)
    other = Samba("samba-test", seed=12)
    H.save_pretrained(other, d)
    assert sorted(os.listdir(d)) == ["config.json", "model.safetensors"]
    _same(other, Samba.load(d))
    H.save_pretrained(model, d, max_shard_bytes=30_000, naming="hf")
    assert "model.safetensors" not in os.listdir(d)
    _same(model, Samba.load(d))


def test_writes_are_atomic(tmp_path, model, monkeypatch):
    """A failure in the middle of a file's write leaves the previous file intact and no
    temporary file behind; a symlink planted at an old-style fixed temp name is not followed."""
    d = H.save_pretrained(model, tmp_path / "m")
    before = (d / "model.safetensors").read_bytes()
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    os.symlink(victim, d / "model.safetensors.tmp")

    import samba_ext.safetensors_io as st
    real = st.f32_to_bf16

    def boom(x):
        raise KeyboardInterrupt

    monkeypatch.setattr(st, "f32_to_bf16", boom)
    with pytest.raises(KeyboardInterrupt):
        H.save_pretrained(Samba("samba-test", seed=13), d, dtype="BF16")
    monkeypatch.setattr(st, "f32_to_bf16", real)
    assert (d / "model.safetensors").read_bytes() == before
    assert victim.read_bytes() == b"keep"
    assert sorted(os.listdir(d)) == ["config.json", "model.safetensors", "model.safetensors.tmp"]
    _same(model, Samba.load(d))


# ------------------------------------------------------------------------ bad folders ---

def _sharded(tmp_path: Path, model: Samba) -> tuple[Path, dict]:
    d = H.save_pretrained(model, tmp_path / "m", max_shard_bytes=30_000)
    return d, json.loads((d / H.INDEX).read_text())


def _case_missing_shard(d, idx):
    (d / sorted(set(idx["weight_map"].values()))[1]).unlink()
    return sorted(set(idx["weight_map"].values()))[1], "missing"


def _case_key_not_in_index(d, idx):
    k = sorted(idx["weight_map"])[0]
    del idx["weight_map"][k]
    (d / H.INDEX).write_text(json.dumps(idx))
    return "not in the index", k


def _case_key_missing_from_shard(d, idx):
    idx["weight_map"]["transformer.h.9.norm_1.weight"] = sorted(idx["weight_map"].values())[0]
    (d / H.INDEX).write_text(json.dumps(idx))
    return "missing", "transformer.h.9.norm_1.weight"


def _case_shard_outside_folder(d, idx):
    k = sorted(idx["weight_map"])[0]
    idx["weight_map"][k] = "../evil.safetensors"
    (d / H.INDEX).write_text(json.dumps(idx))
    return H.INDEX, "evil"


def _case_index_not_json(d, idx):
    (d / H.INDEX).write_text("{\"weight_map\": ")
    return H.INDEX, "JSON"


def _case_index_nested(d, idx):
    (d / H.INDEX).write_text("[" * 50_000)
    return H.INDEX, "nested"


def _case_index_no_weight_map(d, idx):
    (d / H.INDEX).write_text(json.dumps({"metadata": {}}))
    return H.INDEX, "weight_map"


def _case_total_size(d, idx):
    idx["metadata"]["total_size"] += 4
    (d / H.INDEX).write_text(json.dumps(idx))
    return H.INDEX, "total_size"


def _case_no_config(d, idx):
    (d / "config.json").unlink()
    return "config.json", str(d)


def _case_no_weights(d, idx):
    for f in os.listdir(d):
        if f != "config.json":
            (d / f).unlink()
    return "model.safetensors", str(d)


def _case_config_unknown_field(d, idx):
    c = json.loads((d / "config.json").read_text())
    c["use_mamba2"] = True
    (d / "config.json").write_text(json.dumps(c))
    return "config.json", "use_mamba2"


def _case_config_nan_rope(d, idx):
    c = json.loads((d / "config.json").read_text())
    c["rope_theta"] = float("nan")
    (d / "config.json").write_text(json.dumps(c))
    return "config.json", "rope_base"


def _case_config_shape_mismatch(d, idx):
    c = json.loads((d / "config.json").read_text())
    c["intermediate_size"] = 96
    (d / "config.json").write_text(json.dumps(c))
    return str(d), "mlp.swiglu"


def _case_config_not_object(d, idx):
    (d / "config.json").write_text("[1, 2]")
    return "config.json", "object"


def _case_short_shard(d, idx):
    shard = sorted(set(idx["weight_map"].values()))[1]
    raw = (d / shard).read_bytes()
    (d / shard).write_bytes(raw[:-100])
    return shard, "truncated"


def _other_save(d: Path) -> Path:
    """The same layout saved by another save (another model of the same shapes)."""
    return H.save_pretrained(Samba("samba-test", seed=99), d.parent / "other",
                             max_shard_bytes=30_000)


def _case_shard_from_another_save(d, idx):
    shard = sorted(set(idx["weight_map"].values()))[1]
    (d / shard).write_bytes((_other_save(d) / shard).read_bytes())
    return shard, "another save"


def _case_index_from_another_save(d, idx):
    (d / H.INDEX).write_bytes((_other_save(d) / H.INDEX).read_bytes())
    return H.INDEX, "another save"


def _case_config_from_another_save(d, idx):
    (d / "config.json").write_bytes((_other_save(d) / "config.json").read_bytes())
    return H.INDEX, "another save"


def _case_save_id_not_a_string(d, idx):
    idx["metadata"][H.SAVE_ID_KEY] = 7
    (d / H.INDEX).write_text(json.dumps(idx))
    return H.INDEX, "must be a string"


BAD = {n[6:]: f for n, f in globals().items() if n.startswith("_case_")}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_folder_is_a_checkpoint_error(tmp_path, model, case):
    d, idx = _sharded(tmp_path, model)
    needles = BAD[case](d, idx)
    with pytest.raises(CheckpointError) as ei:
        Samba.load(d)
    msg = str(ei.value)
    assert msg.startswith(str(d)), msg
    for n in needles:
        assert n in msg, (n, msg)


def test_hf_names_incomplete_or_unknown(tmp_path, model):
    d = H.save_pretrained(model, tmp_path / "m", naming="hf")
    sd, meta = read_safetensors(d / "model.safetensors")
    v = sd.pop("model.layers.1.self_attn.v_proj.weight")
    write_safetensors(d / "model.safetensors", sd, meta)
    with pytest.raises(CheckpointError, match=r"block 1 .*q_proj, k_proj and v_proj"):
        Samba.load(d)
    sd["model.layers.1.self_attn.v_proj.weight"] = v
    sd["model.layers.1.self_attn.rotary_emb.inv_freq"] = np.ones(4, np.float32)
    write_safetensors(d / "model.safetensors", sd, meta)
    with pytest.raises(CheckpointError, match="rotary_emb.inv_freq.*no lit_gpt equivalent"):
        Samba.load(d)


def test_save_pretrained_arguments(tmp_path, model):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        H.save_pretrained(model, tmp_path / "file")
    with pytest.raises(ValueError, match="naming"):
        H.save_pretrained(model, tmp_path / "a", naming="gguf")
    with pytest.raises(ValueError, match="max_shard_bytes"):
        H.save_pretrained(model, tmp_path / "a", max_shard_bytes=0)


def test_cli_accepts_a_checkpoint_folder(tmp_path, model):
    """`samba-ext info --model FOLDER` loads a folder; a folder without config.json is still
    refused with one error line (exit 2)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    H.save_pretrained(model, tmp_path / "m", naming="hf", max_shard_bytes=30_000)
    (tmp_path / "empty").mkdir()
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("SAMBA_EXT_DEBUG", None)
    code = "import sys; from samba_ext.cli import main; sys.exit(main(sys.argv[1:]))"

    def cli(*args):
        return subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, text=True,
                              capture_output=True, timeout=300, env=env)

    r = cli("info", "--model", str(tmp_path / "m"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "samba-test" in r.stdout, r.stdout
    r = cli("info", "--model", str(tmp_path / "empty"))
    assert r.returncode == 2 and "config.json" in r.stderr and "Traceback" not in r.stderr, \
        r.stderr[-2000:]


def test_explicit_config_and_odd_files(tmp_path, model):
    """config= replaces config.json (even a broken one); a FIFO or a duplicate key in
    config.json is refused without hanging."""
    d = H.save_pretrained(model, tmp_path / "m")
    (d / "config.json").write_text("{broken")
    _same(model, Samba.load(d, config=model.config))
    (d / "config.json").write_text('{"hidden_size": 64, "hidden_size": 32}')
    with pytest.raises(CheckpointError, match="duplicate key 'hidden_size'"):
        Samba.load(d)
    (d / "config.json").unlink()
    os.mkfifo(d / "config.json")
    with pytest.raises(CheckpointError, match="config.json"):
        Samba.load(d)


def test_single_file_folder_from_two_saves(tmp_path, model):
    """config.json of one save with model.safetensors of another (same shapes) is refused,
    naming the weight file, in both directions."""
    d = H.save_pretrained(model, tmp_path / "m")
    o = H.save_pretrained(Samba("samba-test", seed=99), tmp_path / "o")
    (d / "model.safetensors").write_bytes((o / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="model.safetensors: written by another save"):
        Samba.load(d)
    (d / "config.json").write_bytes((o / "config.json").read_bytes())
    _same(Samba("samba-test", seed=99), Samba.load(d))


def test_save_ids_and_hand_edited_files(tmp_path, model):
    """Every file of a save names one save id, a fresh one per save; it is not part of the
    loaded metadata. A config.json without one (written by hand or by another tool) loads
    with any weights; weights without one under a config.json that names a save are refused
    (the message says what to do)."""
    d = H.save_pretrained(model, tmp_path / "m", max_shard_bytes=30_000, metadata={"k": "v"})
    sid = json.loads((d / "config.json").read_text())["samba_ext"]["save_id"]
    idx = json.loads((d / H.INDEX).read_text())
    assert idx["metadata"][H.SAVE_ID_KEY] == sid and len(sid) == 32
    for shard in set(idx["weight_map"].values()):
        assert read_safetensors(d / shard)[1][H.SAVE_ID_KEY] == sid
    m = Samba.load(d)
    assert H.SAVE_ID_KEY not in m.metadata and m.metadata["k"] == "v"
    H.save_pretrained(model, d)
    assert json.loads((d / "config.json").read_text())["samba_ext"]["save_id"] != sid

    c = json.loads((d / "config.json").read_text())
    del c["samba_ext"]["save_id"]
    (d / "config.json").write_text(json.dumps(c))
    _same(model, Samba.load(d))
    sd, meta = read_safetensors(d / "model.safetensors")
    del meta[H.SAVE_ID_KEY]
    write_safetensors(d / "model.safetensors", sd, meta)
    _same(model, Samba.load(d))                     # neither names a save: nothing to check
    H.save_pretrained(model, d)
    write_safetensors(d / "model.safetensors", sd, meta)
    with pytest.raises(CheckpointError, match=r"model.safetensors: written by another save "
                                              r"than config.json \(no save id"):
        Samba.load(d)


def test_saving_into_a_folder_keeps_other_files(tmp_path, model):
    """A save replaces config.json, model.safetensors / the index and the shards of the
    previous save, and leaves every other file of the folder as it was."""
    d = tmp_path / "m"
    d.mkdir()
    keep = {"README.md": b"notes", "tokenizer.json": b"{}", "notes.safetensors": b"x",
            "model-00001-of-00009.safetensors": b"not ours", "pytorch_model.bin": b"y"}
    for name, raw in keep.items():
        (d / name).write_bytes(raw)
    H.save_pretrained(model, d, max_shard_bytes=30_000)
    H.save_pretrained(model, d)
    H.save_pretrained(model, d, max_shard_bytes=30_000)
    H.save_pretrained(model, d)
    assert sorted(os.listdir(d)) == sorted(list(keep) + ["config.json", "model.safetensors"])
    for name, raw in keep.items():
        assert (d / name).read_bytes() == raw, name
    _same(model, Samba.load(d))
