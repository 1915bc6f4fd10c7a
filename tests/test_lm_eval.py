"""The ``samba-ext`` model for lm-evaluation-harness (samba_ext.integrations.lmeval).

One ``simple_evaluate`` run (module fixture) over the test tasks in tests/lm_eval_tasks/
(multiple choice, rolling perplexity, generation; data in tiny.jsonl) and the package's
passkey and phonebook task YAMLs; the tests compare lm-eval's per-sample numbers with the
package's own ``Samba.nll`` / greedy decoding / evaluations on the same text.
Skipped when lm-eval is not installed.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval")

from samba_ext import Samba  # noqa: E402
from samba_ext.integrations import lmeval as backend  # noqa: E402
from samba_ext.integrations.lmeval_tasks import TASK_DIR  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TEST_TASKS = os.path.join(HERE, "lm_eval_tasks")
ROOT = os.path.dirname(HERE)
META = {"lengths": "1K", "depths": [0.0, 1.0], "trials": 2, "entries": [20], "seed": 3}


def _rows() -> list[dict]:
    with open(os.path.join(TEST_TASKS, "tiny.jsonl"), encoding="utf-8") as fh:
        return [json.loads(x) for x in fh if x.strip()]


@pytest.fixture(scope="module")
def model() -> Samba:
    return Samba.load("samba-tiny")


@pytest.fixture(scope="module")
def run() -> dict:
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=[TEST_TASKS, TASK_DIR], metadata=dict(META))
    return lm_eval.simple_evaluate(
        model="samba-ext", model_args="pretrained=samba-tiny,device=cpu,batch_size=1",
        tasks=["samba_test_choice", "samba_test_rolling", "samba_test_generate",
               "samba_passkey", "samba_phonebook"],
        task_manager=tm, log_samples=True, verbosity="WARNING")


def _by_id(run: dict, task: str) -> dict[int, dict]:
    return {s["doc"]["id"] if "id" in s["doc"] else s["doc_id"]: s for s in run["samples"][task]}


def _ctx_cont_ll(model: Samba, lm: backend.SambaLM, context: str, cont: str) -> float:
    """Continuation log-likelihood from the package's own Samba.nll on the same tokens."""
    c, x = lm.encode_pair(context, cont)
    nll = model.nll(np.asarray([c + x]))[0]          # nll[t] = -log p(tok[t+1] | tok[:t+1])
    return float(-nll[len(c) - 1:].sum())


def test_registered_under_samba_ext():
    from lm_eval.api.registry import get_model

    assert get_model("samba-ext") is backend.SambaLM


def test_loglikelihood_equals_samba_nll(run, model):
    lm = backend.SambaLM(pretrained=model)
    samples = _by_id(run, "samba_test_choice")
    rows = _rows()
    assert len(samples) == len(rows)
    correct = 0
    for r in rows:
        got = [resp[0][0] for resp in samples[r["id"]]["resps"]]
        want = [_ctx_cont_ll(model, lm, r["context"], ch) for ch in r["choices"]]
        # batch_size=1: the same chunked forward pass and the same float64 log-softmax as
        # Samba.nll, so the values are identical, not just close
        assert got == want
        for ch, resp in zip(r["choices"], samples[r["id"]]["resps"]):
            c, x = lm.encode_pair(r["context"], ch)
            logits = model.forward(np.asarray([c + x]))[0]
            greedy = all(int(np.argmax(logits[len(c) - 1 + i])) == t for i, t in enumerate(x))
            assert resp[0][1] == greedy                          # is_greedy
        correct += int(int(np.argmax(want)) == r["gold"])
    acc = run["results"]["samba_test_choice"]["acc,none"]
    assert acc == correct / len(rows)


def test_empty_context_scored_after_bos(model):
    lm = backend.SambaLM(pretrained=model)
    c, x = lm.encode_pair("", "The")
    assert c == [model.tokenizer.bos_id] and x == model.tokenizer.encode("The")
    c, x = lm.encode_pair("The sun is ", "yellow.")   # trailing space moves to the continuation
    assert c == model.tokenizer.encode("The sun is") and x == model.tokenizer.encode(" yellow.")


