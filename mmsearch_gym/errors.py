"""Typed exceptions for mistakes a *user* makes (bad config, missing file, strict-replay miss).

Model output never raises: malformed text becomes an ``Invalid`` action instead. These
exceptions are for the person running the code, and each message says what to do.
"""

from __future__ import annotations


class MMSearchError(Exception):
    """Base class of every exception raised by mmsearch_gym."""


class ConfigError(MMSearchError, ValueError):
    """A configuration value (env kwarg, recipe field, CLI flag) is wrong."""


class DataError(MMSearchError, ValueError):
    """A data file (task set, cassette, trajectory) is malformed; the message names the line."""
