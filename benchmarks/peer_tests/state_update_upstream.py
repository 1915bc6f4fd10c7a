"""Upstream mamba's Triton ``selective_state_update`` and samba_ext's, side by side, on the
fp16 / bf16 cases of mamba's ``test_selective_state_update``, each against upstream's
``selective_state_update_ref`` with that test's tolerances (fp16 rtol 5e-3 / atol 1e-2,
bf16 rtol 1e-2 / atol 5e-2). It tells a failure of samba_ext from a failure of the test's own
reference: prints one line per case (largest difference of each kernel from the reference,
pass / FAIL, and the two kernels' largest difference from each other) and the failure counts.

Needs a CUDA GPU, torch, triton, einops and the upstream folder of run.sh (PEER_UPSTREAM,
default .gpu/peer_upstream; mamba_ssm/ops/triton/selective_state_update.py is loaded from it,
with the ``softplus`` helper it imports written here: log(1 + e^x) for x <= 20, else x):

    PYTHONPATH=$PWD python3 benchmarks/peer_tests/state_update_upstream.py
"""
from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile

import torch

import samba_ext.torch as st

SOFTPLUS = ("import triton\nimport triton.language as tl\n\n\n@triton.jit\ndef softplus(dt):\n"
            "    return tl.where(dt <= 20.0, tl.math.log(tl.math.exp(dt) + 1), dt)\n")


def load_upstream(up: str):
    """The upstream module, from a temporary package holding its file and a softplus."""
    d = tempfile.mkdtemp()
    pk = os.path.join(d, "mamba_ssm", "ops", "triton")
    os.makedirs(pk)
    for p in (os.path.join(d, "mamba_ssm"), os.path.join(d, "mamba_ssm", "ops"), pk):
        open(os.path.join(p, "__init__.py"), "w").close()
    with open(os.path.join(pk, "softplus.py"), "w") as f:
        f.write(SOFTPLUS)
    shutil.copy(os.path.join(up, "mamba", "mamba_ssm/ops/triton/selective_state_update.py"), pk)
    sys.path.insert(0, d)
    return importlib.import_module("mamba_ssm.ops.triton.selective_state_update")


def main() -> None:
    U = load_upstream(os.environ.get("PEER_UPSTREAM", ".gpu/peer_upstream"))
    fails = {"upstream": 0, "samba_ext": 0}
    n = 0
    for itype in (torch.float16, torch.bfloat16):
        rtol, atol = (5e-3, 1e-2) if itype == torch.float16 else (1e-2, 5e-2)
        for dim in (2048, 2064, 4096):
            for dstate in (16, 32, 64):
                for has_z in (False, True):
                    torch.random.manual_seed(0)  # the upstream test's inputs, in its order
                    bs = 2
                    state = torch.randn(bs, dim, dstate, dtype=itype, device="cuda")
                    x = torch.randn(bs, dim, device="cuda", dtype=itype)
                    dt = torch.randn(bs, dim, device="cuda", dtype=itype)
                    dt_bias = torch.rand(dim, device="cuda") - 4.0
                    A = -torch.rand(dim, dstate, device="cuda") - 1.0
                    B = torch.randn(bs, dstate, device="cuda")
                    C = torch.randn(bs, dstate, device="cuda")
                    D = torch.randn(dim, device="cuda")
                    z = torch.randn_like(x) if has_z else None
                    kw = dict(D=D, z=z, dt_bias=dt_bias, dt_softplus=True)
                    s_ref, s_up, s_se = state.clone(), state.clone(), state.clone()
                    ref = U.selective_state_update_ref(s_ref, x, dt, A, B, C, **kw)
                    o_up = U.selective_state_update(s_up, x, dt, A, B, C, **kw)
                    o_se = st.selective_state_update(s_se, x, dt, A, B, C, **kw)
                    n += 1
                    row = []
                    for name, o, s in (("upstream", o_up, s_up), ("samba_ext", o_se, s_se)):
                        ok = (torch.allclose(o, ref, rtol=rtol, atol=atol)
                              and torch.allclose(s, s_ref, rtol=rtol, atol=atol))
                        fails[name] += not ok
                        diff = (o.float() - ref.float()).abs().max().item()
                        row.append(f"{name} maxdiff {diff:.4f} {'ok' if ok else 'FAIL'}")
                    between = (o_se.float() - o_up.float()).abs().max().item()
                    print(f"{str(itype)[6:]} dim {dim} dstate {dstate} z {has_z}: "
                          + "; ".join(row) + f"; samba_ext vs upstream {between:.4f}")
    print(f"cases {n}, failures {fails}")


if __name__ == "__main__":
    main()
