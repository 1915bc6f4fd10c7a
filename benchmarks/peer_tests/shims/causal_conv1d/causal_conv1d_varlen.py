"""Test shim of causal_conv1d.causal_conv1d_varlen.

causal_conv1d_varlen_states: samba_ext.torch's. causal_conv1d_varlen_states_ref: causal-conv1d's
own, from the upstream file.
"""
import torch  # noqa: F401 - a global of the upstream reference code
from peer_upstream_src import exec_upstream
from torch import Tensor  # noqa: F401

from samba_ext.torch import causal_conv1d_varlen_states

__all__ = ["causal_conv1d_varlen_states"]
__all__ += exec_upstream(globals(), "causal-conv1d/causal_conv1d/causal_conv1d_varlen.py",
                         ["causal_conv1d_varlen_states_ref"])
