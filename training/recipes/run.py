#!/usr/bin/env python3
"""Run a recipe of training/recipes/ step by step, each step continuing the previous one's file.

    python3 training/recipes/run.py samba_tiny --out OUTDIR [--from pk3 --init FILE] [--only pb5] [--to pk2]
    python3 training/recipes/run.py samba_tiny --print          # the commands, without running them

Each step writes OUTDIR/<step>.safetensors, and with ``--eval-long`` OUTDIR/<step>.json; pass extra
train.py options after ``--`` (for example ``-- --threads 16``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # training/: train.py and its modules


def commands(
    recipe: str,
    out: str,
    start: str | None = None,
    init: str | None = None,
    only: str | None = None,
    extra: list[str] | None = None,
    to: str | None = None,
) -> list[tuple[str, list[str]]]:
    """(step, train.py argv) for each step to run; --init chains the steps' output files."""
    mod = importlib.import_module(f"recipes.{recipe}")
    names = [n for n, _ in mod.STEPS]
    for flag, v in (("--from", start), ("--only", only), ("--to", to)):
        if v is not None and v not in names:
            raise SystemExit(f"{flag} {v}: no such step in {recipe}; steps: {', '.join(names)}")
    if (start or only) not in (None, names[0]) and init is None:
        raise SystemExit("--from/--only after the first step needs --init FILE (the previous step's file)")
    prev = init
    out_list = []
    running = start is None and only is None
    for name, opts in mod.STEPS:
        running = running or name in (start, only)
        if not running:
            continue
        path = os.path.join(out, f"{name}.safetensors")
        argv = ["--model", mod.MODEL, *opts, *(["--init", prev] if prev else []), "--out", path]
        if "--eval-long" in opts:
            argv += ["--eval-json", os.path.join(out, f"{name}.json")]
        out_list.append((name, argv + list(extra or [])))
        if only is not None or name == to:
            break
        prev = path
    return out_list


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", help="a module of training/recipes/, e.g. samba_tiny or llama_tiny")
    ap.add_argument("--out", default="train-out", help="folder for the files of every step")
    ap.add_argument("--from", dest="start", default=None, help="start at this step")
    ap.add_argument("--only", default=None, help="run only this step")
    ap.add_argument("--to", default=None, help="stop after this step")
    ap.add_argument("--init", default=None, help="the file the first step run continues")
    ap.add_argument("--print", action="store_true", help="print the commands only")
    args = ap.parse_args(argv)
    cmds = commands(args.recipe, args.out, args.start, args.init, args.only, extra, args.to)
    if args.print:
        for _, a in cmds:
            print("python3 training/train.py " + " ".join(shlex.quote(x) for x in a))
        return 0
    import train

    os.makedirs(args.out, exist_ok=True)
    for name, a in cmds:
        print(f"== {name}", flush=True)
        train.main(a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
