"""benchmarks/peer_tests: the pytest plugin's counting and sampling, and the report.

Each test runs an inner pytest (a subprocess) over a small generated test file with
``-p peer_plugin``; no torch and no upstream files are needed. The NotImplementedError that
must count as unsupported comes from samba_ext itself (an abstract Backend method); one
raised by the test's own code must stay a failure.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIMS = os.path.join(ROOT, "benchmarks", "peer_tests", "shims")
sys.path.insert(0, os.path.join(ROOT, "benchmarks", "peer_tests"))

import report  # noqa: E402

CASES = '''
import pytest
from samba_ext.backend_api import Backend

@pytest.mark.parametrize("i", range(10))
def test_many(i):
    assert i % 3 != 1          # cases 1, 4, 7 fail

def test_ours_unsupported():
    Backend().asarray(None)    # NotImplementedError raised inside samba_ext

def test_own_not_implemented():
    raise NotImplementedError("raised by the test itself")

def test_skip_itself():
    pytest.skip("not applicable here")

@pytest.mark.parametrize("j", range(3))
def test_few(j):
    pass
'''


def _run(tmp_path, *args: str) -> tuple[dict, str]:
    d = tmp_path / "up" / "repo" / "tests"
    d.mkdir(parents=True)
    (d / "test_cases.py").write_text(CASES)
    out = tmp_path / "summary.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SHIMS, ROOT]))
    cmd = [sys.executable, "-m", "pytest", "-c", os.path.join(SHIMS, "pytest.ini"),
           "--rootdir", str(tmp_path / "up"), "-p", "peer_plugin", "-q", "-p", "no:xdist",
           "--peer-label", "cases", "--peer-summary", str(out), *args, str(d / "test_cases.py")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.is_file(), res.stdout + res.stderr
    return json.loads(out.read_text()), res.stdout


def test_categories_and_sampling(tmp_path):
    s, _ = _run(tmp_path, "--peer-max-per-function", "5")
    f = s["functions"]
    # 10 cases, at most 5: stride 2 keeps i = 0, 2, 4, 6, 8; of those only 4 fails
    assert f["test_many"] == dict(f["test_many"], collected=10, selected=5, stride=2,
                                  passed=4, failed=1)
    assert f["test_ours_unsupported"]["unsupported"] == 1
    assert f["test_own_not_implemented"]["failed"] == 1
    assert f["test_skip_itself"]["skipped"] == 1
    assert f["test_few"]["passed"] == 3 and f["test_few"]["stride"] == 1
    t = s["totals"]
    assert (t["collected"], t["selected"], t["passed"], t["failed"], t["unsupported"],
            t["skipped"]) == (16, 11, 7, 2, 1, 1)
    assert s["unsupported_reasons"] == [{"reason": "NotImplementedError", "count": 1}]
    assert s["skip_reasons"] == [{"reason": "not applicable here", "count": 1}]
    where = {g["function"]: g["where"] for g in s["failures"]}
    assert where["test_many"].startswith("test_cases.py:7: assert i % 3 != 1")
    assert "raised by the test itself" in {g["function"]: g["message"]
                                           for g in s["failures"]}["test_own_not_implemented"]


def test_round_robin_order(tmp_path):
    _, out = _run(tmp_path, "--collect-only", "--peer-sample", "4")
    names = [ln.split("::")[1] for ln in out.splitlines() if "::" in ln]
    # every 4th case of each function (0, 4, 8 of test_many), one case of each in turn
    assert names == ["test_many[0]", "test_ours_unsupported", "test_own_not_implemented",
                     "test_skip_itself", "test_few[0]", "test_many[4]", "test_many[8]"]


def test_budget_marks_not_run(tmp_path):
    s, _ = _run(tmp_path, "--peer-budget", "1e-9")
    assert s["totals"]["not_run"] == 16 and s["totals"]["passed"] == 0


def test_report(tmp_path):
    s, _ = _run(tmp_path)
    (tmp_path / "sums").mkdir()
    (tmp_path / "sums" / "cases.json").write_text(json.dumps(s))
    (tmp_path / "up" / "COMMITS").write_text("repo owner/repo " + "a" * 40 + "\n")
    rc = report.main(["--summaries", str(tmp_path / "sums"), "--upstream",
                      str(tmp_path / "up"), "--out", str(tmp_path / "res"), "--commit", "c0"])
    assert rc == 0
    rep = json.loads((tmp_path / "res" / "peer_tests.json").read_text())
    (run,) = rep["runs"]
    assert (run["repo"], run["upstream_commit"], run["file"]) == \
        ("owner/repo", "a" * 40, "tests/test_cases.py")
    assert (run["collected"], run["applicable"], run["supported"], run["passed"]) == \
        (16, 15, 14, 10)
    md = (tmp_path / "res" / "peer_tests.md").read_text()
    assert "| tests/test_cases.py | owner/repo@aaaaaaaaaa | 16 | 16 (100.0%) | 10 | 4 | 1 | 1 " \
        "| 0 | 0 |" in md
