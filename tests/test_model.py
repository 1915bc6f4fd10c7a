"""The Samba model: parity with the float64 reference, streaming equivalences, memory bounds,
generation, presets and initialisation."""
from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

import ref_model
from conftest import assert_close
from samba_ext import Samba, SambaConfig
from samba_ext.model import init_state_dict

# float32 model vs float64 reference through a few blocks: observed relative errors are
# ~1e-6 (float32 rounding in GEMMs of width <= 128 and a <= 60-step scan). 1e-4 leaves a wide
# margin, while any real mistake (window off by one, RoPE position, QKV grouping, conv tap
# order, a missing state) produces errors of order 1e-2..1.
RTOL = 1e-4
# Two float32 computations of the same thing that differ only in GEMM blocking / chunk
# boundaries (chunked vs one-shot, step vs forward): a few float32 ulps of the logits.
RTOL_SAME = 2e-5

W = 16   # window of the test config


def _config(kinds=("mamba", "swa", "mamba", "swa"), **kw) -> SambaConfig:
    """Small config: GQA 4:2, head 16, window 16, d_state 8."""
    return SambaConfig.preset("samba-test", n_layer=len(kinds), layer_types=tuple(kinds), **kw)


def _perturbed(cfg: SambaConfig, seed: int) -> dict[str, np.ndarray]:
    """Init weights plus noise, so that no tensor is a constant (norm weights 1, D 1,
    A_log rows identical...) and layout mistakes cannot cancel out."""
    rng = np.random.default_rng(seed)
    sd = init_state_dict(cfg, seed)
    out = {}
    for k, v in sd.items():
        s = float(v.std()) if v.size > 1 and v.std() > 0 else 0.1
        out[k] = (v + rng.standard_normal(v.shape) * 0.3 * s).astype(np.float32)
    return out


@pytest.fixture(scope="module")
def model() -> Samba:
    cfg = _config(("mamba", "swa", "attn", "mamba", "swa"))
    return Samba(cfg, state_dict=_perturbed(cfg, 7))


# ------------------------------------------------------------------------------ parity ---
@pytest.mark.parametrize("kinds", [("mamba", "swa", "mamba", "swa"),
                                   ("mamba", "swa", "attn", "mamba", "swa")])
def test_forward_matches_float64_reference(rng, kinds):
    cfg = _config(kinds)
    m = Samba(cfg, state_dict=_perturbed(cfg, int(rng.integers(1 << 30))))
    tok = rng.integers(0, cfg.vocab_size, (2, 45))          # 45 > window 16
    got = m.forward(tok)
    assert got.dtype == np.float32 and got.shape == (2, 45, cfg.vocab_size)
    ref = ref_model.forward(m.state_dict(), cfg, tok)
    assert_close(got, ref, RTOL, "forward logits")
    # the windowed attention matters here: the same model with full attention differs
    full = ref_model.forward(m.state_dict(), SambaConfig.from_dict(
        dict(cfg.to_dict(), layer_types=[("attn" if t == "swa" else t) for t in kinds])), tok)
    assert np.linalg.norm(full - ref) / np.linalg.norm(ref) > 100 * RTOL


def test_reference_parity_mqa_untied(rng):
    """MQA (1 KV head), untied lm_head, head_dim 8, d_conv 3, window 5."""
    cfg = SambaConfig(vocab_size=61, n_layer=3, d_model=24, n_head=3, n_kv_head=1, head_dim=8,
                      intermediate_size=40, window=5, d_state=4, d_conv=3,
                      tie_embeddings=False, layer_types=("swa", "mamba", "swa"))
    m = Samba(cfg, state_dict=_perturbed(cfg, 3))
    tok = rng.integers(0, 61, (3, 23))
    assert_close(m.forward(tok), ref_model.forward(m.state_dict(), cfg, tok), RTOL, "logits")


def test_rows_are_independent(model, rng):
    tok = rng.integers(0, 259, (3, 30))
    full = model.forward(tok)
    for r in range(3):
        assert_close(full[r], model.forward(tok[r:r + 1])[0], RTOL_SAME, f"row {r}")


