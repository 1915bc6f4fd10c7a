"""samba_ext's CUDA calls leave the calling thread's current device as they found it.

A call on arrays of cuda:1 makes device 1 current for its work; afterwards the device that
was current before (say 0, where a CuPy / PyTorch user allocates next) is current again,
also when the call raises. As PyTorch's device guard, the previous device is not made
current again when its primary context is not active (that would create a context on a
device the process never used); the C side decides that (samba_cu_restore_device).

The first part runs anywhere: a stand-in for the ``_cuda`` extension tracks the current
device, logs every switch and records the device that was current when each piece of work
(copy, memset, upload, download, synchronisation) was issued. The second part needs the CUDA
build and a GPU (two GPUs for the cross-device checks; skipped with the reason otherwise).
"""
from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import assert_close
from cuda_util import cuda
from test_cuda_model_recorder import _FakeCu

from samba_ext.cuda import runtime as _rt


# ------------------------------------------------------------ stand-in for _cuda ----------
class _FakeBuf:
    def __init__(self, nbytes: int, device: int, stream: int = 0, keep=None) -> None:
        self.ptr = 1 << 20
        self.nbytes, self.device, self.stream, self.keep = nbytes, device, stream, keep

    def add_use(self, stream: int) -> None:
        pass


class _DeviceCu:
    """The device entry points of samba_ext._cuda with their semantics (restore_device
    returns only to a device whose primary context is active), plus work entry points that
    record the device current when they are issued."""

    def __init__(self, current: int = 0, active=(0,)) -> None:
        self.current = current
        self.active = set(active)   # devices whose primary context exists
        self.switches: list = []    # ("exchange" | "set" | "restore", device)
        self.work: list = []        # (what, current device when issued)
        self.fail_d2h = False

    def device_count(self) -> int:
        return 2

    def get_device(self) -> int:
        return self.current

    def set_device(self, d: int) -> None:
        self.switches.append(("set", d))
        self.current = d
        self.active.add(d)

    def exchange_device(self, d: int) -> int:
        self.switches.append(("exchange", d))
        prev, self.current = self.current, d
        self.active.add(d)
        return prev

    def restore_device(self, d: int) -> None:
        self.switches.append(("restore", d))
        if d in self.active:
            self.current = d

    # work (the C Buffer switches to its device and back itself: no switch here)
    def Buffer(self, nbytes: int, device: int, stream: int = 0, keep=None) -> _FakeBuf:
        return _FakeBuf(nbytes, device, stream, keep)

    def _did(self, what: str) -> None:
        self.work.append((what, self.current))

    def memcpy_h2d(self, ptr, src, stream) -> None:
        self._did("h2d")

    def memcpy_d2h(self, dst, ptr, stream) -> None:
        self._did("d2h")
        if self.fail_d2h:
            raise RuntimeError("cudaMemcpyAsync (device to host): fake failure")
        dst[...] = 0

    def stream_sync(self, s) -> None:
        self._did("stream_sync")

    def device_sync(self) -> None:
        self._did("device_sync")

    def stream_wait(self, a, b) -> None:
        self._did("stream_wait")

    def copy(self, *args) -> None:
        self._did("copy")

    def memset(self, *args) -> None:
        self._did("memset")

    def to_capsule(self, *args) -> object:
        return object()

    def from_capsule(self, cap) -> object:
        raise RuntimeError("fake: cannot import a capsule")


@pytest.fixture
def cu(monkeypatch) -> _DeviceCu:
    """The stand-in installed as samba_ext's CUDA module: device 0 current and in use."""
    fake = _DeviceCu()
    monkeypatch.setattr(_rt, "_cuda_mod", fake)
    monkeypatch.setattr(_rt, "_recorder", None)
    monkeypatch.setattr(_rt, "_poison", False)
    return fake


