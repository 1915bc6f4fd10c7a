"""Result documents: the shipped JSON Schema holds for real outputs of every evaluation,
tables for pandas / CSV, the Jupyter HTML view, and no import cycle between results and
plots."""
from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys

import pytest

from json_schema_mini import validate
from samba_ext import Samba, SambaConfig
from samba_ext.eval import load_result, passkey, perplexity, phonebook, throughput
from samba_ext.eval.results import SCHEMA_FILE, json_schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def model():
    return Samba(SambaConfig.preset("samba-test"), seed=0)


@pytest.fixture(scope="module")
def results(model):
    return [passkey(model, lengths="300,400", depths="0,0.25,1", trials=2, progress=False),
            passkey(model, lengths=[300], depths="random", trials=2, progress=False),
            phonebook(model, entries="5,8", trials=2, progress=False),
            perplexity(model, tokens=list(range(200)) * 3, progress=False),
            perplexity(model, tokens=list(range(200)) * 3, mode="sliding",
                       context_lengths=[128], progress=False),
            throughput(["samba-test"], prompt_lengths=[64], total_tokens=128, gen_lengths=[4],
                       batch_size=2, repeats=1, progress=False)]


def _check(doc: dict) -> None:
    schema = json_schema()
    errs = validate(doc, schema)
    assert not errs, errs[:5]
    try:
        import jsonschema
    except ImportError:
        return
    jsonschema.validate(doc, schema)


def test_schema_validates_real_outputs(results, tmp_path):
    """issue 19.5: the schema file ships in the package and every evaluation's results.json
    (written and read back) satisfies it; a broken document does not."""
    assert os.path.isfile(SCHEMA_FILE)
    for r in results:
        p = r.save_json(tmp_path / f"{r.eval_name}.json")
        doc = json.loads(open(p, encoding="utf-8").read())
        _check(doc)
        assert load_result(p).to_dict() == doc or r.eval_name == "perplexity"
    committed = os.path.join(ROOT, "docs", "eval", "passkey_default.json")
    if os.path.isfile(committed):
        _check(json.load(open(committed, encoding="utf-8")))
    bad = copy.deepcopy(results[0].to_dict())
    bad["cells"][0].pop("accuracy")
    bad["eval"] = "passkey"
    assert validate(bad, json_schema())
    bad2 = dict(results[2].to_dict(), partial="no")
    assert validate(bad2, json_schema())


def test_rows_dataframe_and_csv(results, tmp_path):
    pk = results[0]
    rows = pk.to_rows()
    assert len(rows) == len(pk.cells) == 6
    assert all("results" not in r and r["eval"] == "passkey" for r in rows)
    trials = pk.to_rows(trials=True)
    assert len(trials) == 12 and {"key", "output", "correct", "length", "cell_depth"} <= set(trials[0])
    path = pk.to_csv(tmp_path / "pk.csv")
    with open(path, newline="", encoding="utf-8") as fh:
        back = list(csv.DictReader(fh))
    assert [(int(r["length"]), float(r["depth"])) for r in back] == \
        [(c["length"], c["depth"]) for c in pk.cells]
    pd = pytest.importorskip("pandas")
    df = pk.to_dataframe()
    assert isinstance(df, pd.DataFrame) and len(df) == 6
    assert df["accuracy"].tolist() == [c["accuracy"] for c in pk.cells]
    assert len(results[5].to_dataframe()) == len(results[5].cells)


def test_to_dataframe_without_pandas(results, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        results[0].to_dataframe()


def test_html_repr(results):
    for r in results:
        h = r._repr_html_()
        assert h.startswith("<div>") and "<pre>" in h and r.eval_name in h
    r = results[0]
    r.notes.append("<script>x</script>")
    try:
        assert "<script>" not in r._repr_html_()
    finally:
        r.notes.pop()


def test_no_import_cycle_between_results_and_plots():
    """issue 19.5: eval/results.py and eval/plots.py imported each other; plots now takes
    its formatting from eval/_format.py and never imports results (results imports plots
    lazily, in plot())."""
    code = ("import ast, inspect, samba_ext.eval.plots as p, samba_ext.eval.results as r\n"
            "def deps(m):\n"
            "    return {n.module for n in ast.walk(ast.parse(inspect.getsource(m)))\n"
            "            if isinstance(n, ast.ImportFrom) and n.module}\n"
            "assert 'results' not in deps(p), deps(p)\n")
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_heatmap_depth_labels(tmp_path):
    """issue 19.8: depth 0.25 was labelled '0.2' and 0.75 '0.8' (one decimal)."""
    pytest.importorskip("matplotlib")
    from samba_ext.eval import PasskeyResult

    cells = [{"length": 1024, "depth": d, "trials": 1, "n": 1, "correct": 1, "accuracy": 1.0,
              "time_s": 0.1, "prompt_tokens": 1024, "processed_tokens": 1024, "results": []}
             for d in (0.0, 0.25, 0.5, 0.75, 1.0)]
    r = PasskeyResult(params={}, cells=cells, model={"name": "x"})
    fig = r.plot(tmp_path / "pk.png")
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["0", "0.25", "0.5", "0.75", "1"]
    assert "0.25" in r.table() and "0.75" in r.table()


def test_throughput_warms_up_and_takes_a_median(model):
    """issue 19.8: throughput timed one run by default (a noisy first cell). Now every
    measurement runs once untimed, then 3 timed runs whose median is reported (counted
    calls, no timing)."""
    calls = {"prefill": 0, "step": 0}

    class Counting:
        def __init__(self, m):
            self.m = m

        def __getattr__(self, name):
            return getattr(self.m, name)

        def prefill(self, *a, **k):
            calls["prefill"] += 1
            return self.m.prefill(*a, **k)

        def step(self, *a, **k):
            calls["step"] += 1
            return self.m.step(*a, **k)

    r = throughput([Counting(model)], prompt_lengths=[32, 64], total_tokens=64,
                   gen_lengths=[3], batch_size=2, progress=False)
    assert [c["repeats"] for c in r.cells] == [3, 3, 3]
    # per prefill length: 1 warm-up + 3 timed; decode: (1 + 3) runs of a prompt + 3 steps
    assert calls["prefill"] == 2 * 4 + 4 and calls["step"] == 4 * 3


@pytest.mark.parametrize("doc", ["README.md", os.path.join("docs", "eval.md")])
def test_documented_passkey_output_is_the_committed_runs(doc):
    """The `samba-ext passkey` excerpt in the docs is the committed run's printed table, line
    for line (the lines between are elided with "..."), so it cannot drift from the JSON."""
    committed = os.path.join(ROOT, "docs", "eval", "passkey_default.json")
    printed = str(load_result(committed)).splitlines()
    text = open(os.path.join(ROOT, doc), encoding="utf-8").read()
    block = text.split("$ samba-ext passkey\n", 1)[1].split("```", 1)[0].splitlines()
    shown = [ln for ln in block if not ln.startswith("...")]
    assert len(shown) >= 6
    for ln in shown:
        assert ln in printed, f"{doc}: {ln!r} is not a line of the committed run's output"
