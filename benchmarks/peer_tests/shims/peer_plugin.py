"""pytest plugin for running the peers' own test files over samba_ext (``-p peer_plugin``).

- A NotImplementedError raised inside samba_ext or these shims (found on its traceback, or
  on the cause/context chain of the failure) turns the case into a skip with the reason
  ``unsupported: <first line of the message>``: the case needs something samba_ext does not
  provide. Any other exception stays a failure.
- ``--peer-sample K`` keeps every K-th case of each test function, in collection order
  (cases 0, K, 2K, ...); ``--peer-max-per-function N`` raises a function's stride to
  ceil(n / N) so that at most N evenly spaced cases of it remain: a deterministic subset;
  the rest are deselected and counted. The kept cases run round-robin over the functions.
- ``--peer-budget S``: a case that would start more than S seconds after the session began
  is skipped as ``not run: time budget`` (so a run ends in time and still writes its
  summary).
- ``--peer-summary PATH`` writes a JSON summary at the end: cases collected, selected,
  passed, failed, unsupported, skipped by the test itself, not run, timed out (a
  pytest-timeout failure), per test function and in total; the distinct failure messages
  (digits folded for grouping, one example each) and the unsupported / skip reasons with
  counts; the environment. Works with pytest-xdist (the controller writes it).
- ``--peer-fake-cuda-capability 9.0``: only where CUDA is unavailable, makes
  torch.cuda.get_device_capability return that pair, so a test file that queries it at
  import (flash-attention's) can be collected (``--collect-only``) on a machine without a
  GPU. Recorded in the summary.
"""
from __future__ import annotations

import itertools
import json
import os
import platform
import re
import sys
import time
from collections import Counter, defaultdict
from typing import Any, Optional

import pytest

SHIMS_DIR = os.path.dirname(os.path.abspath(__file__))
UNSUPPORTED = "unsupported: "
NOT_RUN = "not run: time budget"
CATEGORIES = ("passed", "failed", "unsupported", "skipped", "not_run", "timeout", "xfailed",
              "xpassed")
MAX_GROUPS = 60


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("peer", "peer test runs over samba_ext")
    g.addoption("--peer-summary", default=None, help="write the JSON summary to this path")
    g.addoption("--peer-label", default=None, help="name of the run in the summary")
    g.addoption("--peer-sample", type=int, default=1,
                help="keep every K-th case of each test function (default 1: all)")
    g.addoption("--peer-max-per-function", type=int, default=0,
                help="keep at most about N evenly spaced cases of each test function (0: no cap)")
    g.addoption("--peer-budget", type=float, default=0.0,
                help="skip cases that would start after this many seconds (0: no limit)")
    g.addoption("--peer-fake-cuda-capability", default=None,
                help="MAJOR.MINOR returned by torch.cuda.get_device_capability where CUDA is "
                     "unavailable (collection only)")


# ------------------------------------------------------------------ state ---
class _State:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.collection: Optional[dict[str, Any]] = None    # per-function collected/selected
        self.outcomes: dict[str, dict[str, Any]] = {}        # nodeid -> final outcome
        self.fake_capability: Optional[str] = None
        self.workers = 0


_KEY = pytest.StashKey[_State]()
_CONFIG: Optional[pytest.Config] = None     # this process's config (controller or worker)


def _our_dirs() -> tuple[str, ...]:
    dirs = [SHIMS_DIR]
    try:
        import samba_ext
        dirs.append(os.path.dirname(os.path.abspath(samba_ext.__file__)))
    except ImportError:
        pass
    return tuple(os.path.realpath(d) + os.sep for d in dirs)


def pytest_configure(config: pytest.Config) -> None:
    global _CONFIG
    _CONFIG = config
    st = _State()
    config.stash[_KEY] = st
    cap = config.getoption("--peer-fake-cuda-capability")
    if cap:
        import torch
        if not torch.cuda.is_available():
            major, minor = (int(p) for p in cap.split("."))
            torch.cuda.get_device_capability = lambda device=None: (major, minor)
            st.fake_capability = cap
    n = getattr(config.option, "numprocesses", None)
    st.workers = int(n) if isinstance(n, int) else 0


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _function(nodeid: str) -> str:
    return nodeid.split("::")[-1].split("[")[0]


