"""The asynchronous schedule of the Hopper attention backward (csrc/cuda/attention_bwd_wgmma.cu)
checked on the host, without a GPU: no shared-memory buffer is overwritten while a product or a
load may still read it, and nothing is read before its writes are complete and visible.

The kernel's query-tile loop is mirrored as a list of steps per iteration (`schedule`), for every
configuration it is built in (one or two warpgroups; DEFER: the dQ product left running into the
next tile, dS double-buffered; LOAD_LATE: the next tile's loads issued after the S / dP
products). Every warpgroup runs the same steps, and the block barriers are the same steps for
all of them, so a position in the unrolled list orders events:
  * two wgmma batches of one warpgroup, by program order;
  * anything else (across warpgroups, or an access spread over the block's threads: a cp.async
    group, the dS store, the softmax's reads of lse / Delta), only through a block barrier
    between the two positions;
  * an asynchronous operation (cp.async group, wgmma batch) reads or writes from its issue until
    the wait that completes it in the issuing warpgroup (cp.async.wait_group 0, wgmma.wait_group
    0), and a generic-proxy write (cp.async, st.shared) reaches a wgmma only through a
    fence.proxy.async in the writer after the write and before the ordering barrier.
Two accesses of different operations to one buffer, at least one a write, must be ordered.
`test_schedule_steps_are_the_kernels` checks that the steps stand in the kernel's source in this
order, so a change of the order there fails here until the mirror follows; the mutation tests
show that the checker finds the hazards such a change would bring.
"""
from __future__ import annotations

import itertools
import pathlib
import re
from dataclasses import dataclass

import pytest

# Steps: (kind, op, buffers) with kind one of
#   "bar" block barrier; "fence" fence.proxy.async; "wait_cp" cp.async.wait_group 0;
#   "wait_wg" wgmma.wait_group 0; "load" cp.async of the next tile (writes);
#   "wg" a wgmma batch (reads); "read" / "write" generic shared-memory accesses.
# Buffers: Q, O (dO), L (lse), Dl (Delta) with their index 0 / 1, S (dS) with its index and the
# warpgroup half, K, V.


def schedule(it: int, n_it: int, nwg: int, defer: bool, load_late: bool, nds: int | None = None,
             mid_fence: bool = True, dkdv_wait: bool = True) -> list[tuple]:
    """The kernel's steps of iteration `it` (the last keyword arguments make mutants)."""
    nds = (2 if defer else 1) if nds is None else nds
    buf, nxt = it % 2, (it + 1) % 2
    dsb = buf if nds == 2 else 0
    tile = lambda b: (f"Q{b}", f"O{b}", f"L{b}", f"Dl{b}")  # noqa: E731
    load = [("load", f"load{it + 1}", tile(nxt))] if it + 1 < n_it else []
    steps = [("wait_cp", None, ()), ("fence", None, ()), ("bar", None, ())]
    if not load_late:
        steps += load
    if defer:
        steps.append(("wait_wg", None, ()))               # the previous tile's dQ product
    steps.append(("wg", f"sdp{it}", ("K", "V", f"Q{buf}", f"O{buf}")))
    if load_late:
        steps += load
    steps.append(("wait_wg", None, ()))                   # S^T, dP^T
    steps.append(("read", f"softmax{it}", (f"L{buf}", f"Dl{buf}")))
    steps.append(("wg", f"dkdv{it}", (f"O{buf}", f"Q{buf}")))
    steps.append(("write", f"ds{it}", (f"S{dsb}.{{wg}}",)))
    if dkdv_wait:
        steps.append(("wait_wg", None, ()))               # dV, dK
    if mid_fence:
        steps.append(("fence", None, ()))
    steps.append(("bar", None, ()))
    halves = tuple(f"S{dsb}.{w}" for w in range(nwg)) if nwg == 2 else (f"S{dsb}.{{wg}}",)
    steps.append(("wg", f"dq{it}", halves + ("K",)))
    if not defer:
        steps.append(("wait_wg", None, ()))
    return steps


