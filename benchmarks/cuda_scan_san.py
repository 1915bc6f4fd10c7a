"""Small selective-scan and causal-conv1d calls (forward and backward) for compute-sanitizer.

Usage (GPU machine): compute-sanitizer --tool memcheck|racecheck python3 benchmarks/cuda_scan_san.py
"""
import os

import numpy as np
from samba_ext import cuda as _gpu, grad
from samba_ext.cuda import runtime as _rt
import samba_ext
rng = np.random.default_rng(0)
def dev(shape, dt="float32"):
    return _gpu.to_device(rng.standard_normal(shape).astype(np.float32), dt)
for dt in ("float32", "bfloat16"):
    for (b, d, n, L, g) in ((1, 5, 4, 37, 1), (2, 9, 16, 300, 1), (2, 8, 16, 130, 2)):
        u, de, z = dev((b, d, L), dt), dev((b, d, L), dt), dev((b, d, L), dt)
        A = _gpu.to_device(-np.exp(rng.standard_normal((d, n))).astype(np.float32))
        Bs = (b, n, L) if g == 1 else (b, g, n, L)
        B, C = dev(Bs), dev(Bs)
        D, db, h0 = dev((d,)), dev((d,)), dev((b, d, n))
        y, last = samba_ext.selective_scan(u, de, A, B, C, D, z, db, True, return_last_state=True, initial_state=h0)
        y.to_numpy()
        gr = grad.selective_scan_bwd(u, de, A, B, C, D, z, db, True, h0, dout=dev((b, d, L), dt), dlast_state=dev((b, d, n)))
        [x.to_numpy() for x in gr if x is not None]
    # the tiled kernel in chunks over the sequence (passes 1 and 2): few channels, 16-byte
    # aligned rows of 3104 steps (3 chunks by default), then 5 forced chunks (a partial last one)
    b, d, n, L = 1, 64, 16, 3104
    u, de, z = dev((b, d, L), dt), dev((b, d, L), dt), dev((b, d, L), dt)
    A = _gpu.to_device(-np.exp(rng.standard_normal((d, n))).astype(np.float32))
    B, C, h0 = dev((b, n, L), dt), dev((b, n, L), dt), dev((b, d, n))
    tiled0 = _rt.require().scan_launches()[2]
    for chunks in (None, "5"):
        if chunks:
            os.environ["SAMBA_EXT_SCAN_CHUNKS"] = chunks
        y, last = samba_ext.selective_scan(u, de, A, B, C, None, z, None, True,
                                           return_last_state=True, initial_state=h0)
        y.to_numpy()
        last.to_numpy()
        os.environ.pop("SAMBA_EXT_SCAN_CHUNKS", None)
    assert _rt.require().scan_launches()[2] == tiled0 + 2, "the chunked calls missed the tiled kernel"
    # the tiled backward (a partial last tile, L 296): one chunk per tile and one segment per
    # chunk (the default at this size), chunks of 3 tiles, one segment, 3 segments of 2-tile chunks
    L = 296
    u, de, z, dy = (dev((2, 64, L), dt) for _ in range(4))
    A = _gpu.to_device(-np.exp(rng.standard_normal((64, 16))).astype(np.float32))
    B, C, h0, dl = dev((2, 2, 16, L), dt), dev((2, 2, 16, L), dt), dev((2, 64, 16)), dev((2, 64, 16))
    D, db = dev((64,)), dev((64,))
    tiled0 = _rt.require().scan_bwd_launches()[1]
    knobs = ({}, {"TILES": "3"}, {"SEGS": "1"}, {"SEGS": "3", "TILES": "2"})
    for env in knobs:
        os.environ.update({"SAMBA_EXT_SCAN_BWD_" + k: v for k, v in env.items()})
        gr = grad.selective_scan_bwd(u, de, A, B, C, D, z, db, True, h0, dout=dy, dlast_state=dl)
        [x.to_numpy() for x in gr if x is not None]
        for k in env:
            os.environ.pop("SAMBA_EXT_SCAN_BWD_" + k)
    assert _rt.require().scan_bwd_launches()[1] == tiled0 + len(knobs), "the tiled backward did not run"
    for w in (2, 3, 4):
        x = dev((2, 12, 77), dt)
        wt, bias, s0 = dev((12, w)), dev((12,)), dev((2, 12, w - 1))
        samba_ext.causal_conv1d(x, wt, bias, "silu").to_numpy()
        gr = grad.causal_conv1d_bwd(x, wt, bias, "silu", s0, dy=dev((2, 12, 77), dt), dfinal_states=dev((2, 12, w - 1)))
        [a.to_numpy() for a in gr if a is not None]
print("scan/conv sanitizer script done")
