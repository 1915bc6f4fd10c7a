"""Report of the peer test runs: benchmarks/results/peer_tests.md and .json.

Reads the JSON summaries that run.sh's pytest runs wrote (peer_plugin.py, one per upstream
test file) and the COMMITS file of the upstream folder, and writes the markdown and JSON
reports atomically (samba_ext.atomic.write_text_atomic). Needs no GPU:

    python3 benchmarks/peer_tests/report.py --summaries out/peer_tests \
        --upstream .gpu/peer_upstream [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import glob
import json
import os
import subprocess
import sys
from typing import Any, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # the repository root

from samba_ext.atomic import write_text_atomic  # noqa: E402

ORDER = ("scan", "state", "conv", "flash")
COLS = ("passed", "failed", "unsupported", "skipped", "not_run", "timeout")

# How each name the upstream tests import is provided (benchmarks/peer_tests/shims).
PROVENANCE = [
    ("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn, mamba_inner_fn",
     "samba_ext.torch"),
    ("mamba_ssm.ops.selective_scan_interface", "selective_scan_ref, mamba_inner_ref",
     "mamba's own, executed from its source file; its mamba_inner_ref calls "
     "causal_conv1d_fn and selective_scan_fn, here samba_ext's (upstream: its own kernels)"),
    ("mamba_ssm.ops.triton.selective_state_update", "selective_state_update",
     "samba_ext.torch"),
    ("mamba_ssm.ops.triton.selective_state_update", "selective_state_update_ref",
     "mamba's own, from its source file"),
    ("causal_conv1d(.causal_conv1d_interface)", "causal_conv1d_fn, causal_conv1d_update",
     "samba_ext.torch"),
    ("causal_conv1d.causal_conv1d_interface", "causal_conv1d_ref, causal_conv1d_update_ref",
     "causal-conv1d's own, from its source file"),
    ("causal_conv1d.causal_conv1d_varlen", "causal_conv1d_varlen_states", "samba_ext.torch"),
    ("causal_conv1d.causal_conv1d_varlen", "causal_conv1d_varlen_states_ref",
     "causal-conv1d's own, from its source file"),
    ("flash_attn", "flash_attn_func, flash_attn_with_kvcache", "samba_ext.torch; with "
     "return_attn_probs, flash_attn_func also returns softmax_lse from samba_ext's "
     "flash_attn_with_kvcache(return_softmax_lse=True) (on the CPU where that does not take "
     "the device) and S_dmask None (as flash-attn without dropout)"),
    ("flash_attn", "flash_attn_kvpacked_func, flash_attn_qkvpacked_func",
     "unbind, then flash_attn_func"),
    ("flash_attn", "flash_attn_varlen_func (+ kvpacked, qkvpacked)",
     "one flash_attn_func call per packed sequence, concatenated; block_table raises "
     "NotImplementedError"),
    ("flash_attn.bert_padding, flash_attn.layers.rotary, flash_attn.ops.triton.rotary",
     "pad_input, unpad_input, apply_rotary_emb", "flash-attention's own files (the tests "
     "build inputs and references with them)"),
    ("flash_attn.flash_attn_interface", "flash_attn_gpu, _flash_attn_varlen_forward, "
     "_get_block_size_n", "none: raise NotImplementedError (unsupported)"),
]


def load_summaries(folder: str) -> list[dict[str, Any]]:
    """The plugin summaries in folder (files with 'label' and 'totals'), in run order."""
    out = []
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        try:
            with open(path, encoding="utf-8") as fh:
                d = json.load(fh)
        except (OSError, ValueError):
            continue
        if isinstance(d, dict) and "label" in d and "totals" in d:
            out.append(d)
    rank = {n: i for i, n in enumerate(ORDER)}
    return sorted(out, key=lambda d: (rank.get(d["label"], len(ORDER)), d["label"]))


def load_commits(upstream: str) -> dict[str, dict[str, str]]:
    """COMMITS lines '<dir> <owner/name> <commit>' -> {dir: {repo, commit}}."""
    res: dict[str, dict[str, str]] = {}
    path = os.path.join(upstream, "COMMITS")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 3:
                    res[parts[0]] = {"repo": parts[1], "commit": parts[2]}
    return res


def upstream_file(summary: dict[str, Any], upstream: str) -> tuple[str, str]:
    """(dir, path in the repo) of the summary's test file, relative to the upstream folder
    (the path as given when it is elsewhere)."""
    f = (summary.get("files") or [""])[0]
    rel = os.path.relpath(os.path.abspath(f), os.path.abspath(upstream))
    if rel.startswith(".."):
        return "", f
    head, _, tail = rel.partition(os.sep)
    return head, tail


def git_commit() -> str:
    env = os.environ.get("GIT_COMMIT")
    if env:
        return env
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def build(summaries: list[dict[str, Any]], commits: dict[str, dict[str, str]],
          upstream: str, commit: str, date: str) -> dict[str, Any]:
    runs = []
    for s in summaries:
        d, path = upstream_file(s, upstream)
        c = commits.get(d, {})
        t = s["totals"]
        supported = sum(t.get(k, 0) for k in ("passed", "failed", "timeout"))
        runs.append({
            "label": s["label"], "upstream_dir": d, "file": path,
            "repo": c.get("repo", ""), "upstream_commit": c.get("commit", ""),
            "collected": t.get("collected", 0), "selected": t.get("selected", 0),
            "applicable": supported + t.get("unsupported", 0), "supported": supported,
            **{k: t.get(k, 0) for k in COLS + ("xfailed", "xpassed")},
            "sample_every": s.get("sample_every", 1),
            "max_per_function": s.get("max_per_function", 0), "budget_s": s.get("budget_s"),
            "wall_s": s.get("wall_s"), "collect_only": s.get("collect_only", False),
            "functions": s.get("functions", {}), "failures": s.get("failures", []),
            "failure_groups": s.get("failure_groups", 0),
            "unsupported_reasons": s.get("unsupported_reasons", []),
            "skip_reasons": s.get("skip_reasons", []), "timeouts": s.get("timeouts", []),
            "env": s.get("env", {}), "xdist_workers": s.get("xdist_workers", 0),
            "fake_cuda_capability": s.get("fake_cuda_capability"),
        })
    env = next((r["env"] for r in runs if r["env"].get("cuda_available")),
               runs[0]["env"] if runs else {})
    return {"date": date, "commit": commit,
            "device": env.get("device", "no CUDA device"), "torch": env.get("torch", ""),
            "python": env.get("python", ""), "runs": runs, "provenance": [
                {"module": m, "names": n, "provided_by": p} for m, n, p in PROVENANCE]}


def _pct(a: int, b: int) -> str:
    return f"{100.0 * a / b:.1f}%" if b else "-"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(rep: dict[str, Any]) -> str:
    L = ["# Peer test files over samba_ext", "",
         "The peers' own test files, unmodified, run against samba_ext through the shims of "
         "`benchmarks/peer_tests/shims` (module paths of mamba_ssm, causal_conv1d and "
         "flash_attn over `samba_ext.torch`), forward and backward, with the peers' own "
         "tolerances and references. *unsupported*: the case needs something samba_ext does "
         "not provide (a NotImplementedError from samba_ext or the shims). *skipped*: skipped "
         "by the test itself. *not run*: past the run's time budget. Produced by "
         "`benchmarks/peer_tests/run.sh` and `report.py`.", "",
         f"- date: {rep['date']}", f"- commit: {rep['commit']}",
         f"- device: {rep['device']} (torch {rep['torch']}, python {rep['python']})", ""]
    if any(r["collect_only"] for r in rep["runs"]):
        L += ["**Collection only: no case was run.**", ""]
    L += ["| file | upstream | collected | selected | passed | failed | unsupported | "
          "skipped | not run | timeout | wall s |",
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rep["runs"]:
        up = f"{r['repo']}@{r['upstream_commit'][:10]}" if r["repo"] else "?"
        sel = f"{r['selected']} ({_pct(r['selected'], r['collected'])})"
        L.append(f"| {r['file']} | {up} | {r['collected']} | {sel} | "
                 + " | ".join(str(r[k]) for k in COLS) + f" | {r['wall_s']} |")
    L += ["", "Applicable: the selected cases that ran and that the test did not skip itself; "
          "supported: those not unsupported.", ""]
    for r in rep["runs"]:
        sup = r["passed"] + r["failed"] + r["timeout"]
        app = sup + r["unsupported"]
        L.append(f"- {r['file']}: {app} applicable, {r['unsupported']} unsupported "
                 f"({_pct(r['unsupported'], app)}), {sup} supported: {r['passed']} passed "
                 f"({_pct(r['passed'], sup)}), {r['failed']} failed, {r['timeout']} timed out")
    for r in rep["runs"]:
        L += ["", f"## {r['file']} ({r['repo']})", "",
              f"Sampling: at most {r['max_per_function'] or 'all'} evenly spaced cases per test "
              f"function (stride given), budget {r['budget_s']} s, "
              f"{r['xdist_workers'] or 'no'} xdist workers.", "",
              "| function | collected | stride | " + " | ".join(c.replace("_", " ")
                                                           for c in COLS) + " |",
              "|---|---:|---:|" + "---:|" * len(COLS)]
        for f, c in r["functions"].items():
            L.append(f"| {f} | {c.get('collected', 0)} | {c.get('stride', 1)} | "
                     + " | ".join(str(c.get(k, 0)) for k in COLS) + " |")
        if r["failures"]:
            L += ["", f"Failures ({r['failure_groups']} distinct, numbers folded; first "
                  f"{len(r['failures'])}):", "", "| count | function | where | message |",
                  "|---:|---|---|---|"]
            for g in r["failures"]:
                msg = g["message"].splitlines()[0] if g["message"] else ""
                L.append(f"| {g['count']} | {g['function']} | `{_md_escape(g['where'])}` | "
                         f"{_md_escape(msg[:200])} |")
        for key, title in (("unsupported_reasons", "Unsupported"), ("skip_reasons",
                                                                     "Skipped by the test"),
                           ("timeouts", "Timed out")):
            if r[key]:
                L += ["", f"{title}:", ""]
                L += [f"- {x['count']} x {_md_escape(x['reason'][:200])}" for x in r[key]]
    L += ["", "## How the imported names are provided", "", "| module | names | provided by |",
          "|---|---|---|"]
    L += [f"| {p['module']} | {p['names']} | {p['provided_by']} |" for p in rep["provenance"]]
    return "\n".join(L) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--summaries", required=True, help="folder of the plugin's JSON summaries")
    ap.add_argument("--upstream", required=True, help="folder of the upstream files (COMMITS)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "results"))
    ap.add_argument("--commit", default=None)
    ap.add_argument("--date", default=None,
                    help="when the tests ran, e.g. 2026-12-07T19:40:01Z (default: now)")
    a = ap.parse_args(argv)
    summaries = load_summaries(a.summaries)
    if not summaries:
        print(f"no summaries in {a.summaries}", file=sys.stderr)
        return 1
    date = a.date or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    rep = build(summaries, load_commits(a.upstream), a.upstream, a.commit or git_commit(),
                date)
    os.makedirs(a.out, exist_ok=True)
    md = markdown(rep)
    write_text_atomic(os.path.join(a.out, "peer_tests.json"), json.dumps(rep, indent=1) + "\n")
    write_text_atomic(os.path.join(a.out, "peer_tests.md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
