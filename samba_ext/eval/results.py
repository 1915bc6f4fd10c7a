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
import tempfile
from typing import Any, ClassVar

from ._common import fmt_tokens

__all__ = ["EvalResult", "load_result", "SCHEMA", "SCHEMA_VERSION", "format_table",
           "fmt_tokens", "machine_info"]

SCHEMA = "samba-ext.eval-result"
SCHEMA_VERSION = 1


def format_table(header: list[str], rows: list[list[Any]], title: str | None = None) -> str:
    """Right-aligned plain-text table (first column left-aligned)."""
    cells = [[str(h) for h in header]] + [[("" if v is None else str(v)) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in
                         enumerate(zip(r, widths))).rstrip()

    out = [] if title is None else [title]
    out.append(line(cells[0]))
    out.append("  ".join("-" * w for w in widths))
    out.extend(line(r) for r in cells[1:])
    return "\n".join(out)


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


def _umask() -> int:
    """The process umask, read without changing it where possible (Linux /proc), else the
    usual 0o022 (os.umask cannot be read without a racy set-and-restore)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


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
        # mkstemp: a fresh name created with O_EXCL, so a symlink planted in a shared output
        # directory (e.g. <out>/results.json.tmp -> victim) is never followed or written through
        fd, tmp = tempfile.mkstemp(dir=d or ".", prefix=".results-", suffix=".json.tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                if hasattr(os, "fchmod"):   # mkstemp creates 0600; results are shareable
                    os.fchmod(fh.fileno(), 0o666 & ~_umask())
                fh.write(self.to_json())
                fh.write("\n")
            os.replace(tmp, path)
        except BaseException:
            try:
                os.remove(tmp)
            except OSError:
                pass
            raise
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


def load_result(path_or_dict: str | os.PathLike | dict) -> EvalResult:
    """Read a ``results.json`` written by any evaluation back into its result class."""
    if isinstance(path_or_dict, dict):
        return EvalResult.from_dict(path_or_dict)
    with open(os.fspath(path_or_dict), encoding="utf-8") as fh:
        return EvalResult.from_dict(json.load(fh))


def mean_or_nan(xs: list[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else math.nan
