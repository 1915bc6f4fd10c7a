"""The CUDA tuning knobs read by the C side are checked in Python (no GPU needed)."""
from __future__ import annotations

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
