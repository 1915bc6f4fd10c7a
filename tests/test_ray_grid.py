"""Evaluation grids as units (samba_ext.eval.grid): same numbers as a direct call, unit files
written as units finish, resume computes only the missing units. No Ray needed here; the Ray
runs are in test_ray_cluster.py."""
from __future__ import annotations

import json
import os

import pytest

from samba_ext import Samba
from samba_ext.eval import passkey, perplexity, phonebook, throughput
from samba_ext.eval.grid import UnitStore, plan_units, run_grid

PK = dict(lengths=[260, 280], depths=[0.0, 1.0], trials=1, seed=5)


def _strip(cells: list[dict]) -> list[dict]:
    """Cells without their timing (the only field that differs between two runs)."""
    return [{k: v for k, v in c.items() if k != "time_s"} for c in cells]


@pytest.fixture(scope="module")
def model() -> Samba:
    return Samba.load("samba-tiny")


def test_passkey_grid_equals_direct_call(model, tmp_path):
    ref = passkey(model, progress=False, **PK)
    got = run_grid("passkey", model, out=tmp_path, progress=False, **PK)
    assert not got.partial
    assert _strip(got.cells) == _strip(ref.cells)
    assert got.params == ref.params and got.model == ref.model and got.seed == ref.seed
    assert set(got.to_dict()) == set(ref.to_dict())          # the results.json schema
    # split by depth: the same keys and outputs when each trial is prefilled from scratch
    ref2 = passkey(model, progress=False, share_prefix=False, **PK)
    got2 = run_grid("passkey", model, out=tmp_path, passkey_unit="depth", progress=False,
                    share_prefix=False, **PK)
    assert _strip(got2.cells) == _strip(ref2.cells) and got2.params == ref2.params


def test_other_evals_grid_equal_direct_call(model, tmp_path):
    kw = dict(n_tokens=384, mode="sliding", context_lengths=[128, 256])
    ref, got = perplexity(model, progress=False, **kw), run_grid(
        "perplexity", model, out=tmp_path, progress=False, **kw)
    assert _strip(got.cells) == _strip(ref.cells)
    assert got.params == ref.params
    kw = dict(n_tokens=300)                                  # streaming: one unit
    ref, got = perplexity(model, progress=False, **kw), run_grid(
        "perplexity", model, out=tmp_path, progress=False, **kw)
    assert got.cells == ref.cells and got.params == ref.params
    kw = dict(entries=[3, 4], trials=1, seed=1)
    ref, got = phonebook(model, progress=False, **kw), run_grid(
        "phonebook", model, out=tmp_path, progress=False, **kw)
    assert _strip(got.cells) == _strip(ref.cells) and got.params == ref.params
    kw = dict(configs=["samba-tiny"], prompt_lengths=[16, 32], gen_lengths=[2],
              total_tokens=32, batch_size=2, warmup=False)
    ref, got = throughput(progress=False, **kw), run_grid("throughput", out=tmp_path,
                                                          progress=False, **kw)
    # timings differ run to run; everything else is the same
    drop = ("time_s", "tokens_per_s", "ms_per_step")
    assert [{k: v for k, v in c.items() if k not in drop} for c in got.cells] == \
        [{k: v for k, v in c.items() if k not in drop} for c in ref.cells]
    assert got.params == ref.params and got.model == ref.model


class _StopAfter:
    """on_unit hook: Ctrl-C (KeyboardInterrupt) when the (n+1)-th unit starts; counts units."""

    def __init__(self, n: int | None) -> None:
        self.n, self.started = n, []

    def __call__(self, unit) -> None:
        if self.n is not None and len(self.started) == self.n:
            raise KeyboardInterrupt
        self.started.append(unit.key)


