"""Helpers of the ``samba-ext`` command line (samba_ext/cli.py): the model options and
loading, the output folder and per-evaluation results file, and signal handling."""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import stat
import sys
from typing import Any

__all__ = ["CliError", "option_names", "config_overrides", "load_model", "out_dir", "run_eval", "finish",
           "Interrupts", "SIGNALS", "RESULTS_NAME", "hold_note", "print_held_notes",
           "drop_held_notes"]

# Notes about how a run will go (e.g. the thread count chosen for a busy machine) are held
# until the command has checked its arguments, so a command that fails on its arguments
# prints only its error line.
_HELD_NOTES: list[str] = []


def hold_note(msg: str) -> None:
    """Keep ``msg`` for stderr until the command starts its work (print_held_notes)."""
    _HELD_NOTES.append(msg)


def drop_held_notes() -> None:
    """Forget the held notes (the command ended before its work started)."""
    _HELD_NOTES.clear()


def print_held_notes() -> None:
    """Print (once) the notes kept by hold_note; called when a command starts its work."""
    while _HELD_NOTES:
        print(_HELD_NOTES.pop(0), file=sys.stderr)


class CliError(ValueError):
    """Bad input: printed as one line, exit code 2."""


#: the catchable signals whose default action ends the process: each saves the finished cells
SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT",
                                              "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGXCPU")
                 if hasattr(signal, n))


# ----------------------------------------------------------------------------- model ---
def option_names(msg: str, parser: argparse.ArgumentParser | None) -> str:
    """Name an argument as it is typed: an error ``"entries: ..."`` from the Python API
    becomes ``"--entries: ..."`` when ``entries`` is an option of ``parser`` (the command's)."""
    m = re.match(r"(\w+): ", msg)
    if parser is None or m is None:
        return msg
    for action in parser._actions:
        if action.dest == m.group(1) and action.option_strings:
            return max(action.option_strings, key=len) + msg[len(m.group(1)):]
    return msg


def _check_model_path(spec: str) -> None:
    looks_like_path = (os.sep in spec or "/" in spec or spec.endswith((".safetensors", ".pth",
                                                                       ".pt", ".bin")))
    if not looks_like_path:
        return
    if os.path.islink(spec) and not os.path.exists(spec):
        raise CliError(f"--model: {spec!r} is a broken symbolic link (its target "
                       f"{os.readlink(spec)!r} does not exist)")
    if not os.path.exists(spec):
        raise CliError(f"--model: file {spec!r} does not exist")
    if os.path.isdir(spec):
        if os.path.isfile(os.path.join(spec, "config.json")):
            return      # a Hugging Face-style checkpoint folder (docs/checkpoints.md)
        raise CliError(f"--model: {spec!r} is a directory without a config.json; pass a "
                       "checkpoint folder (config.json + model.safetensors), a .safetensors "
                       "or a .pth file")
    try:
        mode = os.stat(spec).st_mode
    except OSError as e:
        raise CliError(f"--model: cannot stat {spec!r}: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        raise CliError(f"--model: {spec!r} is not a regular file (a FIFO, device or socket); "
                       "pass the .safetensors or .pth file")
    if not os.access(spec, os.R_OK):
        raise CliError(f"--model: {spec!r} is not readable (permission denied)")


