"""Hostile checkpoints and paths: nothing in a downloaded file may run code, allocate more than
the file holds, hang, or take the process down; the CLI refuses odd paths with a clear error.

* .pth (zip + pickle): every way a pickle can name a callable (GLOBAL, STACK_GLOBAL, INST,
  nested inside a tensor's arguments) is refused before anything runs: a marker file that the
  payload would create stays absent, and a module named by the pickle is never imported.
* .pth amplification: a tiny file must not make the reader allocate gigabytes (a compressed
  data.pkl "zip bomb", one storage referenced many times, stride-0 broadcasting, a pickle
  opcode claiming an 8 GiB bytes object).
* safetensors: a header claiming a 1 TB tensor, offsets beyond the file, a header length of
  2**64-1 -- all refused without allocating (tracemalloc peak).
* CLI (``samba-ext``): --model nonexistent / directory / FIFO / dangling symlink / device,
  --out a file / dangling symlink / planted symlink: exit code 2 and one clear line, no hang,
  no traceback, nothing written through the link.

Memory bound used throughout: peak of traced allocations <= 64 x file size + 1 MiB (see
tests/fuzz/targets.py for why 64).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))
import pth_builder as B  # noqa: E402

from samba_ext.errors import CheckpointError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MEM_FACTOR, MEM_SLACK = 64, 1 << 20

litgpt = pytest.importorskip("samba_ext.litgpt")
st_io = pytest.importorskip("samba_ext.safetensors_io")


def peak_of(fn, *args, **kwargs):
    """(result or exception, peak traced bytes) of fn(*args)."""
    was = tracemalloc.is_tracing()
    if not was:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        out = fn(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001 - returned to the caller to assert on
        out = e
    peak = tracemalloc.get_traced_memory()[1] - base
    if not was:
        tracemalloc.stop()
    return out, peak


def assert_bounded(peak: int, path: Path) -> None:
    size = path.stat().st_size
    assert peak <= MEM_FACTOR * size + MEM_SLACK, \
        f"{path.name}: {peak / 2**20:.1f} MiB allocated for a {size}-byte file"


# ---------------------------------------------------------------------------- .pth: code ---

def _loaders():
    out = [pytest.param(litgpt.read_torch_zip, id="read_torch_zip"),
           pytest.param(litgpt.load_litgpt_state_dict, id="load_litgpt_state_dict")]
    try:
        from samba_ext.model import Samba
        out.append(pytest.param(Samba.load, id="Samba.load"))
    except ImportError:
        pass
    return out


LOADERS = _loaders()


def _wte_ops() -> bytes:
    return B.tensor_ops("0", 12, (3, 4), (4, 1))


def _pth(tmp_path: Path, entries: dict, name: str = "x.pth", **kw) -> Path:
    p = tmp_path / name
    p.write_bytes(B.torch_zip(B.state_dict_pickle(entries),
                              {"0": np.arange(12, dtype="<f4").tobytes()}, **kw))
    return p


def test_builder_control(tmp_path):
    """The hand-built file is valid (so the refusals below are about the payload only)."""
    sd = litgpt.read_torch_zip(_pth(tmp_path, {"transformer.wte.weight": _wte_ops()}))
    np.testing.assert_array_equal(sd["model"]["transformer.wte.weight"],
                                  np.arange(12, dtype=np.float32).reshape(3, 4))


def _payloads(marker: str):
    cmd = f"touch {marker}"
    py = f"open({marker!r}, 'w').write('pwned')"
    ops = {
        "os.system": B.call_ops("os", "system", cmd),
        "posix.system": B.call_ops("posix", "system", cmd),
        "builtins.eval": B.call_ops("builtins", "eval", py),
        "builtins.exec": B.call_ops("builtins", "exec", py),
        "__builtin__.eval": B.call_ops("__builtin__", "eval", py),
        "subprocess.getoutput": B.call_ops("subprocess", "getoutput", cmd),
        "builtins.open": B.call_ops("builtins", "open", marker, "w"),
        "io.open": B.call_ops("io", "open", marker, "w"),
        "pathlib.Path": B.call_ops("pathlib", "Path", marker),
    }
    p = B.Pickle()
    p.b = bytearray()
    p.stack_global("os", "system").mark().str(cmd).tuple().reduce()
    ops["STACK_GLOBAL os.system"] = bytes(p.b)
    # INST: protocol-0 "instantiate module.name(*args)"
    ops["INST os.system"] = b"(X" + len(cmd).to_bytes(4, "little") + cmd.encode() + b"ios\nsystem\n"
    # a hostile call hidden inside a tensor's arguments (the storage offset)
    p = B.Pickle()
    p.b = bytearray()
    p.global_("torch._utils", "_rebuild_tensor_v2").mark().storage("0", 12)
    p.raw(B.call_ops("os", "system", cmd)).raw(b"(K\x03K\x04t(K\x04K\x01t\x89")
    p.global_("collections", "OrderedDict").mark().tuple().reduce().tuple().reduce()
    ops["nested in tensor args"] = bytes(p.b)
    return ops


PAYLOAD_NAMES = list(_payloads("m"))


@pytest.mark.parametrize("payload", PAYLOAD_NAMES)
@pytest.mark.parametrize("loader", LOADERS)
def test_pickle_globals_refused_before_running(tmp_path, loader, payload):
    marker = tmp_path / "PWNED"
    entries = {"transformer.wte.weight": _wte_ops(), "evil": _payloads(str(marker))[payload]}
    path = _pth(tmp_path, entries)
    with pytest.raises(CheckpointError) as ei:
        loader(str(path))
    assert not marker.exists(), f"{payload}: the payload RAN (marker file created)"
    msg = str(ei.value)
    assert "x.pth" in msg, f"the error should name the file: {msg}"


def test_pickle_named_module_is_never_imported(tmp_path, monkeypatch):
    """find_class must refuse by name, before importing: importing is already running code."""
    marker = tmp_path / "IMPORTED"
    mod = tmp_path / "samba_hostile_canary.py"
    mod.write_text(f"open({str(marker)!r}, 'w').write('imported')\ndef f(*a):\n    return 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    entries = {"transformer.wte.weight": _wte_ops(),
               "evil": B.call_ops("samba_hostile_canary", "f", 1)}
    for loader in (litgpt.read_torch_zip, litgpt.load_litgpt_state_dict):
        with pytest.raises(CheckpointError, match="samba_hostile_canary"):
            loader(str(_pth(tmp_path, entries)))
    assert not marker.exists() and "samba_hostile_canary" not in sys.modules


def test_torch_storage_global_cannot_be_called(tmp_path):
    """Allowed names are stand-ins, not the real torch objects: calling one does nothing."""
    marker = tmp_path / "PWNED"
    entries = {"transformer.wte.weight": _wte_ops(),
               "x": B.call_ops("torch", "FloatStorage", f"touch {marker}")}
    with pytest.raises(CheckpointError):
        litgpt.read_torch_zip(str(_pth(tmp_path, entries)))
    assert not marker.exists()


def _legacy_hostile(tmp_path: Path, marker: Path) -> Path:
    """A non-zip (torch < 1.6 style) file: a bare pickle calling os.system."""
    p = tmp_path / "legacy.pth"
    p.write_bytes(B.Pickle().raw(B.call_ops("os", "system", f"touch {marker}")).stop())
    return p


def test_legacy_pickle_refused_without_torch(tmp_path, monkeypatch):
    marker = tmp_path / "PWNED"
    path = _legacy_hostile(tmp_path, marker)
    monkeypatch.setitem(sys.modules, "torch", None)   # as on a machine without torch
    with pytest.raises(CheckpointError):
        litgpt.load_litgpt_state_dict(str(path))
    assert not marker.exists()


def test_legacy_pickle_refused_with_torch(tmp_path):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "PWNED"
    path = _legacy_hostile(tmp_path, marker)
    with pytest.raises(CheckpointError):
        litgpt.load_litgpt_state_dict(str(path))
    assert not marker.exists(), f"torch {torch.__version__} weights_only ran the payload"


# ---------------------------------------------------------------------- .pth: amplification ---

def test_compressed_pickle_zip_bomb(tmp_path):
    """data.pkl deflated from 64 MiB (a valid pickle followed by padding) to ~64 KiB."""
    pk = B.state_dict_pickle({"transformer.wte.weight": _wte_ops()}) + b"\0" * (64 << 20)
    p = tmp_path / "bomb.pth"
    p.write_bytes(B.torch_zip(pk, {"0": np.arange(12, dtype="<f4").tobytes()},
                              pkl_compress=zipfile.ZIP_DEFLATED))
    assert p.stat().st_size < 200_000
    out, peak = peak_of(litgpt.read_torch_zip, str(p))
    assert not isinstance(out, BaseException) or isinstance(out, CheckpointError), repr(out)
    assert_bounded(peak, p)


def test_compressed_storage_refused(tmp_path):
    p = tmp_path / "zstore.pth"
    p.write_bytes(B.torch_zip(B.state_dict_pickle({"transformer.wte.weight": _wte_ops()}),
                              {"0": np.arange(12, dtype="<f4").tobytes()},
                              storage_compress=zipfile.ZIP_DEFLATED))
    with pytest.raises(CheckpointError, match="compressed"):
        litgpt.read_torch_zip(str(p))


def test_storage_referenced_many_times(tmp_path):
    """One 256 KiB storage referenced by 2,000 tensors through the pickle memo: ~30 bytes of
    pickle each, but 512 MiB if every reference is materialised as a copy."""
    numel = 1 << 16
    p = B.Pickle().empty_dict().mark().str("model").empty_dict().mark()
    p.str("transformer.wte.weight").tensor("0", numel, 0, (numel,), (1,), memo_put=1)
    for i in range(2000):
        p.str(f"t{i}").tensor("0", numel, 0, (numel,), (1,), memo_get=1)
    path = tmp_path / "memo.pth"
    path.write_bytes(B.torch_zip(p.setitems().setitems().stop(),
                                 {"0": np.zeros(numel, "<f4").tobytes()}))
    out, peak = peak_of(litgpt.read_torch_zip, str(path))
    assert not isinstance(out, BaseException) or isinstance(out, CheckpointError), repr(out)
    assert_bounded(peak, path)


def test_stride_zero_broadcast(tmp_path):
    """A 1-element storage viewed as 8192 x 8192 with strides (0, 0): 256 MiB from 4 bytes."""
    entries = {"transformer.wte.weight": B.tensor_ops("0", 1, (8192, 8192), (0, 0))}
    p = tmp_path / "bcast.pth"
    p.write_bytes(B.torch_zip(B.state_dict_pickle(entries), {"0": b"\0\0\0\0"}))
    out, peak = peak_of(litgpt.read_torch_zip, str(p))
    assert not isinstance(out, BaseException) or isinstance(out, CheckpointError), repr(out)
    assert_bounded(peak, p)


def test_pickle_claims_8gib_bytes(tmp_path):
    """BINBYTES8 with a length of 8 GiB and 3 bytes of data: CPython's unpickler allocates
    the claimed length before reading; the loader must check lengths first."""
    pk = b"\x80\x04\x8e" + (8 << 30).to_bytes(8, "little") + b"abc"
    p = tmp_path / "bytes8.pth"
    p.write_bytes(B.torch_zip(pk))
    out, peak = peak_of(litgpt.read_torch_zip, str(p))
    assert isinstance(out, CheckpointError), repr(out)
    assert_bounded(peak, p)


def test_pickle_memo_index_amplification(tmp_path):
    """LONG_BINPUT with index 2**25 (a 9-byte pickle): CPython's C unpickler grows its memo
    array to the index, i.e. 256 MiB here (12 GB with a larger index, found by the fuzzer:
    tests/fixtures/fuzz_corpus/pth/regressions/long_binput_memo_12gb.pth). The loader must not."""
    pk = b"\x80\x02}r" + (2**25).to_bytes(4, "little") + b"."
    p = tmp_path / "memo_index.pth"
    p.write_bytes(B.torch_zip(pk))
    out, peak = peak_of(litgpt.read_torch_zip, str(p))
    assert not isinstance(out, BaseException) or isinstance(out, CheckpointError), repr(out)
    assert_bounded(peak, p)


def test_storage_bounds_checked(tmp_path):
    """A view reaching past its storage, a negative stride, a storage size that disagrees
    with the zip entry: CheckpointError, never an out-of-bounds read."""
    cases = {
        "past-end": B.tensor_ops("0", 12, (4, 4), (4, 1)),
        "offset-past-end": B.tensor_ops("0", 12, (2,), (1,), offset=11),
        "negative-stride": B.tensor_ops("0", 12, (3, 4), (-4, 1)),
        "huge-stride": B.tensor_ops("0", 12, (2, 2), (2**62, 1)),
        "numel-mismatch": B.tensor_ops("0", 13, (3, 4), (4, 1)),
        "size-overflow": B.tensor_ops("0", 12, (2**40, 2**40), (1, 1)),
    }
    for name, ops in cases.items():
        p = _pth(tmp_path, {"transformer.wte.weight": ops}, name=f"{name}.pth")
        with pytest.raises(CheckpointError):
            litgpt.read_torch_zip(str(p))


# ------------------------------------------------------------------------------ safetensors ---

def _st(tmp_path: Path, header, body: bytes, name: str = "x.safetensors",
        n: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    p = tmp_path / name
    p.write_bytes((len(raw) if n is None else n).to_bytes(8, "little") + raw + body)
    return p


ST_HOSTILE = {
    "1TB-tensor": ({"w": {"dtype": "F32", "shape": [2**38], "data_offsets": [0, 2**40]}}, b"\0" * 16, None),
    "1TB-2d": ({"w": {"dtype": "F32", "shape": [2**19, 2**19], "data_offsets": [0, 2**40]}}, b"\0" * 16, None),
    "offsets-beyond-file": ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, None),
    "begin-beyond-file": ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [2**40, 2**40 + 4]}}, b"\0" * 4, None),
    "offsets-reversed": ({"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}}, b"\0" * 8, None),
    "negative-dim": ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, None),
    "int64-overflow": ({"w": {"dtype": "F32", "shape": [2**32, 2**32], "data_offsets": [0, 2**66]}}, b"", None),
    "zero-dim-huge-other": ({"w": {"dtype": "F32", "shape": [0, 2**64], "data_offsets": [0, 0]}}, b"", None),
    "rank-100": ({"w": {"dtype": "F32", "shape": [1] * 100, "data_offsets": [0, 4]}}, b"\0" * 4, None),
    "header-len-max": (b"{}", b"", 2**64 - 1),
    "header-len-past-file": (b"{}", b"", 99_000_000),
    "header-len-over-limit": (b"{}" + b" " * 6, b"", 100_000_001),
    "deep-json": (b"[" * 100_000 + b"]" * 100_000, b"", None),
    "aliasing": ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                  "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, None),
}


@pytest.mark.parametrize("case", list(ST_HOSTILE))
def test_safetensors_hostile_header(tmp_path, case):
    header, body, n = ST_HOSTILE[case]
    p = _st(tmp_path, header, body, n=n)
    out, peak = peak_of(st_io.read_safetensors, str(p))
    assert isinstance(out, CheckpointError), f"{case}: {out!r}"[:500]
    assert "x.safetensors" in str(out)
    assert_bounded(peak, p)


def _model_file(tmp_path: Path, cfg_overrides: dict) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))
    import make_corpus as MC

    cfg = dict(MC.TINY, **cfg_overrides)
    sd = MC.tiny_state_dict(MC.TINY, np.random.default_rng(0))
    p = tmp_path / "cfg.safetensors"
    p.write_bytes(MC.write_safetensors(sd, MC.model_meta(cfg), "F16"))
    return p


@pytest.mark.parametrize("override", [
    {"d_model": 2**20}, {"n_layer": 10**6}, {"vocab_size": 2**31}, {"intermediate_size": 2**30},
    {"d_state": 2**24}, {"n_head": 2**20, "head_dim": 2**20},
    {"expand": 10**6}, {"dt_rank": 2**30},
])
def test_model_config_claims_huge_sizes(tmp_path, override):
    """The config in the metadata claims a model far larger than the file's tensors: the load
    must fail on the mismatch (CheckpointError) before allocating for the claimed sizes."""
    model = pytest.importorskip("samba_ext.model")
    p = _model_file(tmp_path, override)
    out, peak = peak_of(model.Samba.load, str(p))
    assert isinstance(out, CheckpointError), repr(out)[:500]
    assert_bounded(peak, p)


def test_model_config_huge_window(tmp_path):
    """A window of 2**40 is a legal config value (it means "no limit in practice"); the
    decode state for it cannot be allocated: new_state must fail fast with MemoryError
    (numpy's clear "Unable to allocate ..."), never start filling memory."""
    model = pytest.importorskip("samba_ext.model")
    from samba_ext.memory import available_memory

    m = model.Samba.load(str(_model_file(tmp_path, {"window": 2**40})))
    with pytest.raises((MemoryError, ValueError)) as e:
        m.new_state(1)
    if available_memory() is not None:     # refused by the state's own check, with the sizes
        assert "new_state: 1 sequence(s) need about" in str(e.value), e.value


@pytest.mark.parametrize("override", [
    {"n_layer": "2"}, {"d_model": 16.0}, {"layer_types": ["mamba", "rm -rf"]},
    {"unknown_field": 1}, {"window": -1}, {"norm_eps": float("nan")}, {"d_conv": 9},
])
def test_model_config_malformed(tmp_path, override):
    model = pytest.importorskip("samba_ext.model")
    with pytest.raises(CheckpointError):
        model.Samba.load(str(_model_file(tmp_path, override)))


# ------------------------------------------------------------------------------ odd files ---

def test_fifo_does_not_hang(tmp_path):
    """A FIFO named like a checkpoint: the readers must refuse it (opening a FIFO for reading
    blocks until a writer appears). Run in a child process so a hang cannot stall the suite."""
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    pth = tmp_path / "model.pth"
    os.mkfifo(pth)
    code = ("import sys\nfrom samba_ext.errors import CheckpointError\n"
            "from samba_ext.safetensors_io import read_safetensors\n"
            "from samba_ext.litgpt import load_litgpt_state_dict\n"
            "for f, p in ((read_safetensors, sys.argv[1]), (load_litgpt_state_dict, sys.argv[2])):\n"
            "    try:\n        f(p)\n    except (CheckpointError, FileNotFoundError) as e:\n"
            "        print(type(e).__name__, e)\n")
    try:
        r = subprocess.run([sys.executable, "-c", code, str(fifo), str(pth)], cwd=ROOT,
                           capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("reading a FIFO named *.safetensors / *.pth hangs (no writer ever comes)")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("\n") == 2, r.stdout


def test_directory_and_device(tmp_path):
    d = tmp_path / "dir.safetensors"
    d.mkdir()
    with pytest.raises(CheckpointError):
        st_io.read_safetensors(str(d))
    for loader in (litgpt.read_torch_zip, litgpt.load_litgpt_state_dict):
        with pytest.raises((CheckpointError, FileNotFoundError, IsADirectoryError)):
            loader(str(d))


# ------------------------------------------------------------------------------------ CLI ---

def _cli(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               SAMBA_EXT_DEBUG="")
    env.pop("SAMBA_EXT_DEBUG")
    code = "import sys; from samba_ext.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


def _assert_clean_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, f"exit {r.returncode}\n{r.stdout[-1000:]}\n{r.stderr[-2000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "samba-ext: error:" in r.stderr, r.stderr[-2000:]
    for n in needles:
        assert n in r.stderr, f"{n!r} not in: {r.stderr[-2000:]}"


@pytest.fixture
def cli():
    pytest.importorskip("samba_ext.cli")
    pytest.importorskip("samba_ext.model")
    return _cli


def test_cli_model_missing_dir_dangling(cli, tmp_path):
    _assert_clean_error(cli(["info", "--model", "nope.safetensors"], tmp_path), "nope.safetensors")
    (tmp_path / "d.safetensors").mkdir()
    _assert_clean_error(cli(["info", "--model", "d.safetensors"], tmp_path), "directory")
    os.symlink(tmp_path / "gone.safetensors", tmp_path / "link.safetensors")
    _assert_clean_error(cli(["info", "--model", "link.safetensors"], tmp_path), "link.safetensors")


def test_cli_model_garbage_file(cli, tmp_path):
    (tmp_path / "g.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0not json at all!")
    _assert_clean_error(cli(["info", "--model", "g.safetensors"], tmp_path), "g.safetensors")
    (tmp_path / "g.pth").write_bytes(b"PK\x03\x04garbage")
    _assert_clean_error(cli(["info", "--model", "g.pth"], tmp_path), "g.pth")


def test_cli_model_fifo_and_device(cli, tmp_path):
    os.mkfifo(tmp_path / "f.safetensors")
    try:
        r = cli(["info", "--model", "f.safetensors"], tmp_path, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("samba-ext info --model <FIFO> hangs")
    _assert_clean_error(r, "f.safetensors")
    try:
        r = cli(["info", "--model", "/dev/zero"], tmp_path, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("samba-ext info --model /dev/zero hangs")
    _assert_clean_error(r, "/dev/zero")


def test_cli_model_through_symlink_works(cli, tmp_path):
    """Control: a symlink to a valid checkpoint is a normal way to name a file."""
    import make_corpus as MC

    sd = MC.tiny_state_dict(MC.TINY, np.random.default_rng(0))
    (tmp_path / "real.safetensors").write_bytes(MC.write_safetensors(sd, MC.model_meta(MC.TINY), "F32"))
    os.symlink(tmp_path / "real.safetensors", tmp_path / "alias.safetensors")
    r = cli(["info", "--model", "alias.safetensors"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]


def test_cli_out_is_file_or_dangling(cli, tmp_path):
    (tmp_path / "afile").write_text("keep")
    args = ["passkey", "--model", "random:samba-test", "--lengths", "256", "--depths", "0.5",
            "--trials", "1", "--no-plot", "--no-progress"]
    _assert_clean_error(cli(args + ["--out", "afile"], tmp_path), "afile")
    assert (tmp_path / "afile").read_text() == "keep"
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    _assert_clean_error(cli(args + ["--out", "dangling"], tmp_path), "dangling")
    assert not (tmp_path / "nowhere").exists()


def test_cli_out_does_not_write_through_planted_symlinks(cli, tmp_path):
    """Someone who can write to the output directory plants results.json / results.json.tmp as
    symlinks to a victim file: the run must not modify the victim."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(victim, out / "results.json")
    os.symlink(victim, out / "results.json.tmp")
    r = cli(["passkey", "--model", "random:samba-test", "--lengths", "256", "--depths", "0.5",
             "--trials", "1", "--no-plot", "--no-progress", "--out", str(out)], tmp_path,
            timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]      # the run wrote its results
    assert victim.read_text() == "precious", "the CLI wrote through a symlink it did not create"


# ------------------------------------------------------------- added with the fixes (fix) ---

def test_pickle_extension_opcodes_refused(tmp_path):
    """EXT1/EXT2/EXT4 name a global through copyreg's extension registry, not find_class:
    refused outright (nothing in a torch checkpoint uses them)."""
    import copyreg

    copyreg.add_extension("os", "system", 0x7A)   # as if some library had registered it
    try:
        entries = {"transformer.wte.weight": _wte_ops(),
                   "evil": b"\x82\x7a" + b"X\x04\x00\x00\x00true" + b"\x85R"}
        with pytest.raises(CheckpointError, match="extension|os.system"):
            litgpt.read_torch_zip(str(_pth(tmp_path, entries)))
    finally:
        copyreg.remove_extension("os", "system", 0x7A)


@pytest.mark.parametrize("version", ["2.5.1+cpu", "1.13.0", "garbage"])
def test_torch_load_fallback_needs_torch_2_6(tmp_path, monkeypatch, version):
    """torch.load(weights_only=True) could run code before torch 2.6 (CVE-2025-32434): the
    non-zip fallback (and use_torch=True) must refuse with an older torch, never call it."""
    import types

    calls = []
    fake = types.ModuleType("torch")
    fake.__version__ = version
    fake.load = lambda *a, **k: calls.append(a)
    monkeypatch.setitem(sys.modules, "torch", fake)
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(B.Pickle().raw(b"}").stop())
    with pytest.raises(CheckpointError, match="2.6"):
        litgpt.load_litgpt_state_dict(str(legacy))
    with pytest.raises(CheckpointError, match="2.6"):
        litgpt.load_litgpt_state_dict(str(_pth(tmp_path, {"transformer.wte.weight": _wte_ops()})),
                                      use_torch=True)
    assert calls == []