def test_resume_computes_only_missing_units(model, tmp_path):
    units = plan_units("passkey", model, PK)
    assert len(units) == 2 and len({u.key for u in units}) == 2
    kw = dict(lengths=[260, 270, 280], depths=[0.0], trials=1, seed=2)
    full = run_grid("passkey", model, out=tmp_path / "full", progress=False, **kw)
    stop = _StopAfter(1)
    part = run_grid("passkey", model, out=tmp_path / "run", progress=False, on_unit=stop, **kw)
    assert part.partial and len(stop.started) == 1
    assert _strip(part.cells) == _strip(full.cells)[:1]      # the finished unit, kept
    files = os.listdir(tmp_path / "run" / "cells" / "passkey")
    assert len([f for f in files if f.endswith(".json")]) == 1
    again = _StopAfter(None)
    done = run_grid("passkey", model, out=tmp_path / "run", progress=False, on_unit=again, **kw)
    assert len(again.started) == 2                           # only the two missing units
    assert stop.started[0] not in again.started
    assert not done.partial and _strip(done.cells) == _strip(full.cells)
    third = _StopAfter(None)
    run_grid("passkey", model, out=tmp_path / "run", progress=False, on_unit=third, **kw)
    assert third.started == []                               # all done: nothing recomputed


def test_changed_arguments_do_not_reuse_units(model, tmp_path):
    kw = dict(lengths=[260], depths=[0.0], trials=1)
    run_grid("passkey", model, out=tmp_path, progress=False, seed=0, **kw)
    count = _StopAfter(None)
    run_grid("passkey", model, out=tmp_path, progress=False, seed=1, on_unit=count, **kw)
    assert len(count.started) == 1                           # another seed: recomputed
    count = _StopAfter(None)
    run_grid("passkey", model, out=tmp_path, progress=False, seed=1, resume=False,
             on_unit=count, **kw)
    assert len(count.started) == 1                           # resume=False recomputes


def test_torn_unit_file_is_recomputed(model, tmp_path):
    kw = dict(lengths=[260], depths=[0.0], trials=1)
    run_grid("passkey", model, out=tmp_path, progress=False, **kw)
    (u,) = plan_units("passkey", model, kw)
    path = UnitStore(tmp_path, "passkey").path(u)
    with open(path, encoding="utf-8") as fh:
        doc = json.load(fh)
    assert doc["key"] == u.key and doc["output"]["cells"]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write('{"schema": "samba-ext.grid-unit", "key"')   # torn write
    count = _StopAfter(None)
    r = run_grid("passkey", model, out=tmp_path, progress=False, on_unit=count, **kw)
    assert len(count.started) == 1 and not r.partial


def test_bad_arguments_raise(model, tmp_path):
    with pytest.raises(ValueError, match="eval"):
        run_grid("nope", model, out=tmp_path)
    with pytest.raises(ValueError, match="passkey_unit"):
        run_grid("passkey", model, out=tmp_path, passkey_unit="trial", lengths=[260])
    with pytest.raises(ValueError, match="lengths"):
        run_grid("passkey", model, out=tmp_path, lengths=[])


class _Count:
    """Wraps grid.run_unit: counts the units actually computed in this process."""

    def __init__(self, real) -> None:
        self.real, self.n = real, 0

    def __call__(self, *a, **kw):
        self.n += 1
        return self.real(*a, **kw)


def test_cli_resumes_from_out(tmp_path, monkeypatch):
    """`samba-ext passkey --out X` twice: the second run computes no cell and writes the same
    results; --no-resume recomputes them."""
    from samba_ext import cli
    from samba_ext.eval import grid

    count = _Count(grid.run_unit)
    monkeypatch.setattr(grid, "run_unit", count)
    out = tmp_path / "pk"
    argv = ["passkey", "--lengths", "260,270", "--depths", "0", "--trials", "1",
            "--out", str(out), "--no-plot", "--no-progress", "--threads", "1"]
    assert cli.main(argv) == 0
    assert count.n == 2
    first = json.loads((out / "results.json").read_text())
    assert cli.main(argv) == 0
    assert count.n == 2                                      # nothing recomputed
    second = json.loads((out / "results.json").read_text())
    assert _strip(second["cells"]) == _strip(first["cells"])
    assert second["params"] == first["params"] and not second["partial"]
    assert cli.main(argv + ["--no-resume"]) == 0
    assert count.n == 4


