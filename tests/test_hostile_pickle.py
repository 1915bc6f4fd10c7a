"""Hostile ``.pth`` pickles that attack the unpickler itself rather than name a global:

* nesting (issue 16.2): containers ~200K deep crash CPython when hashed (C stack overflow,
  SIGSEGV), e.g. a deeply nested tuple used as a dict key. Run in a child process, so that a
  crash fails the test instead of killing pytest.
* shared state (16.3): BUILD on the objects handed out for the allowed globals (storage types,
  rebuild functions) must not change what a later load in the same process returns.
* amplification (16.4): millions of 1-byte opcodes that each create an object (EMPTY_SET is
  216 bytes) must stay within 64 x the file size (tracemalloc peak).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))
import pth_builder as B  # noqa: E402

from samba_ext.errors import CheckpointError  # noqa: E402
from samba_ext.litgpt import read_torch_zip  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MEM_FACTOR, MEM_SLACK = 64, 1 << 20     # the bound of docs/reliability.md (fuzz oracle)
WTE = np.arange(12, dtype="<f4")


def _with_extra(extra_ops: bytes) -> bytes:
    """{"model": {"transformer.wte.weight": tensor}, <extra_ops: a key and a value>}."""
    p = B.Pickle().empty_dict().mark().str("model").empty_dict().mark()
    p.str("transformer.wte.weight").raw(B.tensor_ops("0", 12, (3, 4), (4, 1)))
    p.setitems().raw(extra_ops)
    return p.setitems().stop()


def _write(tmp_path: Path, pkl: bytes, name: str) -> Path:
    p = tmp_path / name
    p.write_bytes(B.torch_zip(pkl, {"0": WTE.tobytes()}))
    return p


def _child(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=str(ROOT))


# ------------------------------------------------------------------------------ nesting ---

N_DEEP = 200_000
DEEP_CASES = {
    # EMPTY_TUPLE then TUPLE1 200K times: a 200K-deep tuple, used as a dict key (hashed)
    "tuple_key": b")" + b"\x85" * N_DEEP + b"K\x01",
    # the same tuple as a value, then its frozenset (hashes it)
    "frozenset": b"X\x01\x00\x00\x00x(" + b")" + b"\x85" * N_DEEP + b"\x91",
    # 200K lists, each appended to the one below it: a 200K-deep list
    "list_value": b"X\x01\x00\x00\x00x" + b"]" * N_DEEP + b"a" * (N_DEEP - 1),
    # 200K dicts nested through SETITEM
    "dict_value": b"X\x01\x00\x00\x00x" + (b"}X\x01\x00\x00\x00k") * N_DEEP
                  + b"s" * (N_DEEP - 1),
}


@pytest.mark.parametrize("case", sorted(DEEP_CASES))
def test_deep_nesting_is_refused_not_a_crash(tmp_path, case):
    path = _write(tmp_path, _with_extra(DEEP_CASES[case]), f"deep_{case}.pth")
    r = _child(f"""
        from samba_ext.errors import CheckpointError
        from samba_ext.litgpt import read_torch_zip
        try:
            read_torch_zip({str(path)!r})
            print("LOADED")
        except CheckpointError as e:
            print("CheckpointError:", e)
        """)
    assert r.returncode == 0, \
        f"the child died (rc {r.returncode}, -11 = SIGSEGV): {r.stderr[-800:]}"
    assert "CheckpointError:" in r.stdout and str(path) in r.stdout, r.stdout + r.stderr[-800:]


def test_nesting_limit_is_exact(tmp_path):
    """A file 100 levels deep loads (the top-level dict and a 99-deep tuple), 101 levels are
    refused with a message saying why (fast, in process)."""
    from samba_ext.io.torch_pickle import MAX_DEPTH

    ok = _write(tmp_path, _with_extra(b"X\x01\x00\x00\x00x)" + b"\x85" * (MAX_DEPTH - 2)), "ok.pth")
    v = read_torch_zip(ok)["x"]
    depth = 0
    while isinstance(v, tuple):
        v, depth = (v[0] if v else None), depth + 1
    assert depth == MAX_DEPTH - 1
    bad = _write(tmp_path, _with_extra(b"X\x01\x00\x00\x00x)" + b"\x85" * (MAX_DEPTH - 1)),
                 "bad.pth")
    with pytest.raises(CheckpointError, match=r"bad\.pth: containers nested more than 100"):
        read_torch_zip(bad)


def test_cyclic_growth_is_refused(tmp_path):
    """A list placed inside another and then made deeper (only cyclic pickles do that):
    the recorded depth would go stale, so it is refused."""
    # outer = [inner]; then inner.append([[]]) through the memo
    ops = (b"X\x01\x00\x00\x00x" + b"]" + b"]q\x07" + b"a"        # outer=[inner], inner memo 7
           + b"h\x07" + b"]]a" + b"a" + b"0")                      # inner.append([[]]); pop
    with pytest.raises(CheckpointError, match="grows deeper after it was placed"):
        read_torch_zip(_write(tmp_path, _with_extra(ops), "cyc.pth"))


# --------------------------------------------------------------------- shared objects ---

def _legit(tmp_path: Path) -> Path:
    """A valid file with float32, bfloat16 and float16 tensors (each storage kind that a
    corrupted stand-in would misread)."""
    rng = np.random.default_rng(16_3)
    f32 = rng.standard_normal(12).astype("<f4")
    bf = (rng.standard_normal(6).astype("<f4").view("<u4") >> 16).astype("<u2")
    f16 = rng.standard_normal(6).astype("<f2")
    p = B.Pickle().empty_dict().mark().str("model").empty_dict().mark()
    p.str("transformer.wte.weight").tensor("0", 12, 0, (3, 4), (4, 1))
    p.str("b").tensor("1", 6, 0, (2, 3), (3, 1), kind="BFloat16Storage")
    p.str("h").tensor("2", 6, 0, (3, 2), (1, 3), kind="HalfStorage")
    path = tmp_path / "legit.pth"
    path.write_bytes(B.torch_zip(p.setitems().setitems().stop(),
                                 {"0": f32.tobytes(), "1": bf.tobytes(), "2": f16.tobytes()}))
    return path


def _build_on(module: str, name: str, state_ops: bytes) -> bytes:
    """A pickle that pushes the global module.name and BUILDs it with the given state."""
    return (b"\x80\x02" + b"c" + module.encode() + b"\n" + name.encode() + b"\n" + state_ops
            + b"b.")


def _state_dict(**kv: str) -> bytes:
    p = B.Pickle()
    p.b = bytearray()
    p.empty_dict().mark()
    for k, v in kv.items():
        p.str(k).str(v)
    return bytes(p.setitems().b)


def _slot_state(**kv: str) -> bytes:
    """(None, {k: v}): the slot-state form of BUILD, applied with setattr."""
    return b"N" + _state_dict(**kv) + b"\x86"


_SHARED_GLOBALS = [("torch", "FloatStorage"), ("torch", "HalfStorage"),
                   ("torch", "BFloat16Storage"), ("torch._utils", "_rebuild_tensor_v2"),
                   ("torch._utils", "_rebuild_parameter"), ("collections", "OrderedDict")]
_STATES = {
    "dict": _state_dict(name="BFloat16Storage", kind="BFloat16Storage", __doc__="x"),
    "slots": _slot_state(name="BFloat16Storage", __defaults__="x"),
    "setstate": _slot_state(dtype="x"),
}


@pytest.mark.parametrize("state", sorted(_STATES))
@pytest.mark.parametrize("glob", _SHARED_GLOBALS, ids=lambda g: ".".join(g))
def test_build_on_globals_cannot_corrupt_later_loads(tmp_path, glob, state):
    """Load a hostile file that BUILDs on an allowed global (refused or not), then a legitimate
    file: its tensors must be bit-identical to a load in a fresh process."""
    legit = _legit(tmp_path)
    ref = tmp_path / "ref.npz"
    r = _child(f"""
        import numpy as np
        from samba_ext.litgpt import read_torch_zip
        np.savez({str(ref)!r}, **read_torch_zip({str(legit)!r})["model"])
        """)
    assert r.returncode == 0, r.stderr[-1000:]
    hostile = tmp_path / "hostile.pth"
    hostile.write_bytes(B.torch_zip(_build_on(*glob, _STATES[state])))
    with pytest.raises(CheckpointError, match="BUILD"):
        read_torch_zip(hostile)
    got = read_torch_zip(legit)["model"]
    with np.load(ref) as want:
        assert sorted(got) == sorted(want.files)
        for k in want.files:
            assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
            assert got[k].tobytes() == want[k].tobytes(), f"{k} changed after the hostile load"


def test_stand_ins_are_fresh_and_read_only(tmp_path):
    """The objects the pickle gets are made per load and refuse attribute writes."""
    from samba_ext.io.torch_pickle import RestrictedUnpickler
    import io

    def mk():
        return RestrictedUnpickler(io.BytesIO(b"."), 1, lambda *a: None, lambda *a: None)

    a, b = mk(), mk()
    for key in (("torch", "FloatStorage"), ("torch._utils", "_rebuild_tensor_v2")):
        x, y = a.find_class(*key), b.find_class(*key)
        assert x is not y
        with pytest.raises(CheckpointError, match="read-only"):
            setattr(x, "name", "BFloat16Storage")


def test_mutating_opcodes_only_on_own_containers(tmp_path):
    """SETITEM / APPEND on a global stand-in (not a container this load made) is refused."""
    for ops in (b"ctorch\nFloatStorage\nX\x01\x00\x00\x00kK\x01s.",
                b"ctorch._utils\n_rebuild_tensor_v2\nK\x01a.",
                b"ccollections\nOrderedDict\n(K\x01K\x02u."):
        p = tmp_path / "m.pth"
        p.write_bytes(B.torch_zip(b"\x80\x02" + ops))
        with pytest.raises(CheckpointError, match="refused"):
            read_torch_zip(p)


# ---------------------------------------------------------------------- amplification ---

def _peak(fn, *args):
    import tracemalloc

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        try:
            out = fn(*args)
        except BaseException as e:  # noqa: BLE001 - returned to be asserted on
            out = e
        return out, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


N_OPS = 200_000
AMPLIFY = {
    "empty_set": b"\x8f" * N_OPS,                  # 216 bytes each
    "empty_dict": b"}" * N_OPS,                    # 64
    "empty_list": b"]" * N_OPS,                    # 56
    "mark": b"(" * N_OPS,                          # a new stack list each
    "memoize": b")" + b"\x94" * N_OPS,             # a memo entry each
    "dup": b")" + b"2" * N_OPS,                    # a stack slot each
    "list_of_sets": b"](" + b"\x8f" * N_OPS + b"e",  # kept alive inside a list
}


@pytest.mark.parametrize("case", sorted(AMPLIFY))
def test_opcode_amplification_bounded(tmp_path, case):
    path = tmp_path / f"amp_{case}.pth"
    path.write_bytes(B.torch_zip(b"\x80\x04" + AMPLIFY[case] + b"."))
    out, peak = _peak(read_torch_zip, str(path))
    assert not isinstance(out, BaseException) or isinstance(out, CheckpointError), repr(out)
    size = path.stat().st_size
    assert peak <= MEM_FACTOR * size + MEM_SLACK, \
        f"{case}: {peak / size:.0f} x the file size ({peak} bytes for {size})"


def test_object_budget_scales_with_the_pickle(tmp_path):
    """The counted bound: a legitimate file's pickle costs well under the budget (so the
    bound does not refuse real checkpoints), a hostile one is refused once over it."""
    from samba_ext.io import torch_pickle as T

    seen = []
    orig = T.RestrictedUnpickler.load

    def spy(self):
        try:
            return orig(self)
        finally:
            seen.append((self._charged, self._limit))

    T.RestrictedUnpickler.load = spy
    try:
        read_torch_zip(ROOT / "tests" / "fixtures" / "litgpt_tiny.pth")
        charged, limit = seen[-1]
        assert 0 < charged < limit / 2, (charged, limit)
        p = tmp_path / "sets.pth"
        p.write_bytes(B.torch_zip(b"\x80\x04" + b"\x8f" * 50_000 + b"."))
        with pytest.raises(CheckpointError, match="memory-amplification"):
            read_torch_zip(p)
        charged, limit = seen[-1]
        assert limit < charged <= limit + 4096
    finally:
        T.RestrictedUnpickler.load = orig
