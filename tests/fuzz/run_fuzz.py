#!/usr/bin/env python3
"""Deterministic, time-bounded fuzzing of samba_ext's file parsers (see targets.py).

    python3 tests/fuzz/run_fuzz.py                       # CI: fixed execs, <= 60 s
    python3 tests/fuzz/run_fuzz.py --execs 0 --seconds 600 --seed 7    # longer exploration
    python3 tests/fuzz/run_fuzz.py --engine atheris --target pth --seconds 300

Builtin engine (default, no dependency): for each target, first replays every file of its
seed corpus (tests/fixtures/fuzz_corpus/<dir>/, valid files + mutants + regressions), then runs
``--execs`` mutants (structure-aware + byte-level mutators, mutators.py) drawn from a
``random.Random(seed)``: the same seed and count give the same inputs. A mutant whose outcome
(exception type + message shape) was not seen before joins the in-memory corpus, a cheap
stand-in for coverage feedback. ``--seconds`` caps the wall time (a stop on time is reported).

The work runs in a child process; if it dies (segfault, abort, OOM kill) the parent saves the
input being parsed. Every finding (see targets.py for the oracle) is written to
``--findings`` (default build-fuzz/findings/) as ``<target>/<kind>-<sha1>.<ext>``; commit it
to tests/fixtures/fuzz_corpus/<dir>/ as a regression input once understood. Exit status 1 on findings.

Atheris engine (optional, ``pip install atheris``): coverage-guided libFuzzer over one target
with the same structure-aware mutators as a custom mutator; meant for long local runs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(ROOT))   # the checkout's package (in-place build), before site-packages
from paths import CORPUS  # noqa: E402


def _signature(outcome_detail: str) -> str:
    """Outcome shape used for novelty: digits and quoted names removed."""
    s = re.sub(r"'[^']*'|\"[^\"]*\"", "''", outcome_detail)
    s = re.sub(r"/\S+", "", s)
    return re.sub(r"\d+", "N", s)[:120]


def load_corpus(target) -> list[tuple[str, bytes]]:
    """The committed corpus files of the target's directories, plus (for pth) the model-sized
    seeds and the mutants that pth_seeds.py builds at run time instead of storing them."""
    files = []
    for d in target.corpus_dirs:
        for p in sorted((CORPUS / d).rglob("*")):
            if p.is_file() and not p.name.startswith("."):
                files.append((str(p.relative_to(CORPUS.parent)), p.read_bytes()))
        if d == "pth":
            from pth_seeds import built_files

            files += [(f"fuzz_corpus/pth/{name} (built)", data)
                      for name, data in sorted(built_files().items())]
    return files


def save_finding(findings_dir: Path, target_name: str, kind: str, suffix: str, data: bytes) -> Path:
    d = findings_dir / target_name
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{kind}-{hashlib.sha1(data).hexdigest()[:12]}{suffix}"
    p.write_bytes(data)
    return p


def _cap_address_space(gib: float) -> None:
    """An input that makes a parser allocate gigabytes then fails with MemoryError (and is
    reported through its allocation peak) instead of taking the machine down."""
    import resource

    cap = int(gib * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def worker(args) -> int:
    import mutators as M
    import targets as T

    _cap_address_space(args.max_gib)

    findings_dir = Path(args.findings)
    runner = T.Runner(workdir=args.workdir)
    targets = [t for t in T.all_targets() if not args.target or t.name in args.target]
    if not targets:
        print("fuzz: no target available (samba_ext.safetensors_io / litgpt / model missing?)")
        return 2
    t0 = time.monotonic()
    deadline = t0 + args.seconds
    n_findings = 0
    signatures: dict[str, int] = {}   # finding signature -> count (one saved input each)
    report = {}
    mut_sets = {"safetensors": M.SAFETENSORS, "pth": M.PTH, "folder": M.FOLDER}

    # 1. replay every corpus file (regressions must stay fixed)
    corpora = {}
    for t in targets:
        files = load_corpus(t)
        if not files:
            print(f"fuzz: target {t.name}: empty corpus in {t.corpus_dirs}")
            return 2
        corpora[t.name] = files
        for name, data in files:
            f = runner.run_one(t, data)
            if f is not None:
                n_findings += 1
                print(f"FINDING [{t.name}] corpus file {name}: {f}", flush=True)
        report[t.name] = {"corpus_files": len(files)}
    if args.corpus_only:
        for t in targets:
            report[t.name].update(outcomes=dict(sorted(t.stats.items())))
        print(json.dumps({"findings": n_findings, "targets": report}, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps({"findings": n_findings, "targets": report}))
        runner.close()
        return 1 if n_findings else 0

    # 2. mutants, round-robin over targets, deterministic per (seed, target)
    rngs = {t.name: random.Random(f"{args.seed}:{t.name}") for t in targets}
    pools = {t.name: [d for _, d in corpora[t.name]] for t in targets}
    seen = {t.name: set() for t in targets}
    done = {t.name: 0 for t in targets}
    stopped_on_time = False
    active = list(targets)
    while active:
        for t in list(active):
            if args.execs and done[t.name] >= args.execs:
                active.remove(t)
                continue
            if time.monotonic() > deadline:
                stopped_on_time = True
                active = []
                break
            rng = rngs[t.name]
            pool = pools[t.name]
            data = M.mutate(rng.choice(pool), rng, pool, mut_sets[t.mutators])
            before = dict(t.stats)
            f = runner.run_one(t, data)
            done[t.name] += 1
            if f is not None:
                n_findings += 1
                sig = f"{t.name}|{f.signature}"
                signatures[sig] = signatures.get(sig, 0) + 1
                if signatures[sig] == 1:
                    p = save_finding(findings_dir, t.name, f.kind, t.suffix, data)
                    print(f"FINDING [{t.name}] exec {done[t.name]}: {f}\n    input saved to {p}",
                          flush=True)
                if len(signatures) >= args.max_findings:
                    active = []
                    break
                continue
            outcome = next((k for k in t.stats if t.stats[k] != before.get(k)), "?")
            sig = outcome + ":" + _signature(runner.last_detail or "")
            if sig not in seen[t.name] and len(pool) < 2000:
                seen[t.name].add(sig)
                pool.append(data)
    elapsed = time.monotonic() - t0
    for t in targets:
        report[t.name].update(execs=done[t.name], outcomes=dict(sorted(t.stats.items())),
                              distinct_outcomes=len(seen[t.name]))
    summary = {"seed": args.seed, "seconds": round(elapsed, 1), "stopped_on_time": stopped_on_time,
               "total_execs": sum(done.values()),
               "max_peak_alloc_over_file_size": round(runner.max_ratio, 2),
               "findings": n_findings, "distinct_findings": signatures, "targets": report}
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    runner.close()
    return 1 if n_findings else 0


def atheris_worker(args) -> int:  # pragma: no cover - optional long local runs
    import atheris
    import mutators as M

    _cap_address_space(args.max_gib)

    with atheris.instrument_imports():
        import targets as T
        import samba_ext.safetensors_io  # noqa: F401
        import samba_ext.litgpt  # noqa: F401
    tlist = [t for t in T.all_targets() if t.name == (args.target or ["pth"])[0]]
    if not tlist:
        print("fuzz: unknown target")
        return 2
    t = tlist[0]
    runner = T.Runner(workdir=args.workdir)
    pool = [d for _, d in load_corpus(t)]
    mset = {"safetensors": M.SAFETENSORS, "pth": M.PTH, "folder": M.FOLDER}[t.mutators]

    def one(data: bytes) -> None:
        f = runner.run_one(t, data)
        if f is not None and any(i in f.signature for i in args.ignore):
            return
        if f is not None:
            p = save_finding(Path(args.findings), t.name, f.kind, t.suffix, data)
            raise RuntimeError(f"{f} (saved to {p})")

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.random() < 0.2:
            return atheris.Mutate(data, max_size)
        return M.mutate(data or rng.choice(pool), rng, pool, mset)[:max_size]

    seed_dir = Path(args.workdir) / "atheris-seeds"
    seed_dir.mkdir(parents=True, exist_ok=True)
    for i, d in enumerate(pool):
        (seed_dir / f"s{i}").write_bytes(d)
    argv = [sys.argv[0], str(seed_dir), f"-max_total_time={int(args.seconds)}",
            f"-seed={args.seed + 1}", "-max_len=4194304", "-rss_limit_mb=0",
            "-timeout=10", f"-artifact_prefix={Path(args.findings).resolve()}/atheris-"]
    Path(args.findings).mkdir(parents=True, exist_ok=True)
    atheris.Setup(argv, one, custom_mutator=custom_mutator)
    atheris.Fuzz()
    return 0


def replay(args) -> int:
    import traceback

    import targets as T

    data = Path(args.replay).read_bytes()
    suffix = Path(args.replay).suffix
    rc = 0
    for t in T.all_targets():
        if (args.target and t.name not in args.target) or (not args.target and t.suffix != suffix):
            continue
        runner = T.Runner()
        f = runner.run_one(t, data)
        print(f"[{t.name}] {f or 'ok: ' + runner.last_detail[:300]}")
        if f is not None:
            rc = 1
            if f.kind == "exception":
                path = Path(runner.workdir) / ("input" + t.suffix)
                path.write_bytes(data)
                try:
                    t.load(str(path))
                except Exception:  # noqa: BLE001
                    traceback.print_exc()
        runner.close()
    return rc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=55.0, help="wall-time cap (default 55)")
    ap.add_argument("--execs", type=int, default=2000,
                    help="mutants per target (0: until --seconds; default 2000)")
    ap.add_argument("--ignore", action="append", default=[],
                    help="atheris engine: keep going past findings whose signature contains "
                         "this text (e.g. litgpt.py:182), to explore beyond known bugs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", action="append", help="only this target (repeatable)")
    ap.add_argument("--findings", default=str(ROOT / "build-fuzz" / "findings"))
    ap.add_argument("--max-findings", type=int, default=20)
    ap.add_argument("--engine", choices=["builtin", "atheris"], default="builtin")
    ap.add_argument("--json", help="also write the summary to this file")
    ap.add_argument("--corpus-only", action="store_true",
                    help="only replay the committed corpus (what tests/fuzz/test_fuzz_corpus.py runs)")
    ap.add_argument("--max-gib", type=float, default=6.0,
                    help="address-space cap of the worker in GiB (default 6)")
    ap.add_argument("--replay", metavar="FILE", help="run FILE through --target (all targets "
                    "of its suffix if none) and print the full traceback / finding")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.replay:
        return replay(args)
    if args.worker:
        if args.engine == "atheris":
            return atheris_worker(args)
        return worker(args)
    # parent: run the worker in a child so that a hard crash still leaves the input behind
    import tempfile

    with tempfile.TemporaryDirectory(prefix="samba-fuzz-") as wd:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--workdir", wd,
               *sys.argv[1:]]
        env = dict(os.environ, PYTHONFAULTHANDLER="1")
        rc = subprocess.call(cmd, env=env)
        if rc < 0 or rc not in (0, 1, 2):
            inputs = sorted(Path(wd).glob("input.*"), key=lambda p: p.stat().st_mtime)
            for p in inputs[-1:]:
                saved = save_finding(Path(args.findings), "crash", f"signal{-rc}" if rc < 0
                                     else f"exit{rc}", p.suffix, p.read_bytes())
                print(f"FINDING: the worker died (status {rc}) on {saved}")
            return 1
        return rc


if __name__ == "__main__":
    sys.exit(main())