# ------------------------------------------------------------------ streaming equality ---
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("length", [W - 5, W, 3 * W + 5])
def test_chunked_prefill_equals_one_shot(model, rng, batch, length):
    tok = rng.integers(0, 259, (batch, length))
    ref = model.forward(tok)
    one = model.new_state(batch)
    last_one = model.prefill(tok, one, chunk_size=length)
    assert_close(last_one, ref[:, -1], RTOL_SAME, "one-shot prefill")
    for cs in (1, 3, W - 1, W, W + 1):
        st = model.new_state(batch)
        seen = []
        last = model.prefill(tok, st, chunk_size=cs, progress=lambda d, t: seen.append((d, t)))
        assert seen[-1] == (length, length) and len(seen) == math.ceil(length / cs)
        assert_close(last, last_one, RTOL_SAME, f"prefill chunk {cs}")
        assert st.pos.tolist() == [length] * batch
        # the carried state is the same state
        for i, (a, b) in enumerate(zip(st.layers, one.layers)):
            for key in a:
                n = min(a[key].shape[1], b[key].shape[1]) if key in ("k", "v") else None
                x, y = (a[key], b[key]) if n is None else (a[key][:, :n], b[key][:, :n])
                assert_close(x, y, RTOL_SAME, f"layer {i} {key} (chunk {cs})")
        # and it continues identically
        nxt = rng.integers(0, 259, batch)
        assert_close(model.step(nxt, st), model.step(nxt, one.copy()), RTOL_SAME, "continuation")


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("prompt", [0, 5, W, W + 3])
def test_step_by_step_equals_forward(model, rng, batch, prompt):
    length = 3 * W + 2
    tok = rng.integers(0, 259, (batch, length))
    ref = model.forward(tok)
    st = model.new_state(batch)
    if prompt:
        assert_close(model.prefill(tok[:, :prompt], st, chunk_size=7), ref[:, prompt - 1],
                     RTOL_SAME, "prefill")
    got = np.stack([model.step(tok[:, t], st) for t in range(prompt, length)], axis=1)
    assert got.shape == (batch, length - prompt, 259)
    assert_close(got, ref[:, prompt:], RTOL_SAME, f"step logits after a {prompt}-token prompt")
    # SWA ring buffers hold exactly `window` keys; the full-attention cache grows
    for kind, shp in zip(st.kinds, st.shapes()):
        if kind == "swa":
            assert shp["k"] == (batch, W, 2, 16)
        if kind == "attn":
            assert shp["k"][1] >= length


def test_nll_streams_and_matches_forward(model, rng):
    tok = rng.integers(0, 259, (2, 50))
    lg = model.forward(tok).astype(np.float64)
    lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
    ref = lse[:, :-1] - np.take_along_axis(lg[:, :-1], tok[:, 1:, None], -1)[..., 0]
    got = model.nll(tok, chunk_size=7)
    assert got.shape == (2, 49) and got.dtype == np.float64
    assert_close(got, ref, 1e-5, "nll")
    # continuing a state: the tokens continue it; the first NLL is for tokens[:, 1]
    st = model.new_state(2)
    model.prefill(tok[:, :20], st)
    assert_close(model.nll(tok[:, 20:], state=st, chunk_size=9), ref[:, 20:], 1e-5, "nll cont")


def test_empty_inputs(model):
    assert model.forward(np.zeros((2, 0), np.int64)).shape == (2, 0, 259)
    assert model.forward(np.zeros((0, 5), np.int64)).shape == (0, 5, 259)
    st = model.new_state(2)
    with pytest.raises(ValueError, match="no tokens"):
        model.prefill(np.zeros((2, 0), np.int64), st)
    assert model.nll(np.zeros((2, 1), np.int64)).shape == (2, 0)


def test_bad_inputs(model):
    st = model.new_state(2)
    with pytest.raises(ValueError, match=r"\[0, 259\)"):
        model.forward([[1, 2, 259]])
    with pytest.raises(TypeError, match="integer"):
        model.forward(np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="batch"):
        model.prefill([[1, 2, 3]], st)
    with pytest.raises(ValueError, match="chunk_size"):
        model.prefill([[1, 2], [3, 4]], st, chunk_size=0)
    with pytest.raises(TypeError, match="SambaState"):
        Samba(_config()).step([1, 2], st)


