"""Independent trials of an evaluation side by side on the CPU.

A small model (the bundled ones have d_model 128) keeps one core busy per prompt: its matrix
products and kernels are too small to split over threads. The evaluations therefore run up to
``workers`` trials at once, each with one kernel thread and one BLAS thread, and account for them
in submission order, so the results (and the JSON) are those of the serial run. On a GPU, or with
``workers=1``, a trial runs when it is submitted.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Optional


class Cancelled(Exception):
    """Raised inside a worker's trial when the evaluation is being stopped (Ctrl-C)."""


#: Models up to this many parameters run their trials side by side by default: their matrix
#: products are too small to use more than one core each. Larger models use every thread on
#: one trial (their products scale), and one trial's state at a time keeps memory bounded.
SMALL_MODEL_PARAMS = 100_000_000


def eval_workers(workers: Optional[int], model: Any, jobs: int) -> int:
    """The number of trials to run at once: ``workers`` if given (an int >= 1); else, for a
    model on the CPU with at most :data:`SMALL_MODEL_PARAMS` parameters, the kernels' thread
    count (at most ``jobs``); else 1."""
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers: expected an int >= 1 (or None for the default), got "
                             f"{workers!r}")
        return workers
    if str(getattr(model, "device", "cpu")).split(":")[0] != "cpu":
        return 1
    try:
        small = int(model.num_parameters()) <= SMALL_MODEL_PARAMS
    except Exception:  # noqa: BLE001 - a model without a parameter count: one at a time
        small = False
    if not small:
        return 1
    from .. import threads

    return max(1, min(threads.get_num_threads(), jobs))


class TrialPool:
    """``with TrialPool(n) as pool: fut = pool.submit(fn, *args)``; ``fn`` gets a ``slot``
    keyword (0 .. n - 1, e.g. for a progress bar's position) and should call
    :meth:`check` now and then (a prefill's progress callback does), which raises
    :class:`Cancelled` once the pool is stopping. While n > 1, the kernels and NumPy's BLAS
    run one thread each; the previous counts are restored on exit."""

    def __init__(self, workers: int):
        self.workers = workers
        self._stop = threading.Event()
        self._slots: "queue.Queue[int]" = queue.Queue()
        for s in range(workers):
            self._slots.put(s)
        self._ex: Optional[ThreadPoolExecutor] = None
        self._saved: Optional[tuple[int, Optional[int]]] = None

    def __enter__(self) -> "TrialPool":
        if self.workers > 1:
            from .. import threads

            blas = threads.blas_info()["threads"]
            self._saved = (threads.get_num_threads(), blas)
            threads.set_num_threads(1)
            if blas is not None:
                threads.set_blas_threads(1)
            self._ex = ThreadPoolExecutor(self.workers, thread_name_prefix="samba-eval")
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self._ex is not None:
                if exc[0] is not None:      # stopping early: running trials end at a check()
                    self._stop.set()
                ex, self._ex = self._ex, None
                ex.shutdown(wait=True, cancel_futures=True)
        finally:                            # (also when a second Ctrl-C cuts the wait short)
            self._stop.set()
            if self._saved is not None:
                from .. import threads

                n, blas = self._saved
                self._saved = None
                threads.set_num_threads(n)
                if blas is not None:
                    threads.set_blas_threads(blas)

    def check(self) -> None:
        """Raise :class:`Cancelled` if the pool is stopping."""
        if self._stop.is_set():
            raise Cancelled()

    def submit(self, fn: Callable[..., Any], *args: Any) -> "Future[Any]":
        if self._ex is None:            # serial: run now
            fut: "Future[Any]" = Future()
            try:
                fut.set_result(fn(*args, slot=0))
            except BaseException as e:  # noqa: BLE001 - re-raised by fut.result()
                fut.set_exception(e)
            return fut

        def run() -> Any:
            slot = self._slots.get()
            try:
                self.check()
                return fn(*args, slot=slot)
            finally:
                self._slots.put(slot)
        return self._ex.submit(run)
