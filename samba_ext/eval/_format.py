"""Plain-text formatting shared by the result classes and the figures (no imports of either,
so :mod:`samba_ext.eval.results` and :mod:`samba_ext.eval.plots` do not import each other)."""
from __future__ import annotations

from typing import Any

__all__ = ["fmt_tokens", "format_table", "fmt_depth"]


def fmt_tokens(n: int | float) -> str:
    """4096 -> '4K', 1048576 -> '1M', 1500 -> '1500' (exact binary multiples only)."""
    n = int(n)
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20}M"
    if n >= 1 << 10 and n % (1 << 10) == 0:
        return f"{n >> 10}K"
    return str(n)


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


def fmt_depth(d: Any) -> str:
    """A depth label: 0.25 -> '0.25', 0.5 -> '0.5', 1.0 -> '1', "random" as is (never rounded
    to one digit, which would show 0.25 as '0.2')."""
    return d if isinstance(d, str) else f"{float(d):.6g}"
