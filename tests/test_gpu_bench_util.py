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


class _FakeCuda:
    """torch.cuda stand-in whose events read a clock that the timed functions advance."""

    def __init__(self):
        self.now = 0.0
        clock = self

        class Event:
            def __init__(self, enable_timing=False):
                self.t = None

            def record(self):
                self.t = clock.now

            def synchronize(self):
                pass

            def elapsed_time(self, end):
                return end.t - self.t

        self.Event = Event

    def synchronize(self):
        pass


def _drifting(fake, log, name):
    # one call costs 1 ms, plus 1% of the time elapsed so far: a machine slowing down
    def fn():
        log.append(name)
        fake.now += 1.0 + 0.01 * fake.now
    return fn


def test_median_ms_rounds_interleaves_so_a_drift_weighs_alike(monkeypatch):
    import types
    fake = _FakeCuda()
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=fake))
    log, selected = [], []
    fns = {"a": _drifting(fake, log, "a"), "b": _drifting(fake, log, "b")}
    ms = gb.median_ms_rounds(fns, warmup=1, reps=9, calls=2, before=selected.append)
    # warm-up of each, then rounds of (a, a, b, b): every sample of one follows one of the other
    assert log[:2] == ["a", "b"]
    assert log[2:] == ["a", "a", "b", "b"] * 9
    assert selected == ["a", "b"] + ["a", "b"] * 9
    # the same function, the same drift: equal within one sample's share of the drift
    assert ms["a"] == pytest.approx(ms["b"], rel=0.05)
    # timed one after the other instead, the second would look slower by the whole block's drift
    fake.now = 0.0
    seq_a = gb.median_ms(fns["a"], warmup=1, reps=9, calls=2)
    seq_b = gb.median_ms(fns["b"], warmup=1, reps=9, calls=2)
    assert seq_b > 1.15 * seq_a


def test_write_marked_keeps_the_notes_around_the_block(tmp_path):
    p = str(tmp_path / "r.md")
    t1 = gb.write_marked(p, "x.py", "| a |")  # a new file: just the block
    assert t1 == "<!-- x.py: begin -->\n| a |\n<!-- x.py: end -->\n"
    with open(p, "a") as f:
        f.write("\n## Notes\nby hand\n")
    with open(p) as f:
        text = f.read()
    with open(p, "w") as f:
        f.write("# Title\n\n" + text)
    t2 = gb.write_marked(p, "x.py", "| b |\n")
    assert t2 == "# Title\n\n<!-- x.py: begin -->\n| b |\n<!-- x.py: end -->\n\n## Notes\nby hand\n"
    assert gb.write_marked(p, "other.py", "c").startswith(t2)  # another script's block: appended
    q = str(tmp_path / "plain.md")
    with open(q, "w") as f:
        f.write("old notes")  # no markers: kept, the block goes after them
    assert gb.write_marked(q, "x.py", "d") == "old notes\n<!-- x.py: begin -->\nd\n<!-- x.py: end -->\n"