# ---------------------------------------------------------------------- memory bounds ---
def test_decode_state_memory_is_constant():
    """State memory after 100 and after 10,000 generated tokens is identical (SWA ring
    buffers of `window` entries, fixed Mamba states)."""
    cfg = SambaConfig(n_layer=2, d_model=16, n_head=2, n_kv_head=1, head_dim=8,
                      intermediate_size=16, window=8, d_state=4)
    m = Samba(cfg, seed=1)
    st = m.new_state(2)
    m.prefill([[1, 2, 3], [4, 5, 6]], st)
    ids = [st.layers[i][k].__array_interface__["data"][0] for i in range(2) for k in st.layers[i]]
    rng = np.random.default_rng(0)
    toks = rng.integers(0, 256, (10_000, 2))
    sizes = {}
    for t in range(10_000):
        logits = m.step(toks[t], st)
        if t + 1 in (100, 10_000):
            sizes[t + 1] = (st.nbytes(), st.shapes())
    assert sizes[100] == sizes[10_000]
    assert sizes[100][1][1]["k"] == (2, 8, 1, 8)
    assert np.all(np.isfinite(logits)) and st.pos.tolist() == [10_003, 10_003]
    # the decode updates the state arrays in place (no reallocation per token)
    assert ids == [st.layers[i][k].__array_interface__["data"][0]
                   for i in range(2) for k in st.layers[i]]


def _prefill_peak(m: Samba, tok: np.ndarray, chunk: int) -> int:
    st = m.new_state(tok.shape[0])
    tracemalloc.start()
    try:
        m.prefill(tok, st, chunk_size=chunk)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_prefill_memory_is_bounded_1m_tokens():
    """A 1M-token prompt on a tiny config: the peak traced memory (NumPy arrays, kernel
    outputs) equals that of a 2-chunk prompt (it depends on chunk_size and window only)."""
    cfg = SambaConfig(n_layer=2, d_model=8, n_head=2, n_kv_head=1, head_dim=4,
                      intermediate_size=8, window=8, d_state=4, dt_rank=1)
    m = Samba(cfg, seed=0)
    chunk = 1 << 16
    short = np.random.default_rng(0).integers(0, 256, (1, 2 * chunk))
    long = np.random.default_rng(1).integers(0, 256, (1, 1 << 20))
    p_short = _prefill_peak(m, short, chunk)
    p_long = _prefill_peak(m, long, chunk)
    # per-chunk activations are ~chunk x (d_model..2 d_inner) floats ~ a few MB; allow 10%
    assert p_long <= 1.1 * p_short, (p_short, p_long)
    assert p_long < 64 * chunk * 4 * 16      # far below anything proportional to 1M tokens


# ------------------------------------------------------------------------- generation ---
def test_generate_greedy_matches_forward(model, rng):
    prompt = rng.integers(0, 256, 12).tolist()
    out = model.generate(prompt, max_new_tokens=10, stop=[])
    assert isinstance(out, list) and len(out) == 10
    lg = model.forward([prompt + out])[0]
    assert out == np.argmax(lg[len(prompt) - 1:-1], axis=-1).tolist()


def test_generate_sampling_reproducible(model):
    kw = dict(max_new_tokens=12, temperature=1.0, top_k=50, top_p=0.95, stop=[])
    a = model.generate([5, 6, 7], seed=123, **kw)
    b = model.generate([5, 6, 7], seed=123, **kw)
    c = model.generate([5, 6, 7], seed=124, **kw)
    assert a == b and len(a) == 12
    assert a != c      # 12 draws from ~50 candidates: a collision is astronomically unlikely
    # top_k=1 sampling is greedy
    assert model.generate([5, 6, 7], max_new_tokens=6, temperature=0.7, top_k=1, seed=9,
                          stop=[]) == model.generate([5, 6, 7], max_new_tokens=6, stop=[])


def test_generate_text_stop_and_stream(model):
    full = model.generate("Hi", max_new_tokens=8, stop=[])
    ids = model.generate(list(b"Hi"), max_new_tokens=8, stop=[])
    assert full == model.tokenizer.decode(ids)
    # stop at the third generated token id
    cut = model.generate(list(b"Hi"), max_new_tokens=8, stop=ids[2])
    assert cut == ids[:ids.index(ids[2])]
    pieces: list[str] = []
    text = model.generate("Hi", max_new_tokens=8, stop=[], stream=pieces.append)
    assert "".join(pieces) == text == full
    toks: list[int] = []
    model.generate(list(b"Hi"), max_new_tokens=8, stop=[], stream=toks.append)
    assert toks == ids


