"""Replay of the committed fuzz corpus (tests/fixtures/fuzz_corpus/): every seed, mutant and
regression input must satisfy the oracle of targets.py (a result consistent with the file,
or CheckpointError; no other exception, no hang, no allocation beyond what the file holds).

The replay runs in a child process (run_fuzz.py --corpus-only) whose address space is capped
at 6 GiB, so that an input that makes a parser allocate gigabytes (see
fuzz_corpus/pth/regressions/long_binput_memo_12gb.pth) shows up as a finding instead of exhausting
the test machine. The mutation run itself is a separate CI step (run_fuzz.py, <= 60 s).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import targets as T  # noqa: E402
from paths import CORPUS  # noqa: E402


def test_corpus_is_present():
    tg = T.all_targets()
    assert {t.name for t in tg} >= {"safetensors", "pth"}, "parser modules missing"
    for t in tg:
        for d in t.corpus_dirs:
            assert len(list((CORPUS / d).rglob("*"))) >= 10, f"corpus/{d} too small"


def test_corpus_replay(tmp_path):
    out = tmp_path / "summary.json"
    r = subprocess.run([sys.executable, str(HERE / "run_fuzz.py"), "--corpus-only",
                        "--findings", str(tmp_path / "findings"), "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    findings = [ln for ln in r.stdout.splitlines() if ln.startswith("FINDING")]
    assert r.returncode == 0 and not findings, \
        f"{len(findings)} corpus input(s) broke a parser:\n" + "\n".join(findings) + \
        f"\n{r.stderr[-2000:]}"
    summary = json.loads(out.read_text())
    assert summary["targets"]["safetensors"]["corpus_files"] >= 10


def test_valid_seeds_load():
    """The unmutated seeds are valid files: the raw parsers must accept them."""
    runner = T.Runner()
    try:
        for t in T.all_targets():
            if t.name not in ("safetensors", "pth", "hf_folder"):
                continue
            for p in sorted((CORPUS / t.corpus_dirs[0]).glob("*" + t.suffix)):
                assert runner.run_one(t, p.read_bytes()) is None
                assert runner.last_detail == "ok", \
                    f"{t.name}: valid seed {p.name} rejected: {runner.last_detail[:300]}"
    finally:
        runner.close()
