"""The K/V ring protocol of prefill v4's TMA variant (csrc/cuda/attention_wgmma.cu,
SAMBA_EXT_ATTN_V4_TMA=1) checked on the host by simulation, without a GPU: a wrong barrier parity
there hangs the kernel rather than failing it, so the protocol is run here under many random
interleavings of the threads and of the copies' completions.

Mirrored from the kernel (keep in step): STAGES-deep ring, AHEAD = STAGES - 2 tiles loaded ahead;
per stage a "full" mbarrier (1 arrival: thread 0's arrive.expect_tx, plus the copies' bytes) and
an "empty" one (one arrival per thread); thread 0 produces tile t into stage t % STAGES after
waiting on empty with parity (t / STAGES - 1) & 1 when t >= STAGES; iteration it: thread 0 first
produces tile it + AHEAD, then every thread waits on full[it % STAGES] with parity
(it / STAGES) & 1, reads K of tile it and V of tile it - 1 (the alternating schedule's batch), and
arrives on empty[(it - 1) % STAGES]; after the loop V of the last tile is read.

The mbarrier model follows the PTX ISA ("mbarrier"): a phase completes when its pending arrivals
and its transaction bytes both reach zero; try_wait.parity(P) succeeds once the phase of parity P
has completed, i.e. while the current phase's parity differs from P (so a wait on parity 1 before
the first phase completes succeeds at once). A copy overwrites its stage at any moment between
its issue and its completion, modelled as at the issue (the earliest).
"""
from __future__ import annotations

import random

import pytest


class Barrier:
    def __init__(self, count: int) -> None:
        self.count, self.pending, self.tx, self.phase = count, count, 0, 0

    def _maybe_complete(self) -> None:
        if self.pending == 0 and self.tx == 0:
            self.phase += 1
            self.pending = self.count

    def arrive(self) -> None:
        assert self.pending > 0
        self.pending -= 1
        self._maybe_complete()

    def arrive_expect_tx(self, nbytes: int) -> None:
        self.tx += nbytes
        self.arrive()

    def complete_tx(self, nbytes: int) -> None:
        self.tx -= nbytes
        assert self.tx >= 0
        self._maybe_complete()

    def try_wait(self, parity: int) -> bool:
        return (self.phase & 1) != parity


def thread_program(tid: int, ntiles: int, stages: int, sim: "Sim", empty_lag: int = 1,
                   ahead_less: int = 2):
    """The kernel's TMA loop for one thread, as a generator that yields while it waits (a
    scheduling point) and performs its other steps directly on sim. empty_lag and ahead_less
    are the kernel's 1 (the empty wait's parity (t / STAGES - 1) & 1) and 2 (AHEAD = STAGES - 2);
    other values are the mutations the last test makes."""
    ahead = stages - ahead_less

    def produce(t: int):
        st = t % stages
        if t >= stages:
            while not sim.empty[st].try_wait((t // stages - empty_lag) & 1):
                yield "spin"
        sim.full[st].arrive_expect_tx(2)
        sim.issue_copy(st, t)

    if tid == 0:
        for t in range(min(ahead, ntiles)):
            yield from produce(t)
    yield "barrier"  # __syncthreads after the prologue (Q landed)
    for it in range(ntiles):
        if tid == 0 and it + ahead < ntiles:
            yield from produce(it + ahead)
        st = it % stages
        while not sim.full[st].try_wait((it // stages) & 1):
            yield "spin"
        sim.read(st, it, tid)                      # K of tile it
        if it > 0:
            sim.read((it - 1) % stages, it - 1, tid)  # V of tile it - 1
            sim.empty[(it - 1) % stages].arrive()
        yield
    if ntiles > 0:
        sim.read((ntiles - 1) % stages, ntiles - 1, tid)  # V of the last tile
    yield "done"


class Sim:
    def __init__(self, nthreads: int, ntiles: int, stages: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.full = [Barrier(1) for _ in range(stages)]
        self.empty = [Barrier(nthreads) for _ in range(stages)]
        self.stage_tile = [None] * stages     # which tile a stage holds (None: nothing yet)
        self.in_flight: list[tuple[int, int]] = []  # (stage, tile) copies not yet complete
        self.reads = 0

    def issue_copy(self, st: int, tile: int) -> None:
        self.stage_tile[st] = tile  # the bytes may land from now on
        self.in_flight.append((st, tile))

    def read(self, st: int, tile: int, tid: int) -> None:
        assert self.stage_tile[st] == tile, \
            f"thread {tid} read stage {st} for tile {tile}, it holds {self.stage_tile[st]}"
        assert (st, tile) not in self.in_flight, f"tile {tile} read before its copy completed"
        self.reads += 1


def run(nthreads: int, ntiles: int, stages: int, seed: int, **mutation: int) -> Sim:
    sim = Sim(nthreads, ntiles, stages, seed)
    progs = [thread_program(t, ntiles, stages, sim, **mutation) for t in range(nthreads)]
    state = ["run"] * nthreads  # run, barrier, done
    spinning: set[int] = set()  # threads whose last step was a failed wait, since any progress
    while True:
        if all(s == "barrier" for s in state):
            state = ["run"] * nthreads
        runnable = [t for t in range(nthreads) if state[t] == "run"]
        if not sim.in_flight and runnable and spinning >= set(runnable):
            raise AssertionError(f"hang: threads {sorted(spinning)} wait forever")
        choices = runnable + (["copy"] if sim.in_flight else [])
        if not choices:
            assert all(s == "done" for s in state), f"deadlock: {state}"
            return sim
        c = sim.rng.choice(choices)
        if c == "copy":  # a random in-flight copy completes
            st, tile = sim.in_flight.pop(sim.rng.randrange(len(sim.in_flight)))
            sim.full[st].complete_tx(2)
            spinning.clear()
            continue
        out = next(progs[c])
        if out == "spin":
            spinning.add(c)
            continue
        spinning.clear()
        if out in ("barrier", "done"):
            state[c] = out


@pytest.mark.parametrize("stages", [3, 4])
@pytest.mark.parametrize("ntiles", [0, 1, 2, 3, 5, 9, 17])
def test_ring_never_hangs_and_reads_only_landed_tiles(stages, ntiles):
    for seed in range(30):
        sim = run(nthreads=4, ntiles=ntiles, stages=stages, seed=seed)
        assert sim.reads == 4 * (2 * ntiles if ntiles else 0)
        assert not sim.in_flight


@pytest.mark.parametrize("mutation", [{"empty_lag": 0}, {"empty_lag": 2}, {"ahead_less": 1}])
def test_the_model_catches_protocol_errors(mutation):
    # the empty wait one phase off, or one tile more loaded ahead (the producer then refills the
    # stage of the V still to be read): overwrites, early reads or hangs show up
    failures = 0
    for seed in range(40):
        try:
            run(nthreads=4, ntiles=9, stages=3, seed=seed, **mutation)
        except AssertionError:
            failures += 1
    assert failures > 0
