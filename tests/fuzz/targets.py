"""Fuzz targets: every parser of untrusted bytes in samba_ext, with the oracle they must obey.

A target takes the bytes of one file, writes them to a scratch file (the loaders take paths,
as users call them) and calls the loader. The oracle (:func:`run_one`) accepts exactly two
outcomes:

* the loader returns, and what it returned is consistent with the file (every array is
  finite-sized and all of them together hold no more elements than the file has bytes);
* the loader raises :class:`samba_ext.errors.CheckpointError` (the documented contract of
  errors.py: "CheckpointError for any malformed / hostile / incompatible file").

Anything else is a finding: another exception type (IndexError, KeyError, a bare
ValueError, MemoryError, RecursionError, ...), a hang (more than ``TIME_LIMIT_S`` seconds), or a
peak of Python-visible allocations (tracemalloc: Python objects and NumPy buffers) above
``MEM_FACTOR * file size + MEM_SLACK`` -- i.e. an allocation driven by a size the file claims
rather than by the bytes it holds. The factor 64 is the largest legitimate expansion of the
formats themselves: a 1-byte pickle opcode (EMPTY_LIST) or 3 bytes of JSON (``[],``) become a
56-64 byte Python object; tensors expand at most 2x (float16/bfloat16 -> float32) plus one
temporary copy.
"""
from __future__ import annotations

import os
import signal
import sys
import tempfile
import tracemalloc
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import numpy as np

MEM_FACTOR = 64
MEM_SLACK = 1 << 20          # 1 MiB: interpreter noise, exception tracebacks, small headers
TIME_LIMIT_S = 5.0           # per input; the largest corpus file parses in < 50 ms


class FuzzTimeout(BaseException):
    """Raised by the alarm handler (a BaseException so that `except Exception` cannot eat it)."""


@dataclass
class Finding:
    kind: str                # "exception", "memory", "timeout", "result"
    detail: str
    where: str = ""          # innermost samba_ext frame "file.py:line" (exceptions)

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}" + (f" [at {self.where}]" if self.where else "")

    @property
    def signature(self) -> str:
        """Same bug -> same signature (for de-duplicating findings)."""
        head = self.detail.split(":", 1)[0] if self.kind == "exception" else ""
        return f"{self.kind}:{head}:{self.where}"


def _innermost_package_frame(tb) -> str:
    where = ""
    while tb is not None:
        fn = tb.tb_frame.f_code.co_filename
        if "samba_ext" in fn.replace("\\", "/").split("/"):
            where = f"{os.path.basename(fn)}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where


@dataclass
class Target:
    name: str
    suffix: str               # file suffix the loader dispatches on
    corpus_dirs: List[str]    # sub-directories of tests/fixtures/fuzz_corpus/ used as seeds
    load: Callable[[str], Any]
    mutators: str             # "safetensors" | "pth"
    check_result: bool = True  # raw parsers: returned elements <= file bytes
    stats: Dict[str, int] = field(default_factory=dict)


