"""Reporting for benchmarks/gpu_model.py: the issue's target ratios, the printed tables, the
markdown section, the JSON and the two plots (pure functions of the result dict, so they run
without a GPU)."""
from __future__ import annotations

import io
import json
import os
from typing import Any, Callable, Optional

from samba_ext.atomic import atomic_write, write_text_atomic
from samba_ext.eval._format import fmt_tokens, format_table

HF_LABEL = "transformers-llama"
BEGIN = "<!-- gpu_model.py: begin (this section is rewritten by each run) -->"
END = "<!-- gpu_model.py: end -->"
JSON_NAME = "gpu_model.json"
MD_NAME = "gpu_model_figure3.md"
PLOT_NAMES = ("gpu_model_prefill.png", "gpu_model_decode.png")


# ---------------------------------------------------------------------- lookups ---
def role(label: str, info: dict[str, Any]) -> Optional[str]:
    """'hf', 'samba', 'llama', 'mistral' or None, from a model's entry in res['models']."""
    if label == HF_LABEL:
        return "hf"
    kinds = set(info.get("layer_types") or {})
    if not kinds:           # a model that failed to build: its kinds from its name
        try:
            from samba_ext.eval.throughput import resolve_config
            kinds = set(resolve_config(label).layer_types)
        except (ValueError, TypeError):
            return None
    if "mamba" in kinds and "swa" in kinds:
        return "samba"
    if kinds == {"attn"}:
        return "llama"
    if kinds == {"swa"}:
        return "mistral"
    return None


def model_of(res: dict[str, Any], want: str) -> Optional[str]:
    """Label of the first model of the run with role ``want`` (measured or failed: a failed
    one gives its error as the reason a ratio is missing)."""
    for label, info in res.get("models", {}).items():
        if role(label, info) == want:
            return label
    return None


def prefill_tps(res: dict[str, Any], label: Optional[str], L: int) -> Optional[float]:
    for c in res.get("prefill", []):
        if c["model"] == label and c.get("length") == L and "tokens_per_s" in c:
            return c["tokens_per_s"]
    return None


def decode_cell(res: dict[str, Any], label: Optional[str], ctx: int, key: str = "decode"
                ) -> Optional[dict[str, Any]]:
    """The fastest measured decode cell of ``label`` at context ``ctx`` (over cache kinds)."""
    cells = [c for c in res.get(key, []) if c["model"] == label and c.get("context") == ctx
             and "ms_per_step" in c]
    return min(cells, key=lambda c: c["ms_per_step"]) if cells else None


def why_missing(res: dict[str, Any], label: Optional[str], what: str, **match: Any) -> str:
    if label is None:
        return "model not in this run"
    err = res.get("models", {}).get(label, {}).get("error")
    if err:
        return f"{label}: {err}"
    for c in res.get(what, []):
        if c["model"] == label and all(c.get(k) == v for k, v in match.items()):
            return c.get("skipped") or c.get("error") or "not measured"
    return "not measured"


# ---------------------------------------------------------------------- targets ---
def verdict(value: Optional[float], target: float, higher: bool) -> str:
    """'met' / 'not met (...)' with the shortfall, or 'not measured'."""
    if value is None:
        return "not measured"
    if (value >= target) if higher else (value <= target):
        return "met"
    if higher:
        return f"not met: {target / value:.2f}x short" if value > 0 else "not met"
    return f"not met: {value / target:.2f}x over"


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's target ratios from the measured cells (each with met / not met)."""
    p = res.get("params", {})
    hf, samba, llama = model_of(res, "hf"), model_of(res, "samba"), model_of(res, "llama")
    out: list[dict[str, Any]] = []

    def add(name: str, num: Optional[float], den: Optional[float], target: float,
            higher: bool, note: str, goal: Optional[float] = None) -> None:
        ratio = num / den if num is not None and den else None
        out.append({"target": name, "value": ratio, "target_value": target, "goal": goal,
                    "higher_is_better": higher, "verdict": verdict(ratio, target, higher),
                    "note": note})

    Lmax = max(p.get("lengths") or [0])
    a, b = prefill_tps(res, samba, Lmax), prefill_tps(res, hf, Lmax)
    add(f"samba prefill at {fmt_tokens(Lmax)} / transformers-Llama", a, b, 3.73, True,
        "" if a is not None and b is not None else
        "; ".join(why_missing(res, m, "prefill", length=Lmax) for m, v in ((samba, a), (hf, b))
                  if v is None), goal=5.0)
    Cmax = max(p.get("contexts") or [0])
    a2, b2 = decode_cell(res, samba, Cmax), decode_cell(res, hf, Cmax)
    add(f"samba decode batch {p.get('decode_batch')} at {fmt_tokens(Cmax)} / transformers-Llama",
        a2 and a2["tokens_per_s"], b2 and b2["tokens_per_s"], 3.64, True,
        (f"transformers with its faster cache here ({b2['cache']})" if b2 else
         why_missing(res, hf, "decode", context=Cmax)) if a2 else
        why_missing(res, samba, "decode", context=Cmax), goal=6.0)
    c1 = decode_cell(res, samba, p.get("batch1_context", 0), key="batch1")
    add(f"samba batch-1 ms/token at {fmt_tokens(p.get('batch1_context', 0))} / weight-read "
        "floor", c1 and c1["ms_per_step"], c1 and c1["floor_ms"], 1.5, False,
        f"floor {c1['floor_ms']:.3f} ms = {c1['weight_read_bytes'] / 1e9:.2f} GB at "
        f"{res['copy']['bandwidth_Bps'] / 1e12:.2f} TB/s" if c1 else
        why_missing(res, samba, "batch1"))
    for L in p.get("lengths", []):
        a3, b3 = prefill_tps(res, llama, L), prefill_tps(res, hf, L)
        add(f"our llama prefill at {fmt_tokens(L)} / transformers-Llama", a3, b3, 0.9, True,
            "" if a3 is not None and b3 is not None else
            "; ".join(why_missing(res, m, "prefill", length=L)
                      for m, v in ((llama, a3), (hf, b3)) if v is None))
    return out


