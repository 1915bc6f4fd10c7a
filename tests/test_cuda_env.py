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


# the value literals each C file compares its knob with (strcmp(v, "...")): every one must be
# accepted here, or a value the kernels understand would be refused before the first call
C_KNOBS = {"SAMBA_EXT_SCAN_VARIANT": "csrc/cuda/scan.cu", "SAMBA_EXT_GEMM": "csrc/cuda/gemm.cu",
           "SAMBA_EXT_GEMV": "csrc/cuda/gemv.cu"}


@pytest.mark.parametrize("name", sorted(C_KNOBS))
def test_every_value_the_c_side_reads_is_accepted(name):
    src = Path(__file__).resolve().parents[1] / C_KNOBS[name]
    if not src.exists():
        pytest.skip("csrc/ is not next to the tests (installed package)")
    text = src.read_text()
    assert f'getenv("{name}")' in text
    read = set(re.findall(r'strcmp\(v, "([^"]+)"\)', text))
    assert read, f"no strcmp(v, ...) in {src.name}"
    assert read <= set(runtime.ENV_CHOICES[name]), read - set(runtime.ENV_CHOICES[name])