# ------------------------------------------------------------ the guard itself ------------
def test_guard_makes_the_device_current_and_restores_after_success(cu):
    with _rt.DeviceGuard(1):
        assert cu.current == 1
        cu.device_sync()
    assert cu.current == 0
    assert cu.switches == [("exchange", 1), ("restore", 0)]
    assert cu.work == [("device_sync", 1)]


def test_guard_restores_after_an_exception(cu):
    with pytest.raises(KeyError):
        with _rt.DeviceGuard(1):
            raise KeyError("inside")
    assert cu.current == 0 and cu.switches[-1] == ("restore", 0)


def test_guard_does_not_restore_when_unchanged(cu):
    with _rt.DeviceGuard(0):
        pass
    with _rt.DeviceGuard():
        pass
    cu.current = 1                       # a thread that works on device 1
    with _rt.DeviceGuard(1):
        pass
    assert cu.switches == [("exchange", 0), ("exchange", 1)], cu.switches


def test_restoring_guard_without_a_device_restores_what_the_block_changed(cu):
    with _rt.DeviceGuard():
        cu.set_device(1)                 # as Call does for inputs on cuda:1
    assert cu.current == 0 and cu.switches == [("set", 1), ("restore", 0)]


def test_a_failed_restore_raises_unless_the_block_raised(cu, monkeypatch):
    def broken(d):
        raise RuntimeError("cudaSetDevice: fake failure")
    monkeypatch.setattr(cu, "restore_device", broken)
    with pytest.raises(RuntimeError, match="fake failure"):
        with _rt.DeviceGuard(1):
            pass
    cu.current = 0
    with pytest.raises(KeyError):        # the block's error, not the restore's
        with _rt.DeviceGuard(1):
            raise KeyError("inside")


def test_keeps_device_restores_after_return_and_after_raise(cu):
    @_rt.keeps_device
    def work(fail: bool) -> int:
        """doc"""
        cu.set_device(1)
        if fail:
            raise ValueError("x: bad")
        return 7

    assert work(False) == 7 and cu.current == 0
    with pytest.raises(ValueError, match="x: bad"):
        work(True)
    assert cu.current == 0
    assert work.__doc__ == "doc" and list(inspect.signature(work).parameters) == ["fail"]


def test_guards_do_nothing_without_cuda(monkeypatch):
    """Without a usable CUDA, a decorated function runs unguarded and raises its own error:
    an argument error found before the first CUDA call stays that error."""
    def no_cuda():
        raise ModuleNotFoundError("No module named 'samba_ext._cuda'", name="samba_ext._cuda")
    monkeypatch.setattr(_rt, "_cuda_mod", None)
    monkeypatch.setattr(_rt, "_import_cuda", no_cuda)
    from samba_ext.cuda import ops

    with pytest.raises(ValueError, match="activation"):
        ops.causal_conv1d(np.zeros((1, 4, 3), np.float32), np.zeros((4, 3), np.float32),
                          activation="relu")


# ------------------------------------------------------------ every public op -------------
class _ArrayOn1:
    """A foreign CUDA array on cuda:1 whose DLPack import fails (after the op has switched)."""

    def __dlpack_device__(self) -> tuple:
        return (2, 1)

    def __dlpack__(self, stream=None, max_version=None) -> str:
        return "capsule"


def _public_ops() -> list:
    from samba_ext.cuda import blas, grad_attention, grad_scan, grad_small, ops

    return [(m.__name__.rsplit(".", 1)[1], n) for m in (ops, blas, grad_attention, grad_small,
                                                        grad_scan) for n in m.__all__]


@pytest.mark.parametrize("module,name", _public_ops())
def test_every_op_restores_the_device_when_it_raises(cu, module, name):
    """Each public op of ops / blas / grad_* is called with inputs on cuda:1 whose import
    fails inside the op: the op switched to device 1, and device 0 is current afterwards."""
    import importlib

    fn = getattr(importlib.import_module(f"samba_ext.cuda.{module}"), name)
    required = [p for p in inspect.signature(fn).parameters.values()
                if p.default is inspect.Parameter.empty and p.kind == p.POSITIONAL_OR_KEYWORD]
    with pytest.raises(RuntimeError, match="fake: cannot import"):
        fn(*[_ArrayOn1() for _ in required])
    assert ("set", 1) in cu.switches, f"{name} did not run on the inputs' device"
    assert cu.current == 0, f"{name} left device {cu.current} current"


