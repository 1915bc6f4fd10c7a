"""The package model (samba_ext.Samba) against the PyTorch model of training/model_torch.py
on the same weights: forward logits, and chunked NLL with state carried past the SWA window.

Skipped when torch is missing. Runs on a freshly initialised exported model (always) and on the
bundled samba-tiny / llama-tiny files (when present).
"""

from __future__ import annotations

import os
import sys

import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "training"))
import model_torch as mt  # noqa: E402
from samba_ext.safetensors_io import write_safetensors  # noqa: E402

import samba_ext  # noqa: E402
from conftest import assert_close  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(samba_ext.__file__)), "data")
BUNDLED = {n: os.path.join(DATA, f"{n}.safetensors") for n in ("samba-tiny", "llama-tiny")}


@pytest.fixture(params=["random-samba", "random-samba8", "random-llama", "samba-tiny", "llama-tiny"])
def weights(request, tmp_path):
    name = request.param
    if name.startswith("random"):
        torch.manual_seed(abs(hash(name)) % 1000)
        cfg = mt.make_config(
            "samba-tiny" if "samba" in name else "llama-tiny",
            d_model=64,
            window=32,
            n_layer=8 if name.endswith("8") else 4,
        )  # 8: a deeper stack, as --grow 8 makes
        m = mt.TorchSamba(cfg)
        with torch.no_grad():  # spread dt / A_log so that fast and slow channels both occur
            for b in m.transformer.h:
                if b.kind == "mamba":
                    b.attn.dt_proj.bias.uniform_(-12.0, 2.0)
                    b.attn.A_log.add_(torch.randn_like(b.attn.A_log))
        path = str(tmp_path / f"{name}.safetensors")
        write_safetensors(
            path,
            mt.export_state(m),
            {"format": "samba-ext", "config": __import__("json").dumps(cfg), "tokenizer": "byte"},
        )
        return path
    if not os.path.exists(BUNDLED[name]):
        pytest.skip(f"{BUNDLED[name]} not present")
    return BUNDLED[name]


@pytest.mark.parametrize("span", ["past_window", "within_window"])
def test_forward_logits_match_torch(weights, rng, span):
    model = samba_ext.Samba.load(weights)
    tm = mt.load_model(weights).eval()
    w = tm.cfg["window"] or 64
    # within the window the torch model takes plain causal attention on the CPU, past it the band
    L = 3 * w + 17 if span == "past_window" else w // 2 + 3
    toks = rng.integers(0, 256, (2, L))
    got = model.forward(toks)
    with torch.no_grad():
        ref = tm(torch.from_numpy(toks), exact=True).numpy()
    # both float32; different summation orders over <= d_inner-long dot products and softmax over
    # <= window keys: observed relative error ~1e-6
    assert_close(got, ref, 2e-5, "logits")


def test_chunked_nll_matches_torch(weights, rng):
    model = samba_ext.Samba.load(weights)
    tm = mt.load_model(weights).eval()
    w = tm.cfg["window"] or 64
    toks = rng.integers(0, 256, (1, 5 * w + 3))
    got = model.nll(toks, chunk_size=w + 5)
    with torch.no_grad():
        ref = mt.run_chunked(tm, torch.from_numpy(toks), chunk=2 * w + 1, want="nll").double().numpy()
    assert got.shape == ref.shape
    assert_close(got, ref, 2e-5, "nll")  # float32 log-softmax of float32 logits


@pytest.mark.parametrize("name", ["samba-tiny", "llama-tiny"])
def test_bundled_loads_by_name(name):
    if not os.path.exists(BUNDLED[name]):
        pytest.skip(f"{BUNDLED[name]} not present")
    m = samba_ext.Samba.load(name)
    assert m.config.name == name and m.config.tokenizer == "byte"
    assert m.num_parameters() == mt.load_model(BUNDLED[name]).num_parameters()
    assert os.path.getsize(BUNDLED[name]) <= 16 * 1024 * 1024
