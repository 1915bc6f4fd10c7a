"""Text generation for :meth:`samba_ext.model.Samba.generate`: sampling loop, stop tokens and
stop strings, streaming, and incremental detokenisation.

Detokenisation is incremental (:class:`IncrementalText`): each step decodes only the tokens
since the last point where the text was complete (plus the tokens of the previous such piece,
which tokenizers such as SentencePiece need to place a leading space), never the whole
output, and stop strings are searched only in the new text plus the last ``len(stop) - 1``
characters before it. The work per token is therefore constant, whatever the output length.
"""
from __future__ import annotations

from bisect import bisect_right
from typing import Any, Callable, Iterable, Optional, Union

import numpy as np

from .errors import CheckpointError

__all__ = ["generate", "parse_stop", "IncrementalText"]

#: Tokens an incomplete character (text ending in U+FFFD) may stay pending before the
#: replacement character is taken as final (a UTF-8 sequence has at most 4 bytes).
MAX_PENDING = 8


class IncrementalText:
    """The decoded text of a growing token list, built piece by piece.

    ``push(token_id)`` appends a token and returns ``(piece, hit)``: the newly completed text
    (``""`` while a multi-token character is incomplete) and the absolute character index
    of the first stop string it completes (-1 for none; the text is then cut there).
    ``ids``: the tokens pushed; ``text``: the text so far (joined on demand).
    """

    def __init__(self, tokenizer: Any, stop_strings: Iterable[str] = ()):
        self.tok = tokenizer
        self.ids: list[int] = []
        self.stops = [s for s in stop_strings if s]
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self._pieces: list[str] = []
        self.length = 0                  # characters committed
        self._tail = ""                  # last _hold committed characters
        self._prefix = 0                 # ids[_prefix:_read] decode to _prev_text
        self._read = 0
        self._prev_text = ""
        self._marks_len = [0]            # (text length, ids) after each commit
        self._marks_ids = [0]

    @property
    def text(self) -> str:
        if len(self._pieces) > 1:
            self._pieces = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""

    def _commit(self, full: str) -> tuple[str, int]:
        piece = full[len(self._prev_text):] if full.startswith(self._prev_text) else full
        self._prefix, self._read = self._read, len(self.ids)
        self._prev_text = self.tok.decode(self.ids[self._prefix:self._read])
        hit = -1
        if piece:
            if self.stops:
                window = self._tail + piece
                js = [j for j in (window.find(s) for s in self.stops) if j >= 0]
                if js:
                    hit = self.length - len(self._tail) + min(js)
            self._pieces.append(piece)
            self.length += len(piece)
            if hit >= 0:
                cut = hit - (self.length - len(piece))   # <= 0 when it began in the tail
                self._pieces[-1] = piece[:max(cut, 0)]
                if cut < 0:
                    self._pieces = [self.text[:hit]]
                piece = piece[:max(cut, 0)]
                self.length = hit
            self._tail = (self._tail + piece)[-self._hold:] if self._hold else ""
            if hit < 0:
                self._marks_len.append(self.length)
                self._marks_ids.append(len(self.ids))
        return piece, hit

    def push(self, token_id: int) -> tuple[str, int]:
        self.ids.append(int(token_id))
        full = self.tok.decode(self.ids[self._prefix:])
        if full.endswith("\ufffd") and len(self.ids) - self._read < MAX_PENDING:
            return "", -1
        return self._commit(full)

    def flush(self) -> tuple[str, int]:
        """Commit a pending incomplete character (at the end of generation)."""
        if self._read == len(self.ids):
            return "", -1
        return self._commit(self.tok.decode(self.ids[self._prefix:]))

    def ids_before(self, n_chars: int) -> int:
        """The number of leading ids whose text is at most ``n_chars`` characters."""
        return self._marks_ids[bisect_right(self._marks_len, n_chars) - 1]


def parse_stop(model: Any, stop) -> tuple[set, list]:
    """(stop token ids, stop strings) from generate()'s ``stop`` argument; None -> the
    tokenizer's EOS id."""
    if stop is None:
        try:
            eos = model.tokenizer.eos_id
        except (ValueError, ImportError, CheckpointError, OSError):
            eos = None
        return ({int(eos)} if eos is not None else set()), []
    items = [stop] if isinstance(stop, (int, np.integer, str)) else list(stop)
    ids, strs = set(), []
    for s in items:
        if isinstance(s, str):
            if not s:   # it would match before the first token: a typo, not a request
                raise ValueError("stop: an empty string cannot mark an end; remove it "
                                 "(stop=[] generates without any stop)")
            strs.append(s)
        elif isinstance(s, (int, np.integer)) and not isinstance(s, bool):
            V = model.config.vocab_size
            if not 0 <= s < V:   # it could never be sampled, so it would never stop
                raise ValueError(f"stop: token id {int(s)} is outside the vocabulary [0, {V})")
            ids.add(int(s))
        else:
            raise TypeError(f"stop: expected token ids and/or strings, got {s!r}")
    return ids, strs