def test_generate_stop_string():
    """A stop string ends generation and is not returned (a model that always writes 'ab')."""
    cfg = SambaConfig(n_layer=1, d_model=16, n_head=2, n_kv_head=2, layer_types=("mamba",),
                      intermediate_size=16)
    sd = init_state_dict(cfg, 0)
    # zero mixer/MLP outputs: logits = wte . (ln_f * normalize(wte[last])). With rows
    # g = (1, -1/2) for every token but a = (1, 1), b = (1, -1) and ln_f = (1, -1):
    # next(g) = a, next(a) = b, next(b) = a.
    sd["transformer.h.0.attn.out_proj.weight"][:] = 0
    sd["transformer.h.0.mlp.swiglu.w3.weight"][:] = 0
    emb = np.zeros((259, 16), np.float32)
    emb[:, :2] = (1.0, -0.5)
    emb[ord("a"), :2] = (1.0, 1.0)
    emb[ord("b"), :2] = (1.0, -1.0)
    sd["transformer.wte.weight"] = emb
    sd["transformer.ln_f.weight"][1] = -1.0
    m = Samba(cfg, state_dict=sd)
    assert m.generate("x", max_new_tokens=6, stop=[]) == "ababab"
    assert m.generate("x", max_new_tokens=6, stop="ba") == "a"
    pieces: list[str] = []
    assert m.generate("x", max_new_tokens=6, stop=["bab"], stream=pieces.append) == "a"
    assert "".join(pieces) == "a"
    assert m.generate(list(b"x"), max_new_tokens=6, stop="ba") == [ord("a")]
    for bad in ("", ["ba", ""]):   # an empty stop string is a mistake, not "no stop"
        with pytest.raises(ValueError, match="stop: an empty string"):
            m.generate("x", max_new_tokens=6, stop=bad)


def test_generate_batch_and_state_continuation(model, rng):
    prompts = rng.integers(0, 256, (3, 9))
    outs = model.generate(prompts, max_new_tokens=5, stop=[])
    assert len(outs) == 3
    for r in range(3):
        assert outs[r] == model.generate(prompts[r].tolist(), max_new_tokens=5, stop=[])
    # continuing a state with an empty prompt == generating from the concatenation
    st = model.new_state(1)
    first = model.generate(prompts[0].tolist(), max_new_tokens=4, stop=[], state=st)
    more = model.generate([], max_new_tokens=4, stop=[], state=st)
    assert first + more == model.generate(prompts[0].tolist(), max_new_tokens=8, stop=[])


# ------------------------------------------------------------------ config and init ---
def test_presets_match_the_paper_sizes():
    n = {k: SambaConfig.preset(k).num_parameters() / 1e6 for k in SambaConfig.presets()}
    # docs/specification.md section 1: 421.8M, 1.33B, 1.74B (tied), 3.86B (tied)
    assert abs(n["samba-421m"] - 421.8) < 0.1 and abs(n["samba-1.3b"] - 1330) < 1
    assert abs(n["samba-1.7b"] - 1742) < 1 and abs(n["samba-3.8b"] - 3864) < 1
    assert 9.0 < n["samba-10m"] < 11.0
    l3 = SambaConfig.preset("llama3-1.6b")
    assert set(l3.layer_types) == {"attn"} and (l3.n_head, l3.n_kv_head, l3.head_dim) == (32, 4, 64)
    mi = SambaConfig.preset("mistral-1.6b")
    assert set(mi.layer_types) == {"swa"} and mi.window == 2048
    s = SambaConfig.preset("samba-421m")
    assert s.layer_types[:2] == ("mamba", "swa") and (s.dt_rank, s.head_dim) == (96, 128)
    assert SambaConfig.preset("samba-3.8b").head_dim == 256
    t = SambaConfig.preset("samba-test")
    assert (t.window, t.n_layer, t.n_head, t.n_kv_head) == (16, 4, 4, 2)


def test_config_validation_and_dict_roundtrip():
    c = SambaConfig.preset("samba-1.7b")
    assert SambaConfig.from_dict(c.to_dict()) == c
    assert SambaConfig.from_json(c.to_json()) == c
    with pytest.raises(ValueError, match="multiple of"):
        SambaConfig(n_head=4, n_kv_head=3)
    with pytest.raises(ValueError, match="window"):
        SambaConfig(window=None)
    with pytest.raises(ValueError, match="unknown mixer"):
        SambaConfig(n_layer=2, layer_types=("mamba", "lstm"))
    with pytest.raises(ValueError, match="unknown field"):
        SambaConfig.from_dict({"n_layers": 3})
    with pytest.raises(ValueError, match="unknown preset"):
        SambaConfig.preset("samba-7b")
    for text in ("not json", "[1]", None):      # was a bare JSONDecodeError / TypeError
        with pytest.raises(ValueError, match="^s: "):
            SambaConfig.from_json(text)


