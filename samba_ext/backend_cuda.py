"""CUDA implementation of the model backend (:class:`samba_ext.backend.Backend`).

``Samba(config, device="cuda")`` / ``Samba.load(name, device="cuda")`` run the model's single
code path on one GPU through this class:

* Arrays are :class:`samba_ext.DeviceArray` (strided views for the model's slices). Weights
  are uploaded once: matrices (2-D, both sides >= 32, not Mamba's all-negative ``A``) in
  bfloat16 by default (``CUDABackend(weight_dtype="float32")`` or the environment variable
  ``SAMBA_EXT_CUDA_WEIGHTS=float32`` keep float32), everything else in float32.
* Activations (``act_dtype``): bfloat16 by default (float32 when the weights are not
  bfloat16); ``CUDABackend(act_dtype="float32")`` or ``SAMBA_EXT_CUDA_ACTIVATIONS=float32``
  select float32. Every GEMM writes the activation dtype (float32 accumulation), so q / k / v,
  the attention key/value caches, the MLP and the Mamba projections are bfloat16 and the
  attention runs on the tensor cores (csrc/cuda/attention_mma.cu, attention_decode.cu). The
  residual stream (the fused rms_norm + residual add keeps the sum in float32), the SSM and
  conv states, the normalisation arithmetic and the logits (float32 GEMM output) stay float32.
* GEMMs: cuBLAS (cublasGemmStridedBatchedEx, CUBLAS_COMPUTE_32F; cuBLASLt when the environment
  variable ``SAMBA_EXT_GEMM`` is ``lt`` or ``lt-tune``, see csrc/cuda/gemm_lt.cu).
* The MLP's hidden width is padded to a multiple of ``mlp_pad`` (default 64; the environment
  variable ``SAMBA_EXT_CUDA_MLP_PAD``; 1 keeps it) with zero weights (:meth:`mlp_width`): an
  intermediate size such as 8196 would leave the GEMMs' and the SwiGLU's rows unaligned
  (cuBLAS then falls back to slower kernels). Exact: the padded units are silu(0) * 0 = 0.
* Nothing is copied to the host inside ``prefill`` / ``step`` except what the caller asks
  for (the logits, when returned as NumPy). Index arrays that are runs of consecutive indices
  (the ring-buffer reads and writes of a prefill chunk) become strided copies, so a prefill
  uploads only its tokens.
* Decode: a :meth:`Samba.step` is recorded instead of run. ``Samba.step`` calls
  :meth:`CUDABackend.begin_step` before its first backend call, which opens a recording:
  every kernel, copy and GEMM of the step is deferred and every array comes from a fixed
  device arena; the step's host inputs (tokens, positions, ring slots, valid counts: one
  int64 array, :meth:`step_inputs`) are copied at once into an arena slot. At
  :meth:`end_step` the recorded launches are captured once into a CUDA graph (keyed by the
  exact launch sequence: shapes, pointers) and the graph is launched. The step is also kept
  under the model's step key (model, batch, the state arrays' addresses): the next step with
  that key is a direct replay (:meth:`replay_step`): one host-to-device copy of the new
  inputs and one graph launch, without running the model's Python code. A step that does not
  fit the arena (the first step, or the first after a change of batch size or of a cache's
  capacity) runs eagerly, its extra buffers held by the recorder until its launches are
  issued, and grows the arena for the next one. ``stats`` counts ``captures``, ``replays``
  (graph launches without capture; ``direct_replays`` of them skipped the recording) and
  ``eager_steps``. With ``SAMBA_EXT_L2_PREFETCH`` set, a captured step also prefetches each
  GEMM's weights into L2 on a side branch of its graph (samba_ext/cuda/prefetch.py).
"""
from __future__ import annotations

import collections
import os
import weakref
from typing import Any, Optional, Sequence

import numpy as np

from .backend_api import Backend
from .cuda import ops as cuda_ops
from .cuda import prefetch
from .cuda import runtime, streams
from .cuda.array import DeviceArray, to_device, zeros
from .cuda.blas import matmul, rms_norm_linear, swiglu_linear
from .cuda.decode import dt_state_update, rotary_write_kv
from .cuda.layout import DTYPES, check_dtype, host_contig
from .cuda.runtime import launch
from .errors import CudaUnavailableError

__all__ = ["CUDABackend"]

_ALIGN = 256
_MAX_GRAPHS = 8
_MAX_RUNS = 4          # index arrays of at most this many runs of consecutive values are copied
                       # as strided slices (no index upload)
_CHUNKS = (16384, 8192, 4096, 2048)   # default prefill chunk: the largest that fits the budget


