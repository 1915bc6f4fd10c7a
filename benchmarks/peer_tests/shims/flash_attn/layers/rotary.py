"""Test shim of flash_attn.layers.rotary: flash-attention's own file, executed whole from
$PEER_UPSTREAM/flash-attention/flash_attn/layers/rotary.py. The kvcache test rotates its
reference queries and keys with its apply_rotary_emb (flash-attention's Triton kernel, see
flash_attn/ops/triton/rotary.py); samba_ext's rotary is exercised through
flash_attn_with_kvcache(rotary_cos=..., rotary_sin=...)."""
from peer_upstream_src import exec_upstream

exec_upstream(globals(), "flash-attention/flash_attn/layers/rotary.py")
