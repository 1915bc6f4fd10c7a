"""The L2 prefetch of a recorded decode step (csrc/cuda/l2_prefetch.cu, samba_ext/cuda/prefetch.py)
on the GPU: the kernels read only, bad arguments raise, and a decode with the prefetch branch in
its graphs gives bit for bit the logits of one without (it changes when bytes arrive in L2,
never what is computed)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from cuda_util import needs_cuda

from samba_ext.config import SambaConfig
from samba_ext.model import Samba

pytestmark = needs_cuda


@pytest.mark.parametrize("how", [1, 2])
@pytest.mark.parametrize("offset,nbytes", [(0, 3 << 20), (6, 1000003), (4096 + 2, 17), (0, 0)])
def test_prefetch_reads_only(rng, how, offset, nbytes):
    from samba_ext.cuda import runtime

    cu = runtime.require()
    host = rng.integers(0, 256, (4 << 20) + 64, dtype=np.uint8)
    buf = cu.Buffer(host.size, 0, 0)
    cu.memcpy_h2d(buf.ptr, host, 0)
    sms = int(cu.device_info(0)["multiprocessors"])
    cu.l2_prefetch(buf.ptr + offset, nbytes, how, sms, 0)
    cu.stream_sync(0)
    back = np.empty_like(host)
    cu.memcpy_d2h(back, buf.ptr, 0)
    np.testing.assert_array_equal(back, host)


@pytest.mark.parametrize("args", [(-1, 1, 8), (16, 3, 8), (16, 0, 8), (16, 1, 0)])
def test_prefetch_bad_arguments_raise(args):
    from samba_ext.cuda import runtime

    cu = runtime.require()
    buf = cu.Buffer(64, 0, 0)
    n, how, sms = args
    with pytest.raises(ValueError, match="l2_prefetch"):
        cu.l2_prefetch(buf.ptr, n, how, sms, 0)


@pytest.mark.parametrize("how", ["bulk", "touch"])
@pytest.mark.parametrize("wd,ad", [("float32", "float32"), ("bfloat16", "bfloat16")])
def test_decode_with_prefetch_matches_without_bitwise(rng, monkeypatch, how, wd, ad):
    from samba_ext.backend_cuda import CUDABackend
    from samba_ext.cuda import prefetch, runtime

    cu = runtime.require()
    issued = []
    real = cu.l2_prefetch

    def counting(*a):
        issued.append(a[1])
        return real(*a)

    monkeypatch.setattr(cu, "l2_prefetch", counting)
    # the test model's weights are a few kB: prefetch every GEMM operand, fork after each GEMM
    monkeypatch.setattr(prefetch, "MIN_BYTES", 1)
    monkeypatch.setattr(prefetch, "SMALL_BYTES", 0)
    cfg = dataclasses.replace(SambaConfig.preset("samba-test"),
                              layer_types=("mamba", "swa", "attn", "mamba"))
    toks = rng.integers(0, cfg.vocab_size, (3, 24))
    out = {}
    for mode in ("0", how):
        monkeypatch.setenv("SAMBA_EXT_L2_PREFETCH", mode)
        m = Samba(cfg, seed=21, device=CUDABackend(weight_dtype=wd, act_dtype=ad))
        st = m.new_state(3)
        logits = [m.prefill(toks[:, :5], st)]
        logits += [m.step(toks[:, t], st) for t in range(5, 24)]
        assert m.backend.stats["captures"] >= 1 and m.backend.stats["replays"] >= 10
        out[mode] = np.stack(logits)
        assert np.all(np.isfinite(out[mode]))
        if mode == "0":
            assert not issued, "no prefetch without the setting"
    assert issued, "the captured step issued no prefetch"
    np.testing.assert_array_equal(out[how], out["0"])
