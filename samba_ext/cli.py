"""``samba-ext`` command line: passkey, phonebook, perplexity, throughput, generate, info.

Examples::

    samba-ext passkey                                  # bundled samba-tiny, default grid
    samba-ext passkey --lengths 4K,16K,64K,256K --depths 0:1:0.25 --trials 5
    samba-ext phonebook --entries 20,40,80 --trials 10
    samba-ext perplexity --tokens 1M                   # stdlib held-out split, streaming
    samba-ext perplexity --file notes.txt --mode sliding --lengths 1K,4K --stride 512
    samba-ext throughput --configs samba-10m,samba-10m:llama,samba-10m:mistral
    samba-ext generate "The pass key is" --max-new-tokens 20
    samba-ext info --model path/to/model.safetensors

Each evaluation prints a table, and writes ``results.json`` (after every finished cell, and at
the end) and a PNG (when matplotlib is installed) to ``--out`` (default
``./samba-ext-results/<eval>``; a folder holding another evaluation's results is refused).
Ctrl-C, SIGTERM and SIGHUP stop cleanly: the finished cells are written, marked
``"partial": true``, and the exit code is 128 + the signal (130 for Ctrl-C); later signals
are ignored until the results are saved. Every command takes ``--config FILE.json``,
``--window``, ``--n-head``, ``--n-kv-head`` and ``--tokenizer`` to describe a checkpoint, and
warns naming any config field it had to guess.
Bad input prints one ``samba-ext: error: ...`` line and exits with code 2 (set
``SAMBA_EXT_DEBUG=1`` to see the traceback instead).
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import stat
import sys
import time
from typing import Any, Sequence

from ._cli_util import (CliError, Interrupts, config_overrides, drop_held_notes, hold_note,
                        load_model, option_names, out_dir, print_held_notes, run_eval)

__all__ = ["main", "parse_lengths", "parse_depths", "parse_count", "CliError"]

DEFAULT_MODEL = "samba-tiny"
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

# The default grids are samba_ext.eval.grid.GRIDS["quick"], the Python API's defaults too
# (--grid paper: the Samba paper's passkey grid, 4K..256K x 11 depths x 5 trials).
PASSKEY_LENGTHS = "1K,2K,4K,8K,16K,32K"
PASSKEY_DEPTHS = "0:1:0.1"
PASSKEY_TRIALS = 2
PHONEBOOK_ENTRIES = "20,40,80,160,320"
PHONEBOOK_TRIALS = 5
#: exit code for a run stopped by a signal: 128 + the signal number (130 for Ctrl-C)


# ----------------------------------------------------------------------------- parsing ---
def parse_count(s: str, what: str = "value") -> int:
    """'4096' -> 4096, '4K' -> 4096, '1M' -> 1048576 (samba_ext.eval.grid.parse_count)."""
    from .eval.gridspec import GridSpecError, parse_count as _pc

    try:
        return _pc(s, what)
    except GridSpecError as e:
        raise CliError(str(e)) from None


def parse_lengths(s: str, what: str = "--lengths") -> list[int]:
    """'1K,4K,1M' -> [1024, 4096, 1048576] (the Python API's syntax too)."""
    from .eval.gridspec import GridSpecError, parse_lengths as _pl

    try:
        return _pl(s, what)
    except GridSpecError as e:
        raise CliError(str(e)) from None


def parse_names(s: str, what: str, example: str) -> list[str]:
    """'a, b' -> ['a', 'b']; an empty list or item is a CliError naming ``what``."""
    from .eval.gridspec import GridSpecError, split_list

    try:
        return split_list(s, what, example)
    except GridSpecError as e:
        raise CliError(str(e)) from None


def parse_depths(s: str) -> list[float] | str:
    """'random', '0,0.5,1' or 'start:stop:step' (inclusive, e.g. '0:1:0.1' = 11 depths)."""
    from .eval.gridspec import GridSpecError, parse_depths as _pd

    try:
        return _pd(s, "--depths")
    except GridSpecError as e:
        raise CliError(str(e)) from None


def _positive_int(s: str) -> int:
    try:
        v = parse_count(s)
    except CliError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    return v


def _top_p(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected 0 < top-p <= 1, got {s!r}")
    return v


def _nonneg_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {s!r}")
    return v


class _Parser(argparse.ArgumentParser):
    def _commands_of(self, args: argparse.Namespace) -> argparse.ArgumentParser:
        """The parser of the command in ``args`` (this one where there is none)."""
        return getattr(args, "_commands", {}).get(getattr(args, "command", None), self)

    def error(self, message: str):  # argparse's own errors: one line, exit 2
        self.exit(EXIT_BAD_INPUT, f"samba-ext: error: {message} (see '{self.prog} --help')\n")


def _common(p: argparse.ArgumentParser, out: bool = True, model: bool = True,
            seed: bool = True) -> None:
    g = p.add_argument_group("common options")
    if model:
        g.add_argument("--model", default=None,
                       help="bundled name (samba-tiny, llama-tiny), a .safetensors file, a "
                            "lit_gpt .pth file, or random:PRESET for random weights "
                            f"(default: {DEFAULT_MODEL}; random weights if it is not installed)")
    m = p.add_argument_group("model description (for checkpoints that lack it)")
    m.add_argument("--config", default=None, metavar="FILE.json",
                   help="JSON object of SambaConfig fields replacing the stored / inferred "
                        "ones (e.g. {\"window\": 512, \"n_head\": 4})")
    m.add_argument("--window", type=_positive_int, default=None,
                   help="sliding-window size in keys (replaces the stored / guessed one)")
    m.add_argument("--n-head", type=_positive_int, default=None, help="attention heads")
    m.add_argument("--n-kv-head", type=_positive_int, default=None,
                   help="key/value heads (GQA)")
    m.add_argument("--tokenizer", default=None,
                   help="'byte', or a tokenizer.json / tokenizer.model file or folder")
    g.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the model runs (default cpu)")
    g.add_argument("--threads", type=_positive_int, default=None,
                   help="CPU threads for the C kernels and NumPy's BLAS (default: "
                        "OMP_NUM_THREADS or all cores, but 1 when the machine is already busy: "
                        "idle threads of the two pools spin and compete with other load); "
                        "passkey and phonebook run that many trials at once, one thread each, "
                        "for models of up to 100M parameters")
    if seed:
        g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    if out:
        g.add_argument("--out", default=None,
                       help="output directory (default ./samba-ext-results/<eval>)")
        g.add_argument("--no-plot", action="store_true", help="do not write the PNG")
        g.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                       help="run the grid's cells as Ray tasks: no ADDRESS starts a local Ray "
                            "cluster, 'auto' joins the running one (see docs/distributed.md)")
        g.add_argument("--no-resume", action="store_true",
                       help="recompute every cell (default: cells already finished in --out "
                            "are reused)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--chunk-size", type=_positive_int, default=2048,
                   help="prefill chunk size in tokens (default 2048)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    ap = _Parser(prog="samba-ext", description="Samba long-context evaluations and tools "
                 "(passkey, phonebook, perplexity, throughput).",
                 epilog="Run 'samba-ext <command> --help' for a command's options.")
    ap.add_argument("--version", action="version", version=f"samba-ext {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="command", parser_class=_Parser)
    sub.required = True
    ap.set_defaults(_commands=sub.choices)  # each command's parser, for option_names

    p = sub.add_parser("passkey", help="passkey retrieval accuracy over length x depth",
                       description="Passkey retrieval (Landmark template; lengths in tokens). "
                       f"Defaults: --lengths {PASSKEY_LENGTHS} --depths {PASSKEY_DEPTHS} "
                       f"--trials {PASSKEY_TRIALS}. The paper grid: --lengths "
                       "4K,8K,16K,32K,64K,128K,256K --trials 5.")
    p.add_argument("--grid", choices=("quick", "paper"), default="quick",
                   help="default grid: quick (below) or paper (4K..256K, 5 trials)")
    p.add_argument("--lengths", default=None,
                   help=f"prompt lengths in tokens, K/M suffixes (default {PASSKEY_LENGTHS})")
    p.add_argument("--depths", default=None,
                   help="key depths in [0,1]: list 0,0.5,1, range 0:1:0.1, or random "
                        f"(default {PASSKEY_DEPTHS})")
    p.add_argument("--trials", type=_positive_int, default=None,
                   help=f"trials (keys) per cell (default {PASSKEY_TRIALS})")
    p.add_argument("--key-digits", type=_positive_int, default=5,
                   help="digits of the random key (default 5, as in Samba)")
    p.add_argument("--landmark-keys", action="store_true",
                   help="keys uniform in 1..50000 as in Landmark Attention")
    p.add_argument("--max-new-tokens", type=_positive_int, default=10,
                   help="greedy decoding budget (default 10)")
    p.add_argument("--no-share-prefix", action="store_true",
                   help="prefill every trial from scratch (slower; same results)")
    _common(p)

    p = sub.add_parser("phonebook", help="phonebook lookup accuracy vs number of entries",
                       description="Phonebook lookup (Jelassi et al. 2024 / ArchScale).")
    p.add_argument("--grid", choices=("quick", "paper"), default="quick",
                   help="default grid: quick (below) or paper (20..480 entries, 10 trials)")
    p.add_argument("--entries", default=None,
                   help=f"book sizes in entries (default {PHONEBOOK_ENTRIES})")
    p.add_argument("--trials", type=_positive_int, default=None,
                   help=f"books per size (default {PHONEBOOK_TRIALS})")
    p.add_argument("--max-new-tokens", type=_positive_int, default=20,
                   help="greedy decoding budget (default 20)")
    _common(p)

    p = sub.add_parser("perplexity", help="perplexity vs context length (streaming / sliding)",
                       description="Long-context perplexity. Data: --file (text or .npy "
                       "tokens) or the built-in Python stdlib corpus (held-out split).")
    p.add_argument("--file", default=None, help="UTF-8 text file or .npy token array")
    p.add_argument("--split", choices=("heldout", "train", "all"), default="heldout",
                   help="stdlib corpus split when no --file (default heldout)")
    p.add_argument("--tokens", default=None,
                   help="stream length in tokens (default: 64K of the stdlib corpus, or the "
                        "whole --file; the stdlib held-out split has ~3M byte tokens)")
    p.add_argument("--mode", choices=("streaming", "sliding"), default="streaming",
                   help="streaming: one pass, state carried (default); sliding: windows")
    p.add_argument("--lengths", default=None,
                   help="streaming: cumulative context lengths (default: bucket edges); "
                        "sliding: window sizes (default 4K)")
    p.add_argument("--stride", default=None, help="sliding stride (default window/2)")
    p.add_argument("--score", choices=("new", "window"), default="new",
                   help="sliding: score new tokens only (Press) or whole windows")
    p.add_argument("--batch-size", type=_positive_int, default=1,
                   help="sliding: windows per forward batch (default 1)")
    _common(p, seed=False)

    p = sub.add_parser("throughput", help="prefill / decode tokens/s of configs (random weights)",
                       description="Throughput with random weights; configs are presets, "
                       "optionally NAME:llama / NAME:mistral / NAME:mamba baselines.")
    p.add_argument("--configs", default="samba-tiny,samba-tiny:llama",
                   help="comma-separated presets (default samba-tiny,samba-tiny:llama; e.g. "
                        "samba-10m,samba-10m:llama,samba-10m:mistral for a larger pair)")
    p.add_argument("--lengths", default="1K,2K,4K,8K,16K",
                   help="prefill prompt lengths (default 1K,2K,4K,8K,16K)")
    p.add_argument("--total-tokens", default="16K",
                   help="tokens per prefill measurement; batch = total/length (default 16K)")
    p.add_argument("--gen-lengths", default="128,512",
                   help="decode lengths (default 128,512)")
    p.add_argument("--batch-size", type=_positive_int, default=4,
                   help="decode batch size (default 4; the paper uses 16)")
    p.add_argument("--repeats", type=_positive_int, default=3,
                   help="timed repeats per measurement, after an untimed warm-up run; the "
                        "median is reported (default 3)")
    _common(p, model=False)

    p = sub.add_parser("generate", help="generate text from a prompt",
                       description="Generate a continuation (streamed to stdout).")
    p.add_argument("prompt", nargs="?", default=None,
                   help="prompt text ('-' or omitted: read stdin)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=64)
    p.add_argument("--temperature", type=_nonneg_float, default=0.0,
                   help="0 = greedy (default)")
    p.add_argument("--top-k", type=_positive_int, default=None)
    p.add_argument("--top-p", type=_top_p, default=None, help="nucleus sampling, 0 < p <= 1")
    _common(p, out=False)

    p = sub.add_parser("info", help="build configuration and model information",
                       description="Print the build configuration (compiler, OpenMP, CUDA) "
                       "and the model's config, size, hash and state size.")
    p.add_argument("--verbose", action="store_true",
                   help="also print the file's free-form metadata (e.g. the training lineage)")
    _common(p, out=False, seed=False)
    return ap


# ----------------------------------------------------------------------------- threads ---
def set_blas_threads(n: int) -> bool:
    """Limit NumPy's BLAS thread pool to ``n`` threads (samba_ext.threads). True on success."""
    from .threads import set_blas_threads as _set

    return _set(n)


def auto_threads() -> tuple[int | None, str]:
    """The thread count when --threads is not given: None (all cores, the library default)
    unless the machine is already busy (1-minute load average >= half the cores) and no
    *_NUM_THREADS variable is set; then 1, because idle threads of the OpenMP and BLAS pools
    spin and compete with the other load (measured 5-10x slower than one thread)."""
    if any(v in os.environ for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                     "MKL_NUM_THREADS")):
        return None, ""
    n = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        return None, ""
    if n > 1 and load >= 0.5 * n:
        return 1, (f"note: this machine is busy (load {load:.1f} on {n} cores), so this run "
                   "uses 1 thread; pass --threads N to choose")
    return None, ""


# ----------------------------------------------------------------------------- commands ---
def _cmd_passkey(args: argparse.Namespace) -> int:
    from .eval.gridspec import grid_defaults

    g = grid_defaults(args.grid, "passkey")
    lengths = parse_lengths(args.lengths) if args.lengths is not None else list(g["lengths"])
    depths = parse_depths(args.depths) if args.depths is not None else list(g["depths"])
    out = out_dir(args, "passkey")
    model = load_model(args.model, args.device, seed=args.seed, overrides=config_overrides(args))
    return run_eval("passkey", args, out, model=model, lengths=lengths, depths=depths,
                    trials=args.trials or g["trials"], seed=args.seed,
                    key_digits=args.key_digits,
                    key_range=(1, 50000) if args.landmark_keys else None,
                    max_new_tokens=args.max_new_tokens, chunk_size=args.chunk_size,
                    progress=not args.no_progress, share_prefix=not args.no_share_prefix)


def _cmd_phonebook(args: argparse.Namespace) -> int:
    from .eval.gridspec import grid_defaults

    g = grid_defaults(args.grid, "phonebook")
    entries = (parse_lengths(args.entries, "--entries") if args.entries is not None
               else list(g["entries"]))
    out = out_dir(args, "phonebook")
    model = load_model(args.model, args.device, seed=args.seed, overrides=config_overrides(args))
    return run_eval("phonebook", args, out, model=model, entries=entries,
                    trials=args.trials or g["trials"], seed=args.seed,
                    max_new_tokens=args.max_new_tokens, chunk_size=args.chunk_size,
                    progress=not args.no_progress)


def _cmd_perplexity(args: argparse.Namespace) -> int:
    n = parse_count(args.tokens, "--tokens") if args.tokens else None
    lengths = parse_lengths(args.lengths) if args.lengths else None
    stride = parse_count(args.stride, "--stride") if args.stride else None
    if args.file is not None:
        f = args.file
        if os.path.islink(f) and not os.path.exists(f):
            raise CliError(f"--file: {f!r} is a broken symbolic link")
        if not os.path.exists(f):
            raise CliError(f"--file: {f!r} does not exist")
        if os.path.isdir(f):
            raise CliError(f"--file: {f!r} is a directory")
        if not stat.S_ISREG(os.stat(f).st_mode):
            raise CliError(f"--file: {f!r} is not a regular file (a FIFO, device or socket)")
        if not os.access(f, os.R_OK):
            raise CliError(f"--file: {f!r} is not readable (permission denied)")
    out = out_dir(args, "perplexity")
    model = load_model(args.model, args.device, overrides=config_overrides(args))
    kw: dict[str, Any] = dict(mode=args.mode, context_lengths=lengths, stride=stride,
                              score=args.score, batch_size=args.batch_size,
                              chunk_size=args.chunk_size, progress=not args.no_progress,
                              split=args.split)
    if args.file is not None:
        kw.update(file=args.file, n_tokens=n)
    else:
        kw.update(n_tokens=n if n is not None else 65536)
    return run_eval("perplexity", args, out, model=model, **kw)


def _cmd_throughput(args: argparse.Namespace) -> int:
    configs = parse_names(args.configs, "--configs", "samba-421m,llama3-1.6b")
    from .eval.throughput import resolve_config

    over = config_overrides(args)
    resolved = []
    for c in configs:  # validate before any work
        cfg = resolve_config(c)
        if over:
            import dataclasses

            try:
                cfg = dataclasses.replace(cfg, **over)
            except TypeError as e:
                raise CliError(f"model options: {e}") from None
            cfg.name = c
        resolved.append(cfg)
    out = out_dir(args, "throughput")
    return run_eval("throughput", args, out, direct=bool(over),
                     configs=resolved if over else configs,
                     prompt_lengths=parse_lengths(args.lengths),
                     total_tokens=parse_count(args.total_tokens, "--total-tokens"),
                     gen_lengths=parse_lengths(args.gen_lengths, "--gen-lengths"),
                     batch_size=args.batch_size, repeats=args.repeats, seed=args.seed,
                     chunk_size=args.chunk_size, progress=not args.no_progress,
                     device=args.device)


def _cmd_generate(args: argparse.Namespace) -> int:
    prompt = args.prompt
    if prompt is None or prompt == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise CliError("generate: give a prompt argument (or pipe text on stdin)")
        prompt = sys.stdin.read()
    if not prompt:
        raise CliError("generate: the prompt is empty")
    from .sampling import check_sampling, check_seed

    check_sampling(args.temperature, args.top_k, args.top_p)   # before the prompt is echoed
    check_seed(args.seed, allow_none=True)
    model = load_model(args.model, args.device, seed=args.seed, overrides=config_overrides(args))
    print_held_notes()
    sys.stdout.write(prompt)
    sys.stdout.flush()

    def stream(piece: Any) -> None:
        if isinstance(piece, str):
            sys.stdout.write(piece)
            sys.stdout.flush()

    t = time.perf_counter()
    model.generate(prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, seed=args.seed, stream=stream,
                   chunk_size=args.chunk_size)
    dt = time.perf_counter() - t
    sys.stdout.write("\n")
    print(f"[{args.max_new_tokens} tokens max in {dt:.2f} s]", file=sys.stderr)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from ._info import show_config
    from .eval._common import model_info

    show_config()
    try:
        from .data import available_models

        print(f"  bundled    : {', '.join(available_models()) or '(none installed)'}")
    except ImportError:
        pass
    model = load_model(args.model, args.device, overrides=config_overrides(args))
    info = model_info(model)
    print(f"\nmodel {info['name']}" + ("  [RANDOM WEIGHTS]" if info["random_weights"] else ""))
    if info["note"]:
        print(f"  note       : {info['note']}")
    print(f"  source     : {info['source'] or '(not from a file)'}")
    print(f"  parameters : {info['num_parameters']:,}" if info["num_parameters"] is not None
          else "  parameters : ?")
    print(f"  hash       : {info['hash']} (of the {info['hash_of']})")
    try:
        print(f"  state      : {model.new_state(1).nbytes():,} bytes per sequence (constant in "
              "length for Mamba/SWA blocks)")
    except Exception:
        pass
    guessed = getattr(model, "guessed", {}) or {}
    for k, v in info["config"].items():
        print(f"  {k:<18}: {v}" + ("   (guessed: not stated in the file)" if k in guessed
                                   else ""))
    meta = info.get("metadata", {})
    if args.verbose:
        for k, v in meta.items():
            print(f"  metadata {k}: {v}")
    elif meta:
        print(f"  metadata   : {len(meta)} field(s) ({', '.join(sorted(meta))}); --verbose "
              "prints them (e.g. the training lineage)")
    return 0


_COMMANDS = {"passkey": _cmd_passkey, "phonebook": _cmd_phonebook,
             "perplexity": _cmd_perplexity, "throughput": _cmd_throughput,
             "generate": _cmd_generate, "info": _cmd_info}


def _expected_errors() -> tuple[type[BaseException], ...]:
    # MemoryError: a run too large for this machine (one line, as for bad input)
    errs: list[type[BaseException]] = [CliError, ValueError, OSError, ImportError, MemoryError]
    try:
        from .errors import CheckpointError, CudaUnavailableError

        errs += [CheckpointError, CudaUnavailableError]
    except ImportError:  # pragma: no cover
        pass
    return tuple(errs)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``samba-ext`` console script. Returns the exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:   # named by the command's parser, whose --help lists its options
        parser._commands_of(args).error("unrecognized arguments: "
                                        + " ".join(shlex.quote(a) for a in extra))
    args._argv = list(argv) if argv is not None else None
    with Interrupts() as intr:
        args._interrupts = intr
        try:
            return _main(args, intr)
        finally:
            drop_held_notes()


def _main(args: argparse.Namespace, intr: Interrupts) -> int:
    from .threads import blas_info, get_num_threads, set_num_threads

    # the thread counts as found: put back on return, so that main() called in a Python
    # process (a notebook, a test) leaves its threads as they were
    saved = (get_num_threads(), blas_info()["threads"])
    try:
        threads = getattr(args, "threads", None)
        if threads is None and hasattr(args, "threads"):
            threads, why = auto_threads()
            if why:
                hold_note(why)     # printed once the command's arguments have passed
        if threads is not None:
            try:
                set_num_threads(threads)   # the C kernels (OpenMP)
            except ValueError as e:
                raise CliError(f"--threads: {str(e).removeprefix('n: ')}") from None
            set_blas_threads(threads)      # NumPy's BLAS (the model's GEMMs)
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt as e:
        print("\nsamba-ext: interrupted", file=sys.stderr)
        return 128 + int(getattr(e, "signum", intr.first or signal.SIGINT))
    except BrokenPipeError:  # e.g. `samba-ext generate ... | head`
        return 0
    except _expected_errors() as e:
        if os.environ.get("SAMBA_EXT_DEBUG"):
            raise
        msg = str(e) or type(e).__name__
        if isinstance(e, FileNotFoundError) and e.filename and str(e.filename) not in msg:
            msg = f"{msg}: {e.filename}"
        msg = option_names(msg, getattr(args, "_commands", {}).get(args.command))
        print(f"samba-ext: error: {msg}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        set_num_threads(saved[0])
        if saved[1] is not None:
            set_blas_threads(saved[1])


if __name__ == "__main__":
    sys.exit(main())