def test_python_out_argument_is_resumable(model, tmp_path):
    """passkey(..., out=DIR) is the grid path: same numbers as the plain call, resumable."""
    kw = dict(lengths=[260], depths=[0.0], trials=1)
    ref = passkey(model, progress=False, **kw)
    got = passkey(model, progress=False, out=tmp_path, **kw)
    assert _strip(got.cells) == _strip(ref.cells) and got.params == ref.params
    count = _StopAfter(None)
    run_grid("passkey", model, out=tmp_path, progress=False, on_unit=count, **kw)
    assert count.started == []


def test_interrupted_out_argument_raises_with_the_finished_units(model, tmp_path, monkeypatch):
    """passkey(..., out=DIR) stopped by Ctrl-C after its first unit raises EvalInterrupted whose
    result holds that unit's cells; calling again finishes only the missing unit."""
    from samba_ext.eval import EvalInterrupted, grid

    full = passkey(model, progress=False, **PK)
    run = grid.run_grid
    stop = _StopAfter(1)
    monkeypatch.setattr(grid, "run_grid", lambda *a, **k: run(*a, on_unit=stop, **k))
    with pytest.raises(EvalInterrupted) as e:
        passkey(model, progress=False, out=tmp_path, **PK)
    part = e.value.result
    assert part.partial and len(stop.started) == 1
    assert _strip(part.cells) == [c for c in _strip(full.cells) if c["length"] == 260]
    again = _StopAfter(None)
    monkeypatch.setattr(grid, "run_grid", lambda *a, **k: run(*a, on_unit=again, **k))
    done = passkey(model, progress=False, out=tmp_path, **PK)
    assert len(again.started) == 1 and not done.partial
    assert _strip(done.cells) == _strip(full.cells)


def test_without_ray_installed_ray_argument_says_how(model, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *a, **kw):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ImportError, match=r"samba-ext\[ray\]"):
        run_grid("passkey", "samba-tiny", out=tmp_path, ray=True, progress=False,
                 lengths=[260], depths=[0.0], trials=1)
    # the local path does not need Ray
    r = run_grid("passkey", model, out=tmp_path, progress=False, lengths=[260], depths=[0.0],
                 trials=1)
    assert not r.partial


_DRIVER = """
import os, signal, sys
from samba_ext.eval.grid import run_grid
started = []
def die_on_second(unit):
    if started:
        os.kill(os.getpid(), signal.SIGKILL)      # the driver dies hard, no cleanup
    started.append(unit.key)
run_grid("passkey", "samba-tiny", out=sys.argv[1], progress=False, on_unit=die_on_second,
         lengths=[260, 270, 280], depths=[0.0], trials=1, seed=9)
"""


def test_dead_driver_loses_only_the_running_unit(tmp_path):
    """A driver killed (SIGKILL) inside the second unit: the first unit's file is on disk and
    intact, and the same grid run again computes only the two missing units."""
    import signal
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-c", _DRIVER, str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    kw = dict(lengths=[260, 270, 280], depths=[0.0], trials=1, seed=9)
    files = [f for f in os.listdir(tmp_path / "cells" / "passkey") if f.endswith(".json")]
    assert len(files) == 1
    count = _StopAfter(None)
    done = run_grid("passkey", "samba-tiny", out=tmp_path, progress=False, on_unit=count, **kw)
    assert len(count.started) == 2 and not done.partial
    full = run_grid("passkey", "samba-tiny", progress=False, **kw)
    assert _strip(done.cells) == _strip(full.cells)
