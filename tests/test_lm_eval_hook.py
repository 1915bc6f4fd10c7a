"""The lm-eval start-up hook (samba_ext/integrations/lmeval_hook.py and the .pth line it holds).

Each test runs a fresh interpreter with ``-I -S`` (no site-packages, no PYTHONPATH) that
processes a temporary site directory holding what an install puts into site-packages -- the
package's ``.pth`` file and the hook module under its top-level name -- next to a small fake
``lm_eval`` tree whose registry behaves like lm-eval 0.4.13's (``get_model`` imports
``lm_eval.models`` only while the registry is empty; ``lm_eval.models`` registers lazy
``"module:object"`` placeholders for names not taken). So these tests need no lm-eval; the
real one is exercised in test_lm_eval.py (test_plain_lm_eval_cli).
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
INTEGRATIONS = os.path.join(ROOT, "samba_ext", "integrations")
HOOK = os.path.join(INTEGRATIONS, "lmeval_hook.py")
_spec = importlib.util.spec_from_file_location("_hook_under_test", HOOK)
H = importlib.util.module_from_spec(_spec)   # the file itself, without importing samba_ext
_spec.loader.exec_module(H)
HOOK_TOP = "_samba_ext_lm_eval_hook.py"          # the name setup.py's build_py gives the copy

REGISTRY = '''
EVENTS = []      # what happened, in order (read by the tests)


class Registry:
    def __init__(self):
        self._objs = {}

    def register(self, alias, target):
        EVENTS.append("register " + alias)
        if alias in self._objs and self._objs[alias] != target:
            raise ValueError("taken: " + alias)
        self._objs[alias] = target

    def __contains__(self, alias):
        return alias in self._objs

    def __len__(self):
        return len(self._objs)

    def get(self, alias):
        import importlib

        mod, _, attr = self._objs[alias].partition(":")
        return getattr(importlib.import_module(mod), attr)


model_registry = Registry()


def get_model(name):
    if len(model_registry) == 0:
        import lm_eval.models  # noqa: F401
    return model_registry.get(name)
'''

MODELS = '''
from lm_eval.api.registry import EVENTS, model_registry

EVENTS.append("lm_eval.models start")
for name, path in {"dummy": "lm_eval.models.dummy:DummyLM"}.items():
    if name not in model_registry:
        model_registry.register(name, target=path)
EVENTS.append("lm_eval.models end")
'''


def hook_site(site, pth=True, hook=True):
    """Put into the directory ``site`` what an install puts into site-packages: the .pth and
    the hook module under its top-level name (``site.addsitedir(site)`` then runs the .pth)."""
    os.makedirs(site, exist_ok=True)
    if pth:
        with open(os.path.join(site, H.PTH_NAME), "w", encoding="utf-8") as f:
            f.write(H.PTH_LINE + "\n")
    if hook:
        shutil.copy(HOOK, os.path.join(site, HOOK_TOP))
    return site


def _site(tmp_path, registry=REGISTRY, pth=True, hook=True):
    """A site directory with the .pth, the hook copy and a fake lm_eval package."""
    site = tmp_path / "site"
    files = {"lm_eval/__init__.py": "", "lm_eval/api/__init__.py": "",
             "lm_eval/api/registry.py": registry, "lm_eval/models/__init__.py": MODELS,
             "lm_eval/models/dummy.py": "class DummyLM:\n    pass\n"}
    for rel, text in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    return hook_site(site, pth=pth, hook=hook)


def _run(site, code, env=None):
    """Run ``code`` after ``site.addsitedir(site)`` in an isolated interpreter; its last stdout
    line is JSON."""
    prog = f"import site, sys\nsite.addsitedir({str(site)!r})\n" + textwrap.dedent(code)
    e = {k: v for k, v in os.environ.items() if k != "SAMBA_EXT_NO_LM_EVAL_HOOK"}
    e.update(env or {})
    p = subprocess.run([sys.executable, "-I", "-S", "-c", prog], cwd=site, env=e,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1]), p.stderr


def test_registers_after_lm_eval_models_and_keeps_lm_evals_models(tmp_path):
    out, err = _run(_site(tmp_path), """
        import json
        loaded = sorted(m for m in ("numpy", "samba_ext", "lm_eval") if m in sys.modules)
        hooked = type(sys.meta_path[0]).__name__
        import lm_eval.api.registry as r
        empty = len(r.model_registry)
        dummy = r.get_model("dummy").__name__            # lm-eval's own models still load
        import lm_eval.models as m
        print(json.dumps({"loaded": loaded, "hooked": hooked, "empty": empty, "dummy": dummy,
                          "events": r.EVENTS, "entry": r.model_registry._objs["samba-ext"],
                          "loader": type(m.__loader__).__name__,
                          "patched": "exec_module" in vars(m.__loader__)}))
        """)
    assert err == ""
    assert out["loaded"] == []            # start-up imported no numpy, samba_ext or lm_eval
    assert out["hooked"] == "_Finder"
    assert out["empty"] == 0              # nothing registered before lm_eval.models ran
    assert out["dummy"] == "DummyLM"
    assert out["events"] == ["lm_eval.models start", "register dummy", "lm_eval.models end",
                             "register samba-ext"]
    assert out["entry"] == "samba_ext.integrations.lmeval:SambaLM"
    # the module keeps its own loader, and the one-off wrapper is gone after the import
    assert out["loader"] == "SourceFileLoader" and out["patched"] is False


def test_a_taken_name_is_left_alone(tmp_path):
    models = MODELS.replace('{"dummy"', '{"samba-ext": "elsewhere:Other", "dummy"')
    site = _site(tmp_path)
    (site / "lm_eval/models/__init__.py").write_text(models)
    out, err = _run(site, """
        import json
        import lm_eval.api.registry as r
        import lm_eval.models
        print(json.dumps({"entry": r.model_registry._objs["samba-ext"], "events": r.EVENTS}))
        """)
    assert err == ""
    assert out["entry"] == "elsewhere:Other"
    assert out["events"].count("register samba-ext") == 1      # lm_eval.models' own


@pytest.mark.parametrize("registry", [
    REGISTRY.replace('EVENTS.append("register " + alias)', 'raise RuntimeError("frozen")'),
    "EVENTS = []\nmodel_registry = None\n",
], ids=["register-raises", "no-registry"])
def test_a_broken_registry_does_not_break_the_import(tmp_path, registry):
    site = _site(tmp_path, registry=registry)
    (site / "lm_eval/models/__init__.py").write_text(
        "from lm_eval.api.registry import EVENTS\nEVENTS.append('lm_eval.models ran')\n")
    out, err = _run(site, """
        import json
        import lm_eval.models
        from lm_eval.api.registry import EVENTS
        print(json.dumps({"events": EVENTS, "mod": "lm_eval.models" in sys.modules}))
        """)
    assert err == ""
    assert out == {"events": ["lm_eval.models ran"], "mod": True}


def test_a_failing_lm_eval_models_fails_as_without_the_hook(tmp_path):
    site = _site(tmp_path)
    (site / "lm_eval/models/__init__.py").write_text("raise ImportError('no models here')\n")
    out, _ = _run(site, """
        import json
        try:
            import lm_eval.models
            got = "imported"
        except ImportError as e:
            got = str(e)
        import lm_eval.api.registry as r
        print(json.dumps({"got": got, "n": len(r.model_registry)}))
        """)
    assert out == {"got": "no models here", "n": 0}


@pytest.mark.parametrize("value,on", [("1", False), ("yes", False), ("0", True), ("", True)])
def test_env_var_turns_it_off(tmp_path, value, on):
    out, err = _run(_site(tmp_path), """
        import json
        import lm_eval.api.registry as r
        import lm_eval.models
        print(json.dumps({"registered": "samba-ext" in r.model_registry,
                          "hooks": sum(type(f).__name__ == "_Finder" for f in sys.meta_path)}))
        """, env={"SAMBA_EXT_NO_LM_EVAL_HOOK": value})
    assert err == ""
    assert out == {"registered": on, "hooks": int(on)}


def test_install_is_idempotent_and_registers_when_lm_eval_models_is_loaded(tmp_path):
    # the package's own copy (samba_ext.integrations.lmeval_hook) sees the start-up copy's
    # finder and does not add a second one; imported after lm_eval.models, it registers at once
    site = _site(tmp_path)
    shutil.copy(HOOK, site / "second_copy.py")
    out, err = _run(site, """
        import json
        import second_copy
        again = second_copy.install()
        sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "_Finder"]
        import lm_eval.api.registry as r
        import lm_eval.models
        before = "samba-ext" in r.model_registry
        late = second_copy.install()
        print(json.dumps({"again": again, "before": before, "late": late,
                          "after": "samba-ext" in r.model_registry}))
        """)
    assert err == ""
    assert out == {"again": False, "before": False, "late": True, "after": True}


def test_startup_is_silent_without_the_hook_module(tmp_path):
    # a .pth left behind without its module (a half-removed install) prints nothing
    out, err = _run(_site(tmp_path, hook=False), """
        import json
        print(json.dumps([type(f).__name__ for f in sys.meta_path]))
        """)
    assert err == "" and "_Finder" not in out


def test_build_py_puts_the_hook_at_the_top_of_the_build(tmp_path):
    """``setup.py build_py`` (what ``pip install .`` and ``pip wheel`` run to fill the wheel's
    root) copies the .pth and the hook module there, and not into the package."""
    pytest.importorskip("setuptools")          # not in a Python 3.12+ venv unless installed
    lib = tmp_path / "lib"
    env = dict(os.environ, SAMBA_EXT_CUDA="0")
    p = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(lib)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (lib / H.PTH_NAME).read_text(encoding="utf-8") == H.PTH_LINE + "\n"
    with open(HOOK, "rb") as a, open(lib / HOOK_TOP, "rb") as b:
        assert a.read() == b.read()
    assert (lib / "samba_ext" / "integrations" / "lmeval_hook.py").is_file()
    assert not list((lib / "samba_ext").rglob("*.pth"))
    lines = [x for x in (lib / H.PTH_NAME).read_text().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("import ")   # site runs only import lines
