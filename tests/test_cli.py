"""`samba-ext` command line: argument parsing, smoke runs of every subcommand with tiny
settings (via `python3 -m samba_ext.cli`, so no install is needed), bad input (exit code 2, one
clear line, no traceback) and Ctrl-C (exit 130, partial results written)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import samba_ext
from samba_ext.cli import CliError, parse_count, parse_depths, parse_lengths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(samba_ext.__file__)))
TINY = ["--model", "random:samba-test", "--no-progress"]


def run(*args: str, cwd: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "samba_ext.cli", *args], cwd=cwd or ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def assert_bad_input(p: subprocess.CompletedProcess, *needles: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout, p.stderr
    assert "samba-ext: error:" in p.stderr, p.stderr
    for n in needles:
        assert n.lower() in p.stderr.lower(), (n, p.stderr)


# ------------------------------------------------------------------------- parsing ---
def test_parse_lengths_and_counts():
    assert parse_lengths("1K,4k, 1M,4096") == [1024, 4096, 1 << 20, 4096]
    assert parse_count("1.5K") == 1536
    for bad in ("4X", "", "-1", "0", "1.3"):
        with pytest.raises(CliError):
            parse_lengths(bad) if bad == "" else parse_count(bad)
    for bad in ("1K,,2K", "1K,", ",1K", " , "):   # an empty item is named, never skipped
        with pytest.raises(CliError, match="--lengths: item [0-9] of .* is empty"):
            parse_lengths(bad)
    with pytest.raises(CliError, match="--depths: item 2 .* is empty"):
        parse_depths("0,,1")


def test_parse_depths():
    assert parse_depths("0:1:0.1") == [round(i / 10, 10) for i in range(11)]
    assert parse_depths("0,0.5,1") == [0.0, 0.5, 1.0]
    assert parse_depths("0:1:0.25") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_depths("Random") == "random"
    for bad in ("1.5", "-0.1,0.5", "0:1:0", "a,b", "0:1", "nan"):
        with pytest.raises(CliError):
            parse_depths(bad)


# ------------------------------------------------------------------------- smoke ---
def test_passkey_smoke(tmp_path):
    out = tmp_path / "pk"
    p = run("passkey", *TINY, "--lengths", "300,400", "--depths", "0,1", "--trials", "1",
            "--seed", "3", "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert "passkey accuracy" in p.stdout and "overall accuracy" in p.stdout
    assert "RANDOM" in p.stdout                       # random weights are said plainly
    d = json.loads((out / "results.json").read_text())
    assert d["eval"] == "passkey" and d["partial"] is False and d["seed"] == 3
    assert len(d["cells"]) == 4 and isinstance(d["overall_accuracy"], float)
    assert d["command"].startswith("samba-ext passkey")
    assert d["model"]["random_weights"] is True and d["model"]["hash"].startswith("sha256:")
    assert d["machine"]["version"] == samba_ext.__version__
    assert d["params"]["lengths"] == [300, 400] and d["params"]["depths"] == [0.0, 1.0]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "skipped the PNG" in p.stdout
    else:
        assert (out / "passkey.png").stat().st_size > 1000


def test_default_model(tmp_path):
    """No --model: the bundled samba-tiny, or random weights said plainly in output + JSON."""
    out = tmp_path / "d"
    p = run("passkey", "--lengths", "300", "--depths", "0.5", "--trials", "1", "--no-progress",
            "--no-plot", "--out", str(out))
    assert p.returncode == 0, p.stderr
    d = json.loads((out / "results.json").read_text())
    bundled = os.path.join(ROOT, "samba_ext", "data", "samba-tiny.safetensors")
    if os.path.isfile(bundled):
        assert d["model"]["random_weights"] is False and d["model"]["hash_of"] == "file"
        assert d["model"]["name"] == "samba-tiny"
    else:
        assert d["model"]["random_weights"] is True
        assert "RANDOM-WEIGHT" in p.stdout and "RANDOM-WEIGHT" in p.stderr
        assert any("RANDOM-WEIGHT" in n for n in d["notes"])


def test_phonebook_perplexity_throughput_smoke(tmp_path):
    p = run("phonebook", *TINY, "--entries", "5,8", "--trials", "1", "--out",
            str(tmp_path / "pb"))
    assert p.returncode == 0, p.stderr
    d = json.loads((tmp_path / "pb" / "results.json").read_text())
    assert d["eval"] == "phonebook" and len(d["cells"]) == 2 and "overall_accuracy" in d

    f = tmp_path / "doc.txt"
    f.write_text("print('hello world')\n" * 40)
    p = run("perplexity", *TINY, "--file", str(f), "--mode", "sliding", "--lengths", "256",
            "--stride", "128", "--out", str(tmp_path / "pp"))
    assert p.returncode == 0, p.stderr
    d = json.loads((tmp_path / "pp" / "results.json").read_text())
    assert d["cells"][0]["kind"] == "window" and d["cells"][0]["window"] == 256
    p = run("perplexity", *TINY, "--tokens", "2K", "--no-plot", "--out", str(tmp_path / "ps"))
    assert p.returncode == 0, p.stderr
    d = json.loads((tmp_path / "ps" / "results.json").read_text())
    assert d["params"]["data"]["source"] == "python-stdlib" and d["summary"]["tokens"] == 2047

    p = run("throughput", "--configs", "samba-test,samba-test:llama", "--lengths", "128,256",
            "--total-tokens", "512", "--gen-lengths", "4", "--batch-size", "2", "--no-progress",
            "--out", str(tmp_path / "tp"))
    assert p.returncode == 0, p.stderr
    d = json.loads((tmp_path / "tp" / "results.json").read_text())
    kinds = {(c["config"], c["kind"]) for c in d["cells"]}
    assert kinds == {(n, k) for n in ("samba-test", "samba-test:llama")
                     for k in ("prefill", "decode")}
    assert d["params"]["models"]["samba-test:llama"]["layer_types"] == ["attn"] * 4
    assert "prefill tokens/s" in p.stdout


def test_generate_and_info():
    p = run("generate", "The pass key is", "--max-new-tokens", "5", *TINY)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("The pass key is")
    p = run("info", *TINY)
    assert p.returncode == 0, p.stderr
    assert "parameters" in p.stdout and "RANDOM WEIGHTS" in p.stdout and "samba_ext" in p.stdout


# ------------------------------------------------------------------------- bad input ---
def test_bad_model_inputs(tmp_path):
    assert_bad_input(run("passkey", "--model", "no-such-model", "--no-progress"),
                     "no-such-model")
    assert_bad_input(run("passkey", "--model", str(tmp_path / "x.safetensors")),
                     "does not exist")
    link = tmp_path / "link.safetensors"
    os.symlink(tmp_path / "gone.safetensors", link)
    assert_bad_input(run("info", "--model", str(link)), "broken symbolic link")
    d = tmp_path / "dir.safetensors"
    d.mkdir()
    assert_bad_input(run("info", "--model", str(d)), "directory")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01not a safetensors file at all")
    assert_bad_input(run("info", "--model", str(junk)))
    assert_bad_input(run("info", "--model", "random:nope"), "unknown preset")


def test_bad_eval_inputs(tmp_path):
    assert_bad_input(run("passkey", *TINY, "--lengths", "100"),
                     "--lengths: 100 is smaller than the passkey template")
    assert_bad_input(run("passkey", *TINY, "--lengths", "4X"), "4X")
    assert_bad_input(run("passkey", *TINY, "--depths", "0,1.5"), "outside [0, 1]")
    assert_bad_input(run("passkey", *TINY, "--trials", "0"), "trials")
    f = tmp_path / "afile"
    f.write_text("x")
    assert_bad_input(run("passkey", *TINY, "--lengths", "300", "--out", str(f)),
                     "not a directory")
    assert_bad_input(run("perplexity", *TINY, "--file", str(tmp_path / "nope.txt")),
                     "--file: ", "does not exist")
    assert_bad_input(run("perplexity", *TINY, "--file", str(tmp_path)), "--file: ", "directory")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\xfa")
    assert_bad_input(run("perplexity", *TINY, "--file", str(bad), "--out", str(tmp_path / "o")),
                     "UTF-8")
    assert_bad_input(run("throughput", "--configs", "samba-nope"), "unknown config")
    assert_bad_input(run("throughput", "--configs", "samba-test,,samba-test:llama"),
                     "--configs: item 2 of", "is empty")
    p = run("frobnicate")
    assert p.returncode == 2 and "Traceback" not in p.stderr


def test_device_cuda_without_cuda(tmp_path):
    if samba_ext.cuda_available():
        pytest.skip("a CUDA device is available here")
    try:
        from samba_ext import _cuda
    except ImportError:
        pass
    else:
        if not os.path.abspath(_cuda.__file__).startswith(ROOT + os.sep):
            pytest.skip(f"samba_ext._cuda resolves to another install ({_cuda.__file__})")
    p = run("info", "--model", "random:samba-test", "--device", "cuda")
    assert_bad_input(p, "cuda")


# ------------------------------------------------------------------------- Ctrl-C ---
def _start_passkey(out, *extra):
    """A run with a quick first cell (300 tokens) and a long second one (1M tokens), with
    one "cell done" line on stdout per finished cell (stdout is a pipe)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "samba_ext.cli", "passkey", "--model",
                             "random:samba-test", "--lengths", "300,1M", "--depths", "0",
                             "--trials", "1", "--no-plot", "--no-progress", "--out", str(out),
                             *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_cell(proc) -> list[str]:
    """stdout lines up to the first "cell done" marker (blocking reads: no clock)."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("cell done:"):
            return lines
    raise AssertionError(f"no 'cell done' line; stderr: {proc.stderr.read()}")


def test_every_finished_cell_is_reported(tmp_path):
    """With stdout a pipe, each finished unit prints one "cell done" line, the last one too
    (it was printed only when the next unit started, so the last never was)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-m", "samba_ext.cli", "phonebook", "--model",
                        "random:samba-test", "--entries", "4,5", "--trials", "1", "--threads",
                        "1", "--no-plot", "--no-progress", "--out", str(tmp_path / "pb")],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    done = [ln for ln in p.stdout.splitlines() if ln.startswith("cell done:")]
    assert done == ["cell done: phonebook 4 entries", "cell done: phonebook 5 entries"], p.stdout