# ------------------------------------------------------------ arrays, export, sync --------
def _arr1(dtype: str = "float32"):
    from samba_ext.cuda.array import DeviceArray

    return DeviceArray(_FakeBuf(32, 1), 1 << 20, (2, 4), dtype, 1, 0)


@pytest.mark.parametrize("what", ["to_numpy", "to_numpy_bf16", "astype", "to_device", "zeros",
                                  "empty_poisoned", "dlpack", "synchronize"])
def test_array_calls_run_on_their_device_and_restore(cu, monkeypatch, what):
    from samba_ext import cuda as sc

    expect = {"to_numpy": "d2h", "to_numpy_bf16": "d2h", "astype": "copy", "to_device": "h2d",
              "zeros": "memset", "empty_poisoned": "memset", "dlpack": "stream_wait",
              "synchronize": "device_sync"}[what]
    if what == "to_numpy":
        assert _arr1().to_numpy().shape == (2, 4)
    elif what == "to_numpy_bf16":
        assert _arr1("bfloat16").to_numpy().dtype == np.float32
    elif what == "astype":
        assert _arr1().astype("float16").device == 1
    elif what == "to_device":
        assert sc.to_device(np.ones(3), device=1).device == 1
    elif what == "zeros":
        assert sc.zeros((3,), device=1).device == 1
    elif what == "empty_poisoned":
        monkeypatch.setattr(_rt, "_poison", True)
        sc.empty((3,), device=1)
    elif what == "dlpack":
        _arr1().__dlpack__(stream=5)
    else:
        sc.synchronize(1)
    assert (expect, 1) in cu.work, cu.work
    assert all(dev == 1 for _, dev in cu.work), f"work issued off device 1: {cu.work}"
    assert cu.current == 0, f"{what} left device {cu.current} current"


def test_a_failed_download_restores_the_device(cu):
    cu.fail_d2h = True
    with pytest.raises(RuntimeError, match="fake failure"):
        _arr1().to_numpy()
    assert cu.current == 0


def test_an_unused_previous_device_is_left_alone(cu):
    """The thread never used device 0 (no primary context): after work on device 1 the
    thread stays on device 1 rather than creating a context on device 0."""
    cu.active = set()
    _arr1().to_numpy()
    assert cu.switches[-1] == ("restore", 0) and cu.current == 1 and cu.active == {1}


# ------------------------------------------------------------ the model backend -----------
class _TwoDeviceRecorderCu(_FakeCu):
    """The recorder tests' stand-in (NumPy device memory, graphs) with two devices: every
    launch, copy and graph call records the device current when issued."""

    def __init__(self) -> None:
        super().__init__()
        self.current, self.active, self.switches, self.issued = 0, {0}, [], set()
        for name in ("copy", "memset", "memcpy_h2d", "memcpy_d2h", "graph_begin",
                     "graph_launch", "stream_create", "stream_sync"):
            setattr(self, name, self._on_device(getattr(self, name)))

    def _on_device(self, fn):
        def run(*args):
            self.issued.add(self.current)
            return fn(*args)
        return run

    def device_count(self) -> int:
        return 2

    get_device = _DeviceCu.get_device
    set_device = _DeviceCu.set_device
    exchange_device = _DeviceCu.exchange_device
    restore_device = _DeviceCu.restore_device