def test_rolling_equals_samba_nll(run, model):
    samples = _by_id(run, "samba_test_rolling")
    rows = _rows()
    tot_ll, tot_bytes = 0.0, 0
    for r in rows:
        toks = [model.tokenizer.bos_id] + model.tokenizer.encode(r["text"])
        want = float(-model.nll(np.asarray([toks]))[0].sum())
        assert samples[r["id"]]["resps"][0][0] == want
        tot_ll += want
        tot_bytes += len(r["text"].encode("utf-8"))
    bpb = run["results"]["samba_test_rolling"]["bits_per_byte,none"]
    # lm-eval aggregates -sum(ll) / sum(bytes) / ln 2 in float64: a few ulps of rounding
    assert bpb == pytest.approx(-tot_ll / tot_bytes / math.log(2), rel=1e-12)


def test_generate_until_equals_greedy_generate(run, model):
    samples = _by_id(run, "samba_test_generate")
    n_match = 0
    for r in _rows():
        got = samples[r["id"]]["resps"][0][0]
        ref = model.generate(r["prompt"], max_new_tokens=12, temperature=0.0,
                             stop=["\n", ".", model.tokenizer.eos_id])
        assert got == ref
        n_match += int(got.replace(" ", "").strip(".") == r["target"])
    assert run["results"]["samba_test_generate"]["exact_match,none"] == n_match / len(_rows())


def test_passkey_task_equals_package_passkey(run, model):
    from samba_ext.eval import passkey

    ref = passkey(model, lengths=[1024], depths=META["depths"], trials=2, seed=META["seed"],
                  share_prefix=False, progress=False)
    want = {(c["length"], c["depth"], t): res for c in ref.cells
            for t, res in enumerate(c["results"])}
    samples = run["samples"]["samba_passkey"]
    assert len(samples) == len(want) == 4
    for s in samples:
        d = s["doc"]
        res = want[(d["length"], d["depth"], d["trial"])]
        assert int(d["key"]) == res["key"] and d["tokens"] == res["tokens"]
        out = s["resps"][0][0]
        # the package stops decoding once the first integer is complete; lm-eval decodes all
        # 10 tokens: the package's output is a prefix of lm-eval's, and the scores agree
        assert out.startswith(res["output"])
        assert s["acc"] == float(res["correct"])
    assert run["results"]["samba_passkey"]["acc,none"] == ref.overall_accuracy


def test_phonebook_task_equals_package_phonebook(run, model):
    from samba_ext.eval import phonebook

    ref = phonebook(model, entries=META["entries"], trials=2, seed=META["seed"], progress=False)
    res = ref.cells[0]["results"]
    samples = sorted(run["samples"]["samba_phonebook"], key=lambda s: s["doc"]["trial"])
    assert len(samples) == len(res) == 2
    for s, r in zip(samples, res):
        assert s["doc"]["number"] == r["number"] and s["doc"]["query"] == r["query"]
        assert s["resps"][0][0] == r["output"].split("\n", 1)[0]
        assert s["acc"] == float(r["correct"])
    assert run["results"]["samba_phonebook"]["acc,none"] == ref.overall_accuracy


def test_batched_equals_unbatched(model):
    from lm_eval.api.instance import Instance

    reqs = [Instance("loglikelihood", {}, (r["context"], ch), i)
            for i, r in enumerate(_rows()) for ch in r["choices"]]
    one = backend.SambaLM(pretrained=model, batch_size=1).loglikelihood(reqs, disable_tqdm=True)
    many = backend.SambaLM(pretrained=model, batch_size=5).loglikelihood(reqs, disable_tqdm=True)
    # Right padding cannot change a causal model's values; the batched GEMMs may round
    # differently (float32 logits, relative 1e-6 per logit), summed over <= 10 tokens
    np.testing.assert_allclose([v for v, _ in many], [v for v, _ in one], rtol=1e-5, atol=1e-5)
    assert [g for _, g in many] == [g for _, g in one]
    gen = [Instance("generate_until", {}, (r["prompt"], {"until": ["\n"], "max_gen_toks": 6}), i)
           for i, r in enumerate(_rows())] * 2
    assert (backend.SambaLM(pretrained=model, batch_size=4).generate_until(gen, True)
            == backend.SambaLM(pretrained=model, batch_size=1).generate_until(gen, True))


