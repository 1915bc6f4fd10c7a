"""Long-context perplexity on a token stream, as a function of context length / position.

Two modes:

* ``"streaming"``: one pass over the whole stream with ``model.nll`` (chunked prefill with the
  recurrent / sliding-window state carried), so memory stays bounded by the chunk size however
  long the stream is. Token ``p`` (0-based) is predicted from all ``p`` tokens before it.
  Reported: perplexity per position bucket (``[start, end)`` of the predicted token's position)
  and cumulative perplexity of the first ``L`` tokens for each context length ``L``.
* ``"sliding"`` (Press et al. 2021, the Samba paper's protocol): for each window ``W`` in
  ``context_lengths`` (default: one window of 4096), windows of ``W`` tokens start every
  ``stride`` tokens, each a fresh forward pass. ``score="new"`` (Press) scores each token
  once, in the first window that reaches it after the previous window's end (so every
  token after the first window has at least ``W - stride`` tokens of context);
  ``score="window"`` (LongLoRA / ArchScale ``eval_proofpile``) scores every token of every
  window. Perplexity = exp(mean NLL) over scored tokens, per ``W``.

Input: a 1-D token array (or ``(B, L)`` of equal-length streams, streaming mode), a file
(``.npy`` token array, or text encoded with the model's tokenizer), a string, or by default the
held-out split of the Python standard library's own sources (:mod:`samba_ext.eval.corpus`).
"""
from __future__ import annotations

import hashlib
import math
import os
import stat
from collections.abc import Callable
from typing import Any, Sequence

import numpy as np

from . import corpus as _corpus
from ._common import Progress, Timer, model_info, notes_for, resolve_model
from ._run import CellRecorder
from ._format import fmt_tokens, format_table
from .results import EvalResult

__all__ = ["perplexity", "PerplexityResult", "default_edges", "load_tokens"]


def default_edges(n: int, first: int = 256) -> list[int]:
    """Position-bucket edges ``[0, first, 2 first, 4 first, ..., n]`` (doubling)."""
    edges = [0]
    e = first
    while e < n:
        edges.append(e)
        e *= 2
    edges.append(n)
    return edges


_NPY_MAX_HEADER = 1 << 16      # numpy's own limit for format 1.0 headers is 64 KiB


