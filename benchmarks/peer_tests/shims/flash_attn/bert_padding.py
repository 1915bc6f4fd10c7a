"""Test shim of flash_attn.bert_padding: flash-attention's own file (pure torch + einops:
unpad_input, pad_input and their autograd index functions), executed whole from
$PEER_UPSTREAM/flash-attention/flash_attn/bert_padding.py. The test builds its varlen
inputs and references with it."""
from peer_upstream_src import exec_upstream

exec_upstream(globals(), "flash-attention/flash_attn/bert_padding.py")
