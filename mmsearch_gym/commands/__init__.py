"""Subcommands of ``mmsearch-gym``, one module each (see mmsearch_gym.cli)."""