def _open_regular(path: str):
    """Open ``path`` for reading; refuse anything but a regular file (a FIFO would block
    forever, /dev/zero never ends). O_NONBLOCK so that opening a FIFO does not wait for a
    writer; the check is on the opened descriptor (no race with a swapped path)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ValueError(f"file: {path!r} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"file: {path!r} is a directory; pass a text or .npy file") from None
    except OSError as e:
        raise ValueError(f"file: cannot read {path!r}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ValueError(f"file: {path!r} is a directory; pass a text or .npy file")
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"file: {path!r} is not a regular file (a FIFO, device or socket); "
                             "pass a text or .npy file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def _read_npy(fh, path: str, size: int, max_tokens: int | None) -> np.ndarray:
    """A validated .npy integer array, 1-D or 2-D, reading at most ``max_tokens`` per row."""
    from numpy.lib import format as npf

    try:
        version = npf.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = npf.read_array_header_1_0(fh, max_header_size=_NPY_MAX_HEADER)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = npf.read_array_header_2_0(fh, max_header_size=_NPY_MAX_HEADER)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as e:
        raise ValueError(f"file: {path!r}: not a valid .npy file ({e})") from None
    if dtype.kind not in "iu" or dtype.hasobject or len(shape) not in (1, 2):
        raise ValueError(f"file: {path!r}: expected a 1-D or 2-D integer array, got {dtype} "
                         f"with shape {shape}")
    if any(not isinstance(d, int) or d < 0 for d in shape):
        raise ValueError(f"file: {path!r}: invalid shape {shape} in the .npy header")
    data_off = fh.tell()
    n_items = 1
    for d in shape:
        n_items *= d
    if n_items * dtype.itemsize > size - data_off:
        raise ValueError(f"file: {path!r}: the .npy header claims shape {shape} of {dtype} "
                         f"({n_items * dtype.itemsize:,} bytes) but the file holds only "
                         f"{max(size - data_off, 0):,} bytes of data")
    rows, L = (1, shape[0]) if len(shape) == 1 else shape
    if fortran and rows > 1:
        raise ValueError(f"file: {path!r}: a Fortran-ordered 2-D array; save it with "
                         "np.save(path, np.ascontiguousarray(a))")
    take = L if max_tokens is None else min(L, max_tokens)
    out = np.empty((rows, take), dtype=dtype)
    for r in range(rows):                   # only the first `take` tokens of every row
        fh.seek(data_off + r * L * dtype.itemsize)
        buf = fh.read(take * dtype.itemsize)
        if len(buf) != take * dtype.itemsize:
            raise ValueError(f"file: {path!r}: truncated .npy data")
        out[r] = np.frombuffer(buf, dtype=dtype)
    out = out.astype(np.int64)
    return out[0] if len(shape) == 1 else out


def _read_text_tokens(fh, path: str, tokenizer: Any, max_tokens: int | None) -> np.ndarray:
    """Tokens of UTF-8 text. With ``max_tokens``, reads a growing prefix of the file (doubling)
    until it yields more tokens than needed plus a margin, so a large file is neither read
    nor tokenised whole; the margin keeps a tokenizer's merges at the cut from changing the
    tokens kept (they are the first tokens of the whole text)."""
    margin = 64
    want = None if max_tokens is None else max_tokens + margin
    raw = b""
    step = 1 << 20 if want is None else max(4096, 8 * want)
    while True:
        chunk = fh.read(step)
        raw += chunk
        eof = len(chunk) < step
        if want is not None or eof:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                if eof or e.start < len(raw) - 3:      # not just a character cut by the read
                    raise ValueError(f"file: {path!r} is not UTF-8 text ({e}); pass a UTF-8 "
                                     "text file or a .npy token array") from None
                text = raw[:e.start].decode("utf-8")
            ids = tokenizer.encode(text)
            if eof or (want is not None and len(ids) >= want):
                arr = np.asarray(ids, dtype=np.int64)
                return arr if max_tokens is None else arr[:max_tokens]
        step *= 2


def load_tokens(tokenizer: Any, file: str | os.PathLike,
                max_tokens: int | None = None) -> tuple[np.ndarray, dict]:
    """Tokens of ``file``: a ``.npy`` integer array (1-D or 2-D), else UTF-8 text encoded with
    ``tokenizer``. ``max_tokens``: read and tokenise only what the first ``max_tokens`` tokens
    (per row) need. Refuses non-regular files (FIFOs, devices) and .npy headers that claim
    more data than the file holds. Raises ValueError with a clear message naming the file."""
    path = os.fspath(file)
    if max_tokens is not None and (isinstance(max_tokens, bool) or int(max_tokens) < 1):
        raise ValueError(f"max_tokens: expected a positive int, got {max_tokens!r}")
    fh, size = _open_regular(path)
    with fh:
        try:
            if path.endswith(".npy"):
                arr = _read_npy(fh, path, size, max_tokens)
            else:
                arr = _read_text_tokens(fh, path, tokenizer, max_tokens)
        except OSError as e:
            raise ValueError(f"file: cannot read {path!r}: {e.strerror or e}") from None
    return arr, {"source": "file", "path": os.path.abspath(path)}


def _log_softmax_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    lg = logits.astype(np.float64)
    m = lg.max(-1, keepdims=True)
    lse = m[..., 0] + np.log(np.exp(lg - m).sum(-1))
    return lse - np.take_along_axis(lg, targets[..., None], -1)[..., 0]


class PerplexityResult(EvalResult):
    """Perplexity per position bucket / context length.

    Streaming cells: ``{"kind": "bucket", "start", "end", "tokens", "mean_nll", "ppl"}``
    (positions of predicted tokens) and ``{"kind": "context", "context_length", "tokens",
    "mean_nll", "ppl"}`` (cumulative over the first ``context_length`` tokens).
    Sliding cells: ``{"kind": "window", "window", "stride", "score", "windows", "tokens",
    "mean_nll", "ppl", "time_s"}``.
    """

    eval_name = "perplexity"

    def cells_of(self, kind: str) -> list[dict]:
        return [c for c in self.cells if c["kind"] == kind]

    def summary(self) -> dict:
        ctx = self.cells_of("context")
        win = self.cells_of("window")
        out: dict[str, Any] = {"mode": self.params.get("mode")}
        if ctx:
            out["ppl"] = ctx[-1]["ppl"]
            out["tokens"] = ctx[-1]["tokens"]
        if win:
            out["ppl_by_window"] = [{"window": c["window"], "ppl": c["ppl"]} for c in win]
        return out

    def table(self) -> str:
        parts = []
        b = self.cells_of("bucket")
        if b:
            rows = [[f"[{fmt_tokens(c['start'])}, {fmt_tokens(c['end'])})", c["tokens"],
                     f"{c['mean_nll']:.4f}", f"{c['ppl']:.3f}"] for c in b]
            parts.append(format_table(["positions", "tokens", "nll", "ppl"], rows,
                                      title="perplexity per position bucket"))
        ctx = self.cells_of("context")
        if ctx:
            rows = [[fmt_tokens(c["context_length"]), c["tokens"], f"{c['mean_nll']:.4f}",
                     f"{c['ppl']:.3f}"] for c in ctx]
            parts.append(format_table(["first L tokens", "tokens", "nll", "ppl"], rows,
                                      title="cumulative perplexity"))
        w = self.cells_of("window")
        if w:
            rows = [[fmt_tokens(c["window"]), fmt_tokens(c["stride"]), c["windows"], c["tokens"],
                     f"{c['mean_nll']:.4f}", f"{c['ppl']:.3f}"] for c in w]
            parts.append(format_table(["window", "stride", "windows", "tokens", "nll", "ppl"], rows,
                                      title=f"sliding-window perplexity (score={self.params.get('score')})"))
        return "\n\n".join(parts) if parts else "(no finished cells)"


def _as_tokens(model: Any, tokens: Any, file: Any, text: Any, n_tokens: int | None,
               split: str) -> tuple[np.ndarray, dict]:
    given = [x is not None for x in (tokens, file, text)]
    if sum(given) > 1:
        raise ValueError("pass only one of tokens=, file= or text=")
    tok = model.tokenizer
    if tokens is not None:
        arr = np.asarray(tokens)
        if arr.dtype.kind not in "iu" or arr.ndim not in (1, 2):
            raise ValueError(f"tokens: expected a 1-D or 2-D integer array, got {arr.dtype} "
                             f"with shape {arr.shape}")
        arr, info = arr.astype(np.int64), {"source": "array"}
    elif file is not None:
        arr, info = load_tokens(tok, file, n_tokens)
    elif text is not None:
        arr, info = np.asarray(tok.encode(str(text)), dtype=np.int64), {"source": "text"}
    else:
        n = 65536 if n_tokens is None else int(n_tokens)
        arr = _corpus.stdlib_tokens(tok, n, split=split)
        info = _corpus.corpus_info(split)
        info["source"] = "python-stdlib"
        n_tokens = None
    if n_tokens is not None:
        if arr.shape[-1] < n_tokens:
            raise ValueError(f"the token stream has {arr.shape[-1]} tokens, fewer than "
                             f"n_tokens={n_tokens}")
        arr = arr[..., :n_tokens]
    if arr.size and (arr.min() < 0 or arr.max() >= tok.vocab_size):
        raise ValueError(f"tokens: ids must be in [0, {tok.vocab_size}) for this model's "
                         f"vocabulary; got range [{arr.min()}, {arr.max()}]")
    a = np.ascontiguousarray(arr, dtype=np.int64)
    info["tokens"] = int(a.shape[-1])
    info["rows"] = int(a.shape[0]) if a.ndim == 2 else 1
    info["tokens_sha256"] = hashlib.sha256(a.tobytes()).hexdigest()
    return (a if a.ndim == 2 else a[None]), info


def _stream_row(model: Any, row: np.ndarray, out: np.ndarray, seg: int, chunk_size: int,
                bar: Progress, base: int) -> None:
    """Fill out[p] = NLL of row[p] for p >= 1, one ``seg``-token segment at a time, the state
    carried across segments (exact: the first token of a segment is scored with the logits of
    the previous segment's last position, ``state.logits``)."""
    N = row.size
    state = model.new_state(1)
    if not hasattr(state, "logits"):
        seg = N   # cannot score a segment's first token: one call for the whole row
    for a in range(0, N, seg):
        b = min(N, a + seg)
        if a > 0:
            out[a] = _log_softmax_nll(np.asarray(state.logits)[None], row[None, a:a + 1])[0, 0]

        def cb(done: int, total: int, _off=base + a) -> None:
            if bar.bar is not None:
                bar.bar.n = _off + done
                bar.bar.refresh()

        vals = np.asarray(model.nll(row[None, a:b], state=state, chunk_size=chunk_size,
                                    progress=cb), dtype=np.float64)[0]
        out[a + 1:b] = vals


def _stats(nll: np.ndarray) -> tuple[int, float, float]:
    n = int(nll.size)
    if n == 0:
        return 0, math.nan, math.nan
    m = float(nll.mean())
    return n, m, float(math.exp(m)) if m < 700 else math.inf


def perplexity(model: Any, tokens: Any = None, *, file: str | os.PathLike | None = None,
               text: str | None = None, n_tokens: int | None = None, split: str = "heldout",
               mode: str = "streaming", context_lengths: Sequence[int] | None = None,
               buckets: Sequence[int] | None = None, stride: int | None = None,
               score: str = "new", batch_size: int = 1, chunk_size: int = 2048,
               segment: int = 65536, progress: bool = True,
               device: str = "cpu", save: str | os.PathLike | None = None,
               on_cell: Callable[[dict], Any] | None = None, ray: Any = None,
            out: Any = None) -> PerplexityResult:
    """Perplexity of ``model`` on a token stream.

    Args:
        model: a :class:`samba_ext.Samba`, or a name/path for ``Samba.load``.
        tokens / file / text: the stream (one of them); default the stdlib corpus
            (``split``, first ``n_tokens`` tokens, 65536 when not given).
        n_tokens: cut the stream to this many tokens.
        mode: "streaming" or "sliding" (see the module docstring).
        context_lengths: streaming: cumulative-perplexity lengths (default: the bucket edges);
            sliding: the window sizes W (default [4096], capped at the stream length).
        buckets: streaming position-bucket edges (default 0, 256, 512, ... doubling, N).
        stride: sliding stride S (default W // 2). score: "new" (Press) or "window".
        batch_size: sliding windows per forward batch.
        segment: streaming: tokens per ``model.nll`` call (the state is carried across calls
            and the boundary token is scored from ``state.logits``, so the result does not
            depend on it; Ctrl-C keeps the finished segments).
        save: a JSON path, written atomically (sliding mode: after every window size too).
        ray / out: run the grid unit by unit, resumable in ``out`` (a folder) and on Ray with
            ``ray`` (True, "auto" or an address); see :mod:`samba_ext.eval.grid`.
        on_cell: called with each finished cell dict.
    Returns:
        :class:`PerplexityResult`.
    Raises:
        samba_ext.eval.EvalInterrupted (a KeyboardInterrupt) on Ctrl-C, after saving the
        finished cells to ``save``; its ``result`` holds them (``partial=True``).
    """
    if ray is not None or out is not None:    # resumable / Ray grid (samba_ext.eval.grid)
        from .grid import grid_call
        return grid_call("perplexity", locals())  # type: ignore[return-value]
    model = resolve_model(model, device)
    if mode not in ("streaming", "sliding"):
        raise ValueError(f"mode: expected 'streaming' or 'sliding', got {mode!r}")
    if score not in ("new", "window"):
        raise ValueError(f"score: expected 'new' or 'window', got {score!r}")
    toks, info = _as_tokens(model, tokens, file, text, n_tokens, split)
    B, N = toks.shape
    if N < 2:
        raise ValueError(f"the token stream needs at least 2 tokens, got {N}")
    params: dict[str, Any] = {"mode": mode, "data": info, "chunk_size": int(chunk_size)}
    timer = Timer()
    cells: list[dict] = []
    partial = False
    interrupted: BaseException | None = None
    recorder = CellRecorder(save, on_cell)
    minfo = model_info(model)

    def result() -> PerplexityResult:
        return PerplexityResult(params=params, cells=cells, model=minfo, seed=None,
                                partial=partial, time_s=timer(), notes=notes_for(model))
    if mode == "streaming":
        edges = list(buckets) if buckets is not None else default_edges(N)
        if sorted(set(edges)) != list(edges) or edges[0] < 0:
            raise ValueError(f"buckets: expected increasing edges >= 0, got {edges}")
        edges = [min(e, N) for e in edges]
        edges = list(dict.fromkeys(edges))
        ctx = sorted(set(int(c) for c in (context_lengths or edges[1:]) if int(c) > 1))
        if any(c > N for c in ctx):
            raise ValueError(f"context_lengths: {max(ctx)} is longer than the stream ({N} tokens)")
        params.update({"buckets": edges, "context_lengths": ctx})
        seg = int(segment)
        if seg < 2:
            raise ValueError(f"segment: expected >= 2 tokens, got {segment}")
        params["segment"] = seg
        bar = Progress(progress, B * N, desc="perplexity")
        nll = np.full((B, N), np.nan)   # nll[:, p] = NLL of token p (p >= 1)
        try:
            for b in range(B):
                _stream_row(model, toks[b], nll[b], seg, chunk_size, bar, b * N)
        except KeyboardInterrupt as e:
            partial, interrupted = True, e
            bar.write("interrupted: reporting the finished segments (result marked partial)")
        finally:
            bar.close()
        # Rows finished completely, or (Ctrl-C) the prefix every row reached.
        ok = ~np.isnan(nll[:, 1:])
        reach = int(ok.all(axis=0).argmin()) + 1 if not ok.all() else N
        params["tokens_done"] = reach
        if reach >= 2:
            done = nll[:, :reach]
            for lo, hi in zip(edges[:-1], edges[1:]):
                if hi > reach:
                    break
                n, m, p = _stats(done[:, max(lo, 1):hi])
                cells.append({"kind": "bucket", "start": lo, "end": hi, "tokens": n,
                              "mean_nll": m, "ppl": p})
            for L in ctx:
                if L > reach:
                    break
                n, m, p = _stats(done[:, 1:L])
                cells.append({"kind": "context", "context_length": L, "tokens": n,
                              "mean_nll": m, "ppl": p})
    else:
        if B != 1:
            raise ValueError("sliding mode takes one 1-D stream (got several rows)")
        stream = toks[0]
        wins = [int(w) for w in (context_lengths or [min(4096, N)])]
        if any(w < 2 for w in wins):
            raise ValueError(f"context_lengths: windows need >= 2 tokens, got {min(wins)}")
        if any(w > N for w in wins):
            raise ValueError(f"context_lengths: window {max(wins)} is longer than the stream "
                             f"({N} tokens); pass a longer stream or smaller windows")
        plan = []
        for W in wins:
            S = int(stride) if stride is not None else max(1, W // 2)
            if S < 1 or S > W:
                raise ValueError(f"stride: expected 1 <= stride <= window ({W}), got {S}")
            starts = list(range(0, N - W + 1, S))
            if starts[-1] + W < N and score == "new":
                starts.append(N - W)  # cover the tail once
            plan.append((W, S, starts))
        params.update({"context_lengths": wins, "stride": stride, "score": score,
                       "batch_size": int(batch_size)})
        bar = Progress(progress, sum(W * len(st) for W, _, st in plan), desc="perplexity")
        try:
            for W, S, starts in plan:
                tw = Timer()
                total, count, scored_until = 0.0, 0, 0
                for i in range(0, len(starts), batch_size):
                    grp = starts[i:i + batch_size]
                    x = np.stack([stream[s:s + W] for s in grp])
                    out = np.asarray(model.nll(x, chunk_size=chunk_size), dtype=np.float64)
                    for r, s in enumerate(grp):
                        # out[r, j] = NLL of stream[s + j + 1]
                        if score == "window":
                            sel = out[r]
                        else:
                            first = max(scored_until, s + 1)   # global position of first new target
                            sel = out[r, first - s - 1:]
                            scored_until = s + W
                        total += float(sel.sum())
                        count += int(sel.size)
                    bar.update(W * len(grp))
                m = total / count if count else math.nan
                cells.append({"kind": "window", "window": W, "stride": S, "score": score,
                              "windows": len(starts), "tokens": count, "mean_nll": m,
                              "ppl": float(math.exp(m)) if count and m < 700 else math.nan,
                              "time_s": tw()})
                recorder.cell_done(result(), cells[-1])
        except KeyboardInterrupt as e:
            partial, interrupted = True, e
            bar.write("interrupted: keeping the finished window sizes (result marked partial)")
        finally:
            bar.close()
    return recorder.finish(result(), interrupted)
