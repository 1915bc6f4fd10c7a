"""Result objects of the evaluations, their JSON schema, and plain-text tables.

Every evaluation returns a subclass of :class:`EvalResult`. ``result.to_dict()`` is the
``results.json`` document (``save_json`` writes it, :func:`load_result` reads any of them
back into the right class)::

    {
      "schema": "samba-ext.eval-result", "schema_version": 1,
      "eval": "passkey" | "phonebook" | "perplexity" | "throughput",
      "partial": false,                # true when Ctrl-C stopped the run: `cells` holds what finished
      "created": "2026-11-28T17:00:00+00:00",
      "package_version": "0.1.0",
      "seed": 0,
      "command": "samba-ext passkey ..." | null,
      "model": {"name", "source", "hash", "hash_of", "num_parameters", "config", "device",
                "random_weights", "note"},
      "machine": {... samba_ext._info.config_dict() ...},
      "params": {... the evaluation's arguments ...},
      "time_s": 12.3,
      "cells": [{...}, ...],           # one object per grid cell (schema per evaluation)
      "summary": {...},                # derived from the cells (per length / entries / bucket)
      "overall_accuracy": 0.95         # passkey and phonebook only
      "notes": ["..."]                 # e.g. the random-weights warning
    }

``EvalResult.from_dict(d).to_dict() == d`` for every document this module writes.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
from typing import Any, ClassVar

from ..atomic import atomic_write, write_text_atomic
from ..atomic import process_umask as _umask  # noqa: F401  (used by eval/grid.py)
from ._format import fmt_tokens, format_table

__all__ = ["EvalResult", "load_result", "SCHEMA", "SCHEMA_VERSION", "SCHEMA_FILE",
           "format_table", "fmt_tokens", "machine_info", "json_schema"]

SCHEMA = "samba-ext.eval-result"
SCHEMA_VERSION = 1
#: JSON Schema (draft 2020-12) of the results document, shipped with the package.
SCHEMA_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                           "results.schema.json")
PANDAS_HINT = ("to_dataframe() needs pandas, an optional extra: pip install pandas "
               "(to_csv() and to_rows() work without it)")


def json_schema() -> dict:
    """The JSON Schema of ``results.json`` (``samba_ext/data/results.schema.json``)."""
    with open(SCHEMA_FILE, encoding="utf-8") as fh:
        return json.load(fh)


def _scalar(v: Any) -> Any:
    """A CSV / table cell: scalars as they are, lists and dicts as compact JSON."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return json.dumps(v, separators=(",", ":"))


def machine_info() -> dict:
    """samba_ext._info.config_dict(), or an error note when the extension cannot report."""
    try:
        from .._info import config_dict

        return config_dict()
    except Exception as e:  # pragma: no cover - only when the build is broken
        return {"error": f"{type(e).__name__}: {e}"}


def _package_version() -> str:
    from .. import __version__

    return __version__


_REGISTRY: dict[str, type["EvalResult"]] = {}