# ------------------------------------------------------------------------ tables ---
def _num(v: Optional[float], fmt: str = "{:,.0f}") -> str:
    return "-" if v is None else fmt.format(v)


def _cell_text(c: Optional[dict[str, Any]], key: str, fmt: str) -> str:
    if c is None:
        return "-"
    if key in c:
        return fmt.format(c[key])
    return "skipped" if "skipped" in c else ("error" if "error" in c else "-")


def _rows_by_model(res: dict[str, Any], what: str) -> list[tuple[str, Optional[str]]]:
    """(model, cache kind) pairs in run order."""
    seen: list[tuple[str, Optional[str]]] = []
    for c in res.get(what, []):
        k = (c["model"], c.get("cache") if c["model"] == HF_LABEL else None)
        if k not in seen:
            seen.append(k)
    return seen


def tables(res: dict[str, Any]) -> str:
    p = res.get("params", {})
    parts = []
    Ls = p.get("lengths", [])
    rows = []
    for label, _ in _rows_by_model(res, "prefill"):
        d = {c["length"]: c for c in res["prefill"] if c["model"] == label}
        rows.append([label] + [_cell_text(d.get(L), "tokens_per_s", "{:,.0f}") for L in Ls])
    for label, info in res.get("models", {}).items():
        if "error" in info:
            rows.append([label] + ["not run"] * len(Ls))
    parts.append(format_table(["prefill tokens/s"] + [fmt_tokens(L) for L in Ls], rows,
                              title=f"Prefill, {fmt_tokens(p.get('total_tokens', 0))} tokens "
                                    "per point (batch = total / length)"))
    Cs = p.get("contexts", [])
    rows = []
    for label, cache in _rows_by_model(res, "decode"):
        d = {c["context"]: c for c in res["decode"] if c["model"] == label
             and (cache is None or c.get("cache") == cache)}
        name = label + (f" ({cache})" if cache else "")
        rows.append([name] + [_cell_text(d.get(C), "tokens_per_s", "{:,.0f}") for C in Cs])
    parts.append(format_table(["decode tokens/s"] + [fmt_tokens(C) for C in Cs], rows,
                              title=f"Decode, batch {p.get('decode_batch')}, by context"))
    rows = []
    for c in res.get("batch1", []):
        name = c["model"] + (f" ({c['cache']})" if c["model"] == HF_LABEL else "")
        rows.append([name, _cell_text(c, "ms_per_step", "{:.2f}"),
                     _cell_text(c, "floor_ms", "{:.3f}"), _cell_text(c, "ratio_to_floor",
                                                                     "{:.2f}x")])
    parts.append(format_table(["model", "ms/token", "floor ms", "/ floor"], rows,
                              title=f"Decode, batch 1, context "
                                    f"{fmt_tokens(p.get('batch1_context', 0))}; floor = bf16 "
                                    "weights read once / copy bandwidth"))
    rows = [[t["target"], _num(t["value"], "{:.2f}x"),
             ("<= " if not t["higher_is_better"] else ">= ") + f"{t['target_value']}x",
             t["verdict"]] for t in res.get("targets") or targets(res)]
    parts.append(format_table(["target", "ratio", "needed", "verdict"], rows,
                              title="Targets (issue #21)"))
    return "\n\n".join(parts)