def test_backend_on_device_1_leaves_device_0_current(monkeypatch, rng):
    """A CUDABackend on cuda:1 used while device 0 is current: its arrays, gathers, scatters,
    a recorded step, its capture and its direct replays all run on device 1, and device 0 is
    current after every call. When device 1 is current already, a direct replay switches
    nothing (the decode hot path: one exchange that finds the device current)."""
    from samba_ext.backend_cuda import CUDABackend

    cu = _TwoDeviceRecorderCu()
    monkeypatch.setattr(_rt, "_cuda_mod", cu)
    monkeypatch.setattr(_rt, "_recorder", None)
    be = CUDABackend("cuda:1", weight_dtype="float32")
    assert cu.current == 0
    V, D, B, C = 20, 64, 3, 5
    host_t = rng.standard_normal((V, D)).astype(np.float32)
    table = be.asarray(host_t)
    cache = be.zeros((B, C, D))
    key = be.step_key(("model", B), [cache])
    kinds = []
    for step in range(6):
        host = np.stack([rng.integers(0, V, B), rng.integers(0, V, B),
                         np.full(B, step % C)]).astype(np.int64)
        if step == 5:
            cu.current = 1   # the caller works on device 1 itself
            cu.switches.clear()
        out = be.replay_step(key, host)
        kinds.append(out is not None)
        if out is None:
            be.begin_step(key)
            ins = be.step_inputs(host)
            a = be.take(table, ins[0], 0)
            be.write_rows(cache, ins[2], a)
            out = be.end_step(be.concat([a, be.take(table, ins[1], 0)], 1))
        got = be.to_numpy(out)
        want = np.concatenate([host_t[host[0]], host_t[host[1]]], 1)
        np.testing.assert_array_equal(got, want)
        assert cu.current == (1 if step == 5 else 0), f"step {step}: device {cu.current}"
    assert kinds == [False, False, True, True, True, True], kinds
    assert cu.issued == {1}, f"work issued with devices {cu.issued} current"
    assert not [s for s in cu.switches if s[0] in ("set", "restore")], cu.switches
    np.testing.assert_array_equal(be.to_numpy(be.take(table, np.array([4, 1]), 0)),
                                  host_t[[4, 1]])
    assert cu.current == 1


# ------------------------------------------------------------ on the GPU ------------------
def _cu():
    return _rt.require()


def _two_gpus():
    n = _cu().device_count()
    if n < 2:
        pytest.skip(f"needs 2 GPUs, {n} visible")


@cuda
def test_an_op_leaves_the_current_device_unchanged(rng):
    """One GPU: an op and a download leave the current device as it was, and the primary
    context state can be read (so the restore rule is in force, not its fallback)."""
    from samba_ext import cuda as sc

    cu = _cu()
    before = cu.get_device()
    g, u = rng.standard_normal((2, 3, 40)).astype(np.float32)
    y = sc.swiglu(sc.to_device(g, device=before), sc.to_device(u, device=before)).to_numpy()
    assert cu.get_device() == before
    assert_close(y, g.astype(np.float64) / (1 + np.exp(-g.astype(np.float64))) * u, 1e-5)
    assert cu.primary_context_active(before) is True
    assert cu.primary_context_active(cu.device_count()) is None  # no such device
    assert cu.exchange_device(before) == before
    cu.restore_device(before)
    assert cu.get_device() == before


