"""Test shim of mamba_ssm.ops.triton.selective_state_update.

selective_state_update: samba_ext.torch's. selective_state_update_ref: mamba's own, executed
from the upstream file ($PEER_UPSTREAM/mamba/mamba_ssm/ops/triton/selective_state_update.py).
"""
import torch  # noqa: F401 - a global of the upstream reference code
import torch.nn.functional as F  # noqa: F401
from einops import rearrange, repeat  # noqa: F401
from peer_upstream_src import exec_upstream
from samba_ext.torch import selective_state_update

__all__ = ["selective_state_update"]
__all__ += exec_upstream(globals(), "mamba/mamba_ssm/ops/triton/selective_state_update.py",
                         ["selective_state_update_ref"])
