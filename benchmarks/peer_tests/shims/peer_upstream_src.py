"""Load the peers' own pure-torch references (and helpers) from their source files.

The peers' test files compare their kernels against references that live in the peers'
packages (``selective_scan_ref``, ``causal_conv1d_ref``, ``unpad_input`` ...). Those modules
also import the peers' compiled extensions, so they cannot be imported whole. This module
reads the upstream file (not stored in this repository; see benchmarks/peer_tests/run.sh),
picks the named top-level definitions with :mod:`ast` and executes only those, with the
module globals the caller gives (torch, einops, and where the peer's reference calls the
peer's own kernels, samba_ext's functions under the same names). Tracebacks point at the
upstream file and line.

The upstream tree is ``$PEER_UPSTREAM`` laid out as ``<repo>/<path in the repo>``, e.g.
``$PEER_UPSTREAM/mamba/mamba_ssm/ops/selective_scan_interface.py``.
"""
from __future__ import annotations

import ast
import os
from typing import Any, Iterable, Optional

ENV = "PEER_UPSTREAM"


def upstream_path(relpath: str) -> str:
    """Absolute path of ``relpath`` under $PEER_UPSTREAM; ImportError naming the variable
    and the file when either is missing."""
    root = os.environ.get(ENV)
    if not root:
        raise ImportError(f"{ENV}: not set; point it at the folder of the upstream files "
                          f"(see benchmarks/peer_tests/run.sh) to load {relpath}")
    path = os.path.join(root, relpath)
    if not os.path.isfile(path):
        raise ImportError(f"{ENV}: {path} is missing (the upstream file the peer tests' "
                          "reference comes from; see benchmarks/peer_tests/run.sh)")
    return path


def exec_upstream(namespace: dict[str, Any], relpath: str,
                  names: Optional[Iterable[str]] = None) -> list[str]:
    """Execute upstream ``relpath`` into ``namespace`` (a module's globals).

    names None: the whole file (for helper modules with no compiled imports). Otherwise
    only the top-level functions and classes with those names (ImportError if one is
    absent), without the file's imports: the caller's namespace supplies the globals they
    use. Returns the names defined."""
    path = upstream_path(relpath)
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), filename=path)
    if names is not None:
        want = list(names)
        defs = {n.name: n for n in tree.body
                if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        missing = [n for n in want if n not in defs]
        if missing:
            raise ImportError(f"{path}: no top-level definition of {', '.join(missing)}")
        tree = ast.Module(body=[defs[n] for n in want], type_ignores=[])
    else:
        want = [n.name for n in tree.body
                if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    exec(compile(tree, path, "exec"), namespace)  # noqa: S102 - the peers' own reference code
    namespace.setdefault("__peer_sources__", []).append(path)
    return want