def unrolled(n_it: int, nwg: int, defer: bool, load_late: bool, **mut) -> list[tuple]:
    steps = [("load", "load0", ("K", "V", "Q0", "O0", "L0", "Dl0"))]  # before the loop
    for it in range(n_it):
        steps += schedule(it, n_it, nwg, defer, load_late, **mut)
    if defer:
        steps.append(("wait_wg", None, ()))
    steps.append(("wait_cp", None, ()))
    return steps


@dataclass
class Access:
    op: str
    wg: int
    buf: str
    write: bool
    generic: bool  # generic proxy (cp.async, st.shared / ld.shared) rather than wgmma
    start: int
    end: int       # the position that completes it in its warpgroup


def accesses(steps: list[tuple], nwg: int) -> list[Access]:
    out = []
    for wg, (pos, (kind, op, bufs)) in itertools.product(range(nwg), enumerate(steps)):
        if kind not in ("load", "wg", "read", "write"):
            continue
        end = pos
        if kind in ("load", "wg"):  # completed by the next wait of its kind
            want = "wait_cp" if kind == "load" else "wait_wg"
            end = next(p for p in range(pos + 1, len(steps)) if steps[p][0] == want)
        for b in bufs:
            out.append(Access(op, wg, b.format(wg=wg), kind in ("load", "write"),
                              kind != "wg", pos, end))
    return out


def ordered(steps: list[tuple], a: Access, b: Access) -> bool:
    """a complete, and visible to b, before b starts. Program order alone orders two wgmma
    batches of one warpgroup; anything else involves other threads (a cp.async group and the
    dS store are spread over the block's threads) and needs a block barrier after a's
    completion, and a generic write read by a wgmma also the writer's proxy fence before it."""
    if a.wg == b.wg and not a.generic and not b.generic:
        return a.end < b.start
    bars = [r for r in range(a.end + 1, b.start) if steps[r][0] == "bar"]
    if a.write and a.generic and not b.generic:
        return any(steps[f][0] == "fence" and any(r > f for r in bars)
                   for f in range(a.end + 1, b.start))
    return bool(bars)


def hazards(steps: list[tuple], nwg: int) -> list[tuple]:
    acc = accesses(steps, nwg)
    found = []
    for a, b in itertools.combinations(acc, 2):
        if a.buf != b.buf or a.op == b.op or not (a.write or b.write):
            continue
        first, second = (a, b) if a.start <= b.start else (b, a)
        if not ordered(steps, first, second):
            found.append((first.op, first.wg, second.op, second.wg, a.buf))
    return found


CONFIGS = [  # (NWG, DEFER, LOAD_LATE) as WBCfg builds them: D = 64 / 128, one or two warpgroups
    (1, False, False),   # head dims 64 and 128, one warpgroup
    (2, True, True),     # head dims 64 and 128, two warpgroups
]


@pytest.mark.parametrize("nwg,defer,load_late", CONFIGS)
@pytest.mark.parametrize("n_it", [1, 2, 3, 6])
def test_kernel_schedule_has_no_hazard(nwg, defer, load_late, n_it):
    assert hazards(unrolled(n_it, nwg, defer, load_late), nwg) == []


@pytest.mark.parametrize("nwg,defer", [(1, False), (2, True), (2, False)])
def test_early_loads_are_safe_too(nwg, defer):
    # the order before LOAD_LATE (loads right after the first barrier) has no hazard either: the
    # choice between the two is one of speed only
    assert hazards(unrolled(4, nwg, defer, False), nwg) == []


def test_checker_finds_a_single_ds_buffer_under_deferral():
    # dS of tile t + 1 stored while the other warpgroup's dQ product of tile t still reads it
    found = hazards(unrolled(3, 2, True, True, nds=1), 2)
    assert any(op1.startswith("dq") and op2.startswith("ds") for op1, _, op2, _, _ in found)


def test_checker_finds_a_missing_proxy_fence():
    # dS stored by st.shared and read by the dQ wgmma with no fence.proxy.async in between
    found = hazards(unrolled(2, 2, False, True, mid_fence=False), 2)
    assert any(op1.startswith("ds") and op2.startswith("dq") for op1, _, op2, _, _ in found)


