"""Run grid units (:mod:`samba_ext.eval.grid`) as Ray actor tasks.

A pool of actors, one per GPU (``device="cuda"``) or per CPU of the cluster, each loading a
model once and keeping it for all the units it runs. A unit goes to the next free actor; its
output comes back to the driver, which writes the unit file at once. An actor that dies (a
killed worker, a lost node) is restarted by Ray and the unit it was running is retried
(``max_retries``, default 3). Ctrl-C cancels the units in flight; the finished ones stay in
``out``. Ray is optional: ``pip install "samba-ext[ray]"`` (tested with Ray 2.60).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

__all__ = ["run_units_ray", "connect"]

_ACTOR_CLS: dict[str, Any] = {}


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ImportError("ray=/--ray needs Ray: pip install 'samba-ext[ray]' (or pip install "
                          "ray)") from None
    return ray


def connect(address: Any) -> Any:
    """``ray.init`` for ``address``: True / "local" starts a local cluster, "auto" joins the
    running one, anything else is a Ray address. Reuses an initialised Ray."""
    ray = _import_ray()
    if ray.is_initialized():
        return ray
    if address is True or address in ("local", ""):
        ray.init(include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": _worker_env()})
    elif isinstance(address, str):
        ray.init(address=address, log_to_driver=False, runtime_env={"env_vars": _worker_env()})
    else:
        raise ValueError(f"ray: expected True, 'local', 'auto' or an address, got {address!r}")
    return ray


def _worker_env() -> dict[str, str]:
    """Make the workers import this samba_ext (an in-place build or a source tree on the
    path of the driver, as in the test suite)."""
    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.environ.get("PYTHONPATH", "")
    parts = [pkg_root] + [p for p in path.split(os.pathsep) if p and p != pkg_root]
    return {"PYTHONPATH": os.pathsep.join(parts)}


def _actor_class(ray: Any) -> Any:
    cls = _ACTOR_CLS.get("cls")
    if cls is None:
        class GridWorker:
            """Keeps loaded models; runs units."""

            def __init__(self, runner: tuple, threads: int | None = None) -> None:
                self.load, self.run_unit = runner[0], runner[1]
                self.models: dict = {}
                if threads:
                    from .._info import set_num_threads

                    set_num_threads(int(threads))

            def run(self, unit: Any, device: str, on_unit: Callable[[Any], None] | None) -> dict:
                if on_unit is not None:
                    on_unit(unit)
                model = None
                if unit.eval_name != "throughput":
                    seed = int(unit.kwargs.get("seed", 0) or 0)
                    k = (unit.model, device, seed)
                    if k not in self.models:
                        self.models[k] = self.load(unit.model, device, seed)
                    model = self.models[k]
                return self.run_unit(unit, model, device)

            def loaded(self) -> int:
                return len(self.models)

        cls = _ACTOR_CLS["cls"] = ray.remote(GridWorker)
    return cls


def _pool_size(ray: Any, device: str, n_units: int, opts: dict) -> tuple[int, dict]:
    res = ray.cluster_resources()
    if device == "cuda":
        per = {"num_gpus": float(opts.get("num_gpus", 1)),
               "num_cpus": float(opts.get("num_cpus", 1))}
        have = res.get("GPU", 0) / max(per["num_gpus"], 1e-9)
        if have < 1:
            raise RuntimeError("ray: device=cuda but the Ray cluster has no GPU; start the "
                               "workers with GPUs or use device=cpu")
    else:
        per = {"num_cpus": float(opts.get("num_cpus", 1))}
        have = res.get("CPU", 1) / max(per["num_cpus"], 1e-9)
    n = max(1, min(int(have), n_units, int(opts.get("max_workers", 1 << 30))))
    return n, per


def run_units_ray(todo: Sequence[Any], address: Any, device: str,
                  finished: Callable[[Any, dict], None], bar: Any,
                  on_unit: Callable[[Any], None] | None, opts: dict, *,
                  runner: tuple) -> bool:
    """Run the units ``todo`` (:class:`samba_ext.eval.grid.Unit`) on Ray; ``finished(unit,
    output)`` as each completes (in completion order). ``runner``: (load_model(spec, device,
    seed), run_unit(unit, model, device), the exception class of an interrupted unit), from
    :mod:`samba_ext.eval.grid`. Returns True when Ctrl-C (or an interrupted unit) stopped
    the run."""
    interrupted_cls = runner[2]
    for u in todo:
        if u.model is not None and not isinstance(u.model, (str, os.PathLike)):
            raise TypeError("ray: pass the model as a name or path (each worker loads it), "
                            "not a loaded Samba object")
    ray = connect(address)
    retries = int(opts.get("max_retries", 3))
    n, per = _pool_size(ray, device, len(todo), opts)
    cls = _actor_class(ray)
    threads = int(per.get("num_cpus", 1)) if device != "cuda" else None
    actors = [cls.options(max_restarts=-1, max_task_retries=retries, **per).remote(
        runner[:2], threads) for _ in range(n)]
    queue = list(todo)
    attempts: dict[str, int] = {}
    pending: dict[Any, tuple[Any, Any]] = {}
    idle = list(actors)

    def submit() -> None:
        while queue and idle:
            u, a = queue.pop(0), idle.pop(0)
            pending[a.run.remote(u, device, on_unit)] = (u, a)

    interrupted = False
    try:
        submit()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            u, a = pending.pop(ref)
            idle.append(a)
            try:
                out = ray.get(ref)
            except ray.exceptions.RayActorError:
                # the actor died more often than its task retries allow: run it again
                attempts[u.key] = attempts.get(u.key, 0) + 1
                if attempts[u.key] > retries:
                    raise
                bar.write(f"ray: the worker running {u.label} died; retrying it")
                queue.insert(0, u)
                submit()
                continue
            except ray.exceptions.RayTaskError as e:
                cause = getattr(e, "cause", None)
                if isinstance(cause, (KeyboardInterrupt, interrupted_cls)):
                    interrupted = True
                    break
                raise (cause if isinstance(cause, Exception) else e) from None
            finished(u, out)
            submit()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        for ref in pending:
            try:
                ray.cancel(ref, force=True)
            except Exception:
                pass
        for a in actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:
                pass
    return interrupted
