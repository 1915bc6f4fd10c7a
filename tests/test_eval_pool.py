"""samba_ext.eval._pool: trials side by side (eval_workers, TrialPool)."""
from __future__ import annotations

import threading

import pytest

from samba_ext import threads
from samba_ext.eval._pool import SMALL_MODEL_PARAMS, Cancelled, TrialPool, eval_workers


class _Model:
    def __init__(self, device: str, params: int):
        self.device, self.params = device, params

    def num_parameters(self) -> int:
        return self.params


def test_eval_workers_defaults_and_checks():
    small, big = _Model("cpu", 10**6), _Model("cpu", SMALL_MODEL_PARAMS + 1)
    assert eval_workers(None, _Model("cuda", 10**6), 10) == 1
    assert eval_workers(None, _Model("cuda:1", 10**6), 10) == 1
    assert eval_workers(None, small, 1) == 1
    assert eval_workers(None, small, 100) == max(1, threads.get_num_threads())
    assert eval_workers(None, big, 100) == 1          # large models: all threads on one trial
    assert eval_workers(None, object(), 100) == 1     # no parameter count: one at a time
    assert eval_workers(3, _Model("cuda", 1), 1) == 3  # an explicit count is taken as given
    for bad in (0, -2, True, 2.0, "2"):
        with pytest.raises(ValueError, match="workers"):
            eval_workers(bad, small, 4)


def test_serial_pool_runs_at_submit_and_keeps_exceptions():
    with TrialPool(1) as pool:
        seen = []
        fut = pool.submit(lambda x, slot: seen.append((x, slot)) or x * 2, 21)
        assert seen == [(21, 0)] and fut.result() == 42      # ran before submit returned
        bad = pool.submit(lambda slot: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            bad.result()


def test_parallel_pool_one_thread_each_and_stop_on_error():
    n0, blas0 = threads.get_num_threads(), threads.blas_info()["threads"]
    started = threading.Event()
    seen: dict = {}

    def slow(slot):
        seen["inner"] = threads.get_num_threads()
        started.set()
        pool._stop.wait()            # until the block below fails (no time limit)
        pool.check()                 # so this raises Cancelled
        return "finished"

    with pytest.raises(RuntimeError, match="stop"):
        with TrialPool(2) as pool:
            fut = pool.submit(slow)
            started.wait()
            raise RuntimeError("stop")
    assert seen["inner"] == 1
    with pytest.raises(Cancelled):
        fut.result()
    assert threads.get_num_threads() == n0 and threads.blas_info()["threads"] == blas0


def test_parallel_pool_results_and_slots():
    with TrialPool(3) as pool:
        futs = [pool.submit(lambda i, slot: (i * i, slot), i) for i in range(12)]
        out = [f.result() for f in futs]
    assert [v for v, _ in out] == [i * i for i in range(12)]
    assert {s for _, s in out} <= {0, 1, 2}
