"""One call of one samba_ext CUDA kernel at a real size, inside a CUDA profiler range, for
Nsight Compute (``ncu --profile-from-start off``): the inputs are made and the call warmed up
outside the range, so only the timed call's kernels are profiled.

Cases (bf16 data, the sizes of the issues' targets):
  scan_b1, scan_b8   selective_scan, dim 4096, d_state 16, softplus, gate z; batch 1 x L 32K
                     and batch 8 x L 4K (the exp-floor targets); *_warp, *_tile2: the warp
                     and tile2 kernels (SAMBA_EXT_SCAN_VARIANT=warp | tile2)
  scan_bwd, scan_bwd_b8
                     grad.selective_scan_bwd, batch 1 / 8, dim 4096, L 4K
  swa, swa_v4        swa_attention, L 32K, 32 query / 4 KV heads x 64, window 2048 (the
                     library's prefill choice, and the sm_90a wgmma variant v4)
  causal             swa_attention, full causal, L 4K, 32 / 4 heads x 64
  attn_bwd           grad.attention_bwd, full causal, L 4K, 32 / 4 heads x 64, on the mma.sync
                     kernel (SAMBA_EXT_ATTN_BWD_WGMMA=0)
  attn_bwd_swa       the same with window 2048 (the FlexAttention comparison of #18)
  attn_bwd_wgmma, attn_bwd_swa_wgmma
                     the two above on the sm_90a wgmma kernel (SAMBA_EXT_ATTN_BWD_WGMMA=require)
  attn_bwd_swa16k_wgmma, attn_bwd_swa_d128_wgmma
                     the wgmma kernel on the two cases of benchmarks/gpu_backward_attention.py
                     slower than FlexAttention: window 2048 at L 16K, and 12 / 12 heads x 128
                     at L 4K
  decode_b1_4k, decode_b1_16k, decode_b1_32k
                     swa_decode, batch 1, caches of 4K / 16K / 32K keys, 32 query / 4 KV heads x 64
                     (the decode cases below #17's 70% bandwidth target)
  gemv               samba_ext.cuda.blas.matmul, M 1, K 2048, N 8192 (a decode projection),
                     with the GEMV kernel on

Usage: ncu ... python3 benchmarks/gpu_profile.py CASE   (benchmarks/cuda_profile_run.sh runs
every case under ncu and writes the reports and a summary).  ``--list`` prints the cases.
"""
from __future__ import annotations

import sys
from typing import Any, Callable

CASES = ("scan_b1", "scan_b8", "scan_b1_warp", "scan_b8_warp", "scan_b1_tile2", "scan_b8_tile2",
         "scan_bwd", "scan_bwd_b8", "swa", "swa_v4", "causal", "attn_bwd", "attn_bwd_swa", "attn_bwd_wgmma",
         "attn_bwd_swa_wgmma", "attn_bwd_swa16k_wgmma", "attn_bwd_swa_d128_wgmma", "decode_b1_4k", "decode_b1_16k", "decode_b1_32k", "gemv")


def _scan_inputs(b: int, d: int, L: int) -> tuple:
    import torch

    g = torch.Generator(device="cuda").manual_seed(0)
    bf, f32 = torch.bfloat16, torch.float32

    def r(*s: int, dt: Any = bf) -> Any:
        return torch.randn(*s, device="cuda", generator=g, dtype=dt)

    N = 16
    u, z = r(b, d, L), r(b, d, L)
    delta = r(b, d, L).mul_(0.5).sub_(3.0)
    Bm, Cm = r(b, N, L), r(b, N, L)
    A = -torch.exp(0.5 * r(d, N, dt=f32))
    D, bias = r(d, dt=f32), 0.5 * r(d, dt=f32)
    return u, delta, A, Bm, Cm, D, z, bias


def _attn_inputs(L: int, H: int, Hkv: int, hd: int) -> tuple:
    import torch

    g = torch.Generator(device="cuda").manual_seed(1)
    mk = lambda h: torch.randn(1, L, h, hd, device="cuda", dtype=torch.bfloat16, generator=g)
    return mk(H), mk(Hkv), mk(Hkv), mk(H)


