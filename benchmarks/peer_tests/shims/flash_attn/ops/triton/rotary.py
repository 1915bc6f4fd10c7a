"""Test shim of flash_attn.ops.triton.rotary: flash-attention's own Triton rotary kernel,
executed whole from $PEER_UPSTREAM/flash-attention/flash_attn/ops/triton/rotary.py (needs
triton). Used only by the test's reference (flash_attn.layers.rotary.apply_rotary_emb)."""
from peer_upstream_src import exec_upstream

exec_upstream(globals(), "flash-attention/flash_attn/ops/triton/rotary.py")
