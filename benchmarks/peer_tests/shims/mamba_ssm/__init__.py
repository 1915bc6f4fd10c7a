"""Test shim: mamba_ssm's module paths over samba_ext.torch, for running mamba's own test
files (benchmarks/peer_tests). Not an installable package; only the submodules those tests
import exist."""