def make(case: str) -> Callable[[], Any]:
    """The call of ``case``, its inputs allocated."""
    import samba_ext
    from samba_ext import grad
    from samba_ext.cuda import runtime

    if case.startswith(("scan_b1", "scan_b8")):
        import os

        if case.endswith(("_warp", "_tile2")):
            os.environ["SAMBA_EXT_SCAN_VARIANT"] = case.rsplit("_", 1)[1]
        b, L = (1, 32768) if case.startswith("scan_b1") else (8, 4096)
        args = _scan_inputs(b, 4096, L)
        return lambda: samba_ext.selective_scan(*args, True)
    if case in ("scan_bwd", "scan_bwd_b8"):
        import torch

        args = _scan_inputs(8 if case.endswith("b8") else 1, 4096, 4096)
        dout = torch.randn_like(args[0])
        return lambda: grad.selective_scan_bwd(*args, True, dout=dout)
    if case in ("swa", "swa_v4", "causal"):
        L, W = (32768, 2048) if case != "causal" else (4096, None)
        q, k, v, _ = _attn_inputs(L, 32, 4, 64)
        if case == "swa_v4":
            runtime.require()._attn_variant(0, 4)
        return lambda: samba_ext.swa_attention(q, k, v, W)
    if case.startswith("attn_bwd"):
        import os

        # the wgmma kernel (required), or the mma.sync one (0)
        os.environ["SAMBA_EXT_ATTN_BWD_WGMMA"] = "require" if case.endswith("_wgmma") else "0"
        L = 16384 if "16k" in case else 4096
        q, k, v, do = _attn_inputs(L, *((12, 12, 128) if "_d128" in case else (32, 4, 64)))
        ws = (2047, 0) if "_swa" in case else (-1, 0)
        out, lse = grad.attention_fwd(q, k, v, None, True, ws)
        return lambda: grad.attention_bwd(q, k, v, None, True, ws, dout=do, out=out, lse=lse)
    if case.startswith("decode_b1_"):
        import torch

        C = int(case.rsplit("_", 1)[1][:-1]) * 1024
        g = torch.Generator(device="cuda").manual_seed(3)
        kc, vc = (torch.randn(1, C, 4, 64, device="cuda", dtype=torch.bfloat16, generator=g)
                  for _ in range(2))
        q = torch.randn(1, 32, 64, device="cuda", dtype=torch.bfloat16, generator=g)
        out = torch.empty_like(q)
        pos = torch.full((1,), C + 123, device="cuda", dtype=torch.int32)
        nv = torch.full((1,), C, device="cuda", dtype=torch.int32)
        return lambda: samba_ext.swa_decode(q, kc, vc, pos, nv, out=out)
    if case == "gemv":
        import torch

        from samba_ext.cuda.blas import matmul

        runtime.require().gemv_mode(1)
        g = torch.Generator(device="cuda").manual_seed(2)
        x = torch.randn(1, 2048, device="cuda", dtype=torch.bfloat16, generator=g)
        w = torch.randn(8192, 2048, device="cuda", dtype=torch.bfloat16, generator=g)
        y = torch.empty(1, 8192, device="cuda", dtype=torch.bfloat16)
        return lambda: matmul(x, w, trans_b=True, out_dtype="bfloat16", out=y)
    raise SystemExit(f"gpu_profile: unknown case {case!r}; one of {', '.join(CASES)}")


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    if argv[0] == "--list":
        print(" ".join(CASES))
        return 0
    if argv[0] not in CASES:
        print(f"gpu_profile: unknown case {argv[0]!r}; one of {', '.join(CASES)}", file=sys.stderr)
        return 2
    import torch

    fn = make(argv[0])
    for _ in range(2):  # warm-up: module loading, workspaces, autotuning outside the range
        fn()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    fn()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    print(f"gpu_profile: {argv[0]} done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
