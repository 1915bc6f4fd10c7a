"""Test shim: causal_conv1d's module paths over samba_ext.torch, for running causal-conv1d's
own test file (benchmarks/peer_tests). Not an installable package."""
from causal_conv1d.causal_conv1d_interface import causal_conv1d_fn, causal_conv1d_update

__all__ = ["causal_conv1d_fn", "causal_conv1d_update"]
