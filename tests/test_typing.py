"""Typing of the public kernel API: numpy.typing annotations, the py.typed marker, and text
signatures on the C functions (inspect.signature works on samba_ext._core)."""
from __future__ import annotations

import inspect
import typing
from pathlib import Path

import pytest

import samba_ext
from samba_ext import _core, kernels

OPS = ["selective_scan", "selective_state_update", "causal_conv1d", "causal_conv1d_update",
       "swa_attention", "swa_decode", "rms_norm", "apply_rotary", "swiglu"]


def test_py_typed_marker_is_shipped():
    pkg = Path(samba_ext.__file__).parent
    assert (pkg / "py.typed").is_file()
    pyproject = (pkg.parent / "pyproject.toml").read_text()
    assert '"py.typed"' in pyproject


@pytest.mark.parametrize("name", OPS)
def test_kernel_functions_are_annotated(name):
    fn = getattr(kernels, name)
    hints = typing.get_type_hints(fn)
    params = [p for p in inspect.signature(fn).parameters if p not in ("self",)]
    assert set(params) <= set(hints), f"unannotated: {set(params) - set(hints)}"
    assert "return" in hints
    # the array arguments use numpy.typing (ArrayLike), not a bare Any
    first = params[0]
    assert "numpy" in repr(hints[first]) or "ArrayLike" in repr(hints[first]), hints[first]
    assert hints["return"] is not typing.Any


@pytest.mark.parametrize("name,params", [
    ("selective_scan", ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "delta_softplus",
                        "initial_state", "return_last_state"]),
    ("selective_state_update", ["state", "x", "dt", "A", "B", "C", "D", "z", "dt_bias",
                                "dt_softplus"]),
    ("causal_conv1d", ["x", "weight", "bias", "activation", "initial_states",
                       "return_final_states"]),
    ("causal_conv1d_update", ["x", "conv_state", "weight", "bias", "activation"]),
    ("swa_attention", ["q", "k", "v", "window", "softmax_scale"]),
    ("swa_decode", ["q", "k_cache", "v_cache", "pos", "n_valid", "softmax_scale"]),
    ("rms_norm", ["x", "weight", "eps", "residual"]),
    ("apply_rotary", ["x", "positions", "base"]),
    ("swiglu", ["gate", "up"]),
    ("set_num_threads", ["n"]),
    ("get_num_threads", []),
    ("build_info", []),
])
def test_core_functions_have_text_signatures(name, params):
    sig = inspect.signature(getattr(_core, name))
    assert list(sig.parameters) == params


def test_core_keyword_defaults_match_the_public_api():
    """Where the C function takes keywords, its signature shows the public defaults."""
    for name in ("causal_conv1d", "swa_attention", "rms_norm", "apply_rotary"):
        core = inspect.signature(getattr(_core, name)).parameters
        pub = inspect.signature(getattr(kernels, name)).parameters
        for p, v in core.items():
            if v.default is not inspect.Parameter.empty:
                assert pub[p].default == v.default, (name, p)


def test_cuda_functions_have_text_signatures():
    cu = pytest.importorskip("samba_ext._cuda")
    assert list(inspect.signature(cu.stream_wait).parameters) == ["waiter", "producer"]
    assert list(inspect.signature(cu.device_info).parameters) == ["device"]
    gemm = inspect.signature(cu.gemm).parameters
    assert list(gemm) == ["M", "N", "K", "x", "ldx", "w", "ldw", "y", "ldy", "beta", "stream"]
    for name in ("selective_scan", "swa_attention", "swa_decode", "rms_norm", "swiglu"):
        assert "stream" in inspect.signature(getattr(cu, name)).parameters


def test_generate_states_its_return_type():
    from samba_ext.model import Samba

    ret = typing.get_type_hints(Samba.generate)["return"]
    assert set(typing.get_args(ret)) == {str, list[int], list[list[int]]}
