"""Sizes the CUDA kernels do not handle but the CPU kernels do (csrc/cuda: scan.cu,
scan_bwd.cu, attention_fwd_lse.cu): refused with NotImplementedError naming the argument
before any kernel runs, instead of the kernel API's generic ValueError.
"""
from __future__ import annotations

from torch import Tensor

__all__ = ["scan", "scan_backward", "attention_heads", "attention"]

_MAX_DSTATE = 256        # scan forward / step / backward: dstate in 1..256
_MAX_GRID_Y = 65535      # CUDA grid y/z limit: batch, heads
_MAX_SEQLEN = 1 << 30    # attention: sequence lengths in 0..2^30


def _refuse(name: str, what: str) -> None:
    raise NotImplementedError(f"{name}: {what} is not supported on CUDA (the CPU kernels "
                              "handle it; move the tensors to the CPU)")


def scan(A: Tensor) -> None:
    """Selective scan / state update: A (dim, dstate)."""
    if A.shape[-1] > _MAX_DSTATE:
        _refuse("A", f"dstate = {A.shape[-1]} > {_MAX_DSTATE}")


def scan_backward(A: Tensor, B: Tensor, batch: int) -> None:
    """Selective scan backward: batch and ngroups x ceil(dstate / 16) within a grid axis."""
    scan(A)
    groups = B.shape[1] if B.dim() == 4 else 1
    if batch > _MAX_GRID_Y:
        _refuse("u", f"a batch of {batch} > {_MAX_GRID_Y} in the backward")
    if groups * -(-A.shape[-1] // 16) > _MAX_GRID_Y:
        _refuse("B", f"ngroups x ceil(dstate / 16) = {groups * -(-A.shape[-1] // 16)} > "
                f"{_MAX_GRID_Y} in the backward")


def attention_heads(q: Tensor) -> None:
    """Attention of any batch: q (..., nheads, headdim)."""
    nheads, hd = q.shape[-2], q.shape[-1]
    if hd > 256:
        _refuse("q", f"headdim = {hd} > 256")
    if nheads > _MAX_GRID_Y:
        _refuse("q", f"nheads = {nheads} > {_MAX_GRID_Y}")


def attention(q: Tensor, k: Tensor) -> None:
    """Attention forward / backward: q (batch, Lq, nheads, headdim), k (batch, Lk, ...)."""
    attention_heads(q)
    batch, lq = q.shape[0], q.shape[1]
    if batch > _MAX_GRID_Y:
        _refuse("q", f"batch = {batch} > {_MAX_GRID_Y}")
    if lq > _MAX_SEQLEN or k.shape[1] > _MAX_SEQLEN:
        _refuse("q", f"a sequence length > 2^30 (seqlen_q = {lq}, seqlen_k = {k.shape[1]})")