def _check_max_new(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
        raise ValueError(f"max_new_tokens: expected an int >= 0, got {v!r}")
    return int(v)


def generate(model: Any, prompt: Union[str, Any], max_new_tokens: int = 32,
             temperature: float = 0.0, top_k: Optional[int] = None,
             top_p: Optional[float] = None, seed: Optional[int] = None,
             stop: Any = None, stream: Optional[Callable[[Any], Any]] = None,
             state: Any = None, chunk_size: Optional[int] = None,
             progress: Optional[Callable[[int, int], Any]] = None
             ) -> Union[str, list[int], list[list[int]]]:
    """The implementation of :meth:`samba_ext.model.Samba.generate` (see its docstring)."""
    from .sampling import check_sampling, check_seed, sample_next

    check_sampling(temperature, top_k, top_p)
    seed = check_seed(seed, allow_none=True)
    if stream is not None and not callable(stream):
        raise TypeError(f"stream: expected a callable or None, got {type(stream).__name__}")
    n_new = _check_max_new(max_new_tokens)
    is_text = isinstance(prompt, str)
    if is_text:
        try:
            ids = np.asarray([model.tokenizer.encode(prompt)], dtype=np.int64).reshape(1, -1)
        except UnicodeEncodeError as e:
            raise ValueError(f"prompt: not encodable as UTF-8 ({e.reason} at character "
                             f"{e.start}); pass valid text or token ids") from None
        batched = False
    else:
        arr = np.asarray(prompt)
        batched = arr.ndim == 2
        ids = model._tokens2d(arr.reshape(1, -1) if arr.ndim <= 1 else arr, "prompt")
    B, L = ids.shape
    if state is None:
        state = model.new_state(B)
    model._check_state(state, B)
    if L:
        logits = model.prefill(ids, state, chunk_size=chunk_size, progress=progress)
    elif state.logits is not None:
        logits = state.logits
    else:
        raise ValueError("generate: empty prompt and no state to continue from")
    stop_ids, stop_strs = parse_stop(model, stop)
    rng = np.random.default_rng(seed)
    tok = model.tokenizer if (is_text or stop_strs) else None
    texts = [IncrementalText(tok, stop_strs) for _ in range(B)] if tok is not None else None
    out: list[list[int]] = [t.ids for t in texts] if texts else [[] for _ in range(B)]
    done = [False] * B
    hold = max((len(s) for s in stop_strs), default=1) - 1
    unstreamed = ""                       # text of row 0 not yet streamed (text prompts)
    emitted = 0                           # characters of row 0 streamed so far

    def finish_row(r: int, hit: int) -> None:
        done[r] = True
        if not is_text:                   # drop the ids that completed the stop string
            del out[r][texts[r].ids_before(hit):]

    for _ in range(n_new):
        nxt = sample_next(logits, temperature, top_k, top_p, rng)
        fresh = [-1] * B                  # token appended to each row this step
        piece0 = ""
        for r in range(B):
            if done[r]:
                continue
            tid = int(nxt[r])
            if tid in stop_ids:
                done[r] = True
                continue
            if texts is None:
                out[r].append(tid)
                fresh[r] = tid
                continue
            piece, hit = texts[r].push(tid)
            fresh[r] = tid
            if r == 0:
                piece0 = piece
            if hit >= 0:
                finish_row(r, hit)
                if not is_text:
                    fresh[r] = -1
        if stream is not None:
            if is_text:
                # a stop string may begin in held-back text: keep only what survived the cut
                unstreamed = (unstreamed + piece0)[:max(texts[0].length - emitted, 0)]
                safe = len(unstreamed) if done[0] else max(len(unstreamed) - hold, 0)
                if safe:
                    stream(unstreamed[:safe])
                    unstreamed = unstreamed[safe:]
                    emitted += safe
            elif batched:
                stream(fresh)
            elif fresh[0] >= 0:
                stream(fresh[0])
        logits = model.step(nxt, state)
        if all(done):
            break
    if texts is not None:
        for r in range(B):
            if not done[r]:
                piece, hit = texts[r].flush()
                if r == 0:
                    unstreamed += piece
                if hit >= 0:
                    finish_row(r, hit)
    if is_text:
        unstreamed = unstreamed[:max(texts[0].length - emitted, 0)]
    if is_text and stream is not None and unstreamed:
        stream(unstreamed)
    if is_text:
        return texts[0].text
    return out if batched else out[0]