def _calls_on_1(rng):
    """(name, call, NumPy check or None): work on cuda:1."""
    from samba_ext import cuda as sc
    from samba_ext.cuda import grad_small

    g, u = rng.standard_normal((2, 4, 64)).astype(np.float32)
    w = rng.standard_normal((32, 64)).astype(np.float32)
    g64, u64, w64 = g.astype(np.float64), u.astype(np.float64), w.astype(np.float64)

    def d(a):
        return sc.to_device(a, device=1)

    def rms(x):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5)

    return [
        ("to_device", lambda: d(g), g64),
        ("zeros", lambda: sc.zeros((3, 5), device=1), np.zeros((3, 5))),
        ("empty", lambda: sc.empty((3, 5), device=1), None),
        ("astype", lambda: d(g).astype("bfloat16").astype("float32"), (g64, 1e-2)),
        ("slice copy", lambda: d(g)[:, 1:3].copy(), g64[:, 1:3]),
        ("swiglu", lambda: sc.swiglu(d(g), d(u)), g64 / (1 + np.exp(-g64)) * u64),
        ("rms_norm", lambda: sc.rms_norm(d(g), sc.to_device(np.ones(64), device=1)), rms(g64)),
        ("linear", lambda: sc.linear(d(g), d(w)), g64 @ w64.T),
        ("matmul", lambda: sc.matmul(d(g), d(w), trans_b=True), g64 @ w64.T),
        ("swiglu_bwd", lambda: grad_small.swiglu_bwd(d(g), d(u), d(u))[1],
         g64 / (1 + np.exp(-g64)) * u64),
        ("to_numpy", lambda: d(g).to_numpy(), g64),
        ("dlpack export", lambda: d(g).__dlpack__(stream=1), None),
        ("synchronize", lambda: sc.synchronize(1), None),
        ("memory_stats", lambda: sc.memory_stats(1), None),
        ("empty_cache", lambda: sc.empty_cache(1), None),
    ]


def _check(got, want) -> None:
    if want is None:
        return
    want, tol = want if isinstance(want, tuple) else (want, 1e-5)  # float32 arithmetic
    got = got if isinstance(got, np.ndarray) else got.to_numpy()
    assert_close(got, want, tol)


@cuda
def test_work_on_device_1_leaves_device_0_current(rng):
    """Two GPUs, DeviceArrays: with device 0 current (and in use), every kind of call on
    cuda:1 gives the right result and leaves device 0 current; so does a call that raises
    after it switched."""
    from samba_ext import cuda as sc

    _two_gpus()
    cu = _cu()
    cu.set_device(0)
    sc.to_device(np.ones(4), device=0).to_numpy()          # device 0 in use
    assert cu.primary_context_active(0) is True
    for name, call, want in _calls_on_1(rng):
        got = call()
        assert cu.get_device() == 0, f"{name} left device {cu.get_device()} current"
        _check(got, want)
    a, b = sc.to_device(np.ones((2, 8)), device=1), sc.to_device(np.ones((2, 9)), device=1)
    with pytest.raises(ValueError):
        sc.swiglu(a, b)                                     # shapes differ: raises in the op
    assert cu.get_device() == 0
    del a, b                                                # frees on device 1
    assert cu.get_device() == 0


@cuda
def test_cupy_user_keeps_device_0(rng):
    """Two GPUs, CuPy: arrays made on cuda:1 inside ``with cupy.cuda.Device(1)``; after
    samba_ext's ops on them, CuPy's current device is 0 and a new cupy array lands there."""
    cp = pytest.importorskip("cupy")
    import samba_ext

    _two_gpus()
    cp.cuda.Device(0).use()
    cp.zeros(4)
    g, u = rng.standard_normal((2, 3, 64)).astype(np.float32)
    with cp.cuda.Device(1):
        gd, ud, wd = cp.asarray(g), cp.asarray(u), cp.ones(64, dtype=cp.float32)
    y = samba_ext.swiglu(gd, ud)
    assert cp.cuda.runtime.getDevice() == 0
    n = samba_ext.rms_norm(gd, wd)
    assert cp.cuda.runtime.getDevice() == 0 and cp.empty(4).device.id == 0
    g64, u64 = g.astype(np.float64), u.astype(np.float64)
    assert_close(cp.asnumpy(cp.from_dlpack(y)), g64 / (1 + np.exp(-g64)) * u64, 1e-5)
    assert_close(cp.asnumpy(cp.from_dlpack(n)),
                 g64 / np.sqrt((g64 * g64).mean(-1, keepdims=True) + 1e-5), 1e-5)
    assert cp.cuda.runtime.getDevice() == 0


