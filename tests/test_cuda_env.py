"""The CUDA tuning knobs read by the C side are checked in Python (no GPU needed)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from samba_ext.cuda import runtime


@pytest.mark.parametrize("name", sorted(runtime.ENV_CHOICES))
def test_known_values_and_unset_pass(monkeypatch, name):
    monkeypatch.delenv(name, raising=False)
    runtime.check_env()
    monkeypatch.setenv(name, "")
    runtime.check_env()
    for v in runtime.ENV_CHOICES[name]:
        monkeypatch.setenv(name, v)
        runtime.check_env()


@pytest.mark.parametrize("name", sorted(runtime.ENV_CHOICES))
def test_typo_is_refused_naming_the_variable(monkeypatch, name):
    monkeypatch.setenv(name, runtime.ENV_CHOICES[name][-1].upper() + "x")
    with pytest.raises(ValueError, match=name):
        runtime.check_env()


# the value literals each C file compares its knobs with (strcmp(v, "...")): every one must be
# accepted by one of the knobs that file reads, or a value the kernels understand would be
# refused before the first call
C_KNOBS = {"csrc/cuda/scan.cu": ("SAMBA_EXT_SCAN_VARIANT",), "csrc/cuda/gemm.cu": ("SAMBA_EXT_GEMM",),
           "csrc/cuda/scan_bwd.cu": ("SAMBA_EXT_SCAN_BWD_VARIANT", "SAMBA_EXT_SCAN_BWD_OCC"),
           "csrc/cuda/gemv.cu": ("SAMBA_EXT_GEMV", "SAMBA_EXT_GEMV_ROWS", "SAMBA_EXT_GEMV_FUSE"),
           "csrc/cuda/attention_bwd_order.cu": ("SAMBA_EXT_ATTN_BWD_ORDER",)}


@pytest.mark.parametrize("path", sorted(C_KNOBS))
def test_every_value_the_c_side_reads_is_accepted(path):
    src = Path(__file__).resolve().parents[1] / path
    if not src.exists():
        pytest.skip("csrc/ is not next to the tests (installed package)")
    text = src.read_text()
    for name in C_KNOBS[path]:
        assert f'getenv("{name}")' in text, name
    read = set(re.findall(r'strcmp\(v, "([^"]+)"\)', text))
    assert read, f"no strcmp(v, ...) in {src.name}"
    known = {v for name in C_KNOBS[path] for v in runtime.ENV_CHOICES[name]}
    assert read <= known, read - known


def test_every_knob_read_in_csrc_is_checked():
    """Each SAMBA_EXT_* variable that a file of C_KNOBS reads is one of that file's knobs."""
    root = Path(__file__).resolve().parents[1]
    for path, names in C_KNOBS.items():
        src = root / path
        if not src.exists():
            pytest.skip("csrc/ is not next to the tests (installed package)")
        read = set(re.findall(r'getenv\("(SAMBA_EXT_[A-Z0-9_]+)"\)', src.read_text()))
        assert read <= set(names), (path, read - set(names))


@pytest.mark.parametrize("name", sorted(runtime.ENV_INTS))
def test_integer_knobs(monkeypatch, name):
    """Whole numbers from the knob's minimum pass; text the C side would read as another
    number or as its default is refused, naming the variable."""
    least = runtime.ENV_INTS[name]
    for v in ("", str(least), "16", "4096"):
        monkeypatch.setenv(name, v)
        runtime.check_env()
    for v in ("8x", "eight", "-1", "1.5", " 4", str(least - 1), str(2**31), "\u0663"):
        monkeypatch.setenv(name, v)
        with pytest.raises(ValueError, match=name):
            runtime.check_env()


# the integer / choice knobs each C file reads with its own helper (env_int, sbwd_env)
INT_READERS = {"csrc/cuda/scan.cu": "env_int", "csrc/cuda/scan_bwd.cu": "sbwd_env"}


@pytest.mark.parametrize("path", sorted(INT_READERS))
def test_every_numeric_knob_read_in_csrc_is_checked(path):
    src = Path(__file__).resolve().parents[1] / path
    if not src.exists():
        pytest.skip("csrc/ is not next to the tests (installed package)")
    read = set(re.findall(INT_READERS[path] + r'\("(SAMBA_EXT_[A-Z0-9_]+)"', src.read_text()))
    assert read, f"no {INT_READERS[path]}(...) in {src.name}"
    known = set(runtime.ENV_CHOICES) | set(runtime.ENV_INTS)
    assert read <= known, read - known


def test_attention_generations_are_those_the_c_side_reads():
    """csrc/cuda/attention.cu's variant_from_env compares SAMBA_EXT_ATTN_PREFILL / _DECODE with
    these literals (anything else there was a warning and auto); here they are the choices."""
    src = Path(__file__).resolve().parents[1] / "csrc/cuda/attention.cu"
    if not src.exists():
        pytest.skip("csrc/ is not next to the tests (installed package)")
    text = src.read_text()
    body = text[text.index("static int variant_from_env"):text.index("extern \"C\" int samba_cu_attn_variant")]
    read = set(re.findall(r'strcmp\(s, "([^"]+)"\)', body))
    assert read == set(runtime.ENV_CHOICES["SAMBA_EXT_ATTN_PREFILL"])
    assert set(runtime.ENV_CHOICES["SAMBA_EXT_ATTN_DECODE"]) <= read
