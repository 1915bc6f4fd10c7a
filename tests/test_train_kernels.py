"""The training model's two kernel paths agree (training/model_torch.py, ``kernels=``).

"samba_ext" runs samba_ext.torch's causal_conv1d_fn, selective_scan_fn and flash_attn_func
(window_size=(window-1, 0)); "torch" runs the model file's own scans and attention. On CPU
float32 tensors both compute in float32, so the forward loss, every parameter gradient and a
few AdamW steps from one seed must agree to float32 rounding. Each path is checked against
float64 references elsewhere (tests/test_train_smoke.py for the torch path,
tests/test_grad_torch.py for the ops). Skipped without torch.
"""

from __future__ import annotations

import json
import math
import os
import sys

import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "training"))
import model_torch as mt  # noqa: E402
import train  # noqa: E402

from conftest import assert_close  # noqa: E402

if mt.default_kernels() != "samba_ext":
    pytest.skip("samba_ext.torch does not import (extension not built)", allow_module_level=True)

# float32 on both paths, different summation orders (blocked C kernels vs torch reductions) through
# 4 blocks: observed relative-norm differences ~1e-6 on the loss and the gradients; 2e-5 is ~10x that
# and well below what a window one key too wide gives (1.5e-4 on the loss, 0.7 on a gradient).
RTOL = 2e-5


def _loss_and_grads(model, kernels, tok, kind, dt_scale=None, decay_only=False):
    model.set_kernels(kernels)
    model.zero_grad(set_to_none=True)
    loss, _, _, _ = train.forward_loss(model, tok, kind, 0.25, False, dt_scale, decay_only)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _config(name, n_kv_head=None):
    cfg = mt.make_config(name, d_model=32, n_layer=4, window=8)
    if n_kv_head is not None:  # grouped-query attention: 4 query heads over n_kv_head key/value heads
        cfg["n_kv_head"] = n_kv_head
    return cfg


DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "name,n_kv_head,aug",
    [
        ("samba-tiny", None, None),
        ("samba-tiny", 2, None),
        ("samba-tiny", None, "all"),
        ("samba-tiny", None, "decay"),
        ("llama-tiny", 1, None),
    ],
)
def test_kernel_paths_same_loss_and_gradients(name, n_kv_head, aug, device):
    """Odd length 37 with window 8 < L (banded attention), batch 2; the dt dilation in both modes.
    float32 without autocast on either device (on CUDA the torch path is scan_chunked, exact here:
    k * dt * A >= 2.5 * 0.1 * -16 = -4 stays above its log-decay floor of -5)."""
    torch.manual_seed(0)
    model = mt.TorchSamba(_config(name, n_kv_head), kernels="torch").to(device)
    g = torch.Generator().manual_seed(1)
    tok = torch.randint(0, 256, (2, 37), generator=g).to(device)
    kind = torch.randint(1, 3, (2, 37), generator=g).to(device)
    dt_scale = None if aug is None else torch.tensor([1.0, 2.5], device=device)
    ref_loss, ref_g = _loss_and_grads(model, "torch", tok, kind, dt_scale, aug == "decay")
    loss, grads = _loss_and_grads(model, "samba_ext", tok, kind, dt_scale, aug == "decay")
    assert_close(loss.cpu().numpy(), ref_loss.cpu().numpy(), RTOL, "loss")
    for n, r in ref_g.items():
        assert_close(grads[n].cpu().numpy(), r.cpu().numpy(), RTOL, f"d loss / d {n}")
    if aug is not None:  # the dilation changes the function (it is not ignored by either path)
        _, plain = _loss_and_grads(model, "samba_ext", tok, kind)
        key = "transformer.h.0.attn.dt_proj.bias"
        assert float((plain[key] - grads[key]).norm() / grads[key].norm()) > 100 * RTOL


