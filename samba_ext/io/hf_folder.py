"""Hugging Face-style checkpoint folders: ``config.json`` + ``model.safetensors``, or a
sharded ``model.safetensors.index.json`` + ``model-0000k-of-0000n.safetensors`` shards.

Layout and key maps are documented in docs/checkpoints.md. Reading validates the folder as a
whole (every shard named by the index exists, is a plain file name inside the folder, holds
exactly the tensors the index maps to it, no tensor in two shards, ``total_size`` agrees);
anything wrong is a :class:`~samba_ext.errors.CheckpointError` naming the file and the field or
tensor. Writing replaces each file atomically (samba_ext/io/atomic.py) in the order shards ->
index -> config.json, then removes the files of a previous save that the new one no longer
uses.

A folder is several files, and no POSIX call replaces a set of files at once, so each save
marks every file it writes with a fresh random save id (``samba_ext.save_id`` in config.json,
``samba_ext_save_id`` in the index's ``metadata`` and in each weight file's ``__metadata__``).
The reader accepts a folder only when the files it read all name the same save, so a load that
runs during a save into the same folder gives the old model, the new one, or a
CheckpointError naming the file from the other save -- never a mix (docs/checkpoints.md).
"""
from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..config import SambaConfig
from ..errors import CheckpointError
from ..safetensors_io import (_no_dup_pairs, check_dtype, check_metadata, open_regular_file,
                              read_safetensors_checked, write_safetensors)
from .atomic import atomic_write
from .keymap import from_hf, to_hf

__all__ = ["read_folder", "save_pretrained", "CONFIG", "SINGLE", "INDEX", "HF_CONFIG_KEYS",
           "SAVE_ID_KEY"]

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
_MAX_JSON = 16 << 20      # bytes: a config.json / index larger than this is not a checkpoint's
# the save id in a weight file's __metadata__ and the index's "metadata"; in config.json it is
# "samba_ext": {"save_id": ...}
SAVE_ID_KEY = "samba_ext_save_id"

# samba-ext SambaConfig field -> Hugging Face config.json key
HF_CONFIG_KEYS = {
    "vocab_size": "vocab_size", "d_model": "hidden_size", "n_layer": "num_hidden_layers",
    "n_head": "num_attention_heads", "n_kv_head": "num_key_value_heads",
    "head_dim": "head_dim", "intermediate_size": "intermediate_size",
    "window": "sliding_window", "layer_types": "layer_types", "rope_base": "rope_theta",
    "norm_eps": "rms_norm_eps", "d_state": "state_size", "d_conv": "conv_kernel",
    "expand": "expand", "dt_rank": "time_step_rank", "tie_embeddings": "tie_word_embeddings",
    "max_train_len": "max_position_embeddings",
}
_HF_LAYER = {"mamba": "mamba", "swa": "sliding_attention", "attn": "full_attention"}
# config.json keys that describe nothing the model computes (ignored when reading)
_INFORMATIONAL = {"architectures", "model_type", "torch_dtype", "dtype", "transformers_version",
                  "_name_or_path", "use_cache", "initializer_range", "samba_ext", "auto_map"}


# --------------------------------------------------------------------------- config ---
def config_to_hf(cfg: SambaConfig, naming: str, save_id: Optional[str] = None
                 ) -> dict[str, Any]:
    """The config.json written for ``cfg`` (Hugging Face key names, plus the samba-ext name,
    tokenizer, weight naming and, when given, the save id under "samba_ext")."""
    d = cfg.to_dict()
    out: dict[str, Any] = {"architectures": ["SambaForCausalLM"], "model_type": "samba"}
    for ours, hf in HF_CONFIG_KEYS.items():
        out[hf] = d[ours]
    out["layer_types"] = [_HF_LAYER[t] for t in cfg.layer_types]
    out["torch_dtype"] = "float32"
    out["samba_ext"] = {"name": cfg.name, "tokenizer": cfg.tokenizer, "weight_naming": naming}
    if save_id is not None:
        out["samba_ext"]["save_id"] = save_id
    return out


