"""``samba-ext-lm-eval``: lm-eval's command line with the package's tasks on the include path.

With samba-ext installed, the plain ``lm_eval`` command finds ``--model samba-ext`` through
the start-up hook (:mod:`samba_ext.integrations.lmeval_hook`). This script takes exactly
``lm_eval``'s arguments; it imports :mod:`samba_ext.integrations.lmeval` (which registers
``samba-ext`` without the hook too: a source checkout on ``PYTHONPATH``, or
``SAMBA_EXT_NO_LM_EVAL_HOOK=1``) and, when no ``--include_path`` is given, adds the package's
task directory (``samba_passkey``, ``samba_phonebook``)::

    samba-ext-lm-eval --model samba-ext --model_args pretrained=samba-tiny,device=cpu \\
        --tasks samba_passkey --metadata '{"lengths": "1K,2K", "trials": 2}'

``python -m samba_ext.integrations.lmeval_cli ...`` is the same.
"""
from __future__ import annotations

import sys
from typing import Sequence

__all__ = ["main", "with_task_dir"]


def with_task_dir(argv: Sequence[str]) -> list[str]:
    """``argv`` plus ``--include_path <package task dir>`` unless it names one already."""
    from .lmeval_tasks import TASK_DIR

    argv = list(argv)
    if any(a == "--include_path" or a.startswith("--include_path=") for a in argv):
        return argv
    if not argv or argv[0].startswith("-") or argv[0] == "run":
        return argv + ["--include_path", TASK_DIR]
    return argv     # another subcommand (ls, validate): passed through unchanged


def main(argv: Sequence[str] | None = None) -> None:
    """Run lm-eval's CLI on ``argv`` (default ``sys.argv[1:]``) with samba-ext registered."""
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError:
        sys.exit("samba-ext-lm-eval: lm-eval is not installed; pip install 'samba-ext[lm-eval]' "
                 "(or pip install lm-eval)")
    from . import lmeval  # noqa: F401  (registers the model)

    args = with_task_dir(sys.argv[1:] if argv is None else argv)
    sys.argv = [sys.argv[0] if sys.argv else "samba-ext-lm-eval"] + args
    cli_evaluate()


if __name__ == "__main__":
    main()
