"""samba_ext.cuda.call.checker_hint (no GPU needed): a CUDA wrapper's memory-safety error points
to samba_ext.NAME for the full explanation only where that public function exists; the
CUDA-only compositions (matmul, rms_norm_linear, rotary_write_kv, ...) check everything
themselves and name no other function."""
from __future__ import annotations

import pytest

from samba_ext.cuda.call import checker_hint


@pytest.mark.parametrize("name", ["selective_scan", "selective_state_update", "swa_attention",
                                  "causal_conv1d", "rms_norm", "grad.selective_scan_bwd",
                                  "grad.causal_conv1d_bwd", "grad.rms_norm_bwd",
                                  "grad.swiglu_bwd", "grad.apply_rotary_bwd",
                                  "grad.attention_fwd", "grad.attention_bwd"])
def test_public_ops_are_named(name):
    import importlib

    assert checker_hint(name) == f"; samba_ext.{name} checks the arguments and explains"
    mod, _, attr = ("samba_ext." + name).rpartition(".")
    assert callable(getattr(importlib.import_module(mod), attr))


@pytest.mark.parametrize("name", ["matmul", "linear", "rms_norm_linear", "swiglu_linear",
                                  "rotary_write_kv", "no.such.module.op"])
def test_cuda_only_compositions_name_no_other_function(name):
    assert checker_hint(name) == ""