def _read_json(path: Path, what: str) -> Any:
    """The JSON object in ``path`` (a regular file of at most 64 MiB, no duplicate keys)."""
    try:
        with open_regular_file(str(path)) as f:     # a FIFO / device is refused, not read
            size = os.fstat(f.fileno()).st_size
            # read(n) allocates n bytes up front: ask for what the file holds, not the cap
            raw = f.read(min(size, _MAX_JSON) + 1)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e})") from None
    if len(raw) > _MAX_JSON:
        raise CheckpointError(f"{path}: larger than {_MAX_JSON} bytes; not a {what}")
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_no_dup_pairs)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except RecursionError:
        raise CheckpointError(f"{path}: JSON nested too deeply") from None
    except ValueError as e:
        raise CheckpointError(f"{path}: not valid UTF-8 JSON ({e})") from None


def config_from_hf(d: Any, fname: str, overrides: dict[str, Any]) -> SambaConfig:
    """SambaConfig from a config.json dict: Hugging Face key names (see HF_CONFIG_KEYS) or
    samba-ext field names. Unknown keys are refused (naming them) unless informational
    (``architectures``, ``torch_dtype``, ``*_token_id``, ...)."""
    if not isinstance(d, dict):
        raise CheckpointError(f"{fname}: expected a JSON object, got {type(d).__name__}")
    ext = d.get("samba_ext") if isinstance(d.get("samba_ext"), dict) else {}
    ours = {f for f in SambaConfig.__dataclass_fields__}
    hf_to_ours = {v: k for k, v in HF_CONFIG_KEYS.items()}
    c: dict[str, Any] = {}
    unknown = []
    for k, v in d.items():
        if k in _INFORMATIONAL or k.endswith("_token_id"):
            continue
        if k in hf_to_ours:
            c[hf_to_ours[k]] = v
        elif k in ours:
            c[k] = v
        else:
            unknown.append(k)
    if unknown:
        raise CheckpointError(f"{fname}: unknown config field(s) {sorted(unknown)[:8]} (fields "
                              "that change the architecture cannot be ignored)")
    if isinstance(c.get("layer_types"), list):
        inv = {v: k for k, v in _HF_LAYER.items()}
        c["layer_types"] = [inv.get(t, t) if isinstance(t, str) else t for t in c["layer_types"]]
    for k in ("name", "tokenizer"):
        if k in ext and k not in c:
            c[k] = ext[k]
    c.setdefault("name", os.path.basename(os.path.dirname(os.path.abspath(fname))))
    c.update(overrides)
    try:
        return SambaConfig.from_dict(c)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{fname}: invalid config ({e})") from None


# -------------------------------------------------------------------------- weights ---
def _shard_name(name: Any, index: Path) -> str:
    if (not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]+\.safetensors", name)
            or name.startswith(".")):
        raise CheckpointError(f"{index}: weight_map names the shard {name!r:.100}; expected a "
                              "plain *.safetensors file name inside the folder")
    return name


class _SaveCheck:
    """The save every file of a folder must come from. Once a file names a save (config.json
    first, then the index, then the weight files in the order read), every later weight file
    and index must name the same one; config.json may name none (a hand-written config), a
    weight file or index read after a named save may not."""

    def __init__(self, folder: Path, config_id: Optional[str]):
        self.folder = folder
        self.want = config_id
        self.first = CONFIG if config_id is not None else None

    def check(self, path: Path, got: Any) -> None:
        if got is not None and not isinstance(got, str):
            raise CheckpointError(f"{path}: {SAVE_ID_KEY} must be a string, got {got!r:.40}")
        if self.want is None:
            if got is not None:
                self.want, self.first = got, path.name
            return
        if got != self.want:
            got_s = "no save id" if got is None else f"save {got!r}"
            raise CheckpointError(
                f"{path}: written by another save than {self.first} ({got_s}, not "
                f"{self.want!r}): the folder mixes files of two saves (a save into it ran "
                "during this load, or a file was replaced by hand); load it again once the "
                "save has finished")

    def meta_checker(self, path: Path):
        return lambda meta: self.check(path, meta.get(SAVE_ID_KEY))


