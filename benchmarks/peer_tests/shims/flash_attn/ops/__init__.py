"""Test shim package (see flash_attn/__init__.py)."""
