#!/usr/bin/env python3
"""Regenerate the committed seed corpus of tests/fixtures/fuzz_corpus/ (deterministic).

    python3 tests/fuzz/make_corpus.py        # needs torch for the .pth seeds

corpus/safetensors/  valid files written by an independent writer (mutators.join_safetensors,
                     not the package's writer): a tiny lit_gpt-keyed Samba model in F32 / F16 /
                     BF16 with the samba-ext metadata (config JSON), a file of odd but legal
                     tensors (scalar, empty, 5-D), a metadata-only file; plus the model's own
                     ``Samba.save`` output when samba_ext.model is present; and a few fixed
                     mutants (seeded) so that replaying the corpus covers the error paths.
corpus/pth/          torch.save outputs in the lit_gpt/Fabric layout ({"model", "optimizer",
                     "hparams", "iter_num", "step_count"}): fp32, bf16, tied wte/lm_head sharing
                     one storage, views with storage offsets and transposed strides, a bare
                     state dict with the ``_orig_mod.`` prefix; plus fixed mutants.
corpus/hf_folder/    checkpoint folders (zips of their files) from save_pretrained: lit_gpt / HF
                     names, single / sharded, F16 / BF16; plus fixed mutants.
corpus/*/regressions/  inputs that once broke a parser (added by hand from fuzz findings).
"""
from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent.parent))   # the checkout's package, before site-packages

import mutators as M  # noqa: E402

from paths import CORPUS  # noqa: E402

# A tiny Samba: 2 blocks (mamba, swa), d_model 16, 2 heads of 8, 1 kv head, SwiGLU 32.
TINY = dict(name="fuzz-tiny", vocab_size=259, n_layer=2, d_model=16, n_head=2, n_kv_head=1,
            head_dim=8, intermediate_size=32, window=8, layer_types=["mamba", "swa"],
            rope_base=10000.0, norm_eps=1e-5, d_state=4, d_conv=4, expand=2, dt_rank=1,
            tie_embeddings=True, tokenizer="byte", max_train_len=None)


def tiny_state_dict(cfg: dict, rng: np.random.Generator, lm_head: bool = False) -> dict:
    D, F, V = cfg["d_model"], cfg["intermediate_size"], cfg["vocab_size"]
    E, N, W, R = cfg["expand"] * D, cfg["d_state"], cfg["d_conv"], cfg["dt_rank"]
    hd, H, G = cfg["head_dim"], cfg["n_head"], cfg["n_kv_head"]
    f = lambda *s: (0.1 * rng.standard_normal(s)).astype(np.float32)  # noqa: E731
    sd = {"transformer.wte.weight": f(V, D), "transformer.ln_f.weight": 1 + f(D)}
    for i, kind in enumerate(cfg["layer_types"]):
        p = f"transformer.h.{i}."
        sd.update({p + "norm_1.weight": 1 + f(D), p + "norm_2.weight": 1 + f(D),
                   p + "mlp.swiglu.w1.weight": f(F, D), p + "mlp.swiglu.w2.weight": f(F, D),
                   p + "mlp.swiglu.w3.weight": f(D, F)})
        if kind == "mamba":
            sd.update({p + "attn.A_log": np.log(np.tile(np.arange(1, N + 1, dtype=np.float32), (E, 1))),
                       p + "attn.D": np.ones(E, np.float32), p + "attn.in_proj.weight": f(2 * E, D),
                       p + "attn.conv1d.weight": f(E, 1, W), p + "attn.conv1d.bias": f(E),
                       p + "attn.x_proj.weight": f(R + 2 * N, E), p + "attn.dt_proj.weight": f(E, R),
                       p + "attn.dt_proj.bias": f(E) - 4, p + "attn.out_proj.weight": f(D, E)})
        else:
            sd.update({p + "attn.attn.weight": f((H + 2 * G) * hd, D),
                       p + "attn.proj.weight": f(D, H * hd)})
    if lm_head:
        sd["lm_head.weight"] = sd["transformer.wte.weight"].copy()
    return sd


def to_bf16_bits(a: np.ndarray) -> np.ndarray:
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def write_safetensors(tensors: dict, meta: dict | None, dtype: str) -> bytes:
    """Independent writer (sorted names, packed, header padded with spaces)."""
    hdr: dict = {}
    if meta is not None:
        hdr["__metadata__"] = meta
    body = b""
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        raw = {"F32": lambda x: x.astype("<f4"), "F16": lambda x: x.astype("<f2"),
               "F64": lambda x: x.astype("<f8"), "BF16": to_bf16_bits}[dtype](a).tobytes()
        hdr[name] = {"dtype": dtype, "shape": list(a.shape),
                     "data_offsets": [len(body), len(body) + len(raw)]}
        body += raw
    return M.join_safetensors(hdr, body)


def model_meta(cfg: dict) -> dict:
    return {"format": "samba-ext", "config": json.dumps(cfg), "tokenizer": "byte",
            "train_command": "fuzz corpus"}


