"""The restricted unpickler of torch ``data.pkl`` files: tensors only, no code, bounded.

A torch ``.pth`` pickles tensors as ``torch._utils._rebuild_tensor_v2(<persistent storage id>,
offset, size, stride, ...)``. :class:`RestrictedUnpickler` resolves only the globals in
:data:`SAFE_GLOBALS` and refuses every other one, so a hostile pickle cannot run code. On top of
that it enforces, per load:

* **No shared mutable state.** Every global handed to the pickle is a fresh, read-only stand-in
  made for this load (storage types, the rebuild functions); BUILD (the only opcode that sets
  attributes) is refused on anything except an ``OrderedDict`` this load created, and even there
  its state is checked and dropped (torch uses it only for ``_metadata``). The mutating opcodes
  (APPEND(S), SETITEM(S), ADDITEMS) only apply to containers this load created. A hostile file
  therefore cannot change what a later load in the same process does.
* **Bounded nesting.** Every container the pickle builds has a depth (1 + the deepest of its
  items); more than :data:`MAX_DEPTH` is refused *before* anything hashes, compares or walks it
  (CPython hashes nested tuples recursively in C: ~200K levels overflow the C stack). A
  container may not grow deeper after it was placed inside another one (only cyclic pickles do
  that), so the recorded depths stay exact.
* **Bounded memory.** Each opcode is charged what it makes the unpickler hold (``sys.getsizeof``
  of a new object, stack and memo slots, MARK's new stack, the bookkeeping of this class);
  the total may not exceed :func:`object_budget` of the ``data.pkl`` size (48 x + 512 KiB, so
  the whole load stays within the 64 x file size + 1 MiB of docs/reliability.md). Tensor bytes
  are charged separately (:class:`TensorBudget`).

Deliberately built on the pure-Python ``pickle._Unpickler``: the C unpickler allocates what the
pickle claims before checking it (a LONG_BINPUT index of 2**32-1 grows its memo to GBs).
"""
from __future__ import annotations

import collections
import pickle
import sys
from typing import Any, Callable

import numpy as np

from ..errors import CheckpointError

__all__ = ["RestrictedUnpickler", "StorageType", "TensorBudget", "STORAGE_DTYPES", "MAX_DEPTH",
           "SAFE_GLOBALS", "object_budget"]

MAX_DEPTH = 100
"""Deepest container nesting accepted in a pickle (torch checkpoints with optimizer state and
nested hyper-parameters stay below 15)."""

# torch storage class name -> numpy dtype of its elements (BFloat16 kept as raw uint16 bits)
STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}

# (module, name) the pickle may name -> what it gets (built per load by _fresh_globals)
SAFE_GLOBALS: tuple[tuple[str, str], ...] = (
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("collections", "OrderedDict"),
) + tuple(("torch", k) for k in STORAGE_DTYPES)

_TRACK_COST = 160       # bytes of bookkeeping per tracked container (dict slot + list + int)
_SLOT = 8               # one stack / list slot
_MEMO_COST = 72        # one memo entry (dict slot, amortised growth, int key)
_MARK_COST = 72         # MARK: a new empty stack list + its metastack slot
_ARRAY_COST = 128       # an ndarray header (its data is charged to the TensorBudget)


def object_budget(pkl_size: int) -> int:
    """Bytes of Python objects the unpickler may build from a ``pkl_size``-byte data.pkl."""
    return 48 * pkl_size + (512 << 10)


class _ReadOnly:
    """Base of the per-load stand-ins: attributes are set once in __init__, never after."""

    __slots__ = ()

    def __setattr__(self, key: str, value: Any) -> None:
        raise CheckpointError(f"refusing to set attribute {key!r} of {self!r}: objects named by "
                              "a checkpoint are read-only")

    def __delattr__(self, key: str) -> None:
        raise CheckpointError(f"refusing to delete attribute {key!r} of {self!r}")


