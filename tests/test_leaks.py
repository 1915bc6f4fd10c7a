"""Leaks and limits.

* 10,000 calls of every kernel on small inputs (and 2,000 failing calls each, since error
  paths are where references leak) keep the process flat:
    - tracemalloc (Python objects + NumPy buffers): growth <= 64 KiB. One leaked object per
      call would be >= 10,000 x 16 B = 160 KiB; one leaked output array >= 1 MiB;
    - RSS (/proc/self/statm, also sees C malloc): growth <= 4 MiB. The kernels' scratch
      buffers are KBs, so leaking one per call would be >= 10,000 x 1 KiB = 10 MiB;
    - sys.getrefcount of every input array unchanged (a leaked reference to an input
      allocates nothing, so only the refcount shows it).
* 1,000 model decode steps on a tiny config keep RSS / tracemalloc / state.nbytes() flat.
* Requests that cannot fit in memory fail fast with MemoryError (or ValueError) and a clear
  message instead of an OOM kill: kernels on absurd (broadcast) shapes, model forward /
  full-attention prefill over 10M tokens (run in a child process with a time limit, so a
  missing check shows as a timeout instead of taking the test machine down).
"""
from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import samba_ext

N_CALLS = 10_000          # with 1 kernel thread (+ N_CALLS_MT with the default thread count)
N_CALLS_MT = 1_000
N_ERROR_CALLS = 2_000
TRACED_BOUND = 64 << 10
RSS_BOUND = 4 << 20
ROOT = Path(__file__).resolve().parent.parent


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def small_calls(rng):
    """name -> (fn, args): one small valid call per public kernel."""
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    st = f(2, 16, 8)
    cs = f(2, 16, 3)
    return {
        "selective_scan": (lambda *a: samba_ext.selective_scan(*a, delta_softplus=True,
                                                               return_last_state=True),
                           (f(2, 16, 12), f(2, 16, 12), -np.exp(f(16, 8)), f(2, 8, 12),
                            f(2, 8, 12), f(16), f(2, 16, 12), f(16))),
        "selective_state_update": (samba_ext.selective_state_update,
                                   (st, f(2, 16), f(2, 16), -np.exp(f(16, 8)), f(2, 8), f(2, 8))),
        "causal_conv1d": (lambda *a: samba_ext.causal_conv1d(*a, return_final_states=True),
                          (f(2, 16, 12), f(16, 4), f(16), "silu", f(2, 16, 3))),
        "causal_conv1d_update": (samba_ext.causal_conv1d_update, (f(2, 16), cs, f(16, 4), f(16))),
        "swa_attention": (samba_ext.swa_attention, (f(1, 12, 4, 16), f(1, 20, 2, 16),
                                                    f(1, 20, 2, 16), 6)),
        "swa_decode": (samba_ext.swa_decode, (f(2, 4, 16), f(2, 8, 2, 16), f(2, 8, 2, 16),
                                              np.array([9, 2]), np.array([8, 3]))),
        "rms_norm": (lambda *a: samba_ext.rms_norm(*a, residual=a[0]), (f(6, 32), f(32))),
        "apply_rotary": (samba_ext.apply_rotary, (f(1, 6, 2, 16), np.arange(6))),
        "swiglu": (samba_ext.swiglu, (f(4, 33), f(4, 33))),
    }


def failing_calls(rng):
    """name -> (fn, args) that raise ValueError / TypeError after converting some inputs."""
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    return {
        "selective_scan": (samba_ext.selective_scan, (f(2, 16, 12), f(2, 16, 11), f(16, 8),
                                                      f(2, 8, 12), f(2, 8, 12))),
        "selective_state_update": (samba_ext.selective_state_update,
                                   (f(2, 16, 8), f(2, 16), f(2, 16), f(16, 8), f(2, 8), f(3, 8))),
        "causal_conv1d": (samba_ext.causal_conv1d, (f(2, 16, 12), f(16, 7))),
        "causal_conv1d_update": (samba_ext.causal_conv1d_update, (f(2, 16), f(2, 16, 2), f(16, 4))),
        "swa_attention": (samba_ext.swa_attention, (f(1, 12, 3, 16), f(1, 20, 2, 16), f(1, 20, 2, 16))),
        "swa_decode": (samba_ext.swa_decode, (f(2, 4, 16), f(2, 8, 2, 16), f(2, 8, 2, 16),
                                              np.array([9, 2]), np.array([9, 3]))),
        "rms_norm": (samba_ext.rms_norm, (f(6, 32), f(31))),
        "apply_rotary": (samba_ext.apply_rotary, (f(1, 6, 2, 15), 0)),
        "swiglu": (samba_ext.swiglu, (f(4, 33), np.arange(132).reshape(4, 33))),
    }


def _refcounts(args):
    """Reference counts of the array arguments (ints / strings are shared interpreter-wide)."""
    return [sys.getrefcount(a) for a in args if isinstance(a, np.ndarray)]