def test_num_parameters_counts_the_weights():
    for cfg in (_config(("mamba", "swa", "attn")),
                SambaConfig.preset("llama-tiny", tie_embeddings=False)):
        m = Samba(cfg)
        assert m.num_parameters() == sum(v.size for v in m.state_dict().values())


def test_mamba_initialisation():
    cfg = SambaConfig.preset("samba-tiny")
    sd = init_state_dict(cfg, seed=5)
    E, N, R, L = cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.n_layer
    p = "transformer.h.0.attn."
    np.testing.assert_allclose(sd[p + "A_log"], np.log(np.tile(np.arange(1, N + 1), (E, 1))),
                               rtol=1e-6)
    np.testing.assert_array_equal(sd[p + "D"], 1.0)
    dt = np.log1p(np.exp(sd[p + "dt_proj.bias"].astype(np.float64)))   # softplus(bias) = dt
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    assert np.log(dt).std() > 0.5            # log-uniform over [ln 1e-3, ln 0.1] (std 1.33)
    assert np.abs(sd[p + "dt_proj.weight"]).max() <= R ** -0.5
    scale = 1 / math.sqrt(2 * L)
    assert np.abs(sd[p + "out_proj.weight"]).max() <= scale / math.sqrt(E)
    assert np.abs(sd[p + "out_proj.weight"]).max() > 0.9 * scale / math.sqrt(E)
    assert np.abs(sd["transformer.h.1.attn.proj.weight"]).max() <= scale / math.sqrt(cfg.d_model)
    w3 = sd["transformer.h.1.mlp.swiglu.w3.weight"]
    assert np.abs(w3).max() <= scale / math.sqrt(cfg.intermediate_size)
    assert abs(sd["transformer.wte.weight"].std() - 0.02) < 0.002
    w1 = sd["transformer.h.1.mlp.swiglu.w1.weight"]
    assert np.abs(w1).max() <= 1 / math.sqrt(cfg.d_model) and w1.std() > 0.5 / math.sqrt(3 * cfg.d_model)
    np.testing.assert_array_equal(sd["transformer.h.0.norm_1.weight"], 1.0)
    # seeds reproduce and differ
    sd2 = init_state_dict(cfg, seed=5)
    assert all(np.array_equal(sd[k], sd2[k]) for k in sd)
    assert not np.array_equal(init_state_dict(cfg, seed=6)[p + "in_proj.weight"],
                              sd[p + "in_proj.weight"])


# ------------------------------------------------------------------ backend interface ---
class _Opaque:
    """An array that offers only what backend.py promises the model (shape, ndim, nbytes,
    reshape, basic slicing); NumPy cannot consume it, so any tensor math the model did
    outside the backend would fail here."""

    def __init__(self, a: np.ndarray):
        self.a = a

    shape = property(lambda self: self.a.shape)
    ndim = property(lambda self: self.a.ndim)
    nbytes = property(lambda self: self.a.nbytes)

    def reshape(self, *shape):
        return _Opaque(self.a.reshape(*shape))

    def __getitem__(self, idx):
        items = idx if isinstance(idx, tuple) else (idx,)
        assert all(isinstance(i, (slice, int)) for i in items), f"not a basic index: {idx!r}"
        return _Opaque(self.a[idx])

    def __array__(self, *args, **kwargs):
        raise AssertionError("the model used a backend array outside the backend interface")


