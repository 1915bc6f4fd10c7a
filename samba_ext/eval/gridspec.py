"""The evaluation grids and their one text syntax, shared by the Python API and the CLI.

``passkey(model)`` and ``samba-ext passkey`` run the same default ("quick") grid; the Samba
paper's grid is ``grid="paper"`` (``--grid paper``). Lengths and entries accept integers or
text such as ``"4K,8K,1M"`` (binary K/M/G multiples); depths accept numbers, ``"random"``,
a list ``"0,0.5,1"`` or an inclusive range ``"0:1:0.1"``.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

__all__ = ["GRIDS", "GridSpecError", "grid_defaults", "parse_count", "parse_lengths",
           "parse_depths", "split_list", "as_lengths", "as_depths"]


class GridSpecError(ValueError):
    """A grid given as text that cannot be parsed (the message says what to write)."""


#: name -> evaluation -> defaults. "quick": the default of both the CLI and the Python API
#: (passkey: 6 lengths x 11 depths x 2 trials, 1.4M prompt tokens); "paper": the Samba
#: paper's passkey grid (4K..256K x 11 depths x 5 trials, 28.6M tokens) and a longer
#: phonebook sweep.
GRIDS: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {
        "passkey": {"lengths": (1024, 2048, 4096, 8192, 16384, 32768),
                    "depths": tuple(i / 10 for i in range(11)), "trials": 2},
        "phonebook": {"entries": (20, 40, 80, 160, 320), "trials": 5},
    },
    "paper": {
        "passkey": {"lengths": (4096, 8192, 16384, 32768, 65536, 131072, 262144),
                    "depths": tuple(i / 10 for i in range(11)), "trials": 5},
        "phonebook": {"entries": (20, 40, 80, 160, 320, 480), "trials": 10},
    },
}


def grid_defaults(grid: str, eval_name: str) -> dict[str, Any]:
    """The defaults of ``eval_name`` in the named grid ("quick" or "paper")."""
    if grid not in GRIDS:
        raise ValueError(f"grid: expected one of {sorted(GRIDS)}, got {grid!r}")
    return dict(GRIDS[grid][eval_name])


_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
#: the largest count parse_count accepts (1024G = 2**40): more than any length, batch or
#: token count a run can hold (larger ones end in a one-line out-of-memory error anyway)
MAX_COUNT = 1 << 40


def parse_count(s: str, what: str = "value") -> int:
    """'4096' -> 4096, '4K' -> 4096, '1M' -> 1048576, '1.5K' -> 1536 (binary multiples)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*", s)
    if not m:
        raise GridSpecError(f"{what}: cannot parse {s!r}; use integers with an optional K/M "
                            "suffix, e.g. 4K,8K,1M")
    v = Fraction(m.group(1)) * _SUFFIX[m.group(2).upper()]   # exact, whatever the size
    if v.denominator != 1 or v < 1:
        raise GridSpecError(f"{what}: {s!r} is not a positive whole number")
    if v > MAX_COUNT:
        raise GridSpecError(f"{what}: {s!r} is more than {MAX_COUNT:,} (1024G)")
    return int(v)


def parse_lengths(s: str, what: str = "--lengths") -> list[int]:
    """'1K,4K,1M' -> [1024, 4096, 1048576]."""
    parts = split_list(s, what, "4K,8K,16K")
    return [parse_count(p, what) for p in parts]


def split_list(s: str, what: str, example: str) -> list[str]:
    """The items of a comma-separated list; an empty one (``1K,,2K``) is an error, not skipped."""
    parts = [p.strip() for p in s.split(",")]
    if parts == [""]:
        raise GridSpecError(f"{what}: expected a comma-separated list, e.g. {example}")
    if "" in parts:
        raise GridSpecError(f"{what}: item {parts.index('') + 1} of {s!r} is empty; remove the "
                            f"extra comma (e.g. {example})")
    return parts


def parse_depths(s: str, what: str = "--depths") -> list[float] | str:
    """'random', '0,0.5,1' or 'start:stop:step' (inclusive, e.g. '0:1:0.1' = 11 depths)."""
    s = s.strip()
    if s.lower() == "random":
        return "random"
    try:
        if ":" in s:
            parts = [float(p) for p in s.split(":")]
            if len(parts) != 3 or parts[2] <= 0:
                raise ValueError
            a, b, step = parts
            n = int(math.floor((b - a) / step + 1e-9)) + 1
            if n < 1:
                raise ValueError
            vals = [round(a + i * step, 10) for i in range(n)]
        else:
            vals = [float(p) for p in split_list(s, what, "0,0.5,1")]
    except GridSpecError:   # already says what is wrong (an empty item)
        raise
    except ValueError:
        raise GridSpecError(f"{what}: cannot parse {s!r}; use 'random', a list like 0,0.5,1 "
                            "or a range start:stop:step like 0:1:0.1") from None
    if not vals:
        raise GridSpecError(f"{what}: expected at least one depth")
    for d in vals:
        if math.isnan(d) or not 0.0 <= d <= 1.0:
            raise GridSpecError(f"{what}: depth {d:g} is outside [0, 1]")
    return vals


def as_lengths(v: Any, what: str) -> list[int]:
    """Lengths / entries from a list of ints, one int, or text ("4K,8K")."""
    if isinstance(v, str):
        return parse_lengths(v, what)
    if isinstance(v, (int,)) and not isinstance(v, bool):
        return [v]
    if isinstance(v, Sequence) or hasattr(v, "__iter__"):
        return list(v)
    raise TypeError(f"{what}: expected a list of integers or text like '4K,8K', got "
                    f"{type(v).__name__}")


def as_depths(v: Any, what: str = "depths") -> Any:
    """Depths from numbers, a list, "random", or text ("0:1:0.1", "0,0.5,1")."""
    if isinstance(v, str):
        return parse_depths(v, what)
    return v