def _measure(fn, args, n, expect_error=False):
    def call():
        if expect_error:
            try:
                fn(*args)
            except (ValueError, TypeError):
                return
            raise AssertionError("the failing call did not fail")
        fn(*args)

    for _ in range(200):          # warm-up: allocator pools, OpenMP threads, lazy imports
        call()
    gc.collect()
    refs0 = _refcounts(args)
    tracemalloc.start()
    t0 = tracemalloc.get_traced_memory()[0]
    r0 = rss()
    for _ in range(n):
        call()
    gc.collect()
    t1 = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    r1 = rss()
    return t1 - t0, r1 - r0, refs0, _refcounts(args)


NAMES = ["selective_scan", "selective_state_update", "causal_conv1d", "causal_conv1d_update",
         "swa_attention", "swa_decode", "rms_norm", "apply_rotary", "swiglu"]


@pytest.fixture
def one_thread():
    """10,000 tiny calls are latency-bound: with 2 OpenMP threads each call waits for the
    second thread (ms per call on a busy machine). One thread allocates the same per-call
    buffers (scratch is per thread: the multi-thread path gets N_CALLS_MT calls too)."""
    n = samba_ext.get_num_threads()
    samba_ext.set_num_threads(1)
    yield n
    samba_ext.set_num_threads(n)


@pytest.mark.parametrize("name", NAMES)
def test_kernel_calls_do_not_leak(rng, name, one_thread):
    fn, args = small_calls(rng)[name]
    for threads, n in ((1, N_CALLS), (one_thread, N_CALLS_MT)):
        samba_ext.set_num_threads(threads)
        traced, drss, refs0, refs1 = _measure(fn, args, n)
        what = f"{name}: after {n} calls on {threads} thread(s)"
        assert refs1 == refs0, f"{what}: input refcounts {refs0} -> {refs1}"
        assert traced <= TRACED_BOUND, f"{what}: +{traced} B traced"
        assert drss <= RSS_BOUND, f"{what}: RSS +{drss / 2**20:.1f} MiB"


@pytest.mark.parametrize("name", NAMES)
def test_failing_calls_do_not_leak(rng, name, one_thread):
    fn, args = failing_calls(rng)[name]
    traced, drss, refs0, refs1 = _measure(fn, args, N_ERROR_CALLS, expect_error=True)
    assert refs1 == refs0, f"{name}: input refcounts {refs0} -> {refs1} after failing calls"
    assert traced <= TRACED_BOUND, f"{name}: +{traced} B traced after {N_ERROR_CALLS} failing calls"
    assert drss <= RSS_BOUND, f"{name}: RSS +{drss / 2**20:.1f} MiB after failing calls"


# --------------------------------------------------------------------------- model steps ---
def test_model_steps_flat(one_thread):
    mod = pytest.importorskip("samba_ext.model")
    from samba_ext.config import SambaConfig

    model = mod.Samba(SambaConfig.preset("samba-test"), seed=0)
    state = model.new_state(2)
    tok = np.array([1, 2])
    for _ in range(100):                  # warm-up (ring buffers fill, pools settle)
        tok = model.step(tok, state).argmax(-1)
    nbytes0 = state.nbytes()
    gc.collect()
    tracemalloc.start()
    t0, r0 = tracemalloc.get_traced_memory()[0], rss()
    for _ in range(1000):
        tok = model.step(tok, state).argmax(-1)
    gc.collect()
    t1, r1 = tracemalloc.get_traced_memory()[0], rss()
    tracemalloc.stop()
    assert state.nbytes() == nbytes0, "the decode state grew"
    assert int(state.pos[0]) == 1100
    assert t1 - t0 <= TRACED_BOUND, f"+{t1 - t0} B traced after 1,000 steps"
    assert r1 - r0 <= RSS_BOUND, f"RSS +{(r1 - r0) / 2**20:.1f} MiB after 1,000 steps"


# -------------------------------------------------------------------------------- limits ---
@pytest.mark.parametrize("name,call", [
    ("swa_attention at 10M tokens, 32 heads x 128",
     lambda: samba_ext.swa_attention(*(np.broadcast_to(np.float32(1), (1, 10_000_000, 32, 128)),) * 3)),
    ("swiglu on 2**42 elements", lambda: samba_ext.swiglu(
        np.broadcast_to(np.float32(1), (2**21, 2**21)), np.broadcast_to(np.float32(1), (2**21, 2**21)))),
    ("rms_norm on 2**42 elements", lambda: samba_ext.rms_norm(
        np.broadcast_to(np.float32(1), (2**30, 4096)), np.ones(4096, np.float32))),
    ("selective_scan with 2**40 elements", lambda: samba_ext.selective_scan(
        *(np.broadcast_to(np.float32(1), (1, 2**20, 2**20)),) * 2, np.ones((2**20, 1), np.float32),
        *(np.broadcast_to(np.float32(1), (1, 1, 2**20)),) * 2)),
])
def test_kernel_absurd_sizes_fail_fast(name, call):
    """The inputs are zero-stride views (no memory); converting them would need terabytes."""
    with pytest.raises((MemoryError, ValueError)) as ei:
        call()
    assert str(ei.value), f"{name}: the error has no message"