def _read_sharded(folder: Path, saves: _SaveCheck
                  ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    index = folder / INDEX
    d = _read_json(index, "safetensors index")
    if not isinstance(d, dict) or not isinstance(d.get("weight_map"), dict):
        raise CheckpointError(f"{index}: expected an object with a \"weight_map\" object "
                              "(tensor name -> shard file)")
    md = d.get("metadata", {})
    saves.check(index, md.get(SAVE_ID_KEY) if isinstance(md, dict) else None)
    wmap: dict[str, str] = {}
    for k, v in d["weight_map"].items():
        wmap[k] = _shard_name(v, index)
    if not wmap:
        raise CheckpointError(f"{index}: weight_map is empty")
    shards: dict[str, set[str]] = {}
    for k, v in wmap.items():
        shards.setdefault(v, set()).add(k)
    sd: dict[str, np.ndarray] = {}
    meta: dict[str, str] = {}
    total = 0
    for shard in sorted(shards):
        p = folder / shard
        if not p.is_file():
            raise CheckpointError(f"{p}: shard named by {INDEX} is missing (or not a file)")
        tensors, m, entries = read_safetensors_checked(p, check_meta=saves.meta_checker(p))
        got, want = set(tensors), shards[shard]
        if got != want:
            extra, missing = sorted(got - want), sorted(want - got)
            raise CheckpointError(
                f"{p}: holds different tensors than {INDEX} maps to it"
                + (f"; missing {missing[:4]}" if missing else "")
                + (f"; not in the index {extra[:4]}" if extra else ""))
        sd.update(tensors)
        total += sum(e["end"] - e["begin"] for e in entries.values())
        meta.update(m)
    ts = md.get("total_size") if isinstance(md, dict) else None
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int) or ts != total):
        raise CheckpointError(f"{index}: metadata.total_size is {ts!r:.40} but the shards hold "
                              f"{total} bytes of tensors")
    return sd, meta


def read_folder(folder: Path, overrides: dict[str, Any], config: Optional[SambaConfig] = None
                ) -> tuple[SambaConfig, dict[str, np.ndarray], dict[str, str]]:
    """(config, {lit_gpt key: float32 array}, metadata) of a checkpoint folder. A given
    ``config`` replaces config.json (which is then not read). Every file read must come from
    one save (see the module docstring); the save id is not part of the returned metadata."""
    cfg_path = folder / CONFIG
    config_id = None
    if config is not None:
        cfg = config
    elif not cfg_path.is_file():
        raise CheckpointError(f"{folder}: a checkpoint folder needs {CONFIG} (and "
                              f"{SINGLE} or {INDEX}); found {sorted(os.listdir(folder))[:8]}")
    else:
        d = _read_json(cfg_path, "model config")
        cfg = config_from_hf(d, str(cfg_path), overrides)
        ext = d.get("samba_ext")
        config_id = ext.get("save_id") if isinstance(ext, dict) else None
        if config_id is not None and not isinstance(config_id, str):
            raise CheckpointError(f"{cfg_path}: samba_ext.save_id must be a string, got "
                                  f"{config_id!r:.40}")
    saves = _SaveCheck(folder, config_id)
    if (folder / INDEX).is_file():
        sd, meta = _read_sharded(folder, saves)
    elif (folder / SINGLE).is_file():
        p = folder / SINGLE
        sd, meta, _ = read_safetensors_checked(p, check_meta=saves.meta_checker(p))
    else:
        raise CheckpointError(f"{folder}: neither {SINGLE} nor {INDEX} in the folder")
    meta.pop(SAVE_ID_KEY, None)
    if any(k.startswith("transformer.") for k in sd):
        pass                                      # lit_gpt names
    elif "model.embed_tokens.weight" in sd:
        sd = from_hf(sd, cfg, str(folder))
    else:
        raise CheckpointError(f"{folder}: tensor names are neither lit_gpt ('transformer.*') "
                              f"nor Hugging Face ('model.embed_tokens.weight', ...): "
                              f"{sorted(sd)[:4]}")
    return cfg, sd, meta