# ---------------------------------------------------------------------- markdown ---
def markdown_section(res: dict[str, Any]) -> str:
    p, v = res.get("params", {}), res.get("versions", {})
    lines = [f"## Run of {res.get('date')} (commit {res.get('commit')})", "",
             f"- Device: {res.get('device')}; Python {v.get('python')}, NumPy {v.get('numpy')}, "
             f"torch {v.get('torch')}, transformers {v.get('transformers')}.",
             f"- Copy bandwidth (device-to-device, {res['copy']['bytes'] / (1 << 30):.2f} GiB, "
             f"read + write): {res['copy']['bandwidth_Bps'] / 1e12:.2f} TB/s "
             f"({res['copy']['method']}).",
             f"- Prefill: {p.get('total_tokens'):,} tokens per point in one call (batch = total /"
             f" length); samba_ext chunk_size {p.get('chunk_size')}, full-attention caches "
             f"preallocated for the prompt; transformers `use_cache=False`, `logits_to_keep=1`; "
             f"median of 3 runs below {p.get('cheap_s', 2.0):.0f} s, else one run; points "
             f"estimated above {p.get('cap_s'):.0f} s skipped.",
             f"- Decode: states / caches made at the context with random contents, "
             f"{p.get('warm_steps')} untimed + {p.get('steps')} timed steps (median step).",
             f"- Whole run {res.get('total_s', 0):.0f} s ("
             + ", ".join(f"{k}: built in {m['build_s']:.0f} s, measured in "
                         f"{m.get('measure_s', 0):.0f} s"
                         for k, m in res.get("models", {}).items() if "build_s" in m)
             + "). Numbers: `gpu_model.json`.", ""]
    lines += ["```", tables(res), "```", ""]
    lines += ["| target | ratio | needed | verdict | note |", "|---|---|---|---|---|"]
    for t in res.get("targets") or targets(res):
        goal = "" if t["goal"] is None else f" (goal {t['goal']}x)"
        lines.append(f"| {t['target']} | {_num(t['value'], '{:.2f}x')} | "
                     f"{'>=' if t['higher_is_better'] else '<='} {t['target_value']}x{goal} | "
                     f"**{t['verdict']}** | {t['note']} |")
    notes = [f"- {c['model']} prefill at {fmt_tokens(c['length'])}: {c.get('skipped') or c['error']}"
             for c in res.get("prefill", []) if "skipped" in c or "error" in c]
    notes += [f"- {c['model']} decode{' (' + c['cache'] + ')' if c.get('cache') else ''} at "
              f"{fmt_tokens(c['context'])}, batch {c['batch']}: {c['error']}"
              for c in res.get("decode", []) + res.get("batch1", []) if "error" in c]
    notes += [f"- {k}: not run: {m['error']}" for k, m in res.get("models", {}).items()
              if "error" in m]
    if notes:
        lines += ["", "Skipped or failed:", ""] + notes
    return "\n".join(lines) + "\n"


def merge_section(old: str, section: str) -> str:
    """``old`` with the text between the markers replaced by ``section`` (appended, with a
    title when there is no file or no markers yet); text outside the markers is kept."""
    block = f"{BEGIN}\n{section}{END}\n"
    if BEGIN in old and END in old.split(BEGIN, 1)[1]:
        head, rest = old.split(BEGIN, 1)
        return head + block + rest.split(END, 1)[1].lstrip("\n")
    if not old.strip():
        old = ("# GPU model throughput: the Samba paper's Figure 3 protocol "
               "(`benchmarks/gpu_model.py`)\n\n")
    return old.rstrip("\n") + "\n\n" + block


# ------------------------------------------------------------------------- files ---
def write_json(res: dict[str, Any], out: str) -> str:
    path = os.path.join(out, JSON_NAME)
    write_text_atomic(path, json.dumps(res, indent=1, default=str) + "\n")
    return path


def plots(res: dict[str, Any], out: str) -> list[str]:
    """The two PNG plots; [] when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    p, written = res.get("params", {}), []
    specs = [("prefill", "length", p.get("lengths", []), "prompt length (tokens)",
              f"prefill tokens/s ({fmt_tokens(p.get('total_tokens', 0))} tokens per point)"),
             ("decode", "context", p.get("contexts", []), "context (tokens)",
              f"decode tokens/s (batch {p.get('decode_batch')})")]
    for name, (what, key, xs, xl, yl) in zip(PLOT_NAMES, specs):
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
        for label, cache in _rows_by_model(res, what):
            pts = sorted((c[key], c["tokens_per_s"]) for c in res[what]
                         if c["model"] == label and "tokens_per_s" in c
                         and (cache is None or c.get("cache") == cache))
            if pts:
                ax.plot([a for a, _ in pts], [b for _, b in pts], marker="o",
                        label=label + (f" ({cache} cache)" if cache else ""))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(xs, [fmt_tokens(x) for x in xs])
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_title(f"{res.get('device')}, commit {res.get('commit')}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        path = os.path.join(out, name)
        with atomic_write(path, "wb") as fh:
            fh.write(buf.getvalue())
        written.append(path)
    return written


def write_all(res: dict[str, Any], out: str, log: Callable[[str], None] = print) -> None:
    """JSON, the markdown section, the plots; then the tables on ``log``."""
    write_json(res, out)
    md = os.path.join(out, MD_NAME)
    try:
        with open(md, encoding="utf-8") as fh:
            old = fh.read()
    except FileNotFoundError:
        old = ""
    write_text_atomic(md, merge_section(old, markdown_section(res)))
    written = plots(res, out)
    log("")
    log(tables(res))
    log(f"\nwrote {os.path.join(out, JSON_NAME)}, {md}"
        + (", " + ", ".join(written) if written else " (no plots: matplotlib not installed)"))
