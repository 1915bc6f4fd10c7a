"""Evaluation grids on a local Ray cluster (2 CPUs, started once for this module): results
equal the serial run, a killed worker's unit is retried, and a run resumed on Ray computes
only the missing units. Skipped when Ray is not installed."""
from __future__ import annotations

import os
import sys

import pytest

ray = pytest.importorskip("ray")

from samba_ext.eval.grid import plan_units, run_grid  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PK = dict(lengths=[260, 280], depths=[0.0, 1.0], trials=1, seed=4)
PPL = dict(n_tokens=384, mode="sliding", context_lengths=[128, 256])


@pytest.fixture(scope="module")
def cluster():
    # the hooks below travel to the workers by value (this test module is not importable there)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": ROOT}})
    yield "auto"
    ray.shutdown()


def _strip(cells: list[dict]) -> list[dict]:
    return [{k: v for k, v in c.items() if k != "time_s"} for c in cells]


class _Mark:
    """on_unit hook run in the worker: one file per unit started (counts computed units)."""

    def __init__(self, d: str) -> None:
        self.d = d

    def __call__(self, unit) -> None:
        with open(os.path.join(self.d, f"{unit.key}.{os.getpid()}.{os.urandom(4).hex()}"), "w"):
            pass

    def count(self) -> int:
        return len(os.listdir(self.d))


class _KillOnce:
    """on_unit hook: the first time ``key`` starts, ray.kill the worker running it (so the
    unit dies in flight); the restarted worker's retry finds the marker and runs it."""

    def __init__(self, key: str, marker: str) -> None:
        self.key, self.marker = key, marker

    def __call__(self, unit) -> None:
        import ray as r

        if unit.key == self.key and not os.path.exists(self.marker):
            with open(self.marker, "w"):
                pass
            r.kill(r.get_runtime_context().current_actor, no_restart=False)


def test_ray_grid_equals_serial(cluster, tmp_path, capsys):
    for name, kw in (("passkey", PK), ("perplexity", PPL)):
        serial = run_grid(name, "samba-tiny", out=None, progress=False, **kw)
        capsys.readouterr()
        dist = run_grid(name, "samba-tiny", out=tmp_path / name, ray=cluster, progress=True,
                        **kw)
        err = capsys.readouterr().err
        # one bar over the grid's cells, with the cluster's tokens/s
        assert f"{name} grid" in err and "2/2" in err and "tok_s" in err
        assert not dist.partial and not serial.partial
        assert _strip(dist.cells) == _strip(serial.cells)
        assert dist.params == serial.params and dist.model == serial.model
        assert set(dist.to_dict()) == set(serial.to_dict())


def test_killed_worker_unit_is_retried(cluster, tmp_path):
    units = plan_units("passkey", "samba-tiny", PK)
    marker = str(tmp_path / "killed")
    serial = run_grid("passkey", "samba-tiny", progress=False, **PK)
    dist = run_grid("passkey", "samba-tiny", out=tmp_path / "out", ray=cluster, progress=False,
                    on_unit=_KillOnce(units[-1].key, marker), **PK)
    assert os.path.exists(marker)                  # the worker was killed inside the unit
    assert not dist.partial and _strip(dist.cells) == _strip(serial.cells)
    assert len(os.listdir(tmp_path / "out" / "cells" / "passkey")) == len(units)


def test_resume_on_ray_computes_only_missing(cluster, tmp_path):
    kw = dict(lengths=[260, 270, 280], depths=[0.0], trials=1, seed=6)
    units = plan_units("passkey", "samba-tiny", kw)
    out = tmp_path / "out"

    class _Stop:
        n = 0

        def __call__(self, unit) -> None:
            if self.n == 1:
                raise KeyboardInterrupt        # Ctrl-C after the first unit (local run)
            self.n += 1

    half = run_grid("passkey", "samba-tiny", out=out, progress=False, on_unit=_Stop(), **kw)
    assert half.partial and len(half.cells) == 1
    marks = tmp_path / "marks"
    marks.mkdir()
    done = run_grid("passkey", "samba-tiny", out=out, ray=cluster, progress=False,
                    on_unit=_Mark(str(marks)), **kw)
    assert _Mark(str(marks)).count() == len(units) - 1       # only the missing units ran
    serial = run_grid("passkey", "samba-tiny", progress=False, **kw)
    assert not done.partial and _strip(done.cells) == _strip(serial.cells)
    again = run_grid("passkey", "samba-tiny", out=out, ray=cluster, progress=False,
                     on_unit=_Mark(str(marks)), **kw)
    assert _Mark(str(marks)).count() == len(units) - 1 and not again.partial


def test_loaded_model_object_refused_on_ray(cluster, tmp_path):
    from samba_ext import Samba

    with pytest.raises(TypeError, match="name or path"):
        run_grid("passkey", Samba.load("samba-tiny"), out=tmp_path, ray=cluster,
                 progress=False, **PK)


def test_cli_ray_option(cluster, tmp_path):
    """`samba-ext perplexity --ray auto`: same cells as the local command."""
    import json

    from samba_ext import cli

    base = ["perplexity", "--tokens", "384", "--mode", "sliding", "--lengths", "128,256",
            "--no-plot", "--no-progress", "--threads", "1"]
    assert cli.main(base + ["--out", str(tmp_path / "local")]) == 0
    assert cli.main(base + ["--out", str(tmp_path / "ray"), "--ray", cluster]) == 0
    a = json.loads((tmp_path / "local" / "results.json").read_text())
    b = json.loads((tmp_path / "ray" / "results.json").read_text())
    assert _strip(a["cells"]) == _strip(b["cells"]) and a["params"] == b["params"]


def test_several_models_share_the_pool(cluster, tmp_path):
    """run_grids: model x length units of two models in one Ray run; each model's result
    equals its own serial run."""
    from samba_ext.eval.grid import run_grids

    kw = dict(lengths=[260, 280], depths=[0.0], trials=1, seed=7)
    got = run_grids("passkey", ["samba-tiny", "llama-tiny"], out=tmp_path, ray=cluster,
                    progress=False, **kw)
    assert list(got) == ["samba-tiny", "llama-tiny"]
    for name, res in got.items():
        serial = run_grid("passkey", name, progress=False, **kw)
        assert not res.partial and _strip(res.cells) == _strip(serial.cells)
        assert res.model == serial.model and res.params == serial.params
    assert got["samba-tiny"].model["hash"] != got["llama-tiny"].model["hash"]
