"""Test shim of causal_conv1d.causal_conv1d_varlen.

causal_conv1d_varlen_states (gathering each packed sequence's last tokens into conv states)
has no samba_ext counterpart: it raises NotImplementedError, so its cases count as
unsupported. causal_conv1d_varlen_states_ref: causal-conv1d's own, from the upstream file.
"""
import torch  # noqa: F401 - a global of the upstream reference code
from peer_upstream_src import exec_upstream
from torch import Tensor  # noqa: F401

__all__ = ["causal_conv1d_varlen_states"]


def causal_conv1d_varlen_states(x, cu_seqlens, state_len):
    """Not provided by samba_ext (raises NotImplementedError)."""
    raise NotImplementedError("causal_conv1d_varlen_states: samba_ext has no varlen "
                              "conv-state gather")


__all__ += exec_upstream(globals(), "causal-conv1d/causal_conv1d/causal_conv1d_varlen.py",
                         ["causal_conv1d_varlen_states_ref"])