def make_safetensors(out: Path) -> list[bytes]:
    rng = np.random.default_rng(1)
    sd = tiny_state_dict(TINY, rng)
    files = {
        "tiny_f32.safetensors": write_safetensors(sd, model_meta(TINY), "F32"),
        "tiny_f16.safetensors": write_safetensors(sd, model_meta(TINY), "F16"),
        "tiny_bf16.safetensors": write_safetensors(sd, model_meta(TINY), "BF16"),
        "odd_tensors.safetensors": write_safetensors(
            {"scalar": np.float32(3.5), "empty": np.zeros((0, 7), np.float32),
             "five_d": rng.standard_normal((1, 2, 1, 3, 2)).astype(np.float32),
             "row": np.arange(5, dtype=np.float32)}, {"note": "odd but legal"}, "F32"),
        "f64.safetensors": write_safetensors({"x": np.arange(6.0).reshape(2, 3)}, None, "F64"),
        "metadata_only.safetensors": write_safetensors({}, {"format": "samba-ext"}, "F32"),
        "empty_header.safetensors": M.join_safetensors({}, b""),
    }
    try:  # the model's own writer, when present
        import tempfile

        from samba_ext.config import SambaConfig
        from samba_ext.model import Samba

        with tempfile.TemporaryDirectory() as d:
            m = Samba(SambaConfig.from_dict(dict(TINY, layer_types=tuple(TINY["layer_types"]))),
                      seed=0)
            m.save(str(Path(d) / "m.safetensors"))
            files["model_save.safetensors"] = (Path(d) / "m.safetensors").read_bytes()
    except Exception as e:  # noqa: BLE001
        print(f"(model-written seed skipped: {type(e).__name__}: {e})")
    for name, data in files.items():
        (out / name).write_bytes(data)
    return list(files.values())


def make_pth(out: Path) -> list[bytes]:
    import torch

    torch.manual_seed(0)
    rng = np.random.default_rng(2)
    files = {}

    def save(name: str, obj) -> None:
        p = out / name
        torch.save(obj, p)
        files[name] = p.read_bytes()

    sd = {k: torch.from_numpy(v) for k, v in tiny_state_dict(TINY, rng).items()}
    sd["lm_head.weight"] = sd["transformer.wte.weight"]          # tied: one shared storage
    # fabric_f32 / fabric_bf16 / bare_orig_mod (model-sized) are built at run time by
    # pth_seeds.py without torch; only the small seeds below are stored
    views = dict(sd)
    big = torch.randn(2 * 32 * 16 + 5)
    # w1 is a slice with a storage offset, w2 a transposed (non-contiguous) view
    views["transformer.h.0.mlp.swiglu.w1.weight"] = big[5:5 + 32 * 16].view(32, 16)
    views["transformer.h.0.mlp.swiglu.w2.weight"] = torch.randn(16, 32).t()
    save("views.pth", {"model": views})
    save("small_misc.pth", {"model": {"transformer.wte.weight": torch.ones(3, 2)},
                            "nested": [1, 2.5, "s", None, True, (1, 2), {"a": [3, {"b": 1e-8}]}],
                            "long": torch.arange(4), "bool": torch.tensor([True, False])})
    return list(files.values())


def make_folders(out: Path) -> list[bytes]:
    """Checkpoint folders (zips of their files, see targets.load_folder) written by the
    package's save_pretrained: lit_gpt and HF names, single file and sharded, F16 / BF16, a
    folder whose config.json uses samba-ext field names; tiny model with a 16-token vocab."""
    import io
    import tempfile
    import zipfile

    from samba_ext.config import SambaConfig
    from samba_ext.io.hf_folder import save_pretrained
    from samba_ext.model import Samba

    cfg = SambaConfig.from_dict(dict(TINY, vocab_size=16, name="fuzz-folder"))
    model = Samba(cfg, seed=3)
    seeds = []
    variants = [("litgpt_single", dict(naming="litgpt", dtype="F16")),
                ("hf_single", dict(naming="hf", dtype="F16")),
                ("litgpt_sharded", dict(naming="litgpt", dtype="F16", max_shard_bytes=3000)),
                ("hf_sharded", dict(naming="hf", dtype="BF16", max_shard_bytes=3000)),
                ("own_config_names", dict(naming="litgpt", dtype="BF16"))]
    for name, kw in variants:
        with tempfile.TemporaryDirectory() as td:
            d = save_pretrained(model, Path(td) / "m", **kw)
            if name == "own_config_names":
                (d / "config.json").write_text(json.dumps(cfg.to_dict()))
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as z:
                for f in sorted(d.iterdir()):
                    z.writestr(zipfile.ZipInfo(f.name), f.read_bytes())
        (out / f"{name}.zip").write_bytes(buf.getvalue())
        seeds.append(buf.getvalue())
    return seeds


def add_mutants(out: Path, seeds: list[bytes], muts, suffix: str, n: int, seed: int) -> None:
    rng = random.Random(seed)
    d = out / "mutants"
    d.mkdir(exist_ok=True)
    for i in range(n):
        data = M.mutate(rng.choice(seeds), rng, seeds, muts)
        (d / f"m{i:02d}{suffix}").write_bytes(data)


def main() -> None:
    for sub, make, muts, suffix in (("safetensors", make_safetensors, M.SAFETENSORS, ".safetensors"),
                                    ("pth", make_pth, M.PTH, ".pth"),
                                    ("hf_folder", make_folders, M.FOLDER, ".zip")):
        out = CORPUS / sub
        keep = out / "regressions"
        if out.exists():
            for p in out.iterdir():
                if p != keep:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        out.mkdir(parents=True, exist_ok=True)
        seeds = make(out)
        if sub == "pth":   # its mutants are built at run time (pth_seeds.mutants)
            print(f"{out}: {len(seeds)} stored seeds")
            continue
        add_mutants(out, seeds, muts, suffix, 24, seed=1234)
        print(f"{out}: {len(seeds)} seeds + 24 mutants")


if __name__ == "__main__":
    main()
