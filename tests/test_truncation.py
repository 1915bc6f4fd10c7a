"""A checkpoint truncated by another process while it is being loaded (issue 16.8).

With the data memory-mapped, reading a page past the new end of the file raises SIGBUS and
kills the process. The readers must report a CheckpointError instead. The truncation is made
deterministic by hooks installed in a child process (a crash then fails the test instead of
killing pytest):

* ``numpy.memmap`` is wrapped to truncate the file right after any mapping is made (the
  failure mode of a memory-mapping reader);
* ``samba_ext.io.fileread.read_bytes`` (the readers' only way to fetch tensor bytes) is wrapped
  to truncate the file before its first read, i.e. after the header / zip directory / pickle
  were parsed and before any tensor byte is read.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "litgpt_tiny.pth"

CHILD = """
import os, sys
import numpy as np
path, loader = sys.argv[1], sys.argv[2]
size = os.path.getsize(path)
done = []

def truncate():
    if not done:
        done.append(1)
        os.truncate(path, 64)   # keeps the first bytes, loses every tensor

_memmap = np.memmap
class Memmap(_memmap):
    def __new__(cls, *a, **k):
        m = _memmap.__new__(cls, *a, **k)
        truncate()
        return m
np.memmap = Memmap
try:
    import samba_ext.io.fileread as fr
    _read = fr.read_bytes
    def read_bytes(*a, **k):
        truncate()
        return _read(*a, **k)
    fr.read_bytes = read_bytes
except ImportError:     # a reader without the module: only the memmap hook applies
    pass

from samba_ext.errors import CheckpointError
try:
    if loader == "safetensors":
        from samba_ext.safetensors_io import read_safetensors
        out = read_safetensors(path)[0]
    elif loader == "pth":
        from samba_ext.litgpt import read_torch_zip
        out = read_torch_zip(path)
    else:
        from samba_ext.model import Samba
        out = Samba.load(path)
    # reaching here, the data must have been read before the truncation
    print("LOADED", "truncated" if done else "untouched")
    if done:
        _ = [np.asarray(v).sum() for v in (out.values() if isinstance(out, dict) else [])]
except CheckpointError as e:
    print("CheckpointError:", e)
"""


def _run(path: Path, loader: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD), str(path), loader],
                          capture_output=True, text=True, timeout=300, env=env, cwd=str(ROOT))


def _safetensors(tmp_path: Path) -> Path:
    from samba_ext.model import Samba

    p = tmp_path / "m.safetensors"
    Samba("samba-test", seed=1).save(p)
    return p


@pytest.mark.parametrize("loader", ["safetensors", "pth", "model_safetensors", "model_pth"])
def test_truncated_during_load_is_an_error_not_sigbus(tmp_path, loader):
    if loader.endswith("pth"):
        path = tmp_path / "m.pth"
        shutil.copyfile(FIXTURE, path)
    else:
        path = _safetensors(tmp_path)
    r = _run(path, loader.replace("model_", "model:") if loader.startswith("model") else loader)
    assert r.returncode == 0, \
        f"the loader crashed (rc {r.returncode}; -7 = SIGBUS): {r.stdout}{r.stderr[-1500:]}"
    assert r.stdout.startswith("CheckpointError:"), r.stdout + r.stderr[-1500:]
    msg = r.stdout
    assert str(path) in msg and ("truncated" in msg or "changed" in msg), msg


def test_size_change_after_header_is_detected(tmp_path):
    """The file grows between the header parse and the data read (changed in place):
    the data would no longer be where the header says; refused, naming the file."""
    from samba_ext import safetensors_io as st
    from samba_ext.errors import CheckpointError

    path = _safetensors(tmp_path)
    orig = st._parse_header

    def grow(fh, fname):
        out = orig(fh, fname)
        with open(fname, "ab") as f:
            f.write(b"\0" * 64)
        return out

    st._parse_header = grow
    try:
        with pytest.raises(CheckpointError, match="changed size"):
            st.read_safetensors(path)
    finally:
        st._parse_header = orig


def test_file_replaced_after_header_is_read_whole(tmp_path):
    """Another process renames a different checkpoint of the same size over the path between
    the header parse and the data read (what an atomic save does): the reader still reads
    the file it opened, header and tensors alike, never the header of one and the tensors of
    the other."""
    from samba_ext import safetensors_io as st
    from samba_ext.model import Samba

    path = _safetensors(tmp_path)
    first = Samba("samba-test", seed=1).state_dict()
    other = tmp_path / "other.safetensors"
    Samba("samba-test", seed=2).save(other)
    assert os.path.getsize(other) == os.path.getsize(path)   # only the tensor bytes differ
    orig = st._parse_header

    def replace(fh, fname):
        out = orig(fh, fname)
        os.replace(other, fname)
        return out

    st._parse_header = replace
    try:
        sd, _ = st.read_safetensors(path)
    finally:
        st._parse_header = orig
    assert sorted(sd) == sorted(first)
    for k in first:
        assert sd[k].tobytes() == first[k].tobytes(), k
    now = st.read_safetensors(path)[0]                 # the path now names the other file
    assert any(now[k].tobytes() != first[k].tobytes() for k in first)
