"""The package's modules import each other without a cycle.

Every module of samba_ext is parsed with :mod:`ast` (nothing is imported); each ``import``
and ``from ... import`` statement, at module level or inside a function (a lazy import is
still a dependency), adds an edge to the samba_ext module it names. ``from pkg import name``
points at ``pkg.name`` when that is a module (or one of the compiled extensions, which
import nothing of the package), else at ``pkg`` itself; importing ``a.b.c`` also depends on
the packages ``a.b`` and ``a`` (their ``__init__`` runs first). An edge to a module's own ancestor
package is left out: Python always imports a package before its submodules, so such an edge
orders nothing (``from .. import __version__``). The graph must have no cycle; the checker
is tested on graphs with a planted cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
PKG = "samba_ext"
EXTENSIONS = {"samba_ext._core", "samba_ext._cuda"}  # C modules (csrc/), no Python imports


def module_files(root: Path = ROOT, pkg: str = PKG) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file of the package."""
    out = {}
    for path in sorted((root / pkg).rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_pkg: bool, level: int, target: Optional[str]) -> str:
    """Absolute name of a (possibly relative) import target seen in ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".")
    if not is_pkg:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def import_edges(modules: dict[str, str], pkg: str = PKG) -> dict[str, set[str]]:
    """module -> the package modules it imports, from each module's source text
    (``modules`` maps a dotted name to its source; a name ending in a package marks it with
    the key of its __init__)."""
    names = set(modules) | EXTENSIONS
    edges: dict[str, set[str]] = {m: set() for m in names}
    for mod, text in modules.items():
        is_pkg = mod in _PACKAGES.get(id(modules), set()) or any(
            other.startswith(mod + ".") for other in names)
        for node in ast.walk(ast.parse(text)):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_pkg, node.level, node.module)
                for a in node.names:
                    sub = f"{base}.{a.name}" if base else a.name
                    targets.append(sub if sub in names else base)
            for t in targets:
                while t and t not in names and "." in t:  # import a.b.c of a module a.b
                    t = t.rsplit(".", 1)[0]
                while t in names and (t == pkg or t.startswith(pkg + ".")):
                    # importing a.b.c runs a.b's __init__ first: an edge to each ancestor too
                    if t != mod and not mod.startswith(t + "."):
                        edges[mod].add(t)
                    t = t.rsplit(".", 1)[0] if "." in t else ""
    return edges


_PACKAGES: dict[int, set[str]] = {}


def find_cycle(edges: dict[str, set[str]]) -> Optional[list[str]]:
    """One import cycle as a list of modules (first == last), or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = {m: WHITE for m in edges}
    stack: list[str] = []

    def visit(m: str) -> Optional[list[str]]:
        color[m] = GREY
        stack.append(m)
        for n in sorted(edges.get(m, ())):
            if color.get(n, BLACK) == GREY:
                return stack[stack.index(n):] + [n]
            if color.get(n) == WHITE:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        color[m] = BLACK
        return None

    for m in sorted(edges):
        if color[m] == WHITE:
            found = visit(m)
            if found:
                return found
    return None


def package_graph() -> dict[str, set[str]]:
    files = module_files()
    texts = {m: p.read_text(encoding="utf-8") for m, p in files.items()}
    _PACKAGES[id(texts)] = {m for m, p in files.items() if p.name == "__init__.py"}
    try:
        return import_edges(texts)
    finally:
        _PACKAGES.pop(id(texts), None)


def test_samba_ext_has_no_import_cycle():
    edges = package_graph()
    assert "samba_ext.kernels" in edges and "samba_ext.ops.contracts" in edges
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_known_edges_are_seen():
    """The parser sees relative, lazy and from-package imports (so a cycle cannot hide)."""
    edges = package_graph()
    assert "samba_ext.ops.contracts" in edges["samba_ext.kernels"]       # from .ops import
    assert "samba_ext.cuda.ops" in edges["samba_ext.kernels"]            # lazy, in a function
    assert "samba_ext._core" in edges["samba_ext.kernels"]               # an extension
    assert "samba_ext.backend_cuda" in edges["samba_ext.backend"]        # lazy
    assert "samba_ext.errors" in edges["samba_ext.cuda.runtime"]         # from ..errors


def test_checker_finds_a_planted_cycle():
    mods = {
        "samba_ext": "from .a import f\n",
        "samba_ext.a": "from . import b\n",
        "samba_ext.b": "def g():\n    from .c import h\n",   # lazy import still counts
        "samba_ext.c": "import samba_ext.a\n",
        "samba_ext.d": "import numpy\n",
    }
    cycle = find_cycle(import_edges(mods))
    assert cycle is not None and cycle[0] == cycle[-1]
    assert set(cycle) == {"samba_ext.a", "samba_ext.b", "samba_ext.c"}


def test_checker_accepts_an_acyclic_graph():
    mods = {
        "samba_ext": "from .a import f\nfrom . import b\n",
        "samba_ext.a": "from .b import g\n",
        "samba_ext.b": "import os\n",
        "samba_ext.sub": "from .. import a\n",
        "samba_ext.sub.x": "from . import y\nfrom ..a import f\n",
        "samba_ext.sub.y": "from ...samba_ext import b\n",
    }
    assert find_cycle(import_edges(mods)) is None


def test_checker_ignores_edges_to_the_own_package_only():
    """``from .. import __version__`` in a submodule is no cycle; a sibling package is."""
    mods = {"samba_ext": "from .a import f\n", "samba_ext.a": "from . import __version__\n"}
    assert find_cycle(import_edges(mods)) is None
    mods = {"samba_ext": "", "samba_ext.p": "from ..q import x\n", "samba_ext.p.m": "",
            "samba_ext.q": "from .p import m\n"}
    assert find_cycle(import_edges(mods)) == ["samba_ext.p", "samba_ext.q", "samba_ext.p"]


def test_every_package_is_shipped():
    """Each samba_ext package (a folder with __init__.py) is shipped by pyproject.toml:
    found by ``[tool.setuptools.packages.find]`` with ``samba_ext.*``, or listed in
    ``packages``, so an installed samba_ext has the modules this graph was checked on."""
    import re

    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    if "[tool.setuptools.packages.find]" in text:
        include = text.split("[tool.setuptools.packages.find]", 1)[1].split("\n[", 1)[0]
        assert '"samba_ext.*"' in include and '"samba_ext"' in include, include
        return
    listed = set(re.findall(r'"(samba_ext(?:\.[a-z_]+)*)"', text.split("packages =", 1)[1]
                            .split("]", 1)[0]))
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / PKG).rglob("__init__.py")}
    assert found <= listed, f"not in pyproject.toml packages: {sorted(found - listed)}"
