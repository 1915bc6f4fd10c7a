"""Finished cells, interrupts and output files: the one place an evaluation reports a
finished cell and writes its result.

Every evaluation builds a :class:`CellRecorder` and calls ``recorder.cell_done(result,
cell)`` after each finished grid cell with the result so far, then ``recorder.finish(result,
interrupted)`` once. With ``out`` set, the result JSON is rewritten atomically after every
cell (so even an uncatchable kill keeps the finished cells) and at the end. An interrupted
run (Ctrl-C; in the CLI also SIGTERM / SIGHUP) saves its finished cells and then raises
:class:`EvalInterrupted` -- a KeyboardInterrupt carrying the partial result -- instead of
returning, so a loop over evaluations stops too.
"""
from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

__all__ = ["EvalInterrupted", "CellRecorder"]


class EvalInterrupted(KeyboardInterrupt):
    """An evaluation stopped by an interrupt. ``result``: the partial result (finished cells,
    ``partial=True``); ``path``: where it was saved (None without ``out``); ``signum``: the
    signal (SIGINT for Ctrl-C)."""

    def __init__(self, result: Any, path: str | None = None, signum: int = signal.SIGINT):
        super().__init__(f"{getattr(result, 'eval_name', 'evaluation')} interrupted; "
                         f"{len(getattr(result, 'cells', []))} finished cell(s)"
                         + (f" saved to {path}" if path else ""))
        self.result = result
        self.path = path
        self.signum = signum


class CellRecorder:
    """Reports finished cells (``on_cell(cell)``) and writes the result JSON to ``out``.

    out: a JSON file path or None. on_cell: called with each finished cell dict.
    """

    def __init__(self, out: str | os.PathLike | None = None,
                 on_cell: Callable[[dict], Any] | None = None):
        self.path = None if out is None else os.fspath(out)
        self.on_cell = on_cell
        if self.path is not None:
            d = os.path.dirname(self.path)
            if d:
                os.makedirs(d, exist_ok=True)

    def cell_done(self, result: Any, cell: dict) -> None:
        """A cell finished; ``result`` holds every finished cell so far (partial)."""
        if self.path is not None:
            result.partial = True
            result.save_json(self.path)
        if self.on_cell is not None:
            self.on_cell(cell)

    def finish(self, result: Any, interrupted: BaseException | None = None) -> Any:
        """Write the final result; raise EvalInterrupted after saving if interrupted."""
        if interrupted is not None:
            result.partial = True
        if self.path is not None:
            result.save_json(self.path)
        if interrupted is not None:
            signum = getattr(interrupted, "signum", signal.SIGINT)
            raise EvalInterrupted(result, self.path, signum) from None
        return result
