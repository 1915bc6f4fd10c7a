"""A checkpoint folder loaded while another save writes into it (docs/checkpoints.md,
"Saving into a folder that is being read").

A folder save replaces config.json, the weight files and the index one by one, so a reader can
meet files of two saves. Each save marks its files with one save id, and the reader refuses a
folder whose files name different saves. A load must give exactly one save's model (config and
every weight) or raise CheckpointError naming the file from the other save; never a mix.

* ``test_save_between_any_two_reads``: deterministic. The reader's file reads are hooked, and a
  complete save of the other model runs right after the k-th read, for every k and for each
  pair of layouts (single file / sharded).
* ``test_concurrent_saver_and_loader``: two processes, one saving A and B alternately (single
  and sharded layouts) a fixed number of times, one loading until the saver is done (at most a
  fixed number of loads). No sleeps and no clock: the loads start on the saver's "ready" event
  (set just before its first save) and end on its "done" event.
"""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest

from samba_ext.config import SambaConfig
from samba_ext.errors import CheckpointError
from samba_ext.io import hf_folder as H
from samba_ext.io.load import load_checkpoint
from samba_ext.model import Samba

SHARD = 30_000            # bytes: samba-test splits into ~28 shards


def _pair() -> tuple[Samba, Samba]:
    """Two models of the same shapes whose configs also differ in a field no shape shows (so
    config.json of one with the weights of the other would load without a shape error)."""
    cfg = SambaConfig.preset("samba-test")
    return (Samba(cfg, seed=21),
            Samba(dataclasses.replace(cfg, rope_base=5000.0, norm_eps=1e-6), seed=22))


def _which(result, models) -> int:
    """Index of the model ``result`` (load_checkpoint's tuple) is exactly; AssertionError for a
    mix."""
    cfg, sd, _ = result
    for i, m in enumerate(models):
        want = m.state_dict()
        if cfg == m.config and sorted(sd) == sorted(want) and all(
                sd[k].tobytes() == want[k].tobytes() for k in want):
            return i
    same_cfg = [cfg == m.config for m in models]
    from_a = sum(sd[k].tobytes() == models[0].state_dict()[k].tobytes() for k in sd)
    raise AssertionError(f"the load mixes two saves: config matches {same_cfg}, "
                         f"{from_a} of {len(sd)} tensors are A's")


def _save(m: Samba, d: Path, sharded: bool) -> None:
    H.save_pretrained(m, d, max_shard_bytes=SHARD if sharded else None)


class _Hook:
    """Wraps the folder reader's file reads (config.json / index JSON, weight files) and runs
    ``action`` once, right after the ``at``-th read returns."""

    def __init__(self, monkeypatch, at: int, action):
        self.n, self.at, self.action = 0, at, action
        for name in ("_read_json", "read_safetensors_checked"):
            real = getattr(H, name)
            monkeypatch.setattr(H, name, self._wrap(real))

    def _wrap(self, real):
        def read(*a, **k):
            out = real(*a, **k)
            self.n += 1
            if self.n == self.at:
                self.action()
            return out
        return read


LAYOUTS = [(False, False), (False, True), (True, False), (True, True)]


@pytest.mark.parametrize("a_sharded,b_sharded", LAYOUTS,
                         ids=[f"{'sharded' if a else 'single'}-then-"
                              f"{'sharded' if b else 'single'}" for a, b in LAYOUTS])
def test_save_between_any_two_reads(tmp_path, monkeypatch, a_sharded, b_sharded):
    """After the k-th file read of a load of A, B is saved into the folder: unless k is the
    last read, the load raises CheckpointError naming a file of the folder; after the last
    read it returns A, exactly."""
    A, B = _pair()
    d = tmp_path / "m"
    _save(A, d, a_sharded)
    counter = _Hook(monkeypatch, 0, lambda: None)
    assert _which(load_checkpoint(d), (A, B)) == 0
    reads = counter.n
    assert reads == (2 + len(list(d.glob("model-*.safetensors"))) if a_sharded else 2)
    monkeypatch.undo()
    errors = 0
    for k in range(1, reads + 1):
        _save(A, d, a_sharded)
        _Hook(monkeypatch, k, lambda: _save(B, d, b_sharded))
        try:
            got = _which(load_checkpoint(d), (A, B))
        except CheckpointError as e:
            assert k < reads, f"a load that read every file before the save failed: {e}"
            msg = str(e)
            assert msg.startswith(str(d)) and ("another save" in msg or "missing" in msg), msg
            errors += 1
        else:
            assert k == reads and got == 0, (k, got)
        monkeypatch.undo()
    assert errors == reads - 1


def _saver(path: str, rounds: int, ready, done) -> None:
    try:
        A, B = _pair()
        ready.set()
        for i in range(rounds):          # A single, B sharded, A sharded, B single, ...
            _save((A, B)[i % 2], Path(path), sharded=(i % 4) in (1, 2))
    finally:
        done.set()


def run_saver_and_loader(d: Path, rounds: int, max_loads: int) -> dict:
    """Saver process against loads here (see the test); {0: loads of A, 1: loads of B,
    "error": CheckpointErrors}. AssertionError for a mix."""
    ctx = mp.get_context("spawn")
    A, B = _pair()
    _save(A, d, sharded=False)
    ready, done = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_saver, args=(str(d), rounds, ready, done))
    p.start()
    seen = {0: 0, 1: 0, "error": 0}
    try:
        assert ready.wait(timeout=300), "the saver process did not start"
        for _ in range(max_loads):       # the saver is saving from here on
            if done.is_set():
                break
            try:
                seen[_which(load_checkpoint(d), (A, B))] += 1
            except CheckpointError as e:
                assert str(e).startswith(str(d)), str(e)
                seen["error"] += 1
    finally:
        p.join(timeout=600)
    assert p.exitcode == 0, p.exitcode
    return seen


def test_concurrent_saver_and_loader(tmp_path):
    """One process saves A and B alternately into one folder (120 saves, layouts cycling),
    this one loads it until the saver is done (at most 5,000 loads): every load is exactly A
    or exactly B, or a CheckpointError naming a file of the folder. Once the saver is done,
    the folder loads as its last save."""
    A, B = _pair()
    d = tmp_path / "m"
    rounds = 120
    seen = run_saver_and_loader(d, rounds, max_loads=5000)
    last = (A, B)[(rounds - 1) % 2]
    cfg, sd, _ = load_checkpoint(d)
    assert cfg == last.config, seen
    for k, v in last.state_dict().items():
        assert np.array_equal(sd[k], v), k
