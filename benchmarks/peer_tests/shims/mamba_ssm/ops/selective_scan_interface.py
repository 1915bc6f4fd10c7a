"""Test shim of mamba_ssm.ops.selective_scan_interface.

selective_scan_fn, mamba_inner_fn: samba_ext.torch's. selective_scan_ref, mamba_inner_ref:
mamba's own, executed from the upstream file ($PEER_UPSTREAM/mamba/mamba_ssm/ops/
selective_scan_interface.py). Upstream's mamba_inner_ref calls the package's
causal_conv1d_fn and selective_scan_fn; here those names are samba_ext's, as the upstream
reference calls upstream's kernels.
"""
import math  # noqa: F401 - a global of the upstream reference code

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401
from einops import rearrange, repeat  # noqa: F401
from peer_upstream_src import exec_upstream
from samba_ext.torch import causal_conv1d_fn, mamba_inner_fn, selective_scan_fn

__all__ = ["selective_scan_fn", "mamba_inner_fn", "causal_conv1d_fn"]
__all__ += exec_upstream(globals(), "mamba/mamba_ssm/ops/selective_scan_interface.py",
                         ["selective_scan_ref", "mamba_inner_ref"])