# ------------------------------------------------------------ collection ---
@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    """Keep every stride-th case of each test function (stride = max(--peer-sample,
    ceil(n / --peer-max-per-function))), then order the kept cases round-robin over the
    functions, so that a run cut short by --peer-budget has run a prefix of every function's
    sample rather than all of the first functions."""
    k = max(1, int(config.getoption("--peer-sample")))
    cap = max(0, int(config.getoption("--peer-max-per-function")))
    groups: dict[str, list[pytest.Item]] = {}
    for it in items:
        groups.setdefault(_function(it.nodeid), []).append(it)
    kept: dict[str, list[pytest.Item]] = {}
    drop: list[pytest.Item] = []
    funcs: dict[str, dict[str, int]] = {}
    for f, its in groups.items():
        stride = max(k, -(-len(its) // cap) if cap else 1)
        kept[f] = its[::stride]
        drop.extend(it for i, it in enumerate(its) if i % stride)
        funcs[f] = {"collected": len(its), "selected": len(kept[f]), "stride": stride}
    order = [it for rnd in itertools.zip_longest(*kept.values()) for it in rnd
             if it is not None]
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = order
    coll = {"sample_every": k, "max_per_function": cap, "functions": funcs}
    config.stash[_KEY].collection = coll
    if _is_worker(config):
        config.workeroutput["peer_collection"] = json.dumps(coll)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist controller: take the collection counts from the first worker that reports."""
    st = node.config.stash.get(_KEY, None)
    out = getattr(node, "workeroutput", None) or {}
    if st is not None and st.collection is None and "peer_collection" in out:
        st.collection = json.loads(out["peer_collection"])


# -------------------------------------------------------------- running ---
@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    budget = float(item.config.getoption("--peer-budget"))
    if budget > 0 and time.monotonic() - item.config.stash[_KEY].t0 > budget:
        pytest.skip(f"{NOT_RUN} of {budget:.0f} s reached")


def _through_ours(tb: Any, ours: tuple[str, ...]) -> bool:
    while tb is not None:
        fn = os.path.realpath(tb.tb_frame.f_code.co_filename)
        if fn.startswith(ours):
            return True
        tb = tb.tb_next
    return False


def _our_not_implemented(exc: Optional[BaseException]) -> Optional[BaseException]:
    ours = _our_dirs()
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, NotImplementedError) and _through_ours(exc.__traceback__, ours):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _first_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:limit]


def _where(item: pytest.Item, excinfo: Any) -> str:
    """'file.py:LINE: source' of the deepest traceback entry in the test file itself."""
    try:
        for entry in reversed(list(excinfo.traceback)):
            if os.path.realpath(str(entry.path)) == os.path.realpath(str(item.path)):
                src = str(entry.statement).strip().splitlines()
                return f"{os.path.basename(str(entry.path))}:{entry.lineno + 1}: " \
                       f"{src[0] if src else ''}"[:300]
    except Exception:  # noqa: BLE001 - diagnostics only
        pass
    return ""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    rep = outcome.get_result()
    if call.excinfo is None or not rep.failed:
        return
    nie = _our_not_implemented(call.excinfo.value)
    if nie is not None:
        msg = _first_line(f"{nie}") or type(nie).__name__
        rep.outcome = "skipped"
        rep.longrepr = (str(item.path), (item.location[1] or 0) + 1, UNSUPPORTED + msg)
        return
    rep.peer_where = _where(item, call.excinfo)


def _categorize(rep: pytest.TestReport) -> tuple[str, str]:
    """(category, message) of one phase report."""
    if rep.failed:
        crash = getattr(getattr(rep, "longrepr", None), "reprcrash", None)
        msg = crash.message if crash is not None else str(rep.longrepr or "")
        msg = "\n".join(msg.strip().splitlines()[:3])[:600]
        if "Timeout" in _first_line(msg) and "pytest-timeout" in msg:
            return "timeout", _first_line(msg)
        if rep.when == "call" and hasattr(rep, "wasxfail"):
            return "xpassed", ""
        return "failed", msg
    if rep.skipped:
        if hasattr(rep, "wasxfail"):
            return "xfailed", str(rep.wasxfail)
        reason = rep.longrepr[2] if isinstance(rep.longrepr, (tuple, list)) else str(rep.longrepr)
        reason = str(reason)
        if reason.startswith("Skipped: "):
            reason = reason[len("Skipped: "):]
        if reason.startswith(UNSUPPORTED):
            return "unsupported", reason[len(UNSUPPORTED):]
        if reason.startswith(NOT_RUN):
            return "not_run", reason
        return "skipped", reason
    if rep.when == "call" and hasattr(rep, "wasxfail"):
        return "xpassed", ""
    return "passed", ""


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    cfg = _CONFIG
    if cfg is None or _is_worker(cfg):
        return
    st = cfg.stash[_KEY]
    cat, msg = _categorize(report)
    cur = st.outcomes.get(report.nodeid)
    # a failure in any phase wins; otherwise the setup skip or the call result
    if cur is not None and cur["category"] in ("failed", "timeout"):
        return
    if report.when == "teardown" and cat != "failed":
        return
    if report.when == "setup" and cat == "passed":
        return
    st.outcomes[report.nodeid] = {"category": cat, "message": msg,
                                  "where": getattr(report, "peer_where", ""),
                                  "duration": getattr(report, "duration", 0.0)}


# -------------------------------------------------------------- summary ---
def _fold(text: str) -> str:
    return re.sub(r"0x[0-9a-f]+|[-+]?\d+(\.\d+)?(e[-+]?\d+)?", "#", text)


def _env() -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "pytest": pytest.__version__}
    try:
        import torch
        env["torch"] = torch.__version__
        env["cuda_available"] = bool(torch.cuda.is_available())
        if env["cuda_available"]:
            env["device"] = torch.cuda.get_device_name(0)
            env["device_capability"] = list(torch.cuda.get_device_capability(0))
    except Exception as e:  # noqa: BLE001 - recorded, not fatal
        env["torch"] = f"unavailable: {e}"
    return env


def summarize(st: _State, label: str, files: list[str], budget: float,
              collect_only: bool) -> dict[str, Any]:
    coll = st.collection or {"sample_every": 1, "max_per_function": 0, "functions": {}}
    per: dict[str, dict[str, Any]] = defaultdict(lambda: {c: 0 for c in CATEGORIES})
    for f, c in coll["functions"].items():
        per[f].update(c)
    fails: dict[tuple[str, str], dict[str, Any]] = {}
    reasons: dict[str, Counter] = {"unsupported": Counter(), "skipped": Counter(),
                                   "timeout": Counter()}
    case_s = 0.0
    for nodeid, o in st.outcomes.items():
        f = _function(nodeid)
        cat = o["category"]
        per[f][cat] += 1
        case_s += float(o.get("duration") or 0.0)
        if cat == "failed":
            key = (f, o["where"] + " | " + _fold(_first_line(o["message"])))
            g = fails.setdefault(key, {"function": f, "where": o["where"], "count": 0,
                                       "message": o["message"], "example": nodeid})
            g["count"] += 1
        elif cat in reasons:
            reasons[cat][o["message"]] += 1
    for p in per.values():
        p.setdefault("collected", 0)
        p.setdefault("selected", 0)
    totals = {c: sum(p[c] for p in per.values()) for c in ("collected", "selected") + CATEGORIES}
    groups = sorted(fails.values(), key=lambda g: -g["count"])
    return {
        "label": label, "files": files, "started": st.started,
        "wall_s": round(time.monotonic() - st.t0, 1), "case_s": round(case_s, 1),
        "collect_only": collect_only, "sample_every": coll["sample_every"],
        "max_per_function": coll.get("max_per_function", 0),
        "budget_s": budget, "xdist_workers": st.workers,
        "fake_cuda_capability": st.fake_capability,
        "totals": totals, "functions": {f: per[f] for f in sorted(per)},
        "failures": groups[:MAX_GROUPS], "failure_groups": len(groups),
        "unsupported_reasons": [{"reason": r, "count": n}
                                for r, n in reasons["unsupported"].most_common(MAX_GROUPS)],
        "skip_reasons": [{"reason": r, "count": n}
                         for r, n in reasons["skipped"].most_common(MAX_GROUPS)],
        "timeouts": [{"reason": r, "count": n} for r, n in reasons["timeout"].most_common()],
        "env": _env(), "argv": sys.argv[1:],
    }


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    cfg = session.config
    path = cfg.getoption("--peer-summary")
    if not path or _is_worker(cfg):
        return
    st = cfg.stash[_KEY]
    files = [str(a) for a in cfg.args]
    label = cfg.getoption("--peer-label") or (os.path.basename(files[0]) if files else "")
    res = summarize(st, label, files, float(cfg.getoption("--peer-budget")),
                    bool(cfg.getoption("collectonly")))
    res["exitstatus"] = int(exitstatus)
    from samba_ext.atomic import write_text_atomic
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_text_atomic(path, json.dumps(res, indent=1) + "\n")