SIGNAL_CASES = [("SIGINT",), ("SIGINT", "SIGINT"), ("SIGTERM",), ("SIGHUP",),
                ("SIGTERM", "SIGHUP"), ("SIGINT", "SIGTERM"), ("SIGQUIT",), ("SIGUSR1",),
                ("SIGXCPU",)]


@pytest.mark.parametrize("sigs", [c for c in SIGNAL_CASES if all(hasattr(signal, n) for n in c)],
                         ids=lambda c: "+".join(c))
def test_signals_keep_finished_cells(tmp_path, sigs):
    """issue 16.9: SIGTERM / SIGHUP lost every finished cell, and a second Ctrl-C right after
    the first (here: back-to-back, no delay) interrupted the saving. Every catchable signal
    now saves the finished cells atomically, once; exit code 128 + the signal handled first."""
    out = tmp_path / "int"
    proc = _start_passkey(out)
    try:
        head = _wait_for_cell(proc)          # the 300-token cell is finished and reported
        assert "300" in head[-1], head
        for name in sigs:                    # back to back
            proc.send_signal(getattr(signal, name))
        stdout, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    # signals pending together are handled in signal-number order: any of them may be first
    assert proc.returncode in {128 + getattr(signal, n) for n in sigs}, \
        (proc.returncode, stdout, err)
    assert "Traceback" not in err, err
    d = json.loads((out / "results.json").read_text())
    assert d["partial"] is True
    assert (300, 1) in [(c["length"], c["n"]) for c in d["cells"]]
    assert "PARTIAL" in stdout
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------- bundled names vs paths ---
@pytest.mark.parametrize("kind", ["file", "folder"])
def test_bundled_name_is_not_shadowed_by_the_cwd(tmp_path, monkeypatch, kind):
    """issue 16.5: a ./samba-tiny file or folder in the current directory was loaded instead
    of the bundled model by Samba.load("samba-tiny") and by a plain `samba-ext` command."""
    from samba_ext import Samba
    from samba_ext.data import available_models, bundled_path
    from samba_ext.eval._common import load_model, model_info

    if "samba-tiny" not in available_models():
        pytest.skip("the bundled samba-tiny is not installed")
    planted = tmp_path / "samba-tiny"
    if kind == "file":
        Samba(samba_ext.SambaConfig.preset("samba-test"), seed=5).save(planted)  # a valid model
    else:
        planted.mkdir()
        (planted / "model.safetensors").write_bytes(b"junk")
    monkeypatch.chdir(tmp_path)
    m = Samba.load("samba-tiny")
    bundled = Samba.load(bundled_path("samba-tiny"))
    assert m.config == bundled.config
    np.testing.assert_array_equal(m.state_dict()["transformer.wte.weight"],
                                  bundled.state_dict()["transformer.wte.weight"])
    assert model_info(load_model("samba-tiny"))["source"] == \
        "samba_ext/data/samba-tiny.safetensors"
    p = run("info", cwd=str(tmp_path))                    # the CLI default
    assert p.returncode == 0, p.stderr
    assert "samba_ext/data/samba-tiny.safetensors" in p.stdout, p.stdout
    # the local one, given as a path, is what gets read: the suffix-less file is recognised by
    # its content (a safetensors file of samba-test), the junk folder is refused
    p = run("info", "--model", "./samba-tiny", cwd=str(tmp_path))
    assert "samba_ext/data/samba-tiny.safetensors" not in p.stdout, p.stdout
    if kind == "file":
        assert p.returncode == 0, p.stderr
        assert "model samba-test" in p.stdout and str(planted) in p.stdout, p.stdout
    else:
        assert p.returncode == 2 and "samba-tiny" in p.stderr, p.stderr


