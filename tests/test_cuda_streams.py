"""samba_ext.cuda.streams: backends reuse the streams of collected backends (so the per-stream
GEMM workspaces of csrc/cuda/gemm.cu, at most 16 per device, are not used up by a process that
makes many models), and a collected backend's graphs are freed at the next take, never from the
finalizer. The pool logic runs without a GPU against a stand-in for the extension module."""
import gc

import numpy as np
import pytest
from cuda_util import cuda


class _FakeCu:
    def __init__(self, base=1000):
        self.base, self.made, self.freed = base, 0, []

    def stream_create(self):
        self.made += 1
        return self.base + self.made

    def graph_free(self, g):
        self.freed.append(g)


@pytest.fixture
def pool(monkeypatch):
    import collections

    from samba_ext.cuda import streams

    monkeypatch.setattr(streams, "_FREE", {})
    monkeypatch.setattr(streams, "_GRAPHS", collections.deque())
    return streams


def test_take_reuses_given_back_streams_per_device(pool):
    cu = _FakeCu()
    a, b = pool.take(cu, 0), pool.take(cu, 0)
    assert (a, b, cu.made) == (1001, 1002, 2)
    pool.give_back(cu, 0, [a], [])
    assert pool.pooled(cu, 0) == [a] and pool.pooled(cu, 1) == []
    assert pool.take(cu, 1) == 1003                  # another device: a new stream
    assert pool.take(cu, 0) == a and cu.made == 3    # device 0: the one given back
    assert pool.pooled(cu, 0) == []


def test_graphs_are_freed_at_the_next_take_not_in_give_back(pool):
    cu = _FakeCu()
    s = pool.take(cu, 0)
    pool.give_back(cu, 0, [s], [7, 8])
    assert cu.freed == []                            # the finalizer makes no CUDA call
    pool.take(cu, 0)
    assert cu.freed == [7, 8]
    pool.take(cu, 0)
    assert cu.freed == [7, 8]                        # each graph freed once


def test_two_modules_never_see_each_others_handles(pool):
    """A test's stand-in module and the real one in one process: a stream or graph made by
    one is never handed to, or freed by, the other."""
    real, fake = _FakeCu(1000), _FakeCu(5000)
    s = pool.take(fake, 0)
    pool.give_back(fake, 0, [s], [99])
    r = pool.take(real, 0)
    assert r == 1001 and real.freed == [] and fake.freed == []
    assert pool.take(fake, 0) == s and fake.freed == [99]


def test_a_finalizer_inside_take_is_safe(pool):
    """Garbage collection may run a backend's finalizer in the middle of take (any allocation
    can start it): give_back then runs inside take, and nothing is lost or blocks."""
    class Reentrant(_FakeCu):
        def graph_free(self, g):
            super().graph_free(g)
            pool.give_back(self, 0, [4242], [g + 100])   # as a finalizer would, mid-take

    re_cu = Reentrant()
    pool.give_back(re_cu, 0, [], [1])
    assert pool.take(re_cu, 0) == 4242
    assert re_cu.freed == [1]
    assert list(pool._GRAPHS) == [(re_cu, 101)]      # queued for the next take
    pool.take(re_cu, 0)
    assert 101 in re_cu.freed


@cuda
def test_backends_made_one_after_another_share_streams():
    """Twenty backends, each dropped before the next is made, each running a product: they
    run on the streams of the dropped ones, not on twenty new streams."""
    from samba_ext.backend_cuda import CUDABackend
    from samba_ext.cuda import streams

    gc.collect()
    seen = set()
    rng = np.random.default_rng(0)
    a, w = rng.standard_normal((1, 64)), rng.standard_normal((96, 64))
    for _ in range(20):
        be = CUDABackend(graphs=False, act_dtype="float32", weight_dtype="float32")
        be_cu = be.cu
        seen.add(be.stream)
        y = be.to_numpy(be.matmul(be.asarray(a), be.asarray(w), trans_b=True))
        np.testing.assert_allclose(y, a @ w.T, rtol=1e-4, atol=1e-4)
        del be
        gc.collect()
    assert len(seen) <= 2, seen
    assert streams.pooled(be_cu, 0), "a collected backend gives its stream back"


@cuda
def test_a_collected_backends_graphs_are_freed():
    """A model decoding with graphs, then dropped: its graphs wait in the pool until the next
    backend is made, which frees them."""
    from samba_ext.backend_cuda import CUDABackend
    from samba_ext.config import SambaConfig
    from samba_ext.cuda import streams
    from samba_ext.model import Samba

    gc.collect()
    be = CUDABackend(act_dtype="bfloat16", weight_dtype="bfloat16", graphs=True)
    m = Samba(SambaConfig.preset("samba-test"), seed=1, device=be)
    st = m.new_state(1)
    m.prefill(np.array([[1, 2, 3]]), st)
    for t in range(4):
        m.step(np.array([t + 4]), st)
    n, cu = len(be._graphs), be.cu
    assert n >= 1
    del m, st, be
    gc.collect()
    assert len(streams._GRAPHS) >= n
    CUDABackend(graphs=False)
    assert not [g for owner, g in streams._GRAPHS if owner is cu]
