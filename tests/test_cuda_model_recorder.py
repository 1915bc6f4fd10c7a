"""Host-side logic of the CUDA decode recorder (samba_ext/backend_cuda.py), on any machine.

The recorder defers a decode step's launches (to capture them into a CUDA graph) while
index uploads run at once. Its memory handling is host logic, so these tests run it over a
stand-in for the ``_cuda`` extension: device memory is a NumPy byte array, the allocator
hands a freed block back to the next request of its size class first (as the CUDA
stream-ordered pool does), kernels are NumPy versions of the copy kernel, and an access
outside every block ever allocated raises like an illegal memory access. They guard the
batch-size-change fault: a step that overflows the arena used to let its temporaries go back
to the pool before its deferred launches ran, so a later index upload of the same step could
land in a block an earlier deferred kernel still writes (wrong rows, or float bits read as
indices); and a cache replaced during a step (full attention growing) was freed before the
deferred copy of its rows ran. The GPU versions of these checks are in
tests/test_model_cuda.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from samba_ext.cuda import runtime as _rt

_BASE = 1 << 20          # first fake device address (never 0: NULL means "absent")
_CLASS = 4096            # allocation size class: small blocks share one, so reuse happens


class _FakeBuffer:
    def __init__(self, cu: _FakeCu, nbytes: int, device: int = 0, stream: int = 0,
                 keep=None) -> None:
        self.cu = cu
        self.nbytes = int(nbytes)
        self.ptr = cu._malloc(self.nbytes) if nbytes else 0
        self.stream = stream
        self.keep = keep

    def __del__(self) -> None:
        if self.ptr:
            self.cu._free(self.ptr, self.nbytes)
            self.ptr = 0


class _FakeCu:
    """The few entry points of samba_ext._cuda that the backend's step path uses."""

    def __init__(self, nbytes: int = 64 << 20) -> None:
        self.mem = np.zeros(nbytes, dtype=np.uint8)
        self.top = _BASE
        self.free: dict[int, list[int]] = {}
        self.capturing: list | None = None
        self.graphs: dict[int, list] = {}
        self.Buffer = lambda n, device=0, stream=0, keep=None: _FakeBuffer(
            self, n, device, stream, keep)

    # -- allocator (LIFO reuse within a size class, like a caching pool) ---------------
    def _malloc(self, n: int) -> int:
        cls = -(-n // _CLASS)
        lst = self.free.get(cls)
        if lst:
            return lst.pop()
        p = self.top
        self.top += cls * _CLASS
        assert self.top - _BASE <= self.mem.size, "fake device memory exhausted"
        return p

    def _free(self, p: int, n: int) -> None:
        self.free.setdefault(-(-n // _CLASS), []).append(p)

    def _check(self, addr: np.ndarray, item: int) -> np.ndarray:
        a = np.asarray(addr, dtype=np.int64)
        if a.size and (a.min() < _BASE or a.max() + item > self.top):
            raise RuntimeError("an illegal memory access was encountered (fake device)")
        return a - _BASE

    def _view(self, code: int) -> tuple[np.ndarray, int]:
        dt = {0: np.float32, 4: np.int64}[code]
        return self.mem.view(dt), np.dtype(dt).itemsize

    # -- runtime ------------------------------------------------------------------------
    def device_count(self) -> int:
        return 1

    def set_device(self, i: int) -> None:
        pass

    def get_device(self) -> int:
        return 0

    def exchange_device(self, i: int) -> int:
        return 0

    def restore_device(self, i: int) -> None:
        pass

    def stream_create(self) -> int:
        return 7

    def stream_wait(self, a, b) -> None:
        pass

    def stream_sync(self, s) -> None:
        pass

    def memcpy_h2d(self, ptr: int, src: np.ndarray, stream: int) -> None:
        b = np.asarray(src).view(np.uint8).reshape(-1)
        off = self._check(np.array([ptr]), b.size)[0]
        self.mem[off:off + b.size] = b

    def memcpy_d2h(self, dst: np.ndarray, ptr: int, stream: int) -> None:
        flat = dst.reshape(-1).view(np.uint8)
        off = self._check(np.array([ptr]), flat.size)[0]
        flat[:] = self.mem[off:off + flat.size]

    def memset(self, ptr: int, value: int, n: int, stream: int) -> None:
        if self.capturing is not None:
            self.capturing.append((self.memset, (ptr, value, n, stream)))
            return
        off = self._check(np.array([ptr]), n)[0]
        self.mem[off:off + n] = value

    # -- graphs: capture records the launches, launch replays them ----------------------
    def graph_begin(self, stream: int) -> None:
        self.capturing = []

    def graph_end(self, stream: int) -> int:
        g, self.capturing = self.capturing, None
        h = len(self.graphs) + 1
        self.graphs[h] = g
        return h

    def graph_launch(self, h: int, stream: int) -> None:
        for fn, args in self.graphs[h]:
            fn(*args)

    def graph_free(self, h: int) -> None:
        self.graphs.pop(h, None)

    def flush_frees(self) -> int:
        return 0  # the fake frees at once, also during a capture

    # -- the strided / gather / scatter copy kernel ---------------------------------------
    def copy(self, shape, src, sst, dst, dstt, axis, sidx, didx, batched, stream) -> None:
        if self.capturing is not None:
            self.capturing.append((self.copy, (shape, src, sst, dst, dstt, axis, sidx, didx,
                                               batched, stream)))
            return
        shape = tuple(int(s) for s in shape)
        if int(np.prod(shape)) == 0:
            return
        idx = np.indices(shape).reshape(len(shape), -1)
        soff = np.zeros(idx.shape[1], np.int64)
        doff = np.zeros(idx.shape[1], np.int64)
        ax = axis if (sidx or didx) else -1
        for d in range(len(shape)):
            if d != ax:
                soff += idx[d] * sst[d]
                doff += idx[d] * dstt[d]
        if ax >= 0:
            key = idx[0] if batched else idx[ax]

            def lookup(ref):
                if ref is None:
                    return idx[ax]
                v, item = self._view(ref[1])
                off = self._check(ref[0] + key * item, item)
                return v[off // item]
            soff += lookup(sidx) * sst[ax]
            doff += lookup(didx) * dstt[ax]
        sv, si = self._view(src[1])
        dv, di = self._view(dst[1])
        s_at = self._check(src[0] + soff * si, si) // si
        d_at = self._check(dst[0] + doff * di, di) // di
        dv[d_at] = sv[s_at].astype(dv.dtype)


@pytest.fixture
def fake_backend(monkeypatch):
    from samba_ext.backend_cuda import CUDABackend

    cu = _FakeCu()
    monkeypatch.setattr(_rt, "_cuda_mod", cu)
    monkeypatch.setattr(_rt, "_recorder", None)
    return CUDABackend(weight_dtype="float32")


def _step(be, table, i1, i2, i3):
    """A decode-like step: gathers (index uploads run at once, kernels are deferred),
    a float temporary that dies mid-step, and a gather through indices uploaded after it."""
    be.begin_step()
    a = be.take(table, i1, 0)            # (B, D) rows of the table
    t = be.transpose(a)                  # (D, B) float temporary, dropped below
    del t
    b = be.take(a, i2, 0)                # (B, D) rows of a, permuted
    c = be.take(table, i3, 0)            # (B, D): indices uploaded after t died
    return be.to_numpy(be.concat([b, c], 1))


@pytest.fixture
def uploads_only(monkeypatch):
    """Every host index array is uploaded (no slice copies for runs of consecutive indices):
    the tests below are about index uploads racing with deferred launches."""
    import samba_ext.backend_cuda as bc

    monkeypatch.setattr(bc, "_MAX_RUNS", 0)


@pytest.mark.parametrize("batches", [(1, 16, 16, 4, 16, 1), (16, 1, 16), (1, 2, 64, 64)])
def test_steps_at_changing_batch_sizes(fake_backend, uploads_only, rng, batches):
    """One backend decoding at several batch sizes in turn: every step (eager at a first or
    larger size, captured, replayed) gives exactly the rows a NumPy gather gives."""
    be = fake_backend
    V, D = 20, 16384           # V < 32: the table stays float32; D makes a batch-16 step
    host = rng.standard_normal((V, D)).astype(np.float32)   # outgrow a batch-1 arena
    table = be.asarray(host)
    for B in batches:
        for _ in range(3):
            i1 = rng.integers(0, V, B)
            i2 = rng.permutation(B)
            i3 = rng.integers(0, V, B)
            got = _step(be, table, i1, i2, i3)
            want = np.concatenate([host[i1][i2], host[i3]], 1)
            np.testing.assert_array_equal(got, want)
    assert be.stats["eager_steps"] >= 1 and be.stats["replays"] >= 1, be.stats


def test_overflowing_step_holds_its_buffers_until_launched(fake_backend, uploads_only, rng):
    """The first step at a larger batch overflows the arena: the buffers it allocates
    outside the arena stay alive until its deferred launches are issued, then go back."""
    be = fake_backend
    host = rng.standard_normal((20, 16384)).astype(np.float32)
    table = be.asarray(host)
    _step(be, table, rng.integers(0, 20, 1), np.array([0]), rng.integers(0, 20, 1))
    small = be._arena_need
    be.begin_step()
    rec = be._rec
    a = be.take(table, rng.integers(0, 20, 16), 0)
    be.take(a, rng.permutation(16), 0)
    assert rec.overflow and rec.held, "a batch-16 step must overflow a batch-1 arena"
    cu = _rt._cuda_mod
    ptrs = {h.ptr for h in rec.held}

    def pooled() -> set:
        return {p for lst in cu.free.values() for p in lst}

    assert not ptrs & pooled(), "a buffer of the step went back to the pool before launch"
    be.to_numpy(a)
    assert not rec.held and be._arena_need > small
    assert ptrs <= pooled(), "the step's own buffers are returned once it has run"


def test_array_replaced_during_a_step_stays_alive_until_launched(fake_backend, uploads_only,
                                                                rng):
    """The full-attention cache grows inside a decode step: a larger zeroed cache is made,
    the old rows are copied into it by a deferred launch, and the old cache is dropped. The
    old cache's memory must not be reused (here: by an upload of the same size made right
    after) before that copy has run."""
    be = fake_backend
    rows = rng.standard_normal((64, 1024)).astype(np.float32)
    for captured in (False, True):
        # a step to size the arena, then (second round) one captured as a graph
        if captured:
            be.begin_step()
            be.to_numpy(be.take(be.asarray(rows[:2]), np.array([1, 0]), 0))
        old = be.asarray(rows)
        be.begin_step()
        new = be.zeros((128, 1024))
        be.put(new, np.arange(64), old, 0)
        del old                                       # the model replaces its cache here
        other = be.asarray(rng.standard_normal((64, 1024)).astype(np.float32))  # same size
        got = be.to_numpy(new)
        np.testing.assert_array_equal(got[:64], rows)
        np.testing.assert_array_equal(got[64:], 0.0)
        del other


# ------------------------------------------------------------ direct replay of a step ---
def _counting(cu):
    """Count cu.memcpy_h2d calls (uploads) in cu.n_h2d."""
    orig = cu.memcpy_h2d
    cu.n_h2d = 0

    def h2d(ptr, src, stream):
        cu.n_h2d += 1
        orig(ptr, src, stream)
    cu.memcpy_h2d = h2d
    return cu


def _index_step(be, table, cache, host, key):
    """A decode-like step driven only by its step_inputs array: rows host[0] and host[1] of
    the table, the first also written into cache row slot host[2][b] (a ring write)."""
    out = be.replay_step(key, host)
    if out is not None:
        return be.to_numpy(out), True
    be.begin_step(key)
    ins = be.step_inputs(host)
    a = be.take(table, ins[0], 0)
    be.write_rows(cache, ins[2], a)
    b = be.take(table, ins[1], 0)
    return be.to_numpy(be.end_step(be.concat([a, b], 1))), False


def test_a_captured_step_is_replayed_without_running_it(fake_backend, rng):
    """After a step has been captured, the next steps with the same key are direct replays:
    one upload (the new inputs), one graph launch, and the same results as running them."""
    be = fake_backend
    cu = _counting(_rt._cuda_mod)
    V, D, B, C = 20, 64, 3, 5
    host_t = rng.standard_normal((V, D)).astype(np.float32)
    table = be.asarray(host_t)
    cache = be.zeros((B, C, D))
    key = be.step_key(("model", B), [cache])
    want_cache = np.zeros((B, C, D), np.float32)
    direct = []
    for step in range(6):
        host = np.stack([rng.integers(0, V, B), rng.integers(0, V, B),
                         np.full(B, step % C)]).astype(np.int64)
        before = cu.n_h2d
        got, was_direct = _index_step(be, table, cache, host, key)
        direct.append(was_direct)
        want_cache[np.arange(B), host[2]] = host_t[host[0]]
        np.testing.assert_array_equal(got, np.concatenate([host_t[host[0]], host_t[host[1]]], 1))
        np.testing.assert_array_equal(be.to_numpy(cache), want_cache)
        if was_direct:
            assert cu.n_h2d - before == 1, "a direct replay uploads its inputs only"
    # step 0 eager (sizes the arena), step 1 captured, then direct replays
    assert direct == [False, False, True, True, True, True], direct
    assert be.stats["direct_replays"] == 4 and be.stats["captures"] == 1, be.stats
    # another key (another state's arrays) is not replayed from this one
    other = be.zeros((B, C, D))
    assert be.replay_step(be.step_key(("model", B), [other]), host) is None


def test_a_step_with_other_uploads_is_not_replayed_directly(fake_backend, rng):
    """A step that uploaded host values besides its step_inputs (here a host index array)
    would replay stale values: it is captured and replayed as a graph, never directly."""
    be = fake_backend
    table = be.asarray(rng.standard_normal((20, 64)).astype(np.float32))
    key = be.step_key(("m", 2), [table])
    for _ in range(4):
        assert be.replay_step(key, np.zeros((1, 2), np.int64)) is None
        be.begin_step(key)
        ins = be.step_inputs(np.array([[1, 2]]))
        a = be.take(table, ins[0], 0)
        b = be.take(table, np.array([7, 3, 9, 1, 4, 12]), 0)   # a host upload inside the step
        be.end_step(be.concat([a, b], 0))
    assert be.stats["direct_replays"] == 0 and be.stats["replays"] >= 2, be.stats


def test_ring_reads_and_writes_upload_nothing(fake_backend, rng):
    """take / put with index runs (a prefill chunk's ring-buffer reads and writes,
    arange(a, b) % W) become strided slice copies: no index upload, NumPy's results."""
    be = fake_backend
    cu = _counting(_rt._cuda_mod)
    W, L = 16, 6
    ring_h = rng.standard_normal((2, W, 3)).astype(np.float32)
    ring = be.asarray(ring_h)
    for p0 in (3, 13, 16, 30):
        idx = np.arange(p0 - 5, p0) % W          # wraps for p0 = 16 + k < 21
        before = cu.n_h2d
        got = be.to_numpy(be.take(ring, idx, 1))
        new = rng.standard_normal((2, L, 3)).astype(np.float32)
        widx = np.arange(p0, p0 + L) % W
        be.put(ring, widx, be.asarray(new), 1)
        ring_h_old = ring_h.copy()
        ring_h[:, widx] = new
        assert cu.n_h2d - before == 1, "only the put's source array is uploaded"
        np.testing.assert_array_equal(got, ring_h_old[:, idx])
        np.testing.assert_array_equal(be.to_numpy(ring), ring_h)
    # scattered indices still gather correctly (through an index upload)
    idx = np.array([5, 0, 9, 2, 14, 7, 1])
    np.testing.assert_array_equal(be.to_numpy(be.take(ring, idx, 1)), ring_h[:, idx])


def test_a_bad_prefetch_setting_raises_before_the_step_is_recorded(fake_backend, rng,
                                                                    monkeypatch):
    """SAMBA_EXT_L2_PREFETCH is read when a recording opens: a bad value raises there, naming
    the variable, with nothing of the step recorded or lost; the next step runs normally."""
    be = fake_backend
    V, D, B, C = 20, 64, 3, 5
    host_t = rng.standard_normal((V, D)).astype(np.float32)
    table, cache = be.asarray(host_t), be.zeros((B, C, D))
    key = be.step_key(("model", B), [cache])
    host = np.stack([np.arange(B), np.arange(B), np.zeros(B)]).astype(np.int64)
    _index_step(be, table, cache, host, key)   # eager: sizes the arena
    monkeypatch.setenv("SAMBA_EXT_L2_PREFETCH", "on")
    with pytest.raises(ValueError, match="SAMBA_EXT_L2_PREFETCH"):
        be.begin_step(key)
    assert be._rec is None and _rt.recorder() is None
    monkeypatch.delenv("SAMBA_EXT_L2_PREFETCH")
    host[2] = 1
    got, _ = _index_step(be, table, cache, host, key)
    np.testing.assert_array_equal(got, np.concatenate([host_t[:B], host_t[:B]], 1))
    np.testing.assert_array_equal(be.to_numpy(cache)[np.arange(B), 1], host_t[:B])