_RSS_REPORT = ("\nimport resource as _r\n"
               "print('MAXRSS_KB', _r.getrusage(_r.RUSAGE_SELF).ru_maxrss)\n")


def _child(code: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run code in a child (address space capped at 12 GiB so that a missing check cannot
    take the machine down); a timeout means "did not fail fast": an up-front check answers
    in the ~2 s it takes to import and build the model, while running into the cap takes
    50-80 s and 10-12 GB of RSS (measured without a check)."""
    pre = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (12 << 30, 12 << 30))\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", pre + textwrap.dedent(code) + _RSS_REPORT], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


MODEL_LIMITS = {
    "full attention prefill, 10M tokens": """
        import numpy as np
        from samba_ext.config import SambaConfig
        from samba_ext.model import Samba
        m = Samba(SambaConfig.preset("llama-tiny"), seed=0)
        t = np.zeros((1, 10_000_000), np.int64)
        try:
            m.prefill(t, m.new_state(1))
        except (MemoryError, ValueError) as e:
            print("REFUSED", type(e).__name__, e)
    """,
    "forward logits for 10M tokens": """
        import numpy as np
        from samba_ext.config import SambaConfig
        from samba_ext.model import Samba
        m = Samba(SambaConfig.preset("samba-test"), seed=0)
        try:
            m.forward(np.zeros((1, 10_000_000), np.int64))
        except (MemoryError, ValueError) as e:
            print("REFUSED", type(e).__name__, e)
    """,
    "prefill chunk_size 10**9 over 10M tokens (one 40+ GB chunk)": """
        import numpy as np
        from samba_ext.config import SambaConfig
        from samba_ext.model import Samba
        m = Samba(SambaConfig.preset("samba-test"), seed=0)
        try:
            m.prefill(np.zeros((1, 10_000_000), np.int64), m.new_state(1), chunk_size=10**9)
            print("DONE")
        except (MemoryError, ValueError) as e:
            print("REFUSED", type(e).__name__, e)
    """,
}


@pytest.mark.parametrize("case", list(MODEL_LIMITS))
def test_model_requests_beyond_memory_fail_fast(case):
    pytest.importorskip("samba_ext.model")
    try:
        r = _child(MODEL_LIMITS[case])
    except subprocess.TimeoutExpired:
        pytest.fail(f"{case}: still running after 30 s instead of refusing up front")
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"{case}: exit {r.returncode} (killed / crashed?)\n{out[-2000:]}"
    assert "REFUSED" in r.stdout or "DONE" in r.stdout, out[-2000:]
    if "REFUSED" in r.stdout:
        msg = r.stdout.split("REFUSED", 1)[1]
        assert any(w in msg.lower() for w in ("memory", "gib", "gb", "bytes", "too")), \
            f"{case}: unclear message: {msg[:500]}"
        # Refused up front, not by running into the 12 GiB cap after filling gigabytes:
        maxrss = int(r.stdout.split("MAXRSS_KB", 1)[1].split()[0]) << 10
        assert maxrss <= 2 << 30, (f"{case}: refused only after using {maxrss / 2**30:.1f} GiB "
                                   f"(the allocation cap hit, no up-front check): {msg[:300]}")


def test_memory_check_estimate_and_message(monkeypatch):
    """The up-front check (model._check_memory) against a pretend 1 GiB of free memory:
    requests whose working set is far above it are refused at once with a message naming
    the need and the fix; ordinary requests (a few MB) are not refused."""
    model = pytest.importorskip("samba_ext.model")
    from samba_ext import memory
    from samba_ext.config import SambaConfig

    monkeypatch.setattr(memory, "available_memory", lambda: 1 << 30)
    m = model.Samba(SambaConfig.preset("samba-test"), seed=0)
    L = 2_000_000          # forward: logits alone 2M x 259 x 4 B = 1.9 GiB
    with pytest.raises(MemoryError, match="chunk_size") as ei:
        m.forward(np.zeros((1, L), np.int64))
    assert "GiB" in str(ei.value) and "nll()" in str(ei.value)
    with pytest.raises(MemoryError, match="chunk_size"):   # one 2M-token chunk: ~10 GiB
        m.prefill(np.zeros((1, L), np.int64), m.new_state(1), chunk_size=L)
    with pytest.raises(MemoryError):                       # nll's float64 chunk logits
        m.nll(np.zeros((1, L), np.int64), chunk_size=L)
    # ordinary sizes pass and give the same result as without the check
    t = np.arange(300, dtype=np.int64)[None] % 259
    lg = m.forward(t)
    monkeypatch.setenv("SAMBA_EXT_NO_MEMCHECK", "1")
    np.testing.assert_array_equal(lg, m.forward(t))