def _dtname(dtype: Any) -> Optional[str]:
    """A dtype (NumPy type, name string or None) -> samba_ext.cuda dtype name (or None)."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        return check_dtype(dtype)
    k = np.dtype(dtype)
    return "int64" if k.kind in "iu" else check_dtype(k.name if k.itemsize <= 4 else "float32")


def _mlp_pad(pad: Any) -> int:
    """The MLP padding multiple: ``pad``, else $SAMBA_EXT_CUDA_MLP_PAD, else 64 (an int >= 1)."""
    what = "mlp_pad"
    if pad is None:
        env = os.environ.get("SAMBA_EXT_CUDA_MLP_PAD")
        if env is None or env == "":
            return 64
        what = "SAMBA_EXT_CUDA_MLP_PAD"
        try:
            pad = int(env)
        except ValueError:
            raise ValueError(f"{what}: expected a positive integer, got {env!r}") from None
    if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 1:
        raise ValueError(f"{what}: expected a positive integer, got {pad!r}")
    return int(pad)


def _runs(ii: np.ndarray) -> Optional[list]:
    """[(first position in ii, first value, length)] of the runs of consecutive values of the
    1-D index array ii, or None when there are more than _MAX_RUNS."""
    if ii.size == 0:
        return []
    starts = np.flatnonzero(np.diff(ii) != 1) + 1
    if starts.size >= _MAX_RUNS:
        return None
    b = [0] + starts.tolist() + [int(ii.size)]
    return [(b[i], int(ii[b[i]]), b[i + 1] - b[i]) for i in range(len(b) - 1)]


def _give_back(cu: Any, index: int, streams_held: list, graphs: dict) -> None:
    """A collected backend's finalizer: its streams back to the pool, its graphs queued for
    freeing (samba_ext.cuda.streams; no CUDA call here)."""
    streams.give_back(cu, index, streams_held, list(graphs.values()))


class _Arena:
    """Bump allocator over one device buffer (reset at the start of each recorded step)."""

    def __init__(self, cu: Any, device: int, stream: int, nbytes: int) -> None:
        self.buf = cu.Buffer(int(nbytes), device, stream)
        self.size = int(nbytes)
        self.off = 0
        self.need = 0

    def reset(self) -> None:
        self.off = 0
        self.need = 0

    def alloc(self, n: int) -> Optional[tuple]:
        start = (self.off + _ALIGN - 1) // _ALIGN * _ALIGN
        self.need = max(self.need, start + n)
        if start + n > self.size:
            self.off = start + n  # keep counting what the step needs
            return None
        self.off = start + n
        return self.buf, self.buf.ptr + start


class _StepRecorder:
    """Installed with samba_ext.cuda.runtime.set_recorder while a decode step is recorded.

    Every array the step allocates comes from here: an arena slot, or (when the arena is
    missing or full) a buffer of its own that the recorder holds until the step's deferred
    launches have been issued. Deferred launches carry raw pointers only; a temporary that
    the model drops before they run (the inputs a kernel converts, the index arrays of a
    gather) would otherwise go back to the stream-ordered pool at once, and a later
    allocation of the same step (an index upload, which runs immediately) could be handed
    the same address: the earlier deferred kernel would then overwrite the indices a later
    one reads (out-of-range gathers/scatters: illegal memory accesses)."""

    def __init__(self, backend: "CUDABackend", arena: Optional[_Arena]) -> None:
        self.backend = backend
        self.arena = arena
        self.calls: list = []
        self.overflow = arena is None
        self.requested = 0  # bytes this step asks for (sizes the arena)
        self.held: list = []  # buffers allocated outside the arena, freed after the step
        self.keep: list = []  # arrays the deferred launches read or write (see hold)
        self.uploads = 0      # host-to-device copies issued while recording
        self.inputs: Optional[DeviceArray] = None  # the step_inputs array (replaced on replay)
        # the L2 prefetch settings (mode, bytes), read when the recording opens: a bad value
        # raises before anything of the step is recorded, never after its launches are held
        how = prefetch.mode()
        self.prefetch = (how, prefetch.cap_bytes() if how else 0)

    def alloc(self, n: int) -> Optional[tuple]:
        if n == 0:
            return None
        self.requested += (n + _ALIGN - 1) // _ALIGN * _ALIGN
        got = self.arena.alloc(n) if self.arena is not None else None
        if got is None:
            self.overflow = True
            be = self.backend
            buf = be.cu.Buffer(int(n), be.index, be.stream)
            self.held.append(buf)
            got = (buf, buf.ptr)
        return got

    def hold(self, objs: Any) -> None:
        """Keep objs (arrays a deferred launch uses) alive until the step's launches have
        been issued: the model may drop an array during the step (a cache replaced by a
        larger one, whose copy into the new one is deferred), and its memory must not be
        reused before that copy runs."""
        self.keep.append(objs)

    def defer(self, fn: Any, args: tuple) -> None:
        if self.overflow and not self.calls:
            fn(*args)  # already eager: run in order
            return
        self.calls.append((fn, args))

    def flush(self) -> None:
        self.backend._end_step()


class CUDABackend(Backend):
    """The model backend on one CUDA GPU (see the module docstring)."""

    name = "cuda"
    #: rotary_write_kv as one kernel (True) or as the base class's composition (False, for
    #: comparisons: benchmarks/gpu_decode_prefetch.py's ``+norotkv``); read when a step is
    #: recorded, so change it before the first step or free the captured graphs.
    fuse_rotary_kv: bool = True
    #: dt_state_update through csrc/cuda/fused_gemm.cu (one kernel at batch 1) or as the base
    #: class's composition (False, for comparisons: gpu_decode_prefetch.py's ``+nodtfold``);
    #: read when a step is recorded, as fuse_rotary_kv.
    fuse_dt_proj: bool = True

    def __init__(self, device: str = "cuda", weight_dtype: Optional[str] = None,
                 graphs: bool = True, act_dtype: Optional[str] = None,
                 mlp_pad: Optional[int] = None) -> None:
        self.cu = runtime.require()  # CudaUnavailableError says why when CUDA cannot run
        dev = str(device).lower()
        if dev == "cuda":
            idx = 0
        elif dev.startswith("cuda:") and dev[5:].isdigit():
            idx = int(dev[5:])
        else:
            raise ValueError(f"device: expected 'cuda' or 'cuda:N', got {device!r}")
        n = self.cu.device_count()
        if idx >= n:
            raise CudaUnavailableError(f"no device: cuda:{idx} requested, {n} visible")
        self.index = idx
        self.device = "cuda" if idx == 0 else f"cuda:{idx}"
        wd = weight_dtype or os.environ.get("SAMBA_EXT_CUDA_WEIGHTS", "bfloat16")
        if wd not in ("bfloat16", "float32", "float16"):
            raise ValueError(f"weight_dtype: expected 'bfloat16', 'float16' or 'float32', got "
                             f"{wd!r}")
        self.weight_dtype = wd
        ad = act_dtype or os.environ.get("SAMBA_EXT_CUDA_ACTIVATIONS") or (
            "bfloat16" if wd == "bfloat16" else "float32")
        if ad not in ("bfloat16", "float32"):
            raise ValueError(f"act_dtype: expected 'bfloat16' or 'float32', got {ad!r}")
        self.act_dtype = ad
        self.cache_dtype = ad
        self.mlp_pad = _mlp_pad(mlp_pad)
        self.graphs = bool(graphs)
        # A non-blocking stream of the device that no other live backend holds (the legacy
        # stream cannot be captured), from samba_ext.cuda.streams: never destroyed (arrays
        # allocated on it may outlive this object), given back when this object is collected.
        with runtime.DeviceGuard(idx):
            self.stream = streams.take(self.cu, idx)
        self._streams = [self.stream]
        self._arena: Optional[_Arena] = None
        self._arena_need = 0
        self._rec: Optional[_StepRecorder] = None
        self._side: Optional[int] = None  # see _side_stream
        self._sms: Optional[int] = None
        self._graphs: "collections.OrderedDict[Any, int]" = collections.OrderedDict()
        self._replay: dict = {}    # step key -> (graph key, inputs array, logits array)
        self._step_key: Any = None
        self.stats = {"captures": 0, "replays": 0, "direct_replays": 0, "eager_steps": 0}
        weakref.finalize(self, _give_back, self.cu, idx, self._streams, self._graphs)

    def __repr__(self) -> str:
        return (f"CUDABackend(device={self.device!r}, weight_dtype={self.weight_dtype!r}, "
                f"act_dtype={self.act_dtype!r}, graphs={self.graphs}, mlp_pad={self.mlp_pad})")

    def mlp_width(self, intermediate_size: int) -> int:
        """``intermediate_size`` rounded up to a multiple of ``mlp_pad`` (see the module
        docstring)."""
        p = self.mlp_pad
        return (int(intermediate_size) + p - 1) // p * p

    # ---------------------------------------------------------------- prefill chunk ---
    def default_chunk(self, cfg: Any, batch: int, length: int) -> int:
        """The largest of 16384, 8192, 4096 tokens whose working set (the estimate of
        samba_ext.memory.memory_needed) fits in a quarter of the device memory that this
        process's memory pool does not hold; 2048 otherwise. Larger chunks make the GEMMs
        and kernels of a chunk fewer and larger (less launch overhead per token)."""
        from .memory import memory_needed

        total = int(self.cu.device_info(self.index).get("total_memory", 0))
        used = int(self.cu.pool_stats(self.index).get("used", 0))
        budget = max(total - used, 0) // 4
        for cs in _CHUNKS:
            if memory_needed(cfg, max(batch, 1), max(length, 1), cs, None, "last")[0] <= budget:
                return cs
        return _CHUNKS[-1]

    # ---------------------------------------------------------------- recording -------
    def step_key(self, tag: Any, arrays: Sequence[Any]) -> Any:
        """(tag, the arrays' addresses, shapes and dtypes): a recorded step reads and writes
        exactly those buffers, so any state whose arrays sit there may replay it."""
        if not self.graphs:
            return None
        return (tag, tuple((a.ptr, a.shape, a.dtype) for a in arrays))

    def replay_step(self, key: Any, inputs: np.ndarray) -> Any:
        """Direct replay (see the module docstring): copy ``inputs`` into the recorded step's
        input slot, launch its graph, return a copy of its logits (None: not recorded)."""
        ent = self._replay.get(key) if key is not None else None
        if ent is None:
            return None
        gkey, dev_in, out = ent
        g = self._graphs.get(gkey)
        h = host_contig(np.asarray(inputs), np.int64)
        if g is None or h.shape != dev_in.shape:
            del self._replay[key]
            return None
        if self._rec is not None:
            self._end_step()
        # The decode hot path: one exchange (a device read and compare when the device is
        # current already); the copy of the logits then finds its device current too.
        prev = self.cu.exchange_device(self.index)
        try:
            self.cu.memcpy_h2d(dev_in.ptr, h.reshape(-1).view(np.uint8), self.stream)
            self.cu.graph_launch(g, self.stream)
            res = out.copy()
        finally:
            if prev != self.index:
                self.cu.restore_device(prev)
        self._graphs.move_to_end(gkey)
        self.stats["replays"] += 1
        self.stats["direct_replays"] += 1
        return res

    def begin_step(self, key: Any = None) -> None:
        """Start recording a decode step (see the module docstring); no-op with graphs=False.
        ``key``: the :meth:`step_key` a direct replay of this step will be looked up by."""
        self._begin_step()
        self._step_key = key

    def step_inputs(self, host: np.ndarray) -> Any:
        """The step's int64 inputs on the device (an arena slot while recording)."""
        d = self._ints(host)
        if self._rec is not None:
            self._rec.inputs = d
        return d

    def end_step(self, logits: Any) -> Any:
        """Issue the recorded step (capture / replay / eager), keep it for direct replay when
        it was captured and its only upload was :meth:`step_inputs`; returns a copy of the
        logits outside the arena (the next step reuses the arena)."""
        rec, key = self._rec, self._step_key
        self._step_key = None
        if rec is None:
            return logits
        gkey = self._end_step()
        if (gkey is not None and key is not None and rec.inputs is not None
                and rec.uploads == 1 and isinstance(logits, DeviceArray)):
            self._replay[key] = (gkey, rec.inputs, logits)
        return self._dev(logits).copy()

    def _begin_step(self) -> None:
        if self._rec is not None:
            self._end_step()
        if not self.graphs:
            return
        if self._arena_need and (self._arena is None or self._arena.size < self._arena_need):
            self._free_graphs()  # the graphs (and direct replays) point into the old arena
            self._arena = None
            self._arena = _Arena(self.cu, self.index, self.stream,
                                 int(self._arena_need * 1.25) + (1 << 20))
        if self._arena is not None:
            self._arena.reset()
        self._rec = _StepRecorder(self, self._arena)
        runtime.set_recorder(self._rec)

    def _abort_step(self) -> None:
        if self._rec is not None and runtime.recorder() is self._rec:
            runtime.set_recorder(None)
        self._rec = None

    def _end_step(self) -> Any:
        """Issue the open recording; returns its graph key when it ran as a graph."""
        rec = self._rec
        if rec is None:
            return None
        with runtime.DeviceGuard(self.index):
            return self._issue(rec)

    def _issue(self, rec: _StepRecorder) -> Any:
        """_end_step's work, with the backend's device current."""
        runtime.set_recorder(None)
        self._rec = None
        self._arena_need = max(self._arena_need, rec.requested)
        if rec.overflow or rec.arena is None:
            # Too little arena (or the first step): run eagerly, size the arena for next time.
            # rec.held keeps the step's own buffers until here; dropping it afterwards queues
            # their frees on the stream behind the launches that use them.
            self.stats["eager_steps"] += 1
            for fn, args in rec.calls:
                fn(*args)
            rec.held.clear()
            rec.keep.clear()
            return None
        key = tuple((getattr(fn, "__name__", repr(fn)), args) for fn, args in rec.calls)
        g = self._graphs.get(key)
        if g is None:
            how, cap = rec.prefetch
            side = self._side_stream() if how else 0
            self.cu.graph_begin(self.stream)
            try:
                if how:
                    prefetch.capture(self.cu, rec.calls, self.stream, side, self._sm_count(),
                                     how, cap)
                else:
                    for fn, args in rec.calls:
                        fn(*args)
            except BaseException:
                try:
                    self.cu.graph_free(self.cu.graph_end(self.stream))
                    self.cu.flush_frees()
                except Exception:
                    pass
                raise
            g = self.cu.graph_end(self.stream)
            self.cu.flush_frees()  # arrays that died during the capture
            self._graphs[key] = g
            self.stats["captures"] += 1
            while len(self._graphs) > _MAX_GRAPHS:
                _, old = self._graphs.popitem(last=False)
                self.cu.graph_free(old)
        else:
            self._graphs.move_to_end(key)
            self.stats["replays"] += 1
        self.cu.graph_launch(g, self.stream)
        rec.held.clear()   # frees queued behind the launch
        rec.keep.clear()
        return key

    def _side_stream(self) -> int:
        """A second stream of this device for the L2 prefetch branch of a captured step
        (taken on first use, from the pool of self.stream)."""
        if self._side is None:
            with runtime.DeviceGuard(self.index):
                self._side = streams.take(self.cu, self.index)
            self._streams.append(self._side)
        return self._side

    def _sm_count(self) -> int:
        if self._sms is None:
            self._sms = max(int(self.cu.device_info(self.index).get("multiprocessors", 1)), 1)
        return self._sms

    def _free_graphs(self) -> None:
        for g in self._graphs.values():
            self.cu.graph_free(g)
        self._graphs.clear()
        self._replay.clear()

    class _Persistent:
        """Allocations that must outlive a step (weights, states, caches) bypass the arena."""

        def __enter__(self) -> None:
            self.saved = runtime.set_recorder(None)

        def __exit__(self, *exc: Any) -> None:
            runtime.set_recorder(self.saved)

    def _guard(self, fn: Any, *args: Any, **kw: Any) -> Any:
        """Run fn; an exception during a recorded step abandons the recording."""
        try:
            return fn(*args, **kw)
        except BaseException:
            self._abort_step()
            raise

    # ---------------------------------------------------------------- helpers ---------
    def _dev(self, x: Any) -> Any:
        if isinstance(x, DeviceArray):
            return x
        if self._rec is not None:
            self._rec.uploads += 1
        return to_device(np.asarray(x, dtype=np.float32), "float32", self.index,
                              self.stream)

    def _ints(self, a: Any) -> Any:
        """Host integers -> int64 DeviceArray (an arena slot during a recorded step); a
        DeviceArray of integers is returned as is (C-contiguous)."""
        if isinstance(a, DeviceArray):
            if a.dtype not in ("int64", "int32"):
                raise TypeError(f"indices: expected an integer array, got {a.dtype}")
            return a if a.is_contiguous else a.copy()
        h = host_contig(np.asarray(a), np.int64)
        d = DeviceArray.empty(h.shape, "int64", self.index, self.stream)
        if h.size:
            if self._rec is not None:
                self._rec.uploads += 1
            with runtime.DeviceGuard(self.index):
                self.cu.memcpy_h2d(d.ptr, h.reshape(-1).view(np.uint8), self.stream)
        return d

    def _host_index(self, idx: Any, n: int, what: str, axis: int) -> np.ndarray:
        """Host indices -> flat int64 in [0, n) (negative ones counted from the end)."""
        ii = np.asarray(idx, dtype=np.int64).reshape(-1)
        ii = np.where(ii < 0, ii + n, ii)
        if ii.size and (ii.min() < 0 or ii.max() >= n):
            raise IndexError(f"{what}: index out of range for axis {axis} of size {n}")
        return ii

    def _copy(self, dst: Any, src: Any, shape: Sequence[int], src_strides: Sequence[int],
              dst_strides: Sequence[int], axis: int = -1, sidx: Any = None,
              didx: Any = None, batched: bool = False) -> None:
        code = DTYPES
        args = (tuple(shape), (src.ptr, code[src.dtype][0]), tuple(src_strides),
                (dst.ptr, code[dst.dtype][0]), tuple(dst_strides), axis,
                None if sidx is None else (sidx.ptr, code[sidx.dtype][0]),
                None if didx is None else (didx.ptr, code[didx.dtype][0]), int(batched),
                self.stream)
        if self._rec is not None:
            self._rec.hold((dst, src, sidx, didx))
        with runtime.DeviceGuard(self.index):  # a recorder may run it at once (overflow)
            launch(self.cu.copy, *args)

    def _weight_dtype_for(self, a: np.ndarray) -> str:
        if (self.weight_dtype != "float32" and a.ndim == 2 and min(a.shape) >= 32
                and not bool(np.all(a < 0))):
            return self.weight_dtype
        return "float32"

    # ---------------------------------------------------------------- arrays ----------
    def asarray(self, a: np.ndarray, dtype: Any = np.float32) -> Any:
        with self._Persistent():
            h = np.asarray(a)
            if np.dtype(dtype).kind in "iu":
                return self._ints(h)
            h = host_contig(h, np.float32)
            return to_device(h, self._weight_dtype_for(h), self.index, self.stream)

    def to_numpy(self, x: Any) -> np.ndarray:
        self._end_step()
        if isinstance(x, DeviceArray):
            return x.to_numpy()
        return np.asarray(x)

    def zeros(self, shape: Sequence[int], dtype: Any = np.float32) -> Any:
        """Zero-filled array: dtype a NumPy type (integers -> int64, floats -> float32) or a
        samba_ext.cuda dtype name ("bfloat16" for the caches of a bfloat16 backend)."""
        name = _dtname(dtype)
        with self._Persistent():
            return zeros(tuple(int(s) for s in shape), name, self.index, self.stream)

    def copy(self, x: Any) -> Any:
        if self._rec is None:
            return self._dev(x).copy()
        return self._guard(lambda: self._dev(x).copy())

    def concat(self, xs: Sequence[Any], axis: int) -> Any:
        def run() -> Any:
            ds = [self._dev(x) for x in xs]
            nd = ds[0].ndim
            ax = axis + nd if axis < 0 else axis
            shape = list(ds[0].shape)
            for d in ds[1:]:
                if d.ndim != nd or any(d.shape[i] != shape[i] for i in range(nd) if i != ax):
                    raise ValueError(f"concat: shapes {[x.shape for x in ds]} differ off axis "
                                     f"{axis}")
            shape[ax] = sum(d.shape[ax] for d in ds)
            out = DeviceArray.empty(shape, ds[0].dtype, self.index, self.stream)
            off = 0
            for d in ds:
                n = d.shape[ax]
                if n and d.size:
                    dv = out[(slice(None),) * ax + (slice(off, off + n),)]
                    self._copy(dv, d, d.shape, d.strides, dv.strides)
                off += n
            return out
        return self._guard(run)

    def transpose(self, x: Any) -> Any:
        """New C-contiguous array with the last two axes swapped (x may be a strided view)."""
        def run() -> Any:
            d = self._dev(x)
            if d.ndim < 2:
                raise ValueError(f"transpose: need >= 2 dimensions, got {d.shape}")
            sh, st = list(d.shape), list(d.strides)
            sh[-1], sh[-2], st[-1], st[-2] = sh[-2], sh[-1], st[-2], st[-1]
            out = DeviceArray.empty(sh, d.dtype, self.index, self.stream)
            if out.size:
                self._copy(out, d, sh, st, out.strides)
            return out
        return self._guard(run)

    def _axis_view(self, a: Any, ax: int, lo: int, n: int) -> Any:
        return a[(slice(None),) * ax + (slice(lo, lo + n),)]

    def take(self, x: Any, idx: Any, axis: int, dtype: Any = None) -> Any:
        """Gather along axis; idx host integers (checked) or a DeviceArray of int64 (used as
        is: the caller guarantees the range). Host indices that form at most _MAX_RUNS runs
        of consecutive values are copied as slices (no upload). dtype: the result's (None:
        x's)."""
        x = self._dev(x)
        ax = axis + x.ndim if axis < 0 else axis
        dt = x.dtype if dtype is None else _dtname(dtype)

        def run() -> Any:
            n = x.shape[ax]
            if isinstance(idx, DeviceArray):
                di, ishape, size, runs = self._ints(idx), idx.shape, idx.size, None
            else:
                ih = np.asarray(idx)
                ii = self._host_index(ih, n, "take", axis)
                di, ishape, size, runs = None, ih.shape, ii.size, _runs(ii)
            flat = x.shape[:ax] + (size,) + x.shape[ax + 1:]
            out = DeviceArray.empty(flat, dt, self.index, self.stream)
            if out.size:
                if runs is not None:
                    for at, v0, m in runs:
                        sv, dv = self._axis_view(x, ax, v0, m), self._axis_view(out, ax, at, m)
                        self._copy(dv, sv, sv.shape, sv.strides, dv.strides)
                else:
                    if di is None:
                        di = self._ints(ii)
                    self._copy(out, x, flat, x.strides, out.strides, ax, sidx=di)
            return out.reshape(x.shape[:ax] + tuple(ishape) + x.shape[ax + 1:])
        return self._guard(run)

    def put(self, dst: Any, idx: Any, src: Any, axis: int) -> None:
        """dst[..., idx, ...] = src along axis (idx as in :meth:`take`)."""
        def run() -> None:
            ax = axis + dst.ndim if axis < 0 else axis
            n = dst.shape[ax]
            if isinstance(idx, DeviceArray):
                di, size, runs = self._ints(idx).reshape(-1), idx.size, None
            else:
                ii = self._host_index(idx, n, "put", axis)
                di, size, runs = None, ii.size, _runs(ii)
            s = self._dev(src)
            want = dst.shape[:ax] + (size,) + dst.shape[ax + 1:]
            if s.shape != want:
                raise ValueError(f"put: src shape {s.shape}, expected {want}")
            if not s.size:
                return
            if runs is not None:
                for at, v0, m in runs:
                    sv, dv = self._axis_view(s, ax, at, m), self._axis_view(dst, ax, v0, m)
                    self._copy(dv, sv, sv.shape, sv.strides, dv.strides)
                return
            if di is None:
                di = self._ints(ii)
            self._copy(dst, s, s.shape, s.strides, dst.strides, ax, didx=di)
        self._guard(run)

    def write_rows(self, dst: Any, slots: Any, src: Any) -> None:
        """dst[b, slots[b]] = src[b]; slots host (checked) or a device int64 (B,) array."""
        def run() -> None:
            s = self._dev(src)
            B = dst.shape[0]
            if isinstance(slots, DeviceArray):
                sl_shape, di = slots.shape, self._ints(slots)
            else:
                sl = np.asarray(slots, dtype=np.int64).reshape(-1)
                sl_shape, di = sl.shape, None
                if sl.size and (sl.min() < 0 or sl.max() >= dst.shape[1]):
                    raise IndexError("write_rows: slot out of range")
            if sl_shape != (B,) or s.shape != (B,) + tuple(dst.shape[2:]):
                raise ValueError(f"write_rows: dst {dst.shape}, slots {sl_shape}, src {s.shape}")
            if s.size:
                if di is None:
                    di = self._ints(sl)
                shape = (B, 1) + tuple(s.shape[1:])
                sst = (s.strides[0], 0) + tuple(s.strides[1:])
                self._copy(dst, s, shape, sst, dst.strides, 1, didx=di, batched=True)
        self._guard(run)

    # ---------------------------------------------------------------- GEMM ------------
    def matmul(self, a: Any, b: Any, trans_a: bool = False, trans_b: bool = False,
               dtype: Any = None) -> Any:
        """cuBLAS GEMM (float32 accumulation) writing ``dtype`` (None: act_dtype)."""
        od = self.act_dtype if dtype is None else _dtname(dtype)
        return self._guard(matmul, self._dev(a), self._dev(b), trans_a, trans_b,
                           out_dtype=od, stream=self.stream)

    # ---------------------------------------------------------------- kernels ---------
    def rms_norm(self, x: Any, weight: Any, eps: float, residual: Any = None) -> Any:
        """y in act_dtype (float32 arithmetic); the sum x + residual in residual's dtype."""
        def run() -> Any:
            out = None
            if x.dtype != self.act_dtype:
                out = DeviceArray.empty(x.shape, self.act_dtype, self.index, self.stream)
            return cuda_ops.rms_norm(x, weight, eps, residual, out=out, stream=self.stream)
        return self._guard(run)

    def rms_norm_matmul(self, x: Any, weight: Any, eps: float, residual: Any, w: Any,
                        dtype: Any = None) -> Any:
        """As Backend.rms_norm_matmul; one call (csrc/cuda/fused_gemm.cu: a single kernel
        for one row where the GEMV runs) when the activations are 16-bit in w's dtype (the
        dtype the product reads either way)."""
        if (self.act_dtype not in ("bfloat16", "float16") or getattr(w, "dtype", None)
                != self.act_dtype or x.ndim != 2):
            return super().rms_norm_matmul(x, weight, eps, residual, w, dtype)
        od = self.act_dtype if dtype is None else _dtname(dtype)
        return self._guard(rms_norm_linear, self._dev(x), weight, w,
                           None if residual is None else self._dev(residual), eps=eps,
                           out_dtype=od, stream=self.stream)

    def swiglu_matmul(self, gate: Any, up: Any, w: Any, dtype: Any = None) -> Any:
        """As Backend.swiglu_matmul; one call (csrc/cuda/fused_gemm.cu) when gate is 16-bit in
        w's dtype (swiglu's output dtype, which the product reads either way)."""
        if (getattr(gate, "dtype", None) not in ("bfloat16", "float16")
                or getattr(w, "dtype", None) != gate.dtype or gate.ndim != 2):
            return super().swiglu_matmul(gate, up, w, dtype)
        od = self.act_dtype if dtype is None else _dtname(dtype)
        return self._guard(swiglu_linear, gate, up, w, out_dtype=od, stream=self.stream)

    def rotary_write_kv(self, qkv: Any, n_head: int, n_kv_head: int, positions: Any,
                        base: float, k_cache: Any, v_cache: Any, slots: Any) -> Any:
        """As Backend.rotary_write_kv, in one kernel (csrc/cuda/rotary.cu) when qkv and the
        caches are this backend's arrays of one dtype (else the composition, which rounds k to
        qkv's dtype before the cache's)."""
        if (not self.fuse_rotary_kv
                or not all(isinstance(a, DeviceArray) for a in (qkv, k_cache, v_cache))
                or not qkv.dtype == k_cache.dtype == v_cache.dtype):
            return super().rotary_write_kv(qkv, n_head, n_kv_head, positions, base, k_cache,
                                           v_cache, slots)

        def run() -> Any:
            p = positions if isinstance(positions, DeviceArray) else self._ints(positions)
            s = slots if isinstance(slots, DeviceArray) else np.asarray(slots, dtype=np.int64)
            return rotary_write_kv(qkv, n_head, n_kv_head, p, k_cache, v_cache, s, base=base,
                                   stream=self.stream)
        return self._guard(run)

    def apply_rotary(self, x: Any, positions: Any, base: float) -> Any:
        def run() -> Any:
            if isinstance(positions, (int, np.integer)) and not isinstance(positions, bool):
                p: Any = int(positions)
            else:
                p = self._ints(positions)
            return cuda_ops.apply_rotary(x, p, base, stream=self.stream)
        return self._guard(run)

    def swiglu(self, gate: Any, up: Any) -> Any:
        return self._guard(cuda_ops.swiglu, gate, up, stream=self.stream)

    def causal_conv1d(self, x: Any, weight: Any, bias: Any, initial_states: Any) -> Any:
        return self._guard(cuda_ops.causal_conv1d, x, weight, bias, "silu", initial_states, True,
                           stream=self.stream)

    def causal_conv1d_update(self, x: Any, conv_state: Any, weight: Any, bias: Any) -> Any:
        return self._guard(cuda_ops.causal_conv1d_update, x, conv_state, weight, bias, "silu",
                           stream=self.stream)

    def selective_scan(self, u: Any, delta: Any, A: Any, B: Any, C: Any, D: Any, z: Any,
                       delta_bias: Any, initial_state: Any) -> Any:
        return self._guard(cuda_ops.selective_scan, u, delta, A, B, C, D, z, delta_bias, True,
                           initial_state, True, stream=self.stream)

    def selective_state_update(self, state: Any, x: Any, dt: Any, A: Any, B: Any, C: Any,
                               D: Any, z: Any, dt_bias: Any) -> Any:
        return self._guard(cuda_ops.selective_state_update, state, x, dt, A, B, C, D, z, dt_bias,
                           True, stream=self.stream)

    def dt_state_update(self, state: Any, x: Any, dt_in: Any, dt_proj: Any, A: Any, B: Any,
                        C: Any, D: Any, z: Any, dt_bias: Any) -> Any:
        """As Backend.dt_state_update in one call (csrc/cuda/fused_gemm.cu: one kernel at batch
        1 where the product would run on the GEMV's one-row kernel), dt in act_dtype as
        matmul writes it, when dt_in and dt_proj are 16-bit of one dtype."""
        dts = {str(getattr(dt_in, "dtype", None)), str(getattr(dt_proj, "dtype", None))}
        if not self.fuse_dt_proj or len(dts) != 1 or dts - {"bfloat16", "float16"}:
            return super().dt_state_update(state, x, dt_in, dt_proj, A, B, C, D, z, dt_bias)
        return self._guard(dt_state_update, state, x, dt_in, dt_proj, A, B, C, D, z, dt_bias,
                           True, dt_dtype=self.act_dtype, stream=self.stream)

    def swa_attention(self, q: Any, k: Any, v: Any, window: Optional[int]) -> Any:
        return self._guard(cuda_ops.swa_attention, q, k, v, window, stream=self.stream)

    def swa_decode(self, q: Any, k_cache: Any, v_cache: Any, pos: Any, n_valid: Any) -> Any:
        """pos / n_valid: host integers (checked) or device int64 arrays (the caller's)."""
        def run() -> Any:
            cap = k_cache.shape[1]
            if not isinstance(n_valid, DeviceArray):
                nv = np.asarray(n_valid, dtype=np.int64)
                if nv.size and (nv.min() < 1 or nv.max() > cap):
                    raise ValueError(f"n_valid: expected 1 <= n_valid[b] <= capacity ({cap}), "
                                     f"got {nv.min()}..{nv.max()}")
            if not isinstance(pos, DeviceArray):
                p = np.asarray(pos, dtype=np.int64)
                if p.size and p.min() < 0:
                    raise ValueError(f"pos: expected positions >= 0, got {p.min()}")
            return cuda_ops.swa_decode(q, k_cache, v_cache, self._ints(pos), self._ints(n_valid),
                                       stream=self.stream)
        return self._guard(run)
