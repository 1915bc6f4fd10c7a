"""Test shim of causal_conv1d.causal_conv1d_interface.

causal_conv1d_fn, causal_conv1d_update: samba_ext.torch's. causal_conv1d_ref,
causal_conv1d_update_ref: causal-conv1d's own, executed from the upstream file
($PEER_UPSTREAM/causal-conv1d/causal_conv1d/causal_conv1d_interface.py).
"""
import torch  # noqa: F401 - a global of the upstream reference code
import torch.nn.functional as F  # noqa: F401
from peer_upstream_src import exec_upstream
from samba_ext.torch import causal_conv1d_fn, causal_conv1d_update

__all__ = ["causal_conv1d_fn", "causal_conv1d_update"]
__all__ += exec_upstream(globals(), "causal-conv1d/causal_conv1d/causal_conv1d_interface.py",
                         ["causal_conv1d_ref", "causal_conv1d_update_ref"])
