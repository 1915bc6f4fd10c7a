"""The model-sized ``.pth`` seeds of the fuzz corpus and the corpus's ``.pth`` mutants, built
without torch at run time.

``fabric_f32.pth`` (lit_gpt / Fabric layout, float32, lm_head tied to wte through one shared
storage), ``fabric_bf16.pth`` (bfloat16) and ``bare_orig_mod.pth`` (a bare state dict of float16
tensors under ``_orig_mod.`` names, as torch.compile saves it), from the random 2-block model of
``make_corpus.TINY``. They are assembled with :mod:`pth_builder` in the zip + pickle layout of
``torch.save``, so they are not stored in the repository and CI needs no torch to make them.
The 24 mutants (``mutants/m00.pth`` ...) are seeded mutations (:mod:`mutators`, seed 1234) of
those three and of the two small stored seeds, so they are not stored either.

``python3 tests/fuzz/pth_seeds.py`` prints the size and sha256 of every built file (the list
in docs/reliability.md).
"""
from __future__ import annotations

import hashlib
import random

import numpy as np
from make_corpus import TINY, tiny_state_dict
from paths import CORPUS
from pth_builder import Pickle, torch_zip

KINDS = {"float32": "FloatStorage", "bfloat16": "BFloat16Storage", "float16": "HalfStorage"}


def _raw(a: np.ndarray, dtype: str) -> bytes:
    a = np.ascontiguousarray(a, np.float32)
    if dtype == "float32":
        return a.tobytes()
    if dtype == "float16":
        return a.astype(np.float16).tobytes()
    u = a.view(np.uint32).astype(np.uint64)                         # bfloat16, rounded to
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16).tobytes()   # nearest even


def _seed(sd: dict, dtype: str, prefix: str, wrap: bool, tie: bool) -> bytes:
    """One torch.save-style file of state dict ``sd`` (``{"model": sd}`` when ``wrap``)."""
    p = Pickle().empty_dict().mark()
    if wrap:
        p.str("model").empty_dict().mark()
    storages: dict[str, bytes] = {}
    for i, (name, a) in enumerate(sd.items()):
        key = "0" if tie and name == "lm_head.weight" else str(i)   # shares wte's storage
        storages.setdefault(key, _raw(a, dtype))
        stride = tuple(int(np.prod(a.shape[d + 1:])) for d in range(a.ndim))
        p.str(prefix + name).tensor(key, a.size, 0, tuple(a.shape), stride, KINDS[dtype])
    if wrap:
        p.setitems().str("iter_num").int(12)
    return torch_zip(p.setitems().stop(), storages)


def model_seeds() -> dict[str, bytes]:
    """{file name: bytes} of the three seeds (deterministic)."""
    sd = tiny_state_dict(TINY, np.random.default_rng(2))
    first = next(iter(sd))
    sd = {first: sd[first], "lm_head.weight": sd[first],
          **{k: v for k, v in sd.items() if k != first}}
    return {"fabric_f32.pth": _seed(sd, "float32", "", True, True),
            "fabric_bf16.pth": _seed(sd, "bfloat16", "", True, True),
            "bare_orig_mod.pth": _seed(sd, "float16", "_orig_mod.", False, False)}


PTH_DIR = CORPUS / "pth"


def mutants(n: int = 24, seed: int = 1234) -> dict[str, bytes]:
    """{"mutants/mNN.pth": bytes} of ``n`` seeded mutants of the .pth seeds (deterministic)."""
    import mutators as M

    seeds = [p.read_bytes() for p in sorted(PTH_DIR.glob("*.pth"))]
    seeds += [data for _, data in sorted(model_seeds().items())]
    rng = random.Random(seed)
    return {f"mutants/m{i:02d}.pth": M.mutate(rng.choice(seeds), rng, seeds, M.PTH)
            for i in range(n)}


def built_files() -> dict[str, bytes]:
    """Every .pth corpus file built at run time, by its path under corpus/pth/."""
    return {**model_seeds(), **mutants()}


if __name__ == "__main__":
    for name, data in built_files().items():
        print(f"| `{name}` | {len(data)} | `{hashlib.sha256(data).hexdigest()}` |")

