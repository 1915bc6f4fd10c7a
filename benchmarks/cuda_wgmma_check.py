"""Quick self-check of the Hopper prefill (variant v4, csrc/cuda/attention_wgmma.cu) on small
shapes, against a float64 reference and against variant v3 on the same inputs. Runs in
seconds, so a wrong shared-memory layout or matrix descriptor shows up before the full tests.

Usage (an sm_90 GPU, samba_ext built with 90 in SAMBA_EXT_CUDA_ARCHS; no torch needed):
    python3 benchmarks/cuda_wgmma_check.py [--verbose]

Cases: one key tile, partial tiles, GQA 8:1, window shorter and longer than the sequence, a
causal offset (more keys than queries), head dims 64 and 128 (and 96, padded to 128), each key
tile size, ring depth and schedule (SAMBA_EXT_ATTN_V4_BK = 64, 128; _STAGES = 2, 3, 4; _SKEW = 0, 1, 2;
the alternating schedule also with TMA loads, _TMA = 1),
bfloat16 and float16. For every case it prints
the relative norm error and the largest absolute error against float64 (and against v3);
where the tolerance (relative norm, bfloat16 1e-2, float16 2e-3 - tests/cuda_util.RTOL) is
exceeded it also prints where the errors sit: the largest error per group of 8 head-dim
columns and per 8-row group of the 64 rows of a warpgroup, which tells a wrong swizzle or
descriptor offset (whole 8-column / 8-row groups wrong) from a masking error (rows near
window edges). Exit status 0 when every case passes, 1 when one fails, 2 when v4 cannot run
here (the reason is printed).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

RTOL = {"bfloat16": 1e-2, "float16": 2e-3}

# (name, B, Lq, Lk, H, Hkv, hd, window). The window-1 cases isolate O += P V: each query
# sees only its own key, so P is exactly 1 there and the output is that key's V row whatever
# S = Q K^T computed - if they pass while the others fail, the Q / K side (S) is wrong.
CASES = [
    ("window-1-V-only-hd64", 1, 200, 200, 2, 1, 64, 1),
    ("window-1-V-only-hd128", 1, 200, 200, 2, 1, 128, 1),
    ("one-tile-hd64", 1, 64, 64, 1, 1, 64, None),
    ("one-tile-hd128", 1, 128, 128, 1, 1, 128, None),
    ("one-query", 1, 1, 1, 2, 1, 64, None),
    ("partial-tiles-hd64", 1, 200, 200, 2, 2, 64, None),
    ("partial-tiles-hd128", 1, 77, 77, 2, 1, 128, None),
    ("gqa8:1-hd128-w100", 1, 300, 300, 8, 1, 128, 100),
    ("gqa8:1-hd64-w2048", 1, 700, 700, 8, 1, 64, 2048),
    ("window<L-hd64", 1, 1000, 1000, 4, 2, 64, 130),
    ("window<L-hd128", 1, 600, 600, 2, 2, 128, 70),
    ("window-2", 1, 150, 150, 2, 2, 64, 2),
    ("window>L", 1, 65, 65, 2, 1, 64, 1000),
    ("causal-offset", 1, 77, 333, 4, 2, 128, None),
    ("causal-offset-w90", 2, 200, 700, 4, 2, 64, 90),
    ("hd96-padded", 1, 257, 257, 4, 2, 96, None),
    ("hd40-padded", 2, 130, 130, 4, 2, 40, 33),
]


def round_to(a: np.ndarray, dtype: str) -> np.ndarray:
    """float64 copy of a rounded to dtype (round to nearest even)."""
    if dtype == "float16":
        return a.astype(np.float16).astype(np.float64)
    u = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint32) << 16
    return r.astype(np.uint32).view(np.float32).astype(np.float64)


def reference(q, k, v, window):
    """float64 causal sliding-window attention: q (B, Lq, H, hd), k, v (B, Lk, Hkv, hd);
    query i sits at key position i + Lk - Lq and sees keys pos - window < j <= pos."""
    B, Lq, H, hd = q.shape
    Lk, Hkv = k.shape[1], k.shape[2]
    G = H // Hkv
    pos = np.arange(Lq)[:, None] + (Lk - Lq)
    j = np.arange(Lk)[None, :]
    allowed = (j <= pos) & ((j > pos - window) if window is not None else True)
    out = np.zeros_like(q)
    for b in range(B):
        for h in range(H):
            s = (q[b, :, h] @ k[b, :, h // G].T) / np.sqrt(hd)
            s = np.where(allowed, s, -np.inf)
            p = np.exp(s - s.max(axis=1, keepdims=True))
            out[b, :, h] = (p / p.sum(axis=1, keepdims=True)) @ v[b, :, h // G]
    return out


def where_errors(err: np.ndarray) -> str:
    """Largest error per 8-column group and per 8-row group (row % 64) of err (B, Lq, H, hd)."""
    hd = err.shape[-1]
    cols = [float(err[..., c:c + 8].max()) for c in range(0, hd, 8)]
    rows = err.max(axis=(0, 2, 3))
    rgroups = [float(rows[[i for i in range(len(rows)) if (i % 64) // 8 == g]].max())
               if any((i % 64) // 8 == g for i in range(len(rows))) else 0.0 for g in range(8)]
    return ("    max |err| per 8 columns: " + " ".join(f"{x:.1e}" for x in cols) +
            "\n    max |err| per 8-row group of 64: " + " ".join(f"{x:.1e}" for x in rgroups))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--verbose", action="store_true", help="error map for every case")
    args = ap.parse_args()
    import samba_ext
    from samba_ext import cuda as samba_cuda
    from samba_ext.cuda import runtime

    if not samba_ext.cuda_available():
        print("needs samba_ext built with CUDA and a GPU", file=sys.stderr)
        return 2
    cu = runtime.require()
    old = cu._attn_variant(0, -1)
    rng = np.random.default_rng(1234)
    failed = 0
    try:
        for dtype in ("bfloat16", "float16"):
            for bk, stages, skew, tma in (("64", "2", "0", "0"), ("128", "2", "0", "0"),
                                          ("64", "3", "0", "0"), ("64", "4", "0", "0"),
                                          ("128", "3", "0", "0"), ("64", "3", "1", "0"),
                                          ("64", "4", "1", "0"), ("128", "3", "1", "0"),
                                          ("64", "4", "2", "0"), ("128", "3", "2", "0"),
                                          ("64", "4", "2", "1"), ("64", "3", "2", "1"),
                                          ("128", "3", "2", "1")):
                os.environ["SAMBA_EXT_ATTN_V4_BK"] = bk
                os.environ["SAMBA_EXT_ATTN_V4_STAGES"] = stages
                os.environ["SAMBA_EXT_ATTN_V4_SKEW"] = skew
                os.environ["SAMBA_EXT_ATTN_V4_TMA"] = tma
                for name, B, Lq, Lk, H, Hkv, hd, W in CASES:
                    q, k, v = (round_to(rng.standard_normal(s), dtype) for s in
                               ((B, Lq, H, hd), (B, Lk, Hkv, hd), (B, Lk, Hkv, hd)))
                    dq, dk, dv = (samba_cuda.to_device(x.astype(np.float32), dtype)
                                  for x in (q, k, v))
                    outs = {}
                    for var in (3, 4):
                        cu._attn_variant(0, var)
                        try:
                            y = samba_ext.swa_attention(dq, dk, dv, W)
                        except ValueError as e:
                            if var == 4 and "v4" in str(e):
                                print(f"v4 cannot run here: {e}", file=sys.stderr)
                                return 2
                            raise
                        outs[var] = y.to_numpy().astype(np.float64)
                    ref = reference(q, k, v, W)
                    got = outs[4]
                    err = np.abs(got - ref)
                    finite = bool(np.all(np.isfinite(got)))
                    rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref)) if finite \
                        else float("inf")
                    rel3 = float(np.linalg.norm(got - outs[3]) / np.linalg.norm(ref)) if finite \
                        else float("inf")
                    ok = finite and rel <= RTOL[dtype]
                    failed += not ok
                    print(f"{'ok  ' if ok else 'FAIL'} {dtype:8s} BK={bk:3s} S={stages} skew={skew} "
                          f"tma={tma} {name:22s} "
                          f"rel {rel:.2e}  max|err| {float(err.max()) if finite else float('inf'):.2e}"
                          f"  vs v3 {rel3:.2e}", flush=True)
                    if (not ok or args.verbose) and finite:
                        print(where_errors(err))
    finally:
        os.environ.pop("SAMBA_EXT_ATTN_V4_BK", None)
        os.environ.pop("SAMBA_EXT_ATTN_V4_STAGES", None)
        os.environ.pop("SAMBA_EXT_ATTN_V4_SKEW", None)
        os.environ.pop("SAMBA_EXT_ATTN_V4_TMA", None)
        cu._attn_variant(0, old)
    print(f"{failed} case(s) failed" if failed else "all cases passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
