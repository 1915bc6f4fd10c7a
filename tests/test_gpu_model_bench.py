"""benchmarks/gpu_model.py without a GPU: the floor arithmetic, the time estimate, the state
made at a context (a decode step from it runs, at the right positions), the target ratios and
the report files, and one whole run on tiny models on the CPU. No wall-clock assertions."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from samba_ext import Samba, SambaConfig
from samba_ext.eval.throughput import resolve_config
from samba_ext.weights import expected_shapes

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu_model as gm  # noqa: E402
import gpu_model_report as rep  # noqa: E402


# ------------------------------------------------------------------- arithmetic ---
@pytest.mark.parametrize("name", ["samba-1.7b", "llama3-1.6b", "mistral-1.6b", "samba-test"])
def test_weight_read_bytes_counts_every_matrix_once(name):
    cfg = SambaConfig.preset(name)
    shapes = expected_shapes(cfg)
    V, D = cfg.vocab_size, cfg.d_model
    # independent count from the checkpoint's tensor shapes: everything but the embedding
    # table, plus the head (the table itself when tied) and one looked-up row
    n = sum(math.prod(s) for k, s in shapes.items() if k != "transformer.wte.weight")
    if cfg.tie_embeddings:
        n += V * D
    n += D
    assert gm.weight_read_bytes(cfg) == 2 * n
    assert gm.weight_read_bytes(cfg, 4) == 4 * n


def test_samba_17b_floor_matches_the_issue():
    # the issue: 3.5 GB of bf16 weights at 4.2 TB/s -> 0.83 ms per token
    b = gm.weight_read_bytes(SambaConfig.preset("samba-1.7b"))
    assert 3.45e9 < b < 3.55e9
    assert gm.floor_ms(b, 4.2e12) == pytest.approx(1000 * b / 4.2e12)
    assert 0.82 < gm.floor_ms(b, 4.2e12) < 0.85
    assert gm.copy_bandwidth_from(2 << 30, 1.0) == 4 << 30    # read + write counted
    with pytest.raises(ValueError, match="bandwidth"):
        gm.floor_ms(1, 0.0)


def test_batch_and_estimate():
    assert [gm.batch_for(L, 131072) for L in (4096, 32768, 131072, 262144)] == [32, 4, 1, 1]
    est = gm.estimate_prefill_s
    assert est([], 4096, True) is None
    assert est([(4096, 10.0)], 32768, True) == pytest.approx(80.0)     # all attention
    assert est([(4096, 10.0)], 32768, False) == pytest.approx(10.0)
    # a + b L through the two longest: 10 at 4K, 24 at 32K -> 24 + 14 / 28K * 96K = 72
    assert est([(4096, 10.0), (32768, 24.0)], 131072, True) == pytest.approx(72.0)
    assert est([(4096, 10.0), (32768, 8.0)], 131072, False) == pytest.approx(8.0)
    assert est([(4096, 10.0), (32768, 24.0)], 8192, True) == pytest.approx(24.0)


class _FakeModel:
    """Records prefill calls; gm.time_call is replaced so that a call of batch b "takes"
    per_prompt * b seconds (no clock involved)."""

    label, vocab, chunk_size = "fake", 7, 8

    def __init__(self, full_attention: bool, per_prompt: float):
        self.full_attention, self.per_prompt, self.calls = full_attention, per_prompt, []

    def prefill(self, x):
        self.calls.append(tuple(x.shape))


@pytest.fixture
def fake_clock(monkeypatch):
    def time_call(fn):
        fn()
        m = time_call.model
        return m.per_prompt * m.calls[-1][0]
    monkeypatch.setattr(gm, "time_call", time_call)
    return time_call


def test_prefill_point_probe_and_skip(fake_clock):
    rng = np.random.default_rng(0)
    m = fake_clock.model = _FakeModel(True, per_prompt=1.0)
    # no estimate: one prompt alone (probe, batch 1), then the point: 4 prompts x 1 s = 4 s,
    # over the 2 s of a cheap run, so one run
    done: list = []
    c = gm.prefill_point(m, 16, 64, 90.0, done, rng)
    assert m.calls == [(1, 16), (4, 16)] and c["probe_s"] == 1.0 and c["time_s"] == 4.0
    assert c["tokens_per_s"] == 16.0 and done == [(16, 4.0)]
    # estimated 4 * 32 / 16 = 8 s (all attention) <= cap: a short warm-up slice, one run
    m.calls.clear()
    c = gm.prefill_point(m, 32, 64, 90.0, done, rng)
    assert m.calls == [(1, 8), (2, 32)] and "probe_s" not in c
    # a cap below the estimate (8 s) but above its share of one prompt (4 s): the probe
    # decides; 2 prompts at 1 s -> 2 s: it runs (the probe was the warm-up)
    m.calls.clear()
    c = gm.prefill_point(m, 32, 64, 5.0, [(16, 4.0)], rng)
    assert m.calls == [(1, 32), (2, 32)] and c["estimate_s"] == 2.0 and "time_s" in c
    # the same at 3 s per prompt: 6 s > 5 s, skipped after the probe
    m.calls.clear()
    m.per_prompt = 3.0
    c = gm.prefill_point(m, 32, 64, 5.0, [(16, 4.0)], rng)
    assert m.calls == [(1, 32)] and c["skipped"].startswith("estimated 6 s > cap 5 s")
    assert "time_s" not in c
    # even one prompt alone over the cap: skipped without running anything
    m.calls.clear()
    c = gm.prefill_point(m, 64, 64, 1.0, [(16, 4.0), (32, 8.0)], rng)
    assert m.calls == [] and "skipped" in c and c["estimate_s"] == pytest.approx(16.0)


def test_prefill_point_repeats_cheap_runs(fake_clock):
    m = fake_clock.model = _FakeModel(False, per_prompt=0.1)
    c = gm.prefill_point(m, 16, 64, 90.0, [(8, 0.4)], np.random.default_rng(0))
    assert len(c["times_s"]) == 3 and m.calls[0] == (1, 8)     # warm-up slice, 3 runs


# ------------------------------------------------------------ state at a context ---
def test_fill_random_repeats_the_block():
    from samba_ext.backend import get_backend
    be = get_backend("cpu")
    dst = np.zeros((2, 11, 3), np.float32)
    block = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3) + 1
    gm.fill_random(be, dst, 1, 10, block, 1)
    assert not dst[:, 0].any() and not dst[:, 10].any()
    np.testing.assert_array_equal(dst[:, 1:5], block)
    np.testing.assert_array_equal(dst[:, 5:9], block)
    np.testing.assert_array_equal(dst[:, 9:10], block[:, :1])


@pytest.mark.parametrize("spec,ctx", [("samba-test", 40), ("samba-test", 9),
                                      ("samba-test:llama", 40), ("samba-test:mistral", 23)])
def test_state_at_context_then_decode(backend, spec, ctx):
    m = Samba(resolve_config(spec), seed=0, device=backend)
    c, B, extra = m.config, 3, 4
    st = gm.state_at_context(m, B, ctx, extra=extra, seed=1, block_positions=16)
    assert st.pos.tolist() == [ctx] * B
    assert st.logits.shape == (B, c.vocab_size)
    to = m.backend.to_numpy
    for kind, d in zip(st.kinds, st.layers):
        if kind == "mamba":
            assert d["conv"].shape == (B, c.d_inner, c.d_conv - 1)
            assert np.all(to(d["ssm"]) != 0)
            continue
        k = to(d["k"])
        n = ctx if kind == "attn" else min(ctx, c.window)
        cap = ctx + extra if kind == "attn" else c.window
        assert k.shape == (B, cap, c.n_kv_head, c.head_dim)
        assert np.all(np.abs(k[:, :n]).sum(axis=(2, 3)) > 0), "a consumed slot left empty"
        assert not k[:, n:].any() and not to(d["v"])[:, n:].any()
    kept = [d.get("k") for d in st.layers]
    toks = np.arange(B) % c.vocab_size
    for i in range(extra):
        logits = m.step(toks, st)
        assert logits.shape == (B, c.vocab_size) and np.all(np.isfinite(logits))
        assert st.pos.tolist() == [ctx + i + 1] * B
    assert all(d.get("k") is k for d, k in zip(st.layers, kept)), "a cache was regrown"


def test_state_at_context_keys_are_attended():
    """A full-attention step from the synthetic state reads the earliest position too:
    changing the key at slot 0 changes the logits (the state really is at context ctx)."""
    m = Samba(resolve_config("samba-test:llama"), seed=0)
    a = gm.state_at_context(m, 2, 30, seed=3)
    b = a.copy()
    b.layers[0]["k"][:, 0] += 5.0
    toks = np.array([1, 2])
    assert not np.allclose(m.step(toks, a), m.step(toks, b))


def test_state_at_context_bad_args():
    m = Samba(SambaConfig.preset("samba-test"), seed=0)
    with pytest.raises(ValueError, match="ctx"):
        gm.state_at_context(m, 1, 0)


# ---------------------------------------------------------------------- report ---
def _res(**over):
    p = {"lengths": [4096, 131072], "contexts": [4096, 65536], "decode_batch": 16,
         "batch1_context": 4096, "total_tokens": 131072, "chunk_size": 8192, "cap_s": 90.0,
         "warm_steps": 4, "steps": 12}
    res = {"date": "d", "commit": "c", "device": "dev", "versions": {}, "params": p,
           "copy": {"bytes": 2 << 30, "bandwidth_Bps": 4.2e12, "method": "m"},
           "models": {"samba-1.7b": {"layer_types": {"mamba": 12, "swa": 12}},
                      "llama3-1.6b": {"layer_types": {"attn": 24}},
                      rep.HF_LABEL: {"kind": "transformers"}},
           "prefill": [
               {"model": "samba-1.7b", "length": 131072, "tokens_per_s": 400.0},
               {"model": rep.HF_LABEL, "length": 131072, "tokens_per_s": 100.0},
               {"model": rep.HF_LABEL, "length": 4096, "tokens_per_s": 1000.0},
               {"model": "llama3-1.6b", "length": 4096, "tokens_per_s": 850.0},
               {"model": "llama3-1.6b", "length": 131072, "skipped": "estimated 300 s > cap"}],
           "decode": [
               {"model": "samba-1.7b", "context": 65536, "batch": 16, "tokens_per_s": 700.0,
                "ms_per_step": 16 / 0.7, "cache": "state"},
               {"model": rep.HF_LABEL, "context": 65536, "batch": 16, "tokens_per_s": 100.0,
                "ms_per_step": 160.0, "cache": "dynamic"},
               {"model": rep.HF_LABEL, "context": 65536, "batch": 16, "tokens_per_s": 200.0,
                "ms_per_step": 80.0, "cache": "static"}],
           "batch1": [{"model": "samba-1.7b", "context": 4096, "batch": 1, "ms_per_step": 1.0,
                       "floor_ms": 0.8, "ratio_to_floor": 1.25, "weight_read_bytes": 3.4e9,
                       "cache": "state"}]}
    res.update(over)
    return res


def test_targets_and_verdicts():
    t = {x["target"].split(" /")[0]: x for x in rep.targets(_res())}
    assert t["samba prefill at 128K"]["value"] == pytest.approx(4.0)
    assert t["samba prefill at 128K"]["verdict"] == "met"
    d = t["samba decode batch 16 at 64K"]
    assert d["value"] == pytest.approx(3.5)                 # against the faster (static) cache
    assert d["verdict"] == "not met: 1.04x short" and "static" in d["note"]
    assert t["samba batch-1 ms/token at 4K"]["value"] == pytest.approx(1.25)
    assert t["samba batch-1 ms/token at 4K"]["verdict"] == "met"
    assert t["our llama prefill at 4K"]["verdict"] == "not met: 1.06x short"
    assert t["our llama prefill at 128K"]["verdict"] == "not measured"
    assert "estimated 300 s" in t["our llama prefill at 128K"]["note"]
    assert rep.verdict(2.0, 1.5, False) == "not met: 1.33x over"
    no_hf = _res(models={"samba-1.7b": {"layer_types": {"mamba": 1, "swa": 1}},
                         rep.HF_LABEL: {"error": "ImportError: No module named 'transformers'"}})
    for what in ("prefill", "decode"):       # a model that failed to build has no cells
        no_hf[what] = [c for c in no_hf[what] if c["model"] != rep.HF_LABEL]
    t2 = rep.targets(no_hf)
    assert t2[0]["verdict"] == "not measured" and "transformers" in t2[0]["note"]


def test_tables_and_markdown_section():
    res = _res(total_s=1.0)
    res["targets"] = rep.targets(res)
    text = rep.tables(res)
    assert "skipped" in text and "700" in text and "(static)" in text and "1.25x" in text
    md = rep.markdown_section(res)
    assert "**met**" in md and "**not met: 1.04x short**" in md and "estimated 300 s" in md


def test_merge_section_keeps_text_outside_the_markers():
    first = rep.merge_section("", "run 1\n")
    assert first.startswith("# GPU model") and "run 1" in first
    edited = "# title\n\nintro by hand\n\n" + first.split("\n\n", 1)[1] + "\nnotes by hand\n"
    second = rep.merge_section(edited, "run 2\n")
    assert "run 1" not in second and "run 2" in second
    assert "intro by hand" in second and "notes by hand" in second
    assert second.count(rep.BEGIN) == 1 and second.count(rep.END) == 1


# ------------------------------------------------------------------- whole run ---
def test_whole_run_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_COMMIT", "abc1234")
    res = gm.main(["--device", "cpu", "--models", "samba-test,samba-test:llama,hf-llama",
                   "--lengths", "16,32", "--contexts", "16,40", "--batch1-context", "24",
                   "--total-tokens", "64", "--chunk-size", "16", "--copy-mib", "4",
                   "--hf-shapes", "samba-test:llama", "--quick", "--out", str(tmp_path)])
    data = json.loads((tmp_path / rep.JSON_NAME).read_text())
    assert data["commit"] == "abc1234" and data["params"]["chunk_size"] == 16
    for label in ("samba-test", "samba-test:llama"):
        cells = [c for c in data["prefill"] if c["model"] == label]
        assert [c["length"] for c in cells] == [16, 32]
        assert [c["batch"] for c in cells] == [4, 2]
        assert all(c["tokens_per_s"] > 0 for c in cells)
        dec = [c for c in data["decode"] if c["model"] == label]
        assert [(c["batch"], c["context"]) for c in dec] == [(16, 16), (16, 40)]
        (b1,) = [c for c in data["batch1"] if c["model"] == label]
        assert b1["ratio_to_floor"] == pytest.approx(b1["ms_per_step"] / b1["floor_ms"])
    hf = data["models"][rep.HF_LABEL]
    try:
        import transformers  # noqa: F401
    except ImportError:
        assert "transformers" in hf["error"] or "torch" in hf["error"]
    else:
        assert hf["kind"] == "transformers"
    md = (tmp_path / rep.MD_NAME).read_text()
    assert rep.BEGIN in md and "abc1234" in md and "Targets" in md
    assert len(res["targets"]) == 2 + 1 + 2


def test_transformers_llama_on_cpu():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from gpu_model_hf import HFLlama

    m = HFLlama("samba-test:llama", "cpu", caches=("dynamic", "static"))
    info = m.info()
    assert info["num_parameters"] == resolve_config("samba-test:llama").num_parameters()
    m.prefill(np.zeros((2, 8), np.int64))
    for kind in ("dynamic", "static"):
        step, meta = m.decoder(3, 20, 2, cache=kind)
        step(np.array([1, 2, 3]))       # checks that the cache grew from 20 to 21 positions
        step(np.array([1, 2, 3]))
        assert meta["cache"] == kind