# ------------------------------------------------------------------ model description ---
def _pth_like(tmp_path, window=16):
    """A samba-test model saved as a plain safetensors file without our metadata (lit_gpt keys
    only, as a converted lit_gpt checkpoint would be): the window cannot be read from it."""
    from samba_ext import Samba
    from samba_ext.safetensors_io import write_safetensors

    m = Samba(samba_ext.SambaConfig.preset("samba-test", window=window), seed=2)
    path = tmp_path / "bare.safetensors"
    write_safetensors(path, m.state_dict(), None)
    return m, path


def test_guessed_config_fields_warn_and_options_set_them(tmp_path):
    """issue 19.3: a file without metadata silently got window 2048; the head split could
    only be passed from Python. Now every guessed field is named in a warning, and
    --window / --n-head / --n-kv-head / --config set them on every command."""
    _, path = _pth_like(tmp_path)
    p = run("info", "--model", str(path))
    assert p.returncode == 0, p.stderr
    assert "guessed" in p.stderr and "window=2048" in p.stderr, p.stderr
    assert "window" in p.stdout and "(guessed" in p.stdout
    p = run("info", "--model", str(path), "--window", "16", "--n-head", "4", "--n-kv-head", "2")
    assert p.returncode == 0, p.stderr
    assert "window=" not in p.stderr and "n_head=" not in p.stderr, p.stderr
    assert any(ln.split(":")[0].strip() == "window" and ln.split(":")[1].split()[0] == "16"
               for ln in p.stdout.splitlines()), p.stdout
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"window": 16, "n_head": 4, "n_kv_head": 2, "rope_base": 10000.0,
                               "norm_eps": 1e-5, "tokenizer": "byte"}))
    p = run("info", "--model", str(path), "--config", str(cfg))
    assert p.returncode == 0 and "guessed" not in p.stderr, p.stderr
    for cmd in (["passkey", "--lengths", "300", "--depths", "0", "--trials", "1", "--no-plot",
                 "--out", str(tmp_path / "pk")],
                ["phonebook", "--entries", "5", "--trials", "1", "--no-plot",
                 "--out", str(tmp_path / "pb")],
                ["perplexity", "--tokens", "300", "--no-plot", "--out", str(tmp_path / "pp")],
                ["generate", "hi", "--max-new-tokens", "2"]):
        p = run(*cmd, "--model", str(path), "--config", str(cfg), "--no-progress")
        assert p.returncode == 0, (cmd, p.stderr)
        assert "guessed" not in p.stderr, (cmd, p.stderr)
    d = json.loads((tmp_path / "pk" / "results.json").read_text())
    assert d["model"]["config"]["window"] == 16
    p = run("throughput", "--configs", "samba-test", "--lengths", "64", "--total-tokens", "64",
            "--gen-lengths", "2", "--repeats", "1", "--window", "8", "--no-progress",
            "--no-plot", "--out", str(tmp_path / "tp"))
    assert p.returncode == 0, p.stderr
    d = json.loads((tmp_path / "tp" / "results.json").read_text())
    assert d["params"]["models"]["samba-test"]["window"] == 8