# -------------------------------------------------------------------------- writing ---
def save_pretrained(model: Any, folder: str | os.PathLike, *, naming: str = "litgpt",
                    dtype: str = "F32", max_shard_bytes: Optional[int] = None,
                    metadata: Optional[dict[str, str]] = None) -> Path:
    """Write ``model`` (a :class:`~samba_ext.model.Samba`) as a checkpoint folder.

    naming: "litgpt" (the keys of ``model.state_dict()``) or "hf" (docs/checkpoints.md).
    dtype: "F32", "F16" or "BF16". max_shard_bytes: split the tensors into shards of at most
    this many bytes (a tensor larger than that gets a shard of its own) with an index;
    None writes one model.safetensors. metadata: str -> str, stored in every shard.

    Every file of the save carries one fresh random save id (the module docstring), so a
    reader never combines files of two saves. Files of the folder that this save does not
    write are kept, except those of the previous save it replaces (model.safetensors, the
    index and the shards that index names). Returns the folder."""
    if naming not in ("litgpt", "hf"):
        raise ValueError(f"naming: expected 'litgpt' or 'hf', got {naming!r}")
    if max_shard_bytes is not None and (isinstance(max_shard_bytes, bool)
                                        or not isinstance(max_shard_bytes, int)
                                        or max_shard_bytes < 1):
        raise ValueError(f"max_shard_bytes: expected a positive int or None, got "
                         f"{max_shard_bytes!r}")
    dtype = check_dtype(dtype)
    metadata = check_metadata(metadata, reserved=("format", SAVE_ID_KEY))
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    sd = model.state_dict()
    if naming == "hf":
        sd = to_hf(sd, cfg)
    save_id = secrets.token_hex(16)
    meta = {"format": "pt"}
    meta.update(metadata)
    meta[SAVE_ID_KEY] = save_id
    itemsize = 4 if dtype == "F32" else 2
    sizes = {k: int(np.asarray(a).size) * itemsize for k, a in sd.items()}
    groups: list[list[str]] = [[]]
    if max_shard_bytes is not None:
        acc = 0
        for k in sorted(sd):
            if groups[-1] and acc + sizes[k] > max_shard_bytes:
                groups.append([])
                acc = 0
            groups[-1].append(k)
            acc += sizes[k]
    else:
        groups[0] = sorted(sd)
    old = _files_of(out)
    if len(groups) == 1:
        write_safetensors(out / SINGLE, {k: sd[k] for k in groups[0]}, meta, dtype=dtype)
        new = {SINGLE}
    else:
        n = len(groups)
        wmap: dict[str, str] = {}
        for i, g in enumerate(groups, 1):
            name = f"model-{i:05d}-of-{n:05d}.safetensors"
            write_safetensors(out / name, {k: sd[k] for k in g}, meta, dtype=dtype)
            wmap.update({k: name for k in g})
        idx = {"metadata": {"total_size": sum(sizes.values()), SAVE_ID_KEY: save_id},
               "weight_map": wmap}
        _write_json(out / INDEX, idx)
        new = set(wmap.values()) | {INDEX}
    _write_json(out / CONFIG, config_to_hf(cfg, naming, save_id))
    for stale in sorted(old - new):      # files of a previous save that this one replaced
        try:
            (out / stale).unlink()
        except FileNotFoundError:
            pass
    return out


def _write_json(path: Path, obj: Any) -> None:
    with atomic_write(path) as f:
        f.write((json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def _files_of(folder: Path) -> set[str]:
    """The weight files a previous save left in ``folder`` (the single file, the index and
    the shards it names)."""
    found = set()
    if (folder / SINGLE).is_file():
        found.add(SINGLE)
    if (folder / INDEX).is_file():
        found.add(INDEX)
        try:
            d = json.loads((folder / INDEX).read_text())
            for v in d.get("weight_map", {}).values():
                if isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9_.\-]+\.safetensors", v) \
                        and not v.startswith("."):
                    found.add(v)
        except (OSError, ValueError, AttributeError, RecursionError):
            pass
    return found
