"""Figures for the evaluation results (matplotlib is an optional extra).

``pip install 'samba-ext[plot]'`` (or just ``pip install matplotlib``). Without it every
function here raises ImportError with that instruction; the evaluations and their JSON do not
need it.

* passkey: heatmap of accuracy, depth (rows) x length (columns)
* phonebook: accuracy vs number of entries
* perplexity: perplexity vs position / context length (streaming) or vs window (sliding)
* throughput: prefill tokens/s vs prompt length and decode tokens/s vs generation length
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ._common import fmt_tokens  # not from .results: results imports plots

__all__ = ["plot_result", "have_matplotlib", "MATPLOTLIB_HINT"]

MATPLOTLIB_HINT = ("plotting needs matplotlib, an optional extra: pip install 'samba-ext[plot]' "
                   "(or pip install matplotlib). The results JSON does not need it.")


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(ax: Any, path: Any, figsize: tuple[float, float]):
    """(fig, ax): the given ax; a pyplot figure for interactive use (Jupyter shows it); a
    backend-free Figure when only saving to a file (works headless, leaves pyplot alone)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(MATPLOTLIB_HINT) from None
    if ax is not None:
        return ax.figure, ax
    if path is None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.add_subplot(1, 1, 1)


def _finish(fig: Any, path: Any, title: str, ax: Any, result: Any) -> Any:
    m = result.model
    sub = f"{m.get('name', '?')}"
    if m.get("random_weights"):
        sub += " (RANDOM WEIGHTS)"
    if result.partial:
        sub += " [partial]"
    ax.set_title(f"{title}\n{sub}", fontsize=10)
    fig.tight_layout()
    if path is not None:
        path = os.fspath(path)
        d = os.path.dirname(path)
        if d:
            os.makedirs(d, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def _passkey(result: Any, ax: Any, path: Any):
    L, D, acc = result.accuracy_grid()
    fig, ax = _figure(ax, path, (1.2 + 0.9 * len(L), 1.4 + 0.38 * len(D)))
    masked = np.ma.masked_invalid(acc)
    im = ax.imshow(masked, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto",
                   interpolation="nearest")
    ax.set_xticks(range(len(L)))
    ax.set_xticklabels([fmt_tokens(x) for x in L])
    ax.set_yticks(range(len(D)))
    ax.set_yticklabels(["random" if d == "random" else f"{d:.1f}" for d in D])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("depth of the key")
    for i in range(len(D)):
        for j in range(len(L)):
            if not np.isnan(acc[i, j]):
                ax.text(j, i, f"{100 * acc[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="black")
    fig.colorbar(im, ax=ax, label="accuracy")
    s = result.summary()
    ov = s.get("overall_accuracy")
    return _finish(fig, path, "passkey retrieval" + (f" (overall {100 * ov:.1f}%)"
                                                       if ov is not None else ""), ax, result)


def _phonebook(result: Any, ax: Any, path: Any):
    fig, ax = _figure(ax, path, (5.4, 3.6))
    x = [c["entries"] for c in result.cells]
    y = [c["accuracy"] for c in result.cells]
    ax.plot(x, y, "o-")
    ax.set_ylim(-0.03, 1.03)
    if len(x) > 1 and max(x) / min(x) > 4:
        ax.set_xscale("log", base=2)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{c['entries']}\n{fmt_tokens(int(round(c['tokens_mean'])))} tok"
                        for c in result.cells], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("phone book entries (mean prompt tokens)")
    ax.set_ylabel("accuracy (exact match)")
    ax.grid(alpha=0.3)
    return _finish(fig, path, "phonebook", ax, result)


def _perplexity(result: Any, ax: Any, path: Any):
    fig, ax = _figure(ax, path, (5.4, 3.6))
    b = result.cells_of("bucket")
    if b:
        xb = [c["end"] for c in b if c["tokens"]]
        ax.plot(xb, [c["ppl"] for c in b if c["tokens"]], "o-", label="per position bucket")
    ctx = result.cells_of("context")
    if ctx:
        ax.plot([c["context_length"] for c in ctx], [c["ppl"] for c in ctx], "s--",
                label="cumulative (first L tokens)")
    w = result.cells_of("window")
    if w:
        ax.plot([c["window"] for c in w], [c["ppl"] for c in w], "o-",
                label=f"sliding window (score={result.params.get('score')})")
    xs = [c.get("end") or c.get("context_length") or c.get("window") for c in result.cells]
    xs = [v for v in xs if v]
    if xs and max(xs) / max(1, min(xs)) > 8:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(_token_formatter())
    ax.set_xlabel("context length / position (tokens)")
    ax.set_ylabel("perplexity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _finish(fig, path, "perplexity", ax, result)


def _token_formatter():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _: fmt_tokens(v) if v >= 1 and float(v).is_integer()
                         and (int(v) & (int(v) - 1)) == 0 else "")


def _throughput(result: Any, ax: Any, path: Any):
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(MATPLOTLIB_HINT) from None
    if ax is not None:
        raise ValueError("the throughput plot draws two panels; pass ax=None")
    if path is None:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(9.0, 3.6))
    else:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(9.0, 3.6))
    a1, a2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for name in result.configs():
        pre = [c for c in result.cells if c["config"] == name and c["kind"] == "prefill"]
        dec = [c for c in result.cells if c["config"] == name and c["kind"] == "decode"]
        if pre:
            a1.plot([c["prompt_length"] for c in pre], [c["tokens_per_s"] for c in pre], "o-",
                    label=name)
        if dec:
            a2.plot([c["gen_length"] for c in dec], [c["tokens_per_s"] for c in dec], "o-",
                    label=name)
    for a, xl, t in ((a1, "prompt length", "prefill"), (a2, "generation length", "decode")):
        a.set_xscale("log", base=2)
        a.xaxis.set_major_formatter(_token_formatter())
        a.set_xlabel(f"{xl} (tokens)")
        a.set_ylabel("tokens / s")
        a.set_title(t, fontsize=10)
        a.grid(alpha=0.3)
        if a.lines:
            a.legend(fontsize=8)
    fig.suptitle("throughput (random weights)", fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(os.fspath(path), dpi=120)
    return fig


_PLOTTERS = {"passkey": _passkey, "phonebook": _phonebook, "perplexity": _perplexity,
             "throughput": _throughput}


def plot_result(result: Any, path: str | os.PathLike | None = None, ax: Any = None):
    """Draw ``result``'s figure; save a PNG to ``path`` when given. Returns the Figure."""
    fn = _PLOTTERS.get(result.eval_name)
    if fn is None:
        raise ValueError(f"no plot for {result.eval_name!r} results")
    return fn(result, ax, path)