@cuda
def test_no_context_is_created_on_an_unused_previous_device():
    """Two GPUs, a fresh process that only uses cuda:1: the restore does not create a
    primary context on device 0 (it stays inactive, and device 1 stays current)."""
    _two_gpus()
    code = textwrap.dedent("""
        import numpy as np
        from samba_ext import cuda as sc
        from samba_ext.cuda.runtime import require
        cu = require()
        assert cu.get_device() == 0 and cu.primary_context_active(0) is False
        x = sc.to_device(np.ones((2, 8)), device=1)
        y = sc.swiglu(x, x).to_numpy()
        assert y.shape == (2, 8)
        print(cu.primary_context_active(0), cu.primary_context_active(1), cu.get_device())
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "True", "1"], r.stdout


@cuda
def test_models_on_two_devices_leave_device_0_current(rng):
    """Two GPUs: a model on cuda:1 and one on cuda:0, decoding in turn with CUDA graphs and
    direct replays while device 0 is current, give the CPU model's logits (float32 weights
    and activations: 1e-4, see tests/test_model_cuda.py) and leave device 0 current."""
    import dataclasses

    from samba_ext.backend_cuda import CUDABackend
    from samba_ext.config import SambaConfig
    from samba_ext.model import Samba

    _two_gpus()
    cu = _cu()
    cu.set_device(0)
    cfg = dataclasses.replace(SambaConfig.preset("samba-test"),
                              layer_types=("mamba", "swa", "attn", "mamba"))
    toks = rng.integers(0, cfg.vocab_size, (2, 24))
    cpu = Samba(cfg, seed=3)
    gpus = [Samba(cfg, seed=3, device=CUDABackend(dev, weight_dtype="float32",
                                                  act_dtype="float32"))
            for dev in ("cuda:1", "cuda:0")]
    assert cu.get_device() == 0
    sc_, sg = cpu.new_state(2), [m.new_state(2) for m in gpus]
    want = cpu.prefill(toks[:, :6], sc_)
    for m, s in zip(gpus, sg):
        assert_close(m.prefill(toks[:, :6], s), want, 1e-4, "prefill")
        assert cu.get_device() == 0
    for t in range(6, 24):
        want = cpu.step(toks[:, t], sc_)
        for m, s in zip(gpus, sg):
            assert_close(m.step(toks[:, t], s), want, 1e-4, f"{m.device} step {t}")
            assert cu.get_device() == 0, f"{m.device} step {t}"
    for m in gpus:
        assert m.backend.stats["direct_replays"] >= 10, m.backend.stats


# ------------------------------------------------------- the framework stream's device ----
class _FakeCupyStream:
    def __init__(self, ptr: int) -> None:
        self.ptr = ptr


class _FakeCupyCuda:
    """cupy.cuda's get_current_stream: each device has its own current stream."""

    def __init__(self, takes_device: bool) -> None:
        self.takes_device = takes_device
        self.streams = {0: _FakeCupyStream(0x1000), 1: _FakeCupyStream(0x2000)}
        self.current_device = 0

    def get_current_stream(self, *args):
        if args and not self.takes_device:
            raise TypeError("get_current_stream() takes no arguments")
        return self.streams[args[0] if args else self.current_device]


class _FakeCupyArray:
    pass


_FakeCupyArray.__module__ = "cupy._core.core"


@pytest.mark.parametrize("takes_device", [True, False])
def test_cupy_stream_is_the_inputs_device_stream(monkeypatch, takes_device):
    # an op on CuPy arrays of cuda:1 with stream=None runs on CuPy's current stream of
    # device 1, even while device 0 is current (an older CuPy without the device argument
    # gives its only answer, the current device's stream)
    fake = type("cupy", (), {})()
    fake.cuda = _FakeCupyCuda(takes_device)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    handle, keep = _rt.current_framework_stream([_FakeCupyArray()], 1)
    want = 0x2000 if takes_device else 0x1000
    assert handle == want and keep is fake.cuda.streams[1 if takes_device else 0]
