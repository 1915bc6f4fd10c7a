"""Long-context evaluations of the Samba paper, usable from scripts and Jupyter.

* :func:`passkey` -- passkey retrieval over a (length x depth) grid (Landmark template).
* :func:`phonebook` -- phone-book lookup accuracy vs number of entries (Jelassi et al. 2024).
* :func:`perplexity` -- perplexity vs context length / position, streaming or sliding windows.
* :func:`throughput` -- prefill and decode tokens/s of configs with random weights.

Each returns a result object: ``print(result)`` shows a table, ``result.save_json(path)``
writes ``results.json``, ``result.plot(path)`` draws the figure (matplotlib extra), and
:func:`load_result` reads a ``results.json`` back. Python and the CLI share one default grid
(:data:`GRIDS` "quick"; ``grid="paper"`` for the paper's) and one syntax (``lengths="4K,8K"``).
Ctrl-C during an evaluation saves the finished cells (to ``save=`` or, for a resumable grid,
``out=``) and raises
:class:`EvalInterrupted`, a KeyboardInterrupt whose ``result`` holds them. The built-in
real-text corpus (the Python
standard library's own sources, with a fixed train / held-out split) is
:mod:`samba_ext.eval.corpus`.

Example::

    from samba_ext import Samba
    from samba_ext.eval import passkey
    r = passkey(Samba.load("samba-tiny"), lengths="1K,4K", depths=[0, 0.5, 1], trials=2)
    print(r); r.plot("passkey.png")
"""
from __future__ import annotations

from . import corpus
from ._common import get_model
from ._run import EvalInterrupted
from .gridspec import GRIDS
from .passkey import (PasskeyPrompt, PasskeyResult, build_passkey_prompt, passkey,
                      score_passkey)
from .perplexity import PerplexityResult, perplexity
from .phonebook import PhonebookResult, phonebook, phonebook_prompt, score_phonebook
from .results import EvalResult, load_result
from .throughput import ThroughputResult, throughput

__all__ = ["passkey", "phonebook", "perplexity", "throughput",
           "PasskeyResult", "PhonebookResult", "PerplexityResult", "ThroughputResult",
           "EvalResult", "load_result", "build_passkey_prompt", "PasskeyPrompt",
           "score_passkey", "phonebook_prompt", "score_phonebook", "corpus", "get_model",
           "EvalInterrupted", "GRIDS"]