def test_model_option_errors(tmp_path):
    _, path = _pth_like(tmp_path)
    bad = tmp_path / "bad.json"
    for text, needle in (("[1]", "JSON object"), ("{", "not valid JSON"),
                         ('{"windw": 3}', "unknown field"), ("[" * 100000, "config")):
        bad.write_text(text)
        assert_bad_input(run("info", "--model", str(path), "--config", str(bad)), needle)
    assert_bad_input(run("info", "--model", str(path), "--window", "0"), "window")
    assert_bad_input(run("info", "--model", str(path), "--n-head", "3"), "n_head")
    assert_bad_input(run("info", "--model", str(path), "--config", str(tmp_path)), "config")
    # Ray workers load the model by path: they would silently drop the description
    assert_bad_input(run("passkey", "--model", str(path), "--window", "16", "--ray", "--lengths",
                         "300", "--no-plot", "--out", str(tmp_path / "r")), "--ray")


def test_errors_name_the_option_as_typed(tmp_path):
    """A check inside the Python API names its argument (entries, key_digits); the command
    line names the option the user typed instead."""
    p = run("phonebook", *TINY, "--entries", "2", "--no-plot", "--out", str(tmp_path / "pb"))
    assert_bad_input(p, "--entries: expected values >= 3")
    p = run("passkey", *TINY, "--key-digits", "40", "--no-plot", "--out", str(tmp_path / "pk"))
    assert_bad_input(p, "--key-digits: expected 1..18")