def test_kernel_path_cached_attention_and_state_handover():
    """Chunk-by-chunk inference on the samba_ext path (the first chunk's Mamba state comes from
    selective_scan_fn, later chunks attend over a KV cache with flash_attn_func, bottom-right
    aligned) equals one full forward on the exact torch path."""
    torch.manual_seed(0)
    model = mt.TorchSamba(_config("samba-tiny", 2), kernels="torch").eval()
    tok = torch.randint(0, 256, (2, 45))
    with torch.no_grad():
        full = model(tok, exact=True)
        model.set_kernels("samba_ext")
        parts, st, pos = [], None, 0
        for c in (13, 1, 20, 11):
            o, st = model(tok[:, pos : pos + c], state=st, pos0=pos, return_state=True)
            parts.append(o)
            pos += c
    assert_close(torch.cat(parts, 1).numpy(), full.numpy(), RTOL, "chunked logits")


def test_training_steps_same_losses(tmp_path):
    """train.py --kernels samba_ext and --kernels torch from one seed: the same losses over 4 AdamW
    steps (the same batches; the updates differ only by float32 rounding, which Adam's per-element
    normalisation can amplify for near-zero gradients, hence the looser bound on later steps)."""
    common = [
        *("--model", "samba-tiny", "--device", "cpu", "--tokens-per-step", "320", "--max-len", "320"),
        *("--text-bytes", "200000", "--threads", "1", "--log-every", "1", "--steps", "4", "--window", "64"),
    ]
    logs = {}
    for k in mt.KERNELS:
        res = train.main([*common, "--kernels", k, "--out", str(tmp_path / f"{k}.safetensors")])
        logs[k] = [r["loss"] for r in res["log"]]
    assert len(logs["torch"]) == 4 and all(math.isfinite(v) for v in logs["torch"])
    # losses are logged rounded to 4 decimals; step 1 is before any update
    assert abs(logs["samba_ext"][0] - logs["torch"][0]) <= 2e-4
    for a, b in zip(logs["samba_ext"], logs["torch"]):
        assert abs(a - b) <= 1e-3 * max(1.0, abs(b)), (logs["samba_ext"], logs["torch"])


def test_kernel_choice_is_checked():
    with pytest.raises(ValueError, match="kernels"):
        mt.check_kernels("triton")
    with pytest.raises(SystemExit):
        train.parse_args(["--model", "samba-tiny", "--out", "x", "--kernels", "triton"])
    assert train.parse_args(["--model", "samba-tiny", "--out", "x", "--kernels", "torch"]).kernels == "torch"


def test_train_kernels_benchmark_cpu(tmp_path):
    """benchmarks/train_kernels.py's logic on a few CPU steps: both runs complete on the same batches,
    the curves agree (float32 on the CPU), and the JSON / Markdown results are written; a budget too
    small for the estimate stops the runs with a note instead."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    import train_kernels as tk

    small = ["--device", "cpu", "--batch", "2", "--seq-len", "40", "--d-model", "32", "--window", "16"]
    res = tk.main([*small, "--steps", "12", "--threads", "1", "--out-dir", str(tmp_path)])
    s = res["summary"]
    assert set(s["runs"]) == {"torch", "samba_ext"} and all(r["steps"] == 12 for r in s["runs"].values())
    assert s["compare"]["max_abs_diff_ma50"] <= 1e-3 and abs(s["compare"]["final_loss_diff"]) <= 1e-3
    saved = json.loads((tmp_path / "train_kernels.json").read_text())
    assert saved["summary"] == s and saved["device"].startswith("CPU")
    assert "step time torch / samba_ext" in (tmp_path / "train_kernels.md").read_text()
    res = tk.main([*small, "--steps", "40", "--budget-s", "0.001", "--out-dir", str(tmp_path)])
    assert res["summary"]["runs"]["torch"]["stopped"].startswith("stopped at step 20")
    assert "samba_ext" not in res["summary"]["runs"] and res["summary"]["compare"] is None
