"""Bridges to other tools (optional dependencies, imported only when used).

* :mod:`samba_ext.integrations.lmeval` -- a ``samba-ext`` model for EleutherAI's
  lm-evaluation-harness (``pip install 'samba-ext[lm-eval]'``), and
  :mod:`samba_ext.integrations.lmeval_tasks` with the passkey / phonebook task YAMLs.
"""