# ------------------------------------------------------------------- small ones (19.8) ---
def test_small_cli_fixes(tmp_path):
    assert_bad_input(run("generate", "hi", *TINY, "--top-p", "2"), "top-p")
    assert_bad_input(run("generate", "hi", *TINY, "--top-p", "0"), "top-p")
    p = run("phonebook", *TINY, "--entries", "0", "--out", str(tmp_path / "pb"))
    assert_bad_input(p, "--entries")
    assert "tokens" not in p.stderr.split("error:")[1], p.stderr
    # info: the training lineage (free-form metadata) only with --verbose
    from samba_ext.data import available_models

    if "samba-tiny" in available_models():
        quiet, verbose = run("info"), run("info", "--verbose")
        assert quiet.returncode == verbose.returncode == 0
        assert "metadata " not in quiet.stdout.replace("metadata   :", "")
        assert len(verbose.stdout) > len(quiet.stdout) and "--verbose" in quiet.stdout


def test_out_refuses_another_evals_results(tmp_path):
    """issue 19.5: `passkey --out X` then `phonebook --out X` overwrote passkey's results."""
    out = tmp_path / "X"
    p = run("passkey", *TINY, "--lengths", "300", "--depths", "0", "--trials", "1",
            "--no-plot", "--out", str(out))
    assert p.returncode == 0, p.stderr
    before = (out / "results.json").read_bytes()
    p = run("phonebook", *TINY, "--entries", "5", "--trials", "1", "--no-plot",
            "--out", str(out))
    assert_bad_input(p, "passkey results")
    assert (out / "results.json").read_bytes() == before
    p = run("passkey", *TINY, "--lengths", "300", "--depths", "1", "--trials", "1",
            "--no-plot", "--out", str(out))          # the same evaluation again: fine
    assert p.returncode == 0, p.stderr
    (tmp_path / "Y").mkdir()
    (tmp_path / "Y" / "results.json").write_text("my notes")
    assert_bad_input(run("passkey", *TINY, "--lengths", "300", "--depths", "0", "--trials",
                         "1", "--no-plot", "--out", str(tmp_path / "Y")), "not a samba-ext")
    assert (tmp_path / "Y" / "results.json").read_text() == "my notes"