_CONFIG_MAX_BYTES = 1 << 20


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """SambaConfig fields given on the command line: --config FILE.json, then --window,
    --n-head, --n-kv-head and --tokenizer (which win over the file)."""
    from .config import SambaConfig

    over: dict[str, Any] = {}
    f = getattr(args, "config", None)
    if f is not None:
        try:
            st = os.stat(f)
        except OSError as e:
            raise CliError(f"--config: cannot read {f!r}: {e.strerror or e}") from None
        if not stat.S_ISREG(st.st_mode):
            raise CliError(f"--config: {f!r} is not a regular file")
        if st.st_size > _CONFIG_MAX_BYTES:
            raise CliError(f"--config: {f!r} is {st.st_size:,} bytes; a config is a small JSON "
                           "object")
        try:
            with open(f, encoding="utf-8") as fh:
                d = json.loads(fh.read(_CONFIG_MAX_BYTES + 1))
        except (OSError, ValueError, RecursionError) as e:
            raise CliError(f"--config: {f!r} is not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise CliError(f"--config: {f!r} must hold a JSON object of config fields")
        known = set(SambaConfig.__dataclass_fields__)
        unknown = sorted(k for k in d if k not in known)
        if unknown:
            raise CliError(f"--config: unknown field(s) {unknown} in {f!r}; fields: "
                           f"{', '.join(sorted(known))}")
        if "layer_types" in d and isinstance(d["layer_types"], list):
            d["layer_types"] = tuple(d["layer_types"])
        over.update(d)
    for opt, field in (("window", "window"), ("n_head", "n_head"), ("n_kv_head", "n_kv_head"),
                       ("tokenizer", "tokenizer")):
        v = getattr(args, opt, None)
        if v is not None:
            over[field] = v
    return over


def load_model(spec: str | None, device: str, seed: int = 0, quiet: bool = False,
               overrides: dict[str, Any] | None = None):
    """The model for --model (see the option's help), with clear errors. ``overrides``:
    config fields (config_overrides). Prints a warning naming every config field that had
    to be guessed because the file does not state it."""
    from .errors import CheckpointError
    from .eval._common import get_model

    over = dict(overrides or {})
    if spec is not None and not spec.startswith("random:"):
        _check_model_path(spec)
    try:
        model = get_model(spec, device=device, seed=seed, warn=not quiet, overrides=over)
    except KeyError as e:
        raise CliError(e.args[0]) from None
    except CheckpointError as e:
        msg = str(e)
        if "pass n_head" in msg:
            msg += " (on the command line: --n-head N --n-kv-head M, or --config FILE.json)"
        raise CliError(msg) from None
    except TypeError as e:          # a config field of the wrong type
        raise CliError(f"model options: {e}") from None
    guessed = getattr(model, "guessed", {}) or {}
    if guessed and not quiet:
        fields = ", ".join(f"{k}={v!r}" for k, v in guessed.items())
        print(f"WARNING: {spec or 'the model'}: the file does not state these config fields, "
              f"so they were guessed: {fields}; set them with --window / --n-head / "
              "--n-kv-head / --tokenizer or --config FILE.json", file=sys.stderr)
    return model


# ----------------------------------------------------------------------------- output ---
RESULTS_NAME = "results.json"


def out_dir(args: argparse.Namespace, name: str) -> str:
    """The --out directory, created. Refuses a directory whose results.json holds another
    evaluation's results (it would be overwritten): use one --out per evaluation."""
    out = args.out if args.out is not None else os.path.join("samba-ext-results", name)
    if os.path.islink(out) and not os.path.exists(out):
        raise CliError(f"--out: {out!r} is a broken symbolic link")
    if os.path.exists(out) and not os.path.isdir(out):
        raise CliError(f"--out: {out!r} exists and is not a directory")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise CliError(f"--out: cannot create directory {out!r}: {e.strerror or e}") from None
    if not os.access(out, os.W_OK):
        raise CliError(f"--out: directory {out!r} is not writable")
    prev = _previous_eval(os.path.join(out, RESULTS_NAME))
    if prev is not None and prev != name:
        raise CliError(f"--out: {out!r} already holds {prev} results ({RESULTS_NAME}); this "
                       f"{name} run would overwrite them: pass another --out (e.g. "
                       f"{os.path.join(out, name)})")
    return out


def _previous_eval(path: str) -> str | None:
    """The "eval" of an existing results file; None when there is none (or it is a symbolic
    link: not followed, and the rename replaces the link itself). A file that is not a
    results document is refused rather than overwritten."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CliError(f"--out: cannot inspect {path!r}: {e.strerror or e}") from None
    if stat.S_ISLNK(st.st_mode):
        return None      # never read through a planted link; the atomic rename replaces it
    if not stat.S_ISREG(st.st_mode) or st.st_size > (256 << 20):
        raise CliError(f"--out: {path!r} exists and is not a samba-ext results file")
    try:
        with open(path, encoding="utf-8") as fh:
            d = json.load(fh)
    except (OSError, ValueError, RecursionError):
        raise CliError(f"--out: {path!r} exists and is not a samba-ext results file; remove "
                       "it or pass another --out") from None
    if not isinstance(d, dict) or not isinstance(d.get("eval"), str):
        raise CliError(f"--out: {path!r} exists and is not a samba-ext results file")
    return d["eval"]


def run_eval(name: str, args: argparse.Namespace, out: str, model: Any = None,
             direct: bool = False, **kw: Any) -> int:
    """Run an evaluation as a resumable grid in ``out`` (samba_ext.eval.grid: each finished
    unit written atomically to <out>/cells/<eval>/, on Ray with --ray), then write
    <out>/results.json once. Locally, a "cell done" line per finished unit goes to stdout
    when stdout is not a terminal (where it would disturb the progress bars). Interrupted
    runs keep their finished units; the exit code is then 128 + the signal."""
    from .eval import EvalInterrupted
    from .eval.grid import plan_units, run_grid

    if not direct:   # the evaluation's own argument checks run before any held note prints
        plan_units(name, None, {k: v for k, v in kw.items() if k != "device"}, model_id="-")
    print_held_notes()
    prev: dict[str, Any] = {"unit": None}

    def on_unit(u: Any) -> None:     # local runs are sequential: the previous unit is done
        if prev["unit"] is not None and not _stdout_is_tty():
            print(f"cell done: {name} {prev['unit'].label}", flush=True)
        prev["unit"] = u

    if direct:   # a plain call (e.g. throughput of modified configs, which the grid cannot key)
        if args.ray is not None:
            raise CliError(f"--ray: {name} with --config/--window/--n-head/--n-kv-head/"
                           "--tokenizer runs in this process only; drop --ray")
        from . import eval as ev

        def on_cell(cell: dict) -> None:
            if not _stdout_is_tty():
                print(f"cell done: {name} " + " ".join(
                    f"{k}={cell[k]}" for k in ("config", "kind", "prompt_length", "gen_length")
                    if k in cell), flush=True)
        try:
            r = getattr(ev, name)(save=os.path.join(out, RESULTS_NAME), on_cell=on_cell, **kw)
        except EvalInterrupted as e:
            r = e.result
    else:
        if args.ray is not None and name != "throughput":
            if config_overrides(args):
                raise CliError("--ray: Ray workers load the model by name or path and would not "
                               "see --config/--window/--n-head/--n-kv-head/--tokenizer; write "
                               "the described model to a file first (Samba.save) or drop --ray")
            model = args.model       # Ray workers load the model themselves, by name or path
        try:
            r = run_grid(name, model, out=out, ray=args.ray, resume=not args.no_resume,
                         device=kw.pop("device", args.device),
                         on_unit=on_unit if args.ray is None else None, **kw)
        except EvalInterrupted as e:
            r = e.result
        if prev["unit"] is not None and not r.partial and not _stdout_is_tty():
            print(f"cell done: {name} {prev['unit'].label}", flush=True)   # the last unit
    intr = getattr(args, "_interrupts", None)
    signum = intr.first if intr is not None and intr.first is not None else None
    if r.partial and signum is None:
        signum = int(signal.SIGINT)
    return finish(r, args, name, out, signum)


def _stdout_is_tty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def finish(result: Any, args: argparse.Namespace, name: str, out: str,
            signum: int | None = None) -> int:
    result.command = "samba-ext " + shlex.join(sys.argv[1:] if args._argv is None
                                                else args._argv)
    path = result.save_json(os.path.join(out, RESULTS_NAME))
    print()
    print(result)
    print(f"\nwrote {path}")
    if not args.no_plot and signum is None:
        from .eval.plots import MATPLOTLIB_HINT, have_matplotlib

        if not have_matplotlib():
            print(f"skipped the PNG: {MATPLOTLIB_HINT}")
        elif result.cells:
            png = os.path.join(out, f"{name}.png")
            result.plot(png)
            print(f"wrote {png}")
    if result.notes:
        for n in result.notes:
            print(f"NOTE: {n}")
    if result.partial or signum is not None:
        print("interrupted: the results above are PARTIAL (finished cells only)")
        return 128 + int(signum if signum is not None else signal.SIGINT)
    return 0


class Interrupts:
    """While a command runs: SIGINT, SIGTERM, SIGHUP and the other catchable signals that
    would end the process (SIGNALS) raise KeyboardInterrupt (carrying ``signum``) once; any further signal is only recorded, so that the finished cells are
    saved -- atomically, once -- even when a second signal follows at once (a double
    Ctrl-C, or SIGTERM then SIGHUP from a closing terminal). Only in the main thread."""

    def __init__(self) -> None:
        self.first: int | None = None
        self.later: list[int] = []
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.first is None:
            self.first = signum
            e = KeyboardInterrupt()
            e.signum = signum       # type: ignore[attr-defined]
            raise e
        self.later.append(signum)

    def __enter__(self) -> "Interrupts":
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                try:
                    self._old[sig] = signal.signal(sig, self._handler)
                except (OSError, ValueError):
                    pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
