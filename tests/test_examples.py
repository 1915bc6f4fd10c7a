"""The notebook (examples/quickstart.ipynb) and the example scripts (examples/*.py) run, with
small settings, so they do not rot. The notebook test needs nbclient + nbformat + ipykernel
(the `test` extra) and skips cleanly without them."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import samba_ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(samba_ext.__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
MODEL = ["--model", "random:samba-test"]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                MPLBACKEND="Agg")


def run_example(name: str, *args: str, cwd: str) -> str:
    p = subprocess.run([sys.executable, os.path.join(EXAMPLES, name), *args], cwd=cwd,
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{name} failed:\n{p.stdout}\n{p.stderr}"
    return p.stdout


def test_every_example_is_tested():
    tested = {"passkey_grid.py", "phonebook_curve.py", "perplexity_stdlib.py",
              "throughput_compare.py", "generate_stream.py"}
    assert set(f for f in os.listdir(EXAMPLES) if f.endswith(".py")) == tested


def test_examples_run(tmp_path):
    out = run_example("passkey_grid.py", *MODEL, "--lengths", "300,400", "--depths", "0,1",
                      "--trials", "1", "--out", str(tmp_path / "pk"), cwd=str(tmp_path))
    assert "passkey accuracy" in out
    assert json.loads((tmp_path / "pk" / "results.json").read_text())["eval"] == "passkey"
    out = run_example("phonebook_curve.py", *MODEL, "--entries", "4,6", "--trials", "1",
                      cwd=str(tmp_path))
    assert "phonebook accuracy" in out and "<- the model continues here" in out
    out = run_example("perplexity_stdlib.py", *MODEL, "--tokens", "1500", "--window", "512",
                      cwd=str(tmp_path))
    assert "cumulative perplexity" in out and "sliding-window perplexity" in out
    out = run_example("throughput_compare.py", "--config", "samba-test", "--lengths", "128",
                      "--total-tokens", "256", "--gen-lengths", "4", "--batch-size", "2",
                      cwd=str(tmp_path))
    assert "samba-test:llama" in out
    out = run_example("generate_stream.py", *MODEL, "--length", "300", cwd=str(tmp_path))
    assert "correct:" in out


def test_quickstart_notebook(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(os.path.join(EXAMPLES, "quickstart.ipynb"), as_version=4)
    params = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1
    # Small settings, default model (bundled samba-tiny, or the flagged random fallback).
    params[0].source = ("MODEL = None\nLENGTHS = [300, 500]\nDEPTHS = [0.0, 1.0]\nTRIALS = 1\n"
                        "SEED = 0\nOUT = 'nb-results'")
    for k, v in _env().items():
        monkeypatch.setenv(k, v)
    # figures shown inline, whatever MPLBACKEND the test run has
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no heatmap displayed"
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "passkey accuracy" in text and "overall accuracy" in text
    assert (tmp_path / "nb-results" / "results.json").is_file()