def _opaque_backend():
    """A Backend whose every interface method unwraps _Opaque arguments, calls CPUBackend and
    wraps array results (counting calls)."""
    from samba_ext.backend import Backend, CPUBackend
    cpu = CPUBackend()

    def un(x):
        if isinstance(x, _Opaque):
            return x.a
        if isinstance(x, (list, tuple)):
            return type(x)(un(v) for v in x)
        return x

    def wrap(r):
        if isinstance(r, np.ndarray):
            return _Opaque(r)
        if isinstance(r, tuple):
            return tuple(wrap(v) for v in r)
        return r

    def method(name):
        def call(self, *args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            r = getattr(cpu, name)(*un(args), **{k: un(v) for k, v in kwargs.items()})
            return r if name == "to_numpy" else wrap(r)
        return call

    names = [n for n, v in vars(Backend).items() if callable(v) and not n.startswith("_")]
    cls = type("OpaqueBackend", (Backend,), {n: method(n) for n in names})
    be = cls()
    be.name, be.device, be.calls = "opaque", "cpu", {}
    return be


def test_model_uses_only_the_backend_interface(rng):
    be = _opaque_backend()
    cfg = _config(("mamba", "swa", "attn"))
    sd = _perturbed(cfg, 5)
    ref, m = Samba(cfg, state_dict=sd), Samba(cfg, state_dict=sd, device=be)
    tok = rng.integers(0, 259, (2, 37))
    assert_close(m.forward(tok), ref.forward(tok), RTOL_SAME, "forward")
    st, st_ref = m.new_state(2), ref.new_state(2)
    assert_close(m.prefill(tok, st, chunk_size=10), ref.prefill(tok, st_ref, chunk_size=10),
                 RTOL_SAME, "prefill")
    assert "begin_step" not in be.calls  # forward/prefill never open a decode-step recording
    for t in range(3):
        assert_close(m.step(tok[:, t], st), ref.step(tok[:, t], st_ref), RTOL_SAME, "step")
    assert be.calls["begin_step"] == 3  # each step announces itself (CUDA graph capture)
    assert st.copy().nbytes() == st_ref.nbytes()
    assert m.generate("ab", max_new_tokens=4, stop=[]) == ref.generate("ab", max_new_tokens=4,
                                                                       stop=[])
    assert m.state_dict().keys() == ref.state_dict().keys()
    assert be.calls["matmul"] > 0 and be.calls["dt_state_update"] > 0


def test_prefill_and_step_copy_nothing_to_the_host_until_asked(rng):
    """The logits stay backend arrays: a prefill over several chunks and decode steps with
    logits="device" never call to_numpy (on the GPU: no device-to-host copy, no wait);
    state.logits converts once when read; the default return values are NumPy as before."""
    be = _opaque_backend()
    cfg = _config(("mamba", "swa", "attn"))
    sd = _perturbed(cfg, 6)
    ref, m = Samba(cfg, state_dict=sd), Samba(cfg, state_dict=sd, device=be)
    tok = rng.integers(0, 259, (2, 37))
    st, st_ref = m.new_state(2), ref.new_state(2)
    dev = m.prefill(tok, st, chunk_size=8, logits="device")     # 5 chunks
    assert be.calls.get("to_numpy", 0) == 0 and st.has_logits()
    want = ref.prefill(tok, st_ref, chunk_size=8)
    assert_close(be.to_numpy(dev), want, RTOL_SAME, "device logits")
    for t in range(3):
        d = m.step(tok[:, t], st, logits="device")
        assert be.calls["to_numpy"] == 1, "a step with logits='device' copied to the host"
        assert_close(be.to_numpy(d), ref.step(tok[:, t], st_ref), RTOL_SAME, "step")
        be.calls["to_numpy"] -= 1
    lg = st.logits
    assert isinstance(lg, np.ndarray) and lg.dtype == np.float32
    assert_close(lg, st_ref.logits, RTOL_SAME, "state.logits")
    assert st.logits is lg, "state.logits is converted once"
    out = m.prefill(tok[:, :3], st)
    assert isinstance(out, np.ndarray) and out.shape == (2, cfg.vocab_size)
    with pytest.raises(ValueError, match="logits"):
        m.step(tok[:, 0], st, logits="numpy")


def test_interrupted_prefill_invalidates_the_state(model, rng):
    """A prefill stopped midway (e.g. Ctrl-C inside a chunk) must not leave a silently wrong
    state: later calls on it raise; a copy taken before stays usable."""
    tok = rng.integers(0, 259, (1, 40))
    st = model.new_state(1)
    model.prefill(tok[:, :20], st)
    saved = st.copy()
    calls = {"n": 0}
    orig = model.backend.selective_scan

    def boom(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:      # the second Mamba block of the chunk
            raise KeyboardInterrupt
        return orig(*a, **k)
    model.backend.selective_scan = boom
    try:
        with pytest.raises(KeyboardInterrupt):
            model.prefill(tok[:, 20:], st)
    finally:
        del model.backend.selective_scan
    with pytest.raises(ValueError, match="interrupted"):
        model.step(tok[:, 0], st)
    assert_close(model.prefill(tok[:, 20:], saved), model.forward(tok)[:, -1], RTOL_SAME, "copy")


def test_blas_threads_untouched_by_decode(model):
    """Decode-sized GEMMs run on one OpenBLAS thread, and the thread count is put back after
    each of them (NumPy work outside the model keeps its threads). Skipped where NumPy's BLAS
    is not an OpenBLAS we can control."""
    be = model.backend
    if getattr(be, "_blas", None) is None:
        pytest.skip("no controllable OpenBLAS in this NumPy")
    fs, fg = be._blas
    before = int(fg())
    seen = []
    orig = np.matmul

    class Spy:
        def __getattr__(self, k):
            return getattr(np, k)

        @staticmethod
        def matmul(a, b, **kw):
            seen.append(int(fg()))
            return orig(a, b, **kw)
    import samba_ext.backend as bmod
    bmod.np = Spy()
    try:
        st = model.new_state(1)
        model.step([1], st)
        big = be.matmul(np.ones((256, 256), np.float32), np.ones((256, 256), np.float32))
    finally:
        bmod.np = np
    assert int(fg()) == before
    assert seen[:-1] == [1] * (len(seen) - 1) and seen[-1] == before
    np.testing.assert_array_equal(big, 256.0)


def test_device_selection_errors():
    import samba_ext
    from samba_ext.errors import CudaUnavailableError
    with pytest.raises(ValueError, match="device"):
        Samba(_config(), device="tpu")
    if samba_ext.cuda_available():
        pytest.skip("a GPU is present; the CUDA backend's own tests cover device='cuda'")
    with pytest.raises(CudaUnavailableError):
        Samba(_config(), device="cuda")


# ------------------------------------------------------------- states and generation ---
def test_state_from_another_config_is_refused():
    """issue 16.11: equal layer types but window 16 vs 8 -- the state's ring buffers would
    even fit another window's shapes after a copy; the state names the config it was made
    for and the mismatch is reported by field."""
    a = Samba(SambaConfig.preset("samba-test"), seed=0)
    b = Samba(SambaConfig.preset("samba-test", window=8), seed=0)
    c = Samba(SambaConfig.preset("samba-test", rope_base=500.0), seed=0)
    st = a.new_state(1)
    a.prefill(np.arange(20)[None] % 250, st)
    for other, field in ((b, "window"), (c, "rope_base")):
        for call in (lambda m, s: m.step(np.array([1]), s),
                     lambda m, s: m.prefill(np.array([[1, 2]]), s),
                     lambda m, s: m.nll(np.array([[1, 2]]), state=s),
                     lambda m, s: m.generate([1], max_new_tokens=1, state=s)):
            with pytest.raises(TypeError, match=field):
                call(other, st.copy())
    # same architecture, other weights or name: accepted (a state is about the architecture)
    cfg = SambaConfig.preset("samba-test")
    cfg.name = "renamed"
    d = Samba(cfg, seed=1)
    d.step(np.array([1]), st.copy())


class _CountingTokenizer:
    """The byte tokenizer, counting the ids passed to decode()."""

    def __init__(self):
        from samba_ext.tokenizer import ByteTokenizer

        self._t = ByteTokenizer()
        self.vocab_size, self.eos_id, self.bos_id = 259, 256, 257
        self.decoded = 0

    def encode(self, text):
        return self._t.encode(text)

    def decode(self, ids):
        ids = list(ids)
        self.decoded += len(ids)
        return self._t.decode(ids)


@pytest.mark.parametrize("stop", [[], ["zzzzzz"]])
def test_generate_detokenises_incrementally(stop):
    """issue 16.14: the ids decoded per generated token stay bounded (whole-output re-decoding
    made the total quadratic: n(n+1)/2 ids for n tokens). Counted, not timed."""
    m = Samba(SambaConfig.preset("samba-test"), seed=3)
    totals = {}
    for n in (150, 600):
        tok = _CountingTokenizer()
        m.tokenizer = tok
        pieces: list[str] = []
        text = m.generate("Hello", max_new_tokens=n, temperature=1.0, seed=0, stop=stop,
                          stream=pieces.append)
        ids = m.generate(list(b"Hello"), max_new_tokens=n, temperature=1.0, seed=0, stop=stop)
        totals[n] = tok.decoded
        assert len(ids) == n
        assert "".join(pieces) == text == tok._t.decode(ids)   # same text as one decode
    # linear: at most a few ids decoded per token (a multi-byte character may stay pending
    # for up to generation.MAX_PENDING tokens), so 4x the tokens -> ~4x the work, not 16x
    assert totals[600] <= 12 * 600, totals
    assert totals[600] <= 5 * totals[150], totals


def test_generate_incremental_text_edges():
    """Multi-byte characters split across tokens, invalid bytes, and stop strings that
    straddle earlier pieces decode exactly as one decode of the whole output would."""
    from samba_ext.generation import IncrementalText
    from samba_ext.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    data = list("aé€😀b".encode()) + [0xFF, 0x61, 0xE2, 0x82] + list(b"xyz")
    it = IncrementalText(tok)
    for t in data:
        it.push(t)
    it.flush()
    assert it.text == tok.decode(data)
    for stop in ("€😀", "😀b", "xy", "a\ufffd"):
        it = IncrementalText(tok, [stop])
        hit = -1
        for t in data:
            _, hit = it.push(t)
            if hit >= 0:
                break
        full = tok.decode(data)
        assert hit == full.find(stop) and it.text == full[:hit], stop
        kept = tok.decode(it.ids[:it.ids_before(hit)])   # ids kept when the prompt is ids
        # exact for valid UTF-8; an incomplete character just before the stop string is
        # dropped with it
        assert kept == full[:hit] if stop in ("€😀", "😀b") else full[:hit].startswith(kept)


def test_generate_rejects_bad_options(model):
    for kw, what in (({"max_new_tokens": 2.5}, "max_new_tokens"),
                     ({"max_new_tokens": True}, "max_new_tokens"),
                     ({"top_p": 2.0}, "top_p"), ({"top_p": 0.0}, "top_p"),
                     ({"top_k": 0}, "top_k"), ({"temperature": -1.0}, "temperature"),
                     ({"temperature": float("nan")}, "temperature"),
                     ({"seed": -1}, "seed"), ({"seed": 2.5}, "seed"), ({"seed": "x"}, "seed")):
        with pytest.raises(ValueError, match=what):
            model.generate([1, 2], **kw)
    for bad in (300, -1, [5, 1000]):
        with pytest.raises(ValueError, match="stop: token id"):
            model.generate([1, 2], stop=bad)
    with pytest.raises(TypeError, match="stream"):   # before the prefill, not at the 1st token
        model.generate([1, 2], stream=5)
    with pytest.raises(ValueError, match="prompt"):
        model.generate("\udcff")
    with pytest.raises(ValueError, match="seed"):
        Samba(SambaConfig.preset("samba-test"), seed=-1)


# ------------------------------------------------------------------------------ saving ---
def test_save_ignores_a_planted_tmp_symlink(tmp_path):
    """issue 16.6: Samba.save wrote through a fixed '<path>.tmp'; a symlink planted there
    redirected the write to its target."""
    import os

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    path = tmp_path / "m.safetensors"
    os.symlink(victim, str(path) + ".tmp")
    m = Samba(SambaConfig.preset("samba-test"), seed=0)
    m.save(path)
    assert victim.read_text() == "precious"
    assert os.path.islink(str(path) + ".tmp")            # left alone
    back = Samba.load(path)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "m.safetensors.tmp",
                                                          "victim.txt"]   # no temp files left
    st = os.stat(path)
    assert st.st_mode & 0o777 == 0o666 & ~_umask()       # not mkstemp's 0600


def _umask() -> int:
    from samba_ext.atomic import process_umask

    return process_umask()


def _save_rounds(path, seed, barrier, rounds):
    from samba_ext import Samba as S, SambaConfig as C

    m = S(C.preset("samba-tiny"), seed=seed)
    for _ in range(rounds):
        barrier.wait()
        m.save(path)
        barrier.wait()


def test_concurrent_saves_never_mix(tmp_path):
    """issue 16.6: two processes saving different models to one path at the same moment
    (a barrier before every save) leave, after every round, one complete model -- never a
    file that loads but mixes tensors of both."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    path = str(tmp_path / "m.safetensors")
    rounds = 6
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_save_rounds, args=(path, seed, barrier, rounds))
             for seed in (1, 2)]
    for p in procs:
        p.start()
    want = [Samba(SambaConfig.preset("samba-tiny"), seed=s).state_dict() for s in (1, 2)]
    try:
        for _ in range(rounds):
            barrier.wait(timeout=120)      # both save now
            barrier.wait(timeout=120)      # both done
            got = Samba.load(path).state_dict()
            same = [all(np.array_equal(got[k], w[k]) for k in w) for w in want]
            assert any(same), "the saved file mixes the tensors of two models"
    finally:
        for p in procs:
            p.join(timeout=300)
    assert all(p.exitcode == 0 for p in procs)
