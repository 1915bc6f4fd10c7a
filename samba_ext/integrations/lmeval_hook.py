"""Start-up hook that lets the plain ``lm_eval`` command find the ``samba-ext`` model.

lm-eval 0.4.x has no plugin discovery: ``lm_eval.api.registry.get_model(name)`` looks the
name up in ``model_registry``, which ``import lm_eval.models`` fills with lazy
``"module:object"`` placeholders, and ``get_model`` does that import only while the registry
is still empty.

An installed samba-ext carries two files in site-packages: ``samba-ext-lm-eval.pth`` (the one
line :data:`PTH_LINE`) and ``_samba_ext_lm_eval_hook.py``, a copy of this file (setup.py's
``build_py`` writes both there).
At interpreter start-up ``site`` runs the ``.pth`` line, which imports that copy and calls
:func:`install`. :func:`install` puts a finder first on ``sys.meta_path``; the finder answers
no import itself. When ``lm_eval.models`` is imported, it takes the spec the other finders
give and wraps that module's ``exec_module`` so that, right after ``lm_eval.models`` has run,
``samba-ext`` is registered as the placeholder ``samba_ext.integrations.lmeval:SambaLM``
(unless that name is taken). Registering only then, not when ``lm_eval.api.registry`` is
created, keeps the registry empty until lm-eval's own models are in, so ``get_model`` still
imports them. Nothing of samba-ext (or numpy) is imported until lm-eval asks for the model.

The copy outside the package exists because importing ``samba_ext.integrations.*`` would
first import ``samba_ext`` (numpy and the compiled core) in every Python process. So this
file imports only ``os`` and ``sys``, which start-up has loaded already, and every exception
is swallowed: start-up and lm-eval behave as without the hook if anything goes wrong.

``SAMBA_EXT_NO_LM_EVAL_HOOK=1`` (any value but empty or ``0``) turns the hook off.
"""
import os
import sys

__all__ = ["install", "register", "MODEL_NAME", "TARGET", "TRIGGER", "DISABLE_ENV", "PTH_NAME",
           "PTH_LINE"]

MODEL_NAME = "samba-ext"
#: The lazy placeholder registered under :data:`MODEL_NAME` (lm-eval's ``"module:object"``).
TARGET = "samba_ext.integrations.lmeval:SambaLM"
#: The module after whose execution the placeholder is registered.
TRIGGER = "lm_eval.models"
DISABLE_ENV = "SAMBA_EXT_NO_LM_EVAL_HOOK"
# The start-up file: its name in site-packages and its one line (site runs only lines that
# start with "import"; the exec keeps a .pth left without its module silent). setup.py reads
# both from here (as literals, without importing the package).
PTH_NAME = "samba-ext-lm-eval.pth"
PTH_LINE = 'import sys; exec("try:\\n import _samba_ext_lm_eval_hook\\n _samba_ext_lm_eval_hook.install()\\nexcept Exception:\\n pass")'
_MARK = "_samba_ext_lm_eval_hook"   # attribute of the finder (both copies of this file see it)


def register() -> bool:
    """Register :data:`MODEL_NAME` as the placeholder :data:`TARGET` in lm-eval's model
    registry unless the name is there already. True when the name is registered afterwards;
    False (never an exception) when lm-eval's registry is missing or refuses it."""
    try:
        from lm_eval.api.registry import model_registry

        if MODEL_NAME not in model_registry:
            model_registry.register(MODEL_NAME, target=TARGET)
        return MODEL_NAME in model_registry
    except Exception:
        return False


class _Finder:
    """A ``sys.meta_path`` finder that finds nothing itself; for :data:`TRIGGER` it returns the
    spec of the finders after it, its loader's ``exec_module`` wrapped to call
    :func:`register` after the module has executed."""

    _samba_ext_lm_eval_hook = True

    def find_spec(self, fullname, path=None, target=None):
        if fullname != TRIGGER:
            return None
        try:
            return _spec_with_hook(self, fullname, path, target)
        except Exception:
            return None     # the import goes on through the other finders, unhooked

    def invalidate_caches(self) -> None:
        pass


def _spec_with_hook(me, fullname, path, target):
    spec = None
    for finder in list(sys.meta_path):
        if finder is me or getattr(finder, _MARK, False):
            continue
        find = getattr(finder, "find_spec", None)
        if find is not None:
            spec = find(fullname, path, target)
            if spec is not None:
                break
    loader = getattr(spec, "loader", None)
    real = getattr(loader, "exec_module", None)
    if real is None:
        return spec
    # An attribute on this loader instance shadows the method once, for this module only (a
    # loader shared by several modules, such as a zipimporter, passes the others through).
    # The loader keeps its type, so module.__loader__ and resource readers are unchanged.

    def exec_module(module):
        if getattr(module, "__name__", None) != fullname:
            return real(module)
        try:
            del loader.exec_module
        except Exception:
            pass
        real(module)
        register()

    loader.exec_module = exec_module
    return spec


def disabled() -> bool:
    """True when ``SAMBA_EXT_NO_LM_EVAL_HOOK`` is set to anything but empty or ``0``."""
    return os.environ.get(DISABLE_ENV, "").strip() not in ("", "0")


def install() -> bool:
    """Put the finder first on ``sys.meta_path`` (once per process; registers at once when
    ``lm_eval.models`` is imported already). True when this call installed it; never raises."""
    try:
        if disabled() or any(getattr(f, _MARK, False) for f in sys.meta_path):
            return False
        sys.meta_path.insert(0, _Finder())
        if TRIGGER in sys.modules:
            register()
        return True
    except Exception:
        return False