class EvalResult:
    """Base class: cells + parameters + provenance. Subclasses add ``summary``/``table``.

    Attributes:
        params: the evaluation's arguments (JSON-able dict).
        cells: list of per-cell dicts (see each subclass).
        model: model provenance dict (see :func:`samba_ext.eval._common.model_info`).
        seed: the seed, or None.
        partial: True when the run was interrupted; ``cells`` holds the finished ones.
        time_s: wall time of the whole evaluation.
        notes: human-readable warnings (e.g. random weights) also printed with the table.
        command, machine, created, package_version: provenance.
    """

    eval_name: ClassVar[str] = ""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.eval_name:
            _REGISTRY[cls.eval_name] = cls

    def __init__(self, params: dict, cells: list[dict], model: dict | None = None,
                 seed: int | None = None, partial: bool = False, time_s: float = 0.0,
                 notes: list[str] | None = None, command: str | None = None,
                 machine: dict | None = None, created: str | None = None,
                 package_version: str | None = None):
        self.params = dict(params)
        self.cells = list(cells)
        self.model = dict(model or {})
        self.seed = seed
        self.partial = bool(partial)
        self.time_s = float(time_s)
        self.notes = list(notes or [])
        self.command = command
        self.machine = machine if machine is not None else machine_info()
        self.created = created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.package_version = package_version or _package_version()

    # --- derived -------------------------------------------------------------------
    def summary(self) -> dict:
        """Aggregates derived from ``cells`` (overridden per evaluation)."""
        return {}

    def table(self) -> str:
        """Readable plain-text table (overridden per evaluation)."""
        return json.dumps(self.cells, indent=1)

    def plot(self, path: str | os.PathLike | None = None, ax=None):
        """Draw the evaluation's figure with matplotlib (``pip install 'samba-ext[plot]'``).

        Returns the matplotlib Figure; saves a PNG when ``path`` is given."""
        from . import plots

        return plots.plot_result(self, path=path, ax=ax)

    def _top_level(self) -> dict:
        return {}

    # --- tables for pandas / CSV -----------------------------------------------------
    #: a per-trial list inside each cell (passkey, phonebook: "results"), if any
    trials_key: ClassVar[str | None] = None

    def to_rows(self, trials: bool = False) -> list[dict]:
        """One flat dict per cell (the per-trial list left out), or with ``trials=True`` one
        per trial, carrying its cell's fields (prefixed ``cell_`` where names collide).
        Every row also has ``eval`` and ``model``."""
        base = {"eval": self.eval_name, "model": self.model.get("name")}
        rows = []
        for c in self.cells:
            cell = {k: _scalar(v) for k, v in c.items() if k != self.trials_key}
            if trials and self.trials_key:
                for t in c.get(self.trials_key) or []:
                    row = dict(base)
                    row.update({(f"cell_{k}" if k in t else k): v for k, v in cell.items()})
                    row.update({k: _scalar(v) for k, v in t.items()})
                    rows.append(row)
            else:
                rows.append({**base, **cell})
        return rows

    def to_dataframe(self, trials: bool = False):
        """The cells (or with ``trials=True`` the trials) as a pandas DataFrame; pandas is
        optional (ImportError saying how to install it)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(PANDAS_HINT) from None
        return pd.DataFrame(self.to_rows(trials))

    def to_csv(self, path: str | os.PathLike, trials: bool = False) -> str:
        """Write :meth:`to_rows` as CSV (stdlib csv, atomically). Returns the path."""
        import csv

        rows = self.to_rows(trials)
        cols: list[str] = []
        for r in rows:
            cols.extend(k for k in r if k not in cols)
        with atomic_write(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
        return os.fspath(path)

    # --- JSON ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {
            "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "eval": self.eval_name,
            "partial": self.partial, "created": self.created,
            "package_version": self.package_version, "seed": self.seed,
            "command": self.command, "model": self.model, "machine": self.machine,
            "params": self.params, "time_s": self.time_s, "cells": self.cells,
            "summary": self.summary(), "notes": self.notes,
        }
        d.update(self._top_level())
        return d

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save_json(self, path: str | os.PathLike) -> str:
        """Write ``to_dict()`` as JSON (atomically: temp file + rename). Returns the path."""
        path = os.fspath(path)
        d = os.path.dirname(path)
        if d:
            os.makedirs(d, exist_ok=True)
        # a fresh O_EXCL temp name: a symlink planted in a shared output directory (e.g.
        # <out>/results.json.tmp -> victim) is never followed or written through
        write_text_atomic(path, self.to_json() + "\n")
        return path

    @classmethod
    def from_dict(cls, d: dict) -> "EvalResult":
        """Rebuild a result from ``to_dict()`` output (dispatches on ``d["eval"]``)."""
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise ValueError(f"not a samba-ext result document (expected schema {SCHEMA!r})")
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"unsupported schema_version {d.get('schema_version')!r}; this "
                             f"samba_ext reads version {SCHEMA_VERSION}")
        name = d.get("eval")
        sub = _REGISTRY.get(name)
        if sub is None:
            raise ValueError(f"unknown eval {name!r}; expected one of {sorted(_REGISTRY)}")
        if cls is not EvalResult and sub is not cls:
            raise ValueError(f"document is a {name!r} result, not {cls.eval_name!r}")
        return sub(params=d["params"], cells=d["cells"], model=d.get("model"),
                   seed=d.get("seed"), partial=d.get("partial", False),
                   time_s=d.get("time_s", 0.0), notes=d.get("notes"), command=d.get("command"),
                   machine=d.get("machine"), created=d.get("created"),
                   package_version=d.get("package_version"))

    # --- display -------------------------------------------------------------------
    def header(self) -> str:
        m = self.model
        bits = [f"{self.eval_name}: model {m.get('name', '?')}"]
        if m.get("num_parameters") is not None:
            bits.append(f"{m['num_parameters'] / 1e6:.2f}M params")
        if self.seed is not None:
            bits.append(f"seed {self.seed}")
        bits.append(f"{self.time_s:.1f} s")
        s = ", ".join(bits)
        if self.partial:
            s += "  [PARTIAL: interrupted, finished cells only]"
        return s

    def __str__(self) -> str:
        parts = [self.header()]
        parts += [f"NOTE: {n}" for n in self.notes]
        parts.append(self.table())
        return "\n".join(parts)

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} model={self.model.get('name')!r} cells={len(self.cells)}"
                f"{' partial' if self.partial else ''}>")

    def _repr_pretty_(self, p, cycle):  # IPython / Jupyter text display
        p.text(str(self) if not cycle else repr(self))

    def _repr_html_(self) -> str:  # Jupyter rich display
        import html

        parts = [f"<div><b>{html.escape(self.header())}</b>"]
        parts += [f"<p style='color:#a00'>NOTE: {html.escape(n)}</p>" for n in self.notes]
        parts.append(f"<pre>{html.escape(self.table())}</pre></div>")
        return "".join(parts)


def load_result(path_or_dict: str | os.PathLike | dict) -> EvalResult:
    """Read a ``results.json`` written by any evaluation back into its result class."""
    if isinstance(path_or_dict, dict):
        return EvalResult.from_dict(path_or_dict)
    with open(os.fspath(path_or_dict), encoding="utf-8") as fh:
        return EvalResult.from_dict(json.load(fh))


def mean_or_nan(xs: list[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else math.nan