class StorageType(_ReadOnly):
    """Stand-in for ``torch.<X>Storage`` (a marker naming the element dtype)."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", STORAGE_DTYPES[name])

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _Callable(_ReadOnly):
    """Stand-in for an allowed torch function, bound to one load."""

    __slots__ = ("qualname", "fn")

    def __init__(self, qualname: str, fn: Callable[..., Any]):
        object.__setattr__(self, "qualname", qualname)
        object.__setattr__(self, "fn", fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return self.qualname


class TensorBudget:
    """Running bound on the tensor bytes one load may materialise (a few times the file size).
    Without it a small file can name one storage thousands of times (through the memo) or view
    it with stride 0, each copy costing the full claimed size."""

    def __init__(self, limit: int, fname: str):
        self.limit = limit
        self.used = 0
        self.fname = fname

    def charge(self, nbytes: int, what: str) -> None:
        if self.used + nbytes > self.limit:
            raise CheckpointError(
                f"{self.fname}: {what} would bring the tensor bytes materialised to "
                f"{self.used + nbytes}, more than {self.limit} (a few times the file size): the "
                "pickle references its storages many times or broadcasts them (stride 0); "
                "refusing a likely decompression bomb")
        self.used += nbytes


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None,
                       state: Any = None) -> Any:
    return data


_CONTAINERS = (tuple, list, dict, set, frozenset)
_PUSH_CONTAINER = {pickle.EMPTY_TUPLE, pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3,
                   pickle.EMPTY_LIST, pickle.LIST, pickle.EMPTY_DICT, pickle.DICT,
                   pickle.EMPTY_SET, pickle.FROZENSET}
_CALLS = {pickle.REDUCE, pickle.NEWOBJ, pickle.NEWOBJ_EX, pickle.OBJ, pickle.INST,
          pickle.BINPERSID, pickle.PERSID}
_GETS = {pickle.GET, pickle.BINGET, pickle.LONG_BINGET, pickle.DUP}
_PUTS = {pickle.PUT, pickle.BINPUT, pickle.LONG_BINPUT, pickle.MEMOIZE}
_NO_PUSH = {pickle.POP, pickle.POP_MARK, pickle.STOP, pickle.FRAME, pickle.PROTO}


def _items(obj: Any) -> Any:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield v
    else:
        yield from obj


def _refuse_extension(self: Any) -> None:
    raise CheckpointError("refusing the pickle extension-registry opcodes (EXT1/EXT2/EXT4): "
                          "they name globals outside find_class")


class RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Unpickler of one torch ``data.pkl`` (see the module docstring for what it guarantees).

    ``load_storage(storage_type, key, numel)`` resolves a persistent storage id;
    ``rebuild(storage, offset, size, stride)`` turns a storage view into an ndarray. Both are
    supplied by the zip reader (samba_ext/litgpt.py), which knows the file."""

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, f: Any, pkl_size: int,
                 load_storage: Callable[[StorageType, str, Any], Any],
                 rebuild: Callable[..., np.ndarray]):
        super().__init__(f)
        self._load_storage = load_storage
        self._globals = self._fresh_globals(rebuild)
        self._owned: set[int] = {id(v) for v in self._globals.values()}
        # id(container) -> [container, depth, contained]; holds a reference so ids stay unique
        self._info: dict[int, list] = {}
        self._charged = 0
        self._limit = object_budget(pkl_size)

    @staticmethod
    def _fresh_globals(rebuild: Callable[..., np.ndarray]) -> dict[tuple[str, str], Any]:
        def rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any,
                              requires_grad: Any = False, backward_hooks: Any = None,
                              metadata: Any = None) -> np.ndarray:
            return rebuild(storage, storage_offset, size, stride)

        g: dict[tuple[str, str], Any] = {
            ("torch._utils", "_rebuild_tensor_v2"):
                _Callable("torch._utils._rebuild_tensor_v2", rebuild_tensor_v2),
            ("torch._utils", "_rebuild_parameter"):
                _Callable("torch._utils._rebuild_parameter", _rebuild_parameter),
            ("torch._utils", "_rebuild_parameter_with_state"):
                _Callable("torch._utils._rebuild_parameter_with_state", _rebuild_parameter),
            # an immutable built-in type: `setattr(OrderedDict, ...)` raises TypeError
            ("collections", "OrderedDict"): collections.OrderedDict,
        }
        g.update({("torch", k): StorageType(k) for k in STORAGE_DTYPES})
        assert set(g) == set(SAFE_GLOBALS)
        return g

    # -------------------------------------------------------------- globals, storages ---
    def find_class(self, module: str, name: str) -> Any:
        obj = self._globals.get((module, name))
        if obj is None:
            raise CheckpointError(f"refusing to load the global '{module}.{name}': only tensors "
                                  "and plain containers may appear in a checkpoint (a pickle "
                                  "naming other globals can run arbitrary code)")
        return obj

    def persistent_load(self, pid: Any) -> Any:
        if (not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage"
                or not isinstance(pid[1], StorageType) or id(pid[1]) not in self._owned
                or not isinstance(pid[2], str)):
            raise CheckpointError(f"unexpected persistent id {pid!r:.200} (expected a torch "
                                  "storage reference)")
        return self._load_storage(pid[1], pid[2], pid[4])

    # ------------------------------------------------------------------- accounting ---
    def _charge(self, nbytes: int) -> None:
        self._charged += nbytes
        if self._charged > self._limit:
            raise CheckpointError(
                f"the pickle builds more than {self._limit} bytes of Python objects (48 x its "
                "size + 512 KiB): refusing a memory-amplification pickle (e.g. millions of "
                "empty containers)")

    def _track(self, obj: Any) -> None:
        """Record a container this load just built (depth from its items). A tuple or frozenset
        of leaves only is not recorded (its depth is 1 and it can never change)."""
        if id(obj) in self._info:       # the empty tuple / frozenset singletons, a returned arg
            return
        d = 0
        for x in _items(obj):
            rec = self._info.get(id(x))
            if rec is not None:
                rec[2] = True
                d = max(d, rec[1])
            elif d == 0 and isinstance(x, (tuple, frozenset)):
                d = 1
        if d + 1 > MAX_DEPTH:
            raise CheckpointError(f"containers nested more than {MAX_DEPTH} deep: refusing "
                                  "(deep nesting overflows the C stack when hashed)")
        if d == 0 and isinstance(obj, (tuple, frozenset)):
            self._charge(sys.getsizeof(obj))
            return
        self._info[id(obj)] = [obj, d + 1, False]
        self._charge(sys.getsizeof(obj) + _TRACK_COST)

    def _mutated(self, obj: Any, items: list, size_before: int) -> None:
        rec = self._info[id(obj)]
        d = rec[1]
        for x in items:
            r = self._info.get(id(x))
            if r is not None:
                r[2] = True
                d = max(d, r[1] + 1)
            elif isinstance(x, (tuple, frozenset)):
                d = max(d, 2)
        if d > rec[1]:
            if d > MAX_DEPTH:
                raise CheckpointError(f"containers nested more than {MAX_DEPTH} deep: refusing "
                                      "(deep nesting overflows the C stack when hashed)")
            if rec[2]:
                raise CheckpointError("a container grows deeper after it was placed inside "
                                      "another one (a cyclic pickle); checkpoints never do this")
            rec[1] = d
        self._charge(max(0, sys.getsizeof(obj) - size_before) + _SLOT * len(items))

    def _mutable_target(self, obj: Any, op: str) -> None:
        rec = self._info.get(id(obj))
        if rec is None or not isinstance(obj, (list, dict, set)):
            raise CheckpointError(f"{op} on {type(obj).__name__} refused: a pickle may only fill "
                                  "lists, dicts and sets it created")

    def _pushed(self, op: bytes, n_before: int) -> None:
        """Charge (and track) what an opcode left on the stack."""
        if op in _PUSH_CONTAINER:
            self._track(self.stack[-1])
            self._charge(_SLOT)
        elif op in _CALLS:
            top = self.stack[-1]
            if isinstance(top, np.ndarray):
                self._charge(_ARRAY_COST)
            elif isinstance(top, _CONTAINERS):
                self._track(top)
            else:
                self._charge(sys.getsizeof(top))
            self._charge(_SLOT)
        elif op in _GETS:
            self._charge(_SLOT)
        elif op in _PUTS:
            self._charge(_MEMO_COST)
        elif op == pickle.MARK:
            self._charge(_MARK_COST)
        elif op not in _NO_PUSH and len(self.stack) > n_before:
            top = self.stack[-1]        # a leaf: int, float, str, bytes, None, bool
            self._charge(_SLOT + (0 if isinstance(top, np.ndarray) else sys.getsizeof(top)))

    # -------------------------------------------------------------------- opcodes ---
    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) is not collections.OrderedDict or id(inst) not in self._info:
            raise CheckpointError(f"BUILD (setting attributes) on {inst!r:.80} refused: only an "
                                  "OrderedDict the checkpoint created may carry a state")
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise CheckpointError("BUILD state of an OrderedDict must be a dict with string "
                                  f"keys, got {type(state).__name__}")
        # torch stores the state dict's `_metadata` here; it is not needed: dropped

    def _mutating(orig: Callable[..., None], name: str, from_mark: bool  # noqa: N805
                  ) -> Callable[..., None]:
        def op(self: "RestrictedUnpickler") -> None:
            if from_mark:
                if not self.metastack or not self.metastack[-1]:
                    raise CheckpointError(f"{name} without a target below its MARK")
                target, items = self.metastack[-1][-1], list(self.stack)
            else:
                n = 2 if name == "SETITEM" else 1
                if len(self.stack) < n + 1:
                    raise CheckpointError(f"{name} on a stack that is too short")
                target, items = self.stack[-1 - n], self.stack[-n:]
            self._mutable_target(target, name)
            before = sys.getsizeof(target)
            orig(self)
            self._mutated(target, items, before)
        return op

    dispatch[pickle.BUILD[0]] = load_build
    for _op, _name, _mark in ((pickle.APPEND, "APPEND", False), (pickle.APPENDS, "APPENDS", True),
                              (pickle.SETITEM, "SETITEM", False),
                              (pickle.SETITEMS, "SETITEMS", True),
                              (pickle.ADDITEMS, "ADDITEMS", True)):
        dispatch[_op[0]] = _mutating(dispatch[_op[0]], _name, _mark)
    for _op in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_op[0]] = _refuse_extension
    del _op, _name, _mark

    def load(self) -> Any:
        """Unpickle, charging every opcode (see the module docstring)."""
        base = self.dispatch
        outer = self

        class _Charged(dict):
            def __missing__(self, key: int) -> Callable[..., None]:
                fn = base.get(key)
                if fn is None:
                    raise pickle.UnpicklingError(f"invalid load key, {bytes([key])!r}")
                op = bytes([key])

                def charged(u: Any) -> None:
                    n = len(u.stack)
                    fn(u)
                    outer._pushed(op, n)
                self[key] = charged
                return charged

        self.dispatch = _Charged()   # instance attribute: pickle's load() reads self.dispatch
        try:
            return super().load()
        finally:
            self.dispatch = base
            self._info.clear()
