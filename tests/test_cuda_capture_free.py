"""A device buffer that dies while its stream is being captured into a CUDA graph (the garbage
collector runs at any point, also inside a model's step capture) is freed after the capture,
not inside it: a free made during capture becomes a free node of the graph, which may only free
that graph's own allocations. Buffers allocated inside the capture are the graph's, freed by
it. csrc/cuda/py_cuda_memory.c, flush_frees."""
from __future__ import annotations

import gc

import numpy as np
from cuda_util import needs_cuda

pytestmark = needs_cuda


def _cu():
    from samba_ext.cuda import runtime

    return runtime.require()


def test_buffer_dying_during_capture_is_freed_after_it():
    cu = _cu()
    s = int(cu.stream_create())
    outside = cu.Buffer(1 << 20, 0, s)
    cu.graph_begin(s)
    inside = cu.Buffer(4096, 0, s)          # a graph allocation
    cu.memset(inside.ptr, 7, 4096, s)
    del outside                             # dies during the capture: its free waits
    gc.collect()
    assert cu.flush_frees() == 1            # the capture is still going on
    del inside                              # the graph's own: freed by the graph
    g = cu.graph_end(s)
    assert cu.flush_frees() == 0
    for _ in range(3):
        cu.graph_launch(g, s)
    cu.stream_sync(s)
    cu.graph_free(g)
    # the pool still hands out memory that works
    b = cu.Buffer(1 << 20, 0, s)
    cu.memset(b.ptr, 1, 1 << 20, s)
    back = np.empty(1 << 20, np.uint8)
    cu.memcpy_d2h(back, b.ptr, s)
    assert np.all(back == 1)


def test_frees_outside_a_capture_are_not_deferred():
    cu = _cu()
    s = int(cu.stream_create())
    for _ in range(10):
        b = cu.Buffer(1 << 16, 0, s)
        del b
    assert cu.flush_frees() == 0
