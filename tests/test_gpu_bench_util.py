"""benchmarks/gpu_bench_util.py without a GPU: the relative difference and the commit."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import gpu_bench_util as gb  # noqa: E402


class _HasToNumpy:
    def __init__(self, a):
        self.a = a

    def to_numpy(self):
        return self.a


def test_rel_is_the_relative_norm_difference():
    rng = np.random.default_rng(0)
    b = rng.standard_normal((7, 5))
    a = b + 1e-3 * rng.standard_normal((7, 5))
    want = np.linalg.norm(a - b) / np.linalg.norm(b)
    assert gb.rel(a, b) == pytest.approx(want, rel=1e-12)
    assert gb.rel(_HasToNumpy(a.astype(np.float32)), b) == pytest.approx(want, rel=1e-3)
    assert gb.rel(b, b) == 0.0


def test_rel_of_a_zero_reference_is_finite_and_nan_shows():
    assert gb.rel(np.ones(3), np.zeros(3)) > 1e29
    assert np.isnan(gb.rel(np.array([np.nan, 1.0]), np.ones(2)))


def test_git_commit_prefers_the_given_one():
    assert gb.git_commit("abc1234") == "abc1234"
    assert isinstance(gb.git_commit(None), str)