def test_checker_finds_a_deferred_dk_dv_product():
    # dK / dV left running into the next tile with the dQ product (its wait dropped): the next
    # tile's loads overwrite the Q / dO buffer it reads
    found = hazards(unrolled(3, 2, True, True, dkdv_wait=False), 2)
    assert any(op1.startswith("dkdv") and op2.startswith("load") for op1, _, op2, _, _ in found)


# Statements of the kernel's loop marking the steps above, in the order the mirror has them.
MARKERS = [
    ("wait_cp", "cp_async_wait<0>(); // tile it (and K, V) landed"),
    ("fence", "fence_proxy_async_smem(); // ... visible to wgmma"),
    ("bar", "__syncthreads(); // ... for every thread; tile it - 1's buffers and dS are free"),
    ("early load", "if constexpr (!C::LOAD_LATE) { if (it + 1 < n_it) load_q(it + 1, buf ^ 1);"),
    ("dq wait", "wg_wait<0>(); fence_operands(dq); if constexpr (C::ADD_DURING) { #pragma unroll "
                "for (int i = 0; i < NDQ; ++i) asm volatile(\"mov.b32"),
    # D = 128: the previous tile's dQ sums added (global atomics: no shared buffer) before S / dP
    ("adds before sdp", "} else { add_dq_nb(dq, m_prev, h_prev); } }"),
    ("sdp", "Wgmma<T, 64>::ss(s, desc_kmajor<C::BN>(sKw, ks), desc_kmajor<C::BM>(q_s, ks));"),
    ("late load", "if constexpr (C::LOAD_LATE) { // the next tile's loads while S^T and dP^T are "
                  "computed if (it + 1 < n_it) load_q(it + 1, buf ^ 1);"),
    ("sdp wait", "wg_wait<0>(); fence_operands(s); fence_operands(dp);"),
    ("softmax", "const float2 l2 = *reinterpret_cast<const float2 *>(l_s + 8 * j + 2 * tq);"),
    ("dkdv", "Wgmma<T, C::D>::rs_t(dk, da[kk], desc_mnmajor<C::BM>(q_s, kk));"),
    ("ds store", "*reinterpret_cast<uint32_t *>(sm + (sSw - sK) + at) = movmatrix_trans(da[kk][i]);"),
    ("dkdv wait", "wg_wait<0>(); // dV, dK"),
    ("fence", "fence_proxy_async_smem(); __syncthreads(); // every warp's dS stored"),
    ("dq", "Wgmma<T, C::D / 2>::ss_t(dq, desc_kmajor<C::BM>(sSb, kk),"),
    ("dq no defer", "} else { wg_wait<0>(); fence_operands(dq); add_dq(dq, m0, h); }"),
]


def test_schedule_steps_are_the_kernels():
    src = (pathlib.Path(__file__).resolve().parents[1] / "csrc" / "cuda" /
           "attention_bwd_wgmma.cu").read_text()
    src = " ".join(src.split())
    body = src[src.index("for (int it = 0; it < n_it; ++it) {"):]
    pos = -1
    for name, text in MARKERS:
        text = " ".join(text.split())
        at = body.find(text, pos + 1)
        assert at > pos, f"{name}: {text!r} not found after the previous step"
        pos = at
    # the dS buffer of a tile and the configurations mirrored above
    for expr in ("static constexpr bool DEFER = NWG == 2;",
                 "static constexpr int NDS = DEFER ? 2 : 1;",
                 "static constexpr bool LOAD_LATE = NWG == 2;",
                 "static constexpr bool ADD_DURING = DEFER && D == 64;",
                 "const int buf = (int)(it & 1);",
                 "sS + (DEFER ? buf : 0) * C::NWG * C::DS_BYTES;"):
        assert expr in src, expr
    # every configuration the kernel is built in, with DEFER and LOAD_LATE as WBCfg derives them
    built = {(int(d), int(nwg)) for d, nwg in re.findall(r"WBCfg<(\d+), (\d), \d>;", src)}
    assert built == {(64, 1), (128, 1), (64, 2), (128, 2)}
    assert {(nwg, nwg == 2, nwg == 2) for d, nwg in built} == set(CONFIGS)
