"""`samba-ext passkey --ray` with no address starts its own local Ray cluster (the laptop
case of docs/distributed.md), in a subprocess; the cells equal the local command's.
Skipped when Ray is not installed."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("ray")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cli_ray_without_address_starts_a_local_cluster(tmp_path):
    from samba_ext import cli

    args = ["passkey", "--lengths", "260,280", "--depths", "0", "--trials", "1", "--no-plot",
            "--no-progress", "--threads", "1"]
    assert cli.main(args + ["--out", str(tmp_path / "local")]) == 0
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("RAY_ADDRESS", None)
    p = subprocess.run([sys.executable, "-m", "samba_ext.cli"] + args +
                       ["--out", str(tmp_path / "ray"), "--ray"], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Started a local Ray instance" in p.stderr
    a = json.loads((tmp_path / "local" / "results.json").read_text())
    b = json.loads((tmp_path / "ray" / "results.json").read_text())
    strip = lambda cs: [{k: v for k, v in c.items() if k != "time_s"} for c in cs]
    assert strip(a["cells"]) == strip(b["cells"]) and a["params"] == b["params"]
