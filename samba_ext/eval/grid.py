"""Evaluation grids as independent units of work: resumable runs, local or on Ray.

An evaluation's grid is split into *units*, each the same evaluation function called on a
one-point slice of the grid; a unit's finished cells are written to
``<out>/cells/<eval>/<unit key>.json`` (atomically) as soon as it finishes, and the full result
is assembled from the unit files in grid order. Running the same grid with the same ``out``
again skips the units whose files exist (resume); a unit's key is a hash of everything that
determines its numbers (evaluation, model identity, device, the unit's arguments), so a changed
argument never reuses a stale file.

Units (each keeps the exact work sharing of the evaluation itself, so a grid run gives the same
numbers as one call over the whole grid):

* passkey: one per (model, length) by default -- the prefix state is shared across the depths
  and trials of a length; ``passkey_unit="depth"`` gives one per (model, length, depth),
  sharing only across trials (same keys; same numbers as the whole-grid call with
  ``share_prefix=False``, equal up to float rounding of the shared prefix state otherwise).
* phonebook: one per (model, entries). perplexity: sliding mode one per (model, window);
  streaming mode one per model (a streaming pass carries its state, so it is sequential).
* throughput: one per (config, prompt length) and per (config, decode length).

:func:`run_grid` runs the units in this process or, with ``ray=``, as Ray actor tasks
(:mod:`samba_ext.eval.distributed`). Ctrl-C keeps every finished unit and returns a result
marked partial; a later run completes it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import os
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

from ..sampling import check_seed
from ._common import as_int_list
from .results import _REGISTRY, EvalResult, _umask, fmt_tokens

__all__ = ["Unit", "plan_units", "run_grid", "run_grids", "run_unit", "grid_call",
           "model_identity", "UnitStore", "EVALS"]

EVALS = ("passkey", "phonebook", "perplexity", "throughput")


def eval_function(eval_name: str) -> Callable[..., EvalResult]:
    """``samba_ext.eval.<eval_name>``, looked up on the package (never imported from here:
    the evaluation modules import this one for their ``ray=`` / ``out=`` hook, and the
    package has imported them before any of its submodules runs)."""
    if eval_name not in EVALS:
        raise ValueError(f"eval: expected one of {', '.join(EVALS)}, got {eval_name!r}")
    return getattr(sys.modules[__package__], eval_name)


def _default(eval_name: str, arg: str) -> Any:
    return inspect.signature(eval_function(eval_name)).parameters[arg].default


def _depth_list(depths: Any) -> tuple[bool, list[float]]:
    """(random, depths) as the passkey evaluation normalises them (it validates them too)."""
    if isinstance(depths, str):
        if depths != "random":
            raise ValueError(f"depths: expected a list of floats in [0, 1] or 'random', "
                             f"got {depths!r}")
        return True, []
    ds = [float(d) for d in (depths if isinstance(depths, (list, tuple)) or
                             hasattr(depths, "__array__") else [depths])]
    if not ds:
        raise ValueError("depths: expected at least one depth")
    for d in ds:
        if math.isnan(d) or not 0.0 <= d <= 1.0:
            raise ValueError(f"depths: {d!r} is outside [0, 1]")
    return False, list(dict.fromkeys(ds))
CELL_SCHEMA = "samba-ext.grid-unit"
CELL_SCHEMA_VERSION = 1


@dataclasses.dataclass
class Unit:
    """One unit of a grid: ``kwargs`` for the evaluation function (a one-point slice).

    Attributes: eval_name; model (spec string, or None for the default / throughput); kwargs;
    label (for progress); work (tokens, the progress bar's throughput unit); key (hash).
    """

    eval_name: str
    model: Any
    kwargs: dict
    label: str
    work: float
    key: str = ""


def model_identity(model: Any, seed: int = 0) -> str:
    """What distinguishes one model from another for resuming: the file's size and mtime
    for a file, the spec for a bundled name / ``random:PRESET`` (with the seed), the parameter
    hash for an in-memory model."""
    if model is None:
        from ._common import DEFAULT_MODEL, _bundled_file

        model = DEFAULT_MODEL
        f = _bundled_file(model)
        return f"default:{os.path.getsize(f) if os.path.isfile(f) else 'random'}:seed{seed}"
    if isinstance(model, (str, os.PathLike)):
        spec = os.fspath(model)
        if os.path.isfile(spec):
            st = os.stat(spec)
            return f"file:{os.path.abspath(spec)}:{st.st_size}:{st.st_mtime_ns}"
        if spec.startswith("random:"):
            return f"{spec}:seed{seed}"
        return f"name:{spec}"
    from ._common import model_hash

    h, _ = model_hash(model)
    return f"object:{h}"


def _jsonable(v: Any) -> Any:
    import numpy as np

    if isinstance(v, np.ndarray):
        return {"ndarray": str(v.dtype), "shape": list(v.shape),
                "sha256": hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()}
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if hasattr(v, "item"):
        return v.item()
    return repr(v)


def _unit_key(eval_name: str, model_id: str, device: str, kwargs: dict) -> str:
    f = kwargs.get("file")
    data = None
    if isinstance(f, (str, os.PathLike)) and os.path.isfile(f):
        st = os.stat(f)           # perplexity --file: a changed file is another grid
        data = [os.path.abspath(f), st.st_size, st.st_mtime_ns]
    doc = json.dumps({"eval": eval_name, "model": model_id, "device": device, "data": data,
                      "kwargs": _jsonable(kwargs)}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:24]


# ----------------------------------------------------------------------- planning ---
def _passkey_units(kw: dict, split: str) -> list[tuple[dict, str, float]]:
    lengths = list(dict.fromkeys(as_int_list(
        list(kw.get("lengths", _default("passkey", "lengths"))), "lengths")))
    random_depth, depth_list = _depth_list(kw.get("depths", _default("passkey", "depths")))
    trials = int(kw.get("trials", _default("passkey", "trials")))
    out = []
    for L in lengths:
        if split == "depth" and not random_depth:
            for d in depth_list:
                out.append(({**kw, "lengths": [L], "depths": [d]},
                            f"{fmt_tokens(L)} depth {d:g}", float(L * trials)))
        else:
            nd = 1 if random_depth else len(depth_list)
            out.append(({**kw, "lengths": [L], "depths": "random" if random_depth else depth_list},
                        fmt_tokens(L), float(L * trials * nd)))
    return out


def _phonebook_units(kw: dict) -> list[tuple[dict, str, float]]:
    entries = list(dict.fromkeys(as_int_list(
        list(kw.get("entries", _default("phonebook", "entries"))), "entries", minimum=3)))
    trials = int(kw.get("trials", _default("phonebook", "trials")))
    # work ~ tokens: about 12 byte-tokens per entry line
    return [({**kw, "entries": [n]}, f"{n} entries", float(12 * n * trials)) for n in entries]


def _perplexity_units(kw: dict) -> list[tuple[dict, str, float]]:
    wins = kw.get("context_lengths")
    if kw.get("mode", "streaming") == "sliding" and wins:
        wins = list(dict.fromkeys(int(w) for w in wins))
        return [({**kw, "context_lengths": [W]}, f"window {fmt_tokens(W)}", float(W)) for W in wins]
    return [(dict(kw), "stream", float(kw.get("n_tokens") or 65536))]


def _throughput_units(kw: dict) -> list[tuple[dict, str, float]]:
    def get(k: str) -> Any:
        return kw.get(k, _default("throughput", k))

    configs = list(get("configs"))
    if not all(isinstance(c, str) for c in configs):
        raise TypeError("configs: a throughput grid takes preset names (strings)")
    pls = list(get("prompt_lengths") or [])
    gls = list(get("gen_lengths") or [])
    total, bs = int(get("total_tokens")), int(get("batch_size"))
    out = []
    for c in configs:
        for L in pls:
            out.append(({**kw, "configs": [c], "prompt_lengths": [int(L)], "gen_lengths": []},
                        f"{c} prefill {fmt_tokens(L)}", float(total)))
        for G in gls:
            out.append(({**kw, "configs": [c], "prompt_lengths": [], "gen_lengths": [int(G)]},
                        f"{c} decode {fmt_tokens(G)}", float(G * bs)))
    return out


def plan_units(eval_name: str, model: Any, kwargs: dict, *, device: str = "cpu",
               passkey_unit: str = "length", model_id: str | None = None) -> list[Unit]:
    """The units of one model's grid, in grid order, each with its resume key."""
    if passkey_unit not in ("length", "depth"):
        raise ValueError(f"passkey_unit: expected 'length' or 'depth', got {passkey_unit!r}")
    # every argument explicit (the defaults filled in), so that a unit's key does not depend
    # on which arguments were spelled out
    params = inspect.signature(eval_function(eval_name)).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise TypeError(f"{eval_name}: unexpected argument(s) {', '.join(unknown)}")
    # (workers: how many trials run at once in the unit's process; not part of the result)
    skip = ("model", "progress", "device", "ray", "out", "workers")
    kw = {k: kwargs.get(k, p.default) for k, p in params.items()
          if k not in skip and (k in kwargs or p.default is not inspect.Parameter.empty)}
    if eval_name == "passkey":
        parts = _passkey_units(kw, passkey_unit)
    elif eval_name == "phonebook":
        parts = _phonebook_units(kw)
    elif eval_name == "perplexity":
        parts = _perplexity_units(kw)
    else:
        parts = _throughput_units(kw)
    seed = check_seed(kw.get("seed") or 0)
    mid = model_id if model_id is not None else (
        "throughput" if eval_name == "throughput" else model_identity(model, seed))
    units = []
    for ukw, label, work in parts:
        units.append(Unit(eval_name, model, ukw, label, work,
                          _unit_key(eval_name, mid, device, ukw)))
    return units


# ---------------------------------------------------------------------- execution ---
class Interrupted(Exception):
    """A unit's evaluation was stopped by Ctrl-C; ``output`` holds its finished cells."""

    def __init__(self, label: str, output: dict | None = None) -> None:
        super().__init__(label)
        self.output = output


def run_unit(unit: Unit, model: Any, device: str = "cpu", progress: bool = False) -> dict:
    """Run one unit in this process; returns its JSON-able output (cells, params, model,
    notes, seed, time_s). Raises :class:`Interrupted` if Ctrl-C stopped it midway.
    ``progress``: the evaluation's own progress bars."""
    fn = eval_function(unit.eval_name)
    try:
        if unit.eval_name == "throughput":
            res = fn(progress=progress, device=device, **unit.kwargs)
        else:
            res = fn(model, progress=progress, **unit.kwargs)
    except KeyboardInterrupt as e:   # EvalInterrupted carries the unit's finished cells
        res = getattr(e, "result", None)
        if res is None:
            raise
    d = res.to_dict()
    out = {"cells": d["cells"], "params": d["params"], "model": d["model"],
           "notes": d["notes"], "seed": d["seed"], "time_s": d["time_s"]}
    if res.partial:
        raise Interrupted(unit.label, out)
    return out


class UnitStore:
    """``<out>/cells/<eval>/<key>.json``: one file per finished unit, written atomically."""

    def __init__(self, out: str | os.PathLike, eval_name: str):
        self.dir = os.path.join(os.fspath(out), "cells", eval_name)

    def path(self, unit: Unit) -> str:
        return os.path.join(self.dir, unit.key + ".json")

    def load(self, unit: Unit) -> dict | None:
        try:
            with open(self.path(unit), encoding="utf-8") as fh:
                doc = json.load(fh)
        except (OSError, ValueError):
            return None       # missing, or torn by a crash before the rename: recompute
        if (not isinstance(doc, dict) or doc.get("schema") != CELL_SCHEMA
                or doc.get("key") != unit.key or "output" not in doc):
            return None
        return doc["output"]

    def save(self, unit: Unit, output: dict) -> None:
        os.makedirs(self.dir, exist_ok=True)
        doc = {"schema": CELL_SCHEMA, "schema_version": CELL_SCHEMA_VERSION, "key": unit.key,
               "eval": unit.eval_name, "unit": unit.label, "kwargs": _jsonable(unit.kwargs),
               "output": output}
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".unit-", suffix=".json.tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                if hasattr(os, "fchmod"):
                    os.fchmod(fh.fileno(), 0o666 & ~_umask())
                json.dump(doc, fh)
            os.replace(tmp, self.path(unit))
        except BaseException:
            try:
                os.remove(tmp)
            except OSError:
                pass
            raise


def _merge_params(eval_name: str, outputs: list[dict], kwargs: dict,
                  units: list[Unit]) -> dict:
    p = dict(outputs[0]["params"])
    if eval_name == "passkey":
        p["lengths"] = list(dict.fromkeys(L for u in units for L in u.kwargs["lengths"]))
        ds = [u.kwargs["depths"] for u in units]
        p["depths"] = "random" if ds[0] == "random" else list(
            dict.fromkeys(float(d) for x in ds for d in x))
    elif eval_name == "phonebook":
        p["entries"] = [u.kwargs["entries"][0] for u in units]
    elif eval_name == "perplexity" and p.get("mode") == "sliding" and len(units) > 1:
        p["context_lengths"] = [u.kwargs["context_lengths"][0] for u in units]
    elif eval_name == "throughput":
        p["configs"] = list(dict.fromkeys(u.kwargs["configs"][0] for u in units))
        p["prompt_lengths"] = list(dict.fromkeys(L for u in units
                                                 for L in u.kwargs["prompt_lengths"]))
        p["gen_lengths"] = list(dict.fromkeys(G for u in units for G in u.kwargs["gen_lengths"]))
        models: dict = {}
        for o in outputs:
            models.update(o["params"].get("models", {}))
        p["models"] = models
    return p


def assemble(eval_name: str, units: list[Unit], outputs: dict[str, dict], kwargs: dict,
             time_s: float, interrupted: bool,
             unfinished: dict[str, dict] | None = None) -> EvalResult:
    """The evaluation's result object from the finished units (grid order), plus the
    finished cells of units that Ctrl-C stopped midway (``unfinished``, not kept on disk)."""
    cls = _REGISTRY[eval_name]
    unfinished = unfinished or {}
    partial = interrupted or sum(u.key in outputs for u in units) < len(units)
    done = [outputs[u.key] if u.key in outputs else unfinished[u.key] for u in units
            if u.key in outputs or (u.key in unfinished and unfinished[u.key]["cells"])]
    if not done:
        return cls(params={k: _jsonable(v) for k, v in kwargs.items()}, cells=[],
                   partial=True, time_s=time_s, seed=kwargs.get("seed"))
    cells = [c for o in done for c in o["cells"]]
    model = dict(done[0]["model"])
    params = _merge_params(eval_name, done, kwargs, units)
    if eval_name == "throughput":
        model["name"] = ", ".join(params["configs"])
    notes = list(dict.fromkeys(n for o in done for n in o["notes"]))
    return cls(params=params, cells=cells, model=model, seed=done[0]["seed"], partial=partial,
               time_s=time_s, notes=notes)


class _Bar:
    """One progress bar (stderr) over all units, with the tokens/s of the whole run."""

    def __init__(self, enabled: bool, units: list[Unit], done: int, desc: str):
        from ._common import _tqdm_class

        tqdm = _tqdm_class() if enabled else None
        self.bar = None if tqdm is None else tqdm(
            total=len(units), initial=done, desc=desc, unit="cell", dynamic_ncols=True,
            file=sys.stderr, smoothing=0.05)
        self.work = 0.0
        self.t0 = time.perf_counter()

    def advance(self, unit: Unit) -> None:
        self.work += unit.work
        if self.bar is not None:
            dt = time.perf_counter() - self.t0
            self.bar.set_postfix({"last": unit.label,
                                  "tok_s": f"{self.work / dt:,.0f}" if dt > 0 else "-"},
                                 refresh=False)
            self.bar.update(1)

    def write(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_grid(eval_name: str, model: Any = None, *, out: str | os.PathLike | None = None,
             ray: Any = None, device: str = "cpu", passkey_unit: str = "length",
             progress: bool = True, resume: bool = True,
             on_unit: Callable[[Unit], None] | None = None,
             ray_options: dict | None = None, **kwargs: Any) -> EvalResult:
    """Run ``eval_name`` over its grid unit by unit (see the module docstring).

    Args:
        eval_name: "passkey", "phonebook", "perplexity" or "throughput".
        model: a Samba (local runs only), a name/path, ``random:PRESET`` or None (the
            default model); unused for throughput (``configs=`` names the models).
        out: directory for the unit files (``<out>/cells/<eval>/``); None keeps nothing
            (no resume).
        ray: None (this process), True / "local" (start a local Ray cluster), "auto" (the
            running cluster) or an address ("HOST:PORT", "ray://HOST:PORT").
        device: "cpu" or "cuda" (with Ray: one GPU per worker).
        passkey_unit: passkey units per "length" (default) or per "depth".
        resume: skip units whose files exist in ``out`` (default True).
        on_unit: called in the worker with each unit before it runs (tests, logging).
        ray_options: extra options for the workers (``num_cpus``, ``num_gpus``,
            ``max_workers``, ``max_retries``).
        **kwargs: the evaluation's own arguments (lengths, depths, trials, seed, ...).
    Returns:
        The evaluation's result object (same schema as a direct call), ``partial=True`` when
        interrupted. Ctrl-C keeps every finished unit in ``out``.
    """
    t0 = time.perf_counter()
    if eval_name == "throughput" and model is not None:
        kwargs.setdefault("configs", [model] if isinstance(model, str) else model)
        model = None
    units = plan_units(eval_name, model, kwargs, device=device, passkey_unit=passkey_unit)
    outputs, unfinished, interrupted = _execute(eval_name, units, out, ray, device, progress,
                                                resume, on_unit, ray_options)
    return assemble(eval_name, units, outputs, kwargs, time.perf_counter() - t0, interrupted,
                    unfinished)


def run_grids(eval_name: str, models: Sequence[Any], **options: Any) -> dict[str, EvalResult]:
    """Several models' grids (model x length x ...) in one run: with Ray all their units share
    the worker pool. ``models``: names or paths (Samba objects for local runs); the other
    arguments as :func:`run_grid`. Returns ``{str(model): result}`` in the given order."""
    if eval_name == "throughput":
        raise ValueError("throughput: pass the models as configs=[...] to run_grid")
    models = list(models)
    labels = [os.fspath(m) if isinstance(m, (str, os.PathLike)) else
              getattr(m, "name", None) or f"model{i}" for i, m in enumerate(models)]
    if not models or len(set(labels)) != len(labels):
        raise ValueError(f"models: expected distinct models, got {labels}")
    t0 = time.perf_counter()
    keys = ("out", "ray", "device", "progress", "resume", "on_unit", "ray_options")
    run = {k: options.pop(k) for k in keys if k in options}
    unit_opt = options.pop("passkey_unit", "length")
    plans = [plan_units(eval_name, m, options, device=run.get("device", "cpu"),
                        passkey_unit=unit_opt) for m in models]
    units = [u for p in plans for u in p]
    outputs, unfinished, interrupted = _execute(
        eval_name, units, run.get("out"), run.get("ray"), run.get("device", "cpu"),
        run.get("progress", True), run.get("resume", True), run.get("on_unit"),
        run.get("ray_options"))
    dt = time.perf_counter() - t0
    return {lab: assemble(eval_name, p, outputs, options, dt, interrupted, unfinished)
            for lab, p in zip(labels, plans)}


def _execute(eval_name: str, units: list[Unit], out: Any, ray: Any, device: str,
             progress: bool, resume: bool, on_unit: Callable[[Unit], None] | None,
             ray_options: dict | None) -> tuple[dict[str, dict], dict[str, dict], bool]:
    """Run the units not already in ``out``: (outputs by key, unfinished outputs of units
    stopped midway, interrupted)."""
    store = UnitStore(out, eval_name) if out is not None else None
    outputs: dict[str, dict] = {}
    if store is not None and resume:
        for u in units:
            o = store.load(u)
            if o is not None:
                outputs[u.key] = o
    todo = [u for u in units if u.key not in outputs]
    # Local runs show the evaluation's own bars (tokens, ETA, prefill) unit by unit; Ray runs
    # one bar over all units with the cluster's tokens/s.
    distributed = bool(todo) and ray is not None and ray is not False
    bar = _Bar(progress and distributed, units, len(outputs), desc=f"{eval_name} grid")
    if outputs and progress:
        print(f"{eval_name}: resuming, {len(outputs)} of {len(units)} cells already in "
              f"{store.dir if store else ''}", file=sys.stderr)

    def finished(u: Unit, o: dict) -> None:
        outputs[u.key] = o
        if store is not None:
            store.save(u, o)
        bar.advance(u)

    interrupted = False
    unfinished: dict[str, dict] = {}
    try:
        if distributed:
            interrupted = _run_ray(todo, ray, device, finished, bar, on_unit,
                                   ray_options or {})
        elif todo:
            interrupted = _run_local(todo, device, finished, on_unit, unfinished,
                                     bool(progress))
    finally:
        bar.close()
    if interrupted and progress:
        print(f"{eval_name}: interrupted; {len(outputs)} of {len(units)} cells are done"
              + (f" and kept in {store.dir} (run the same command again to finish)"
                 if store is not None else ""), file=sys.stderr, flush=True)
    return outputs, unfinished, interrupted


def _run_ray(*args: Any) -> bool:
    """samba_ext.eval.distributed.run_units_ray, handed this module's unit runner (that
    module does not import this one)."""
    from .distributed import run_units_ray

    return run_units_ray(*args, runner=(load_unit_model, run_unit, Interrupted))


def load_unit_model(model: Any, device: str, seed: int = 0) -> Any:
    """A Samba object for ``model`` (as the CLI resolves ``--model``: None = the default)."""
    from ._common import get_model, resolve_model

    if model is None or isinstance(model, (str, os.PathLike)):
        return get_model(model, device=device, seed=seed, warn=False)
    return resolve_model(model, device)


def grid_call(eval_name: str, args: dict) -> EvalResult:
    """The ``ray=`` / ``out=`` hook of the evaluation functions: ``args`` is the function's
    ``locals()`` at entry (its arguments; other names are dropped). Raises EvalInterrupted
    with the partial result when the run was interrupted (its finished units stay in
    ``out``)."""
    params = inspect.signature(eval_function(eval_name)).parameters
    kw = {k: v for k, v in args.items() if k in params}
    model = kw.pop("model", None)
    if eval_name == "throughput":
        model = None
    r = run_grid(eval_name, model, out=kw.pop("out"), ray=kw.pop("ray"),
                 device=kw.pop("device", "cpu"), progress=kw.pop("progress", True), **kw)
    if r.partial:
        from ._run import EvalInterrupted
        raise EvalInterrupted(r, None)
    return r


def _run_local(todo: Sequence[Unit], device: str, finished: Callable[[Unit, dict], None],
               on_unit: Callable[[Unit], None] | None, unfinished: dict[str, dict],
               progress: bool = False) -> bool:
    """Units one after another in this process, each model loaded once; True when Ctrl-C
    stopped the run (the stopped unit's finished cells go to ``unfinished``)."""
    loaded: dict[Any, Any] = {}
    for u in todo:
        model = None
        if u.eval_name != "throughput":
            seed = int(u.kwargs.get("seed", 0) or 0)
            k = (u.model if isinstance(u.model, (str, os.PathLike, type(None))) else id(u.model),
                 seed)
            if k not in loaded:
                loaded[k] = load_unit_model(u.model, device, seed)
            model = loaded[k]
        try:
            if on_unit is not None:
                on_unit(u)
            out = run_unit(u, model, device, progress)
        except KeyboardInterrupt:
            return True
        except Interrupted as e:
            if e.output is not None:
                unfinished[u.key] = e.output
            return True
        finished(u, out)
    return False