def test_logits_budget_limits_the_batch(model, monkeypatch):
    from lm_eval.api.instance import Instance

    reqs = [Instance("loglikelihood", {}, (r["context"], r["choices"][0]), i)
            for i, r in enumerate(_rows())]
    lm = backend.SambaLM(pretrained=model, batch_size=8)
    calls = []
    real = model.forward
    monkeypatch.setattr(model, "forward", lambda x, **kw: calls.append(x.shape) or real(x, **kw))
    lm.loglikelihood(reqs, disable_tqdm=True)
    assert len(calls) == 1 and calls[0][0] == len(reqs)       # one batch fits the budget
    calls.clear()
    monkeypatch.setattr(backend, "LOGITS_BUDGET", 1)           # no batch fits: one row each
    lm.loglikelihood(reqs, disable_tqdm=True)
    assert [c[0] for c in calls] == [1] * len(reqs)


def test_model_args_precedence_and_errors(model):
    # lm-eval's CLI passes --device (default cuda:0) alongside model_args: model_args win
    lm = backend.SambaLM.create_from_arg_string("pretrained=samba-tiny,device=cpu",
                                                {"device": "cuda:0", "batch_size": 2})
    assert lm.device == "cpu" and lm.batch_size == 2
    with pytest.raises(ValueError, match="unknown argument.*bogus"):
        backend.SambaLM(pretrained=model, bogus=1)
    with pytest.raises(ValueError, match="batch_size"):
        backend.SambaLM(pretrained=model, batch_size="x")
    # numbers are not truncated, flags are not numbers, seeds follow the one seed rule
    for kw in ({"batch_size": 2.5}, {"batch_size": True}, {"chunk_size": 0},
               {"seed": 1.7}, {"seed": -1}, {"seed": "-3"}, {"seed": False}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            backend.SambaLM(pretrained=model, **kw)
    assert backend.SambaLM(pretrained=model, seed=" 7 ", batch_size="3").seed == 7
    with pytest.raises(ValueError, match="device"):
        backend.SambaLM(pretrained=model, device="tpu")
    with pytest.raises(TypeError, match="pretrained"):
        backend.SambaLM(pretrained=3.5)


def test_cli_script(tmp_path, run):
    """`samba-ext-lm-eval` (python -m ...lmeval_cli): lm-eval's CLI with samba-ext registered
    and the package tasks on the include path; same number as the Python API."""
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run(
        [sys.executable, "-m", "samba_ext.integrations.lmeval_cli", "--model", "samba-ext",
         "--model_args", "pretrained=samba-tiny,device=cpu", "--tasks", "samba_phonebook",
         "--metadata", json.dumps(META), "--output_path", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    files = list(out.rglob("results_*.json"))
    assert len(files) == 1
    res = json.loads(files[0].read_text())["results"]["samba_phonebook"]
    assert res["acc,none"] == run["results"]["samba_phonebook"]["acc,none"]


def _as_str(x):
    return [_as_str(v) for v in x] if isinstance(x, (list, tuple)) else str(x)


def test_plain_lm_eval_cli(tmp_path, run):
    """``python -m lm_eval --model samba-ext`` (lm-eval's own CLI, nothing of samba-ext
    imported first) with the start-up hook of an install: the .pth and the hook module in a
    site directory that the interpreter processes before lm-eval runs. Per sample the same
    values as the in-process run, which the tests above compare with Samba.nll."""
    from test_lm_eval_hook import hook_site

    site, out = hook_site(str(tmp_path / "site")), tmp_path / "out"
    code = ("import runpy, site, sys; site.addsitedir(sys.argv.pop(1)); "
            "runpy.run_module('lm_eval', run_name='__main__', alter_sys=True)")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("SAMBA_EXT_NO_LM_EVAL_HOOK", None)
    tasks = ["samba_test_choice", "samba_test_rolling"]
    p = subprocess.run(
        [sys.executable, "-c", code, site, "--model", "samba-ext",
         "--model_args", "pretrained=samba-tiny,device=cpu", "--tasks", ",".join(tasks),
         "--include_path", TEST_TASKS, "--output_path", str(out), "--log_samples"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    files = list(out.rglob("results_*.json"))
    assert len(files) == 1
    res = json.loads(files[0].read_text())["results"]
    for task in tasks:
        [path] = out.rglob(f"samples_{task}_*.jsonl")
        with open(path, encoding="utf-8") as fh:
            got = {s["doc"]["id"]: s["resps"] for s in map(json.loads, fh)}
        # the samples file holds each response value as str(): repr, which round-trips a float
        want = {i: _as_str(s["resps"]) for i, s in _by_id(run, task).items()}
        assert got == want and len(got) == len(_rows())
        for metric in ("acc,none", "bits_per_byte,none"):
            assert res[task].get(metric) == run["results"][task].get(metric)


def test_import_keeps_lm_evals_own_models():
    """Importing the backend registers samba-ext without hiding lm-eval's models: get_model
    imports lm_eval.models only while the registry is empty (hook turned off here)."""
    code = ("import samba_ext.integrations.lmeval as b\n"
            "from lm_eval.api.registry import get_model\n"
            "assert get_model('samba-ext') is b.SambaLM\n"
            "print(get_model('dummy').__name__)\n")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               SAMBA_EXT_NO_LM_EVAL_HOOK="1")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0 and p.stdout.split() == ["DummyLM"], p.stderr[-2000:]


@pytest.mark.cuda
def test_cuda_loglikelihood_matches_cpu(model):
    from conftest import CUDA_SKIP

    if CUDA_SKIP:
        pytest.skip(CUDA_SKIP)
    from lm_eval.api.instance import Instance

    reqs = [Instance("loglikelihood", {}, (r["context"], ch), i)
            for i, r in enumerate(_rows()) for ch in r["choices"]]
    cpu = backend.SambaLM(pretrained="samba-tiny", device="cpu", batch_size=4)
    from samba_ext import Samba
    from samba_ext.backend_cuda import CUDABackend

    # the shared "cuda" backend keeps weights and activations in bfloat16; a float32 backend
    # makes the two devices differ only by summation order
    f32 = CUDABackend(weight_dtype="float32", act_dtype="float32")
    gpu = backend.SambaLM(pretrained=Samba.load("samba-tiny", device=f32), device="cuda",
                          batch_size=4)
    a = [v for v, _ in cpu.loglikelihood(reqs, True)]
    b = [v for v, _ in gpu.loglikelihood(reqs, True)]
    # float32 on both devices with different summation orders: relative 1e-5 per logit,
    # summed over <= 10 continuation tokens
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
    gen = [Instance("generate_until", {}, (r["prompt"], {"until": ["\n"], "max_gen_toks": 8}), i)
           for i, r in enumerate(_rows())]
    assert gpu.generate_until(gen, True) == cpu.generate_until(gen, True)


def test_packaging_declares_tasks_and_script():
    """The task YAMLs ship as package data, the console script and the extra exist."""
    import glob
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        proj = tomllib.load(fh)
    st = proj["tool"]["setuptools"]
    if isinstance(st.get("packages"), list):
        assert "samba_ext.integrations" in st["packages"]
    else:                                     # packages.find: every samba_ext.* package
        assert "samba_ext.*" in st["packages"]["find"]["include"]
        assert os.path.isfile(os.path.join(ROOT, "samba_ext", "integrations", "__init__.py"))
    pats = proj["tool"]["setuptools"]["package-data"]["samba_ext"]
    shipped = {os.path.basename(f) for p in pats
               for f in glob.glob(os.path.join(ROOT, "samba_ext", p))}
    assert {"samba_passkey.yaml", "samba_phonebook.yaml"} <= shipped
    assert proj["project"]["scripts"]["samba-ext-lm-eval"] == \
        "samba_ext.integrations.lmeval_cli:main"
    assert any(d.startswith("lm-eval") for d in proj["project"]["optional-dependencies"]["lm-eval"])
    assert any(d.startswith("lm-eval") for d in proj["project"]["optional-dependencies"]["test"])
    assert any(d.startswith("ray") for d in proj["project"]["optional-dependencies"]["ray"])
    assert any(d.startswith("ray") for d in proj["project"]["optional-dependencies"]["test"])


def test_cli_include_path_added_once():
    from samba_ext.integrations.lmeval_cli import with_task_dir

    assert with_task_dir(["--model", "samba-ext"])[-2:] == ["--include_path", TASK_DIR]
    assert with_task_dir(["run", "--tasks", "x"])[-1] == TASK_DIR
    assert with_task_dir(["--include_path", "mine", "--tasks", "x"]).count("--include_path") == 1
    assert with_task_dir(["ls", "tasks"]) == ["ls", "tasks"]


def test_missing_lm_eval_says_how_to_install():
    """Without lm-eval the module raises an ImportError naming the extra (a subprocess in
    which ``import lm_eval`` fails)."""
    code = ("import sys; sys.modules['lm_eval'] = None\n"
            "try:\n    import samba_ext.integrations.lmeval\n"
            "except ImportError as e:\n    print(e)\n")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0 and "samba-ext[lm-eval]" in p.stdout, p.stderr[-2000:]