def _count_elements(obj: Any, depth: int = 0) -> int:
    """Total ndarray elements reachable through dicts / lists / tuples / objects' __dict__."""
    if depth > 50:
        return 0
    if isinstance(obj, np.ndarray):
        return int(obj.size)
    if isinstance(obj, dict):
        return sum(_count_elements(v, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_count_elements(v, depth + 1) for v in obj)
    d = getattr(obj, "__dict__", None)
    if isinstance(d, dict):
        return sum(_count_elements(v, depth + 1) for k, v in d.items() if k != "config")
    return 0


# ------------------------------------------------------------------------------ loaders ---


def load_safetensors(path: str) -> Any:
    from samba_ext.safetensors_io import read_safetensors

    return read_safetensors(path)


def load_pth(path: str) -> Any:
    """The torch-free .pth reader, then the state-dict normalisation and config inference
    that Samba.load runs on it."""
    from samba_ext.litgpt import infer_config, load_litgpt_state_dict

    sd = load_litgpt_state_dict(path)
    blocks = any(k.startswith("transformer.h.") for k in sd)
    cfg = infer_config(sd, path, n_head=2) if blocks else None
    return sd, cfg


def load_model(path: str) -> Any:
    """Samba.load: safetensors / .pth -> config validation -> weights -> model."""
    from samba_ext.model import Samba

    return Samba.load(path)


def load_folder(path: str) -> Any:
    """Samba.load on a checkpoint folder. The fuzzed bytes are a zip (stored, not deflated)
    of the folder's files; the harness unpacks each readable member under its base name into
    a fresh folder (a member it cannot read is left out: what the loader then meets is a
    folder missing that file)."""
    import shutil
    import zipfile

    from samba_ext.model import Samba

    d = path + ".d"
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.mkdir(d)
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist()[:64]:
                name = os.path.basename(info.filename)
                if (not name or name.startswith(".") or info.compress_type != zipfile.ZIP_STORED
                        or info.file_size > 16 << 20):
                    continue
                try:
                    raw = z.read(info)
                except (zipfile.BadZipFile, OSError, ValueError, EOFError):
                    continue
                with open(os.path.join(d, name), "wb") as f:
                    f.write(raw)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        pass                     # not a zip: an empty folder
    return Samba.load(d)


def _have(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def all_targets() -> List[Target]:
    """The targets whose code is present in this checkout."""
    out: List[Target] = []
    if _have("samba_ext.safetensors_io"):
        out.append(Target("safetensors", ".safetensors", ["safetensors"], load_safetensors,
                          "safetensors"))
    if _have("samba_ext.litgpt"):
        out.append(Target("pth", ".pth", ["pth"], load_pth, "pth"))
    if _have("samba_ext.model"):
        # A model may hold derived arrays (e.g. transposed weights), so no element count check.
        out.append(Target("model_safetensors", ".safetensors", ["safetensors"], load_model,
                          "safetensors", check_result=False))
        out.append(Target("model_pth", ".pth", ["pth"], load_model, "pth", check_result=False))
    if _have("samba_ext.io.hf_folder"):
        out.append(Target("hf_folder", ".zip", ["hf_folder"], load_folder, "folder",
                          check_result=False))
    return out


# ------------------------------------------------------------------------------- oracle ---


def _alarm(signum, frame):
    raise FuzzTimeout()


class Runner:
    """Runs inputs through a target under the oracle; one scratch directory per runner."""

    def __init__(self, workdir: Optional[str] = None):
        self._tmp = tempfile.TemporaryDirectory(prefix="samba-fuzz-") if workdir is None else None
        self.workdir = workdir or self._tmp.name
        from samba_ext.errors import CheckpointError

        self.CheckpointError = CheckpointError
        self._started_tracing = not tracemalloc.is_tracing()
        if self._started_tracing:
            tracemalloc.start(1)
        self.max_ratio = 0.0           # largest peak / file size seen (for the report)
        self._warm: set = set()
        self.last_detail = ""          # outcome of the last input ("ok" or "Type: message")

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
        if self._started_tracing and tracemalloc.is_tracing():
            tracemalloc.stop()   # tracing slows every later allocation of the process

    def run_one(self, target: Target, data: bytes) -> Optional[Finding]:
        path = os.path.join(self.workdir, "input" + target.suffix)
        with open(path, "wb") as f:
            f.write(data)
        if target.name not in self._warm:
            # First call of a target: lazy imports and caches would count as allocations.
            self._warm.add(target.name)
            hide = "torch" not in sys.modules
            if hide:
                sys.modules["torch"] = None  # type: ignore[assignment]
            try:
                target.load(path)
            except Exception:  # noqa: BLE001 - judged by the measured call below
                pass
            finally:
                if hide:
                    del sys.modules["torch"]
        limit = MEM_FACTOR * len(data) + MEM_SLACK
        result: Any = None
        finding: Optional[Finding] = None
        # Non-zip .pth files fall back to torch.load (torch's parser, not ours) when torch is
        # installed. Unless something already imported torch, hide it, as on a machine without
        # torch: fast and deterministic (the package must then answer CheckpointError).
        hide_torch = "torch" not in sys.modules
        if hide_torch:
            sys.modules["torch"] = None  # type: ignore[assignment]
        old = signal.signal(signal.SIGALRM, _alarm)
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        signal.setitimer(signal.ITIMER_REAL, TIME_LIMIT_S)
        try:
            result = target.load(path)
            outcome = "ok"
            self.last_detail = "ok"
        except FuzzTimeout:
            finding = Finding("timeout", f"no answer within {TIME_LIMIT_S} s")
            outcome = "timeout"
            self.last_detail = "timeout"
        except self.CheckpointError as e:
            outcome = "CheckpointError"
            self.last_detail = f"CheckpointError: {e}"
            if "MemoryError" in str(e):
                # a wrapped MemoryError: the parser tried to allocate more than the machine
                # (or the fuzz worker's address-space cap) allows, for a file of len(data)
                finding = Finding("memory", f"an allocation failed (MemoryError, wrapped in "
                                            f"CheckpointError) for a {len(data)}-byte file")
        except BaseException as e:  # noqa: BLE001 - every other type is the finding
            if isinstance(e, KeyboardInterrupt):
                raise
            finding = Finding("exception", f"{type(e).__module__}.{type(e).__name__}: "
                                           f"{str(e)[:300]}",
                              _innermost_package_frame(e.__traceback__))
            outcome = type(e).__name__
            self.last_detail = finding.detail
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
            if hide_torch:
                del sys.modules["torch"]
        peak = tracemalloc.get_traced_memory()[1] - base
        self.max_ratio = max(self.max_ratio, peak / max(1, len(data)))
        target.stats[outcome] = target.stats.get(outcome, 0) + 1
        if finding is None and peak > limit:
            snap_where = ""
            finding = Finding("memory", f"peak {peak} bytes of allocations for a {len(data)}-byte "
                                        f"file (limit {limit})", snap_where)
        if finding is None and outcome == "ok" and target.check_result:
            n = _count_elements(result)
            if n > len(data):
                finding = Finding("result", f"returned {n} array elements from a {len(data)}-byte "
                                            "file")
        del result
        return finding