def test_busy_machine_note_only_for_commands_that_run(tmp_path, monkeypatch, capsys):
    """The busy-machine thread note is held until the command's arguments have passed: a
    command that fails on its arguments prints only its error line, one that runs says how
    many threads it uses."""
    from samba_ext import cli

    note = "note: this machine is busy (load 9.0 on 2 cores), so this run uses 1 thread"
    monkeypatch.setattr(cli, "auto_threads", lambda: (1, note))
    monkeypatch.setattr(cli, "set_blas_threads", lambda n: True)
    threads = samba_ext.get_num_threads()
    try:
        rc = cli.main(["passkey", *TINY, "--lengths", "foo", "--out", str(tmp_path / "a")])
        err = capsys.readouterr().err
        assert rc == 2 and "--lengths" in err and note not in err
        # a value the evaluation itself rejects (phonebook books need >= 3 entries)
        rc = cli.main(["phonebook", *TINY, "--entries", "2", "--out", str(tmp_path / "p")])
        err = capsys.readouterr().err
        assert rc == 2 and "--entries" in err and note not in err
        rc = cli.main(["passkey", *TINY, "--lengths", "300", "--depths", "0", "--trials", "1",
                       "--no-progress", "--out", str(tmp_path / "b")])
        err = capsys.readouterr().err
        assert rc == 0 and err.count(note) == 1
    finally:
        samba_ext.set_num_threads(threads)


@pytest.mark.parametrize("busy", [False, True])
def test_main_puts_the_threads_back(tmp_path, monkeypatch, busy):
    """cli.main called in a Python process (a notebook, a test) leaves the kernels' and
    BLAS's thread counts as it found them: after --threads 1, after the busy-machine choice of
    1 thread, and after a command that fails on its arguments. (The CPU model's GEMM results
    move in the last bits with the BLAS thread count, so a later in-process run would
    otherwise differ from a fresh process's.)"""
    from samba_ext import cli, threads

    if busy:
        monkeypatch.setattr(cli, "auto_threads", lambda: (1, "note: busy"))
    before = (threads.get_num_threads(), threads.blas_info()["threads"])
    argv = ["passkey", *TINY, "--lengths", "300", "--depths", "0", "--trials", "1"]
    for extra in ([] if busy else ["--threads", "1"], ["--lengths", "foo"]):
        cli.main([*argv, *extra, "--out", str(tmp_path / "o")])
        assert (threads.get_num_threads(), threads.blas_info()["threads"]) == before


@pytest.mark.parametrize("argv,option", [(["passkey", "--trials", "0"], "--trials"),
                                         (["passkey", "--grid", "foo"], "--grid"),
                                         (["passkey", "--bogus"], "--bogus"),
                                         (["generate", "hi", "--stop", ""], "--stop ''"),
                                         (["phonebook", "--entries"], "--entries")])
def test_option_errors_are_one_line(argv, option, capsys):
    """argparse's own errors (bad type, bad choice, unknown option) print one line naming
    the option and the command's --help, not the whole usage block; exit code 2."""
    from samba_ext import cli

    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.count("\n") == 1 and err.startswith("samba-ext: error:") and option in err, err
    assert f"'samba-ext {argv[0]} --help'" in err


@pytest.mark.parametrize("cmd", [["passkey", "--lengths", "300"], ["phonebook"],
                                 ["throughput", "--configs", "samba-test", "--lengths", "300"],
                                 ["generate", "--temperature", "1", "hi"]])
def test_negative_seed_names_the_option(cmd, tmp_path, capsys):
    """A seed < 0 was numpy's "expected non-negative integer" (no option named); every seed
    is now checked by samba_ext.sampling.check_seed before any work or output."""
    from samba_ext import cli

    out = [] if cmd[0] == "generate" else ["--out", str(tmp_path / "o")]
    model = [] if cmd[0] == "throughput" else ["--model", "random:samba-test"]
    rc = cli.main([cmd[0], *model, *cmd[1:], "--seed", "-1", *out])
    cap = capsys.readouterr()
    assert rc == 2 and "--seed: expected an int >= 0" in cap.err and cap.out == "", cap


def test_out_of_range_counts_and_memory_errors_are_one_line(monkeypatch, capsys):
    """Counts past 1T, a thread count past the C limit (an OverflowError traceback before) and
    a MemoryError (e.g. a prefill that needs more than the machine has) end in one line."""
    from samba_ext import cli

    for argv, what in ((["passkey", *TINY, "--lengths", "99999999999999999999K"], "--lengths"),
                       (["passkey", *TINY, "--threads", "5000"], "--threads")):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"error: {what}: " in err, err

    def too_big(args):
        raise MemoryError("prefill: needs about 617.9 GiB")

    monkeypatch.setitem(cli._COMMANDS, "info", too_big)
    assert cli.main(["info"]) == 2
    assert capsys.readouterr().err == "samba-ext: error: prefill: needs about 617.9 GiB\n"
