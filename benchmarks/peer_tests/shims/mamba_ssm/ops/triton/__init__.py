"""Test shim package (see mamba_ssm/__init__.py)."""
