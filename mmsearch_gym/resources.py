"""Locate files the project ships next to the package (env specs, cassettes, recipes).

In a wheel they live in ``mmsearch_gym/_bundled/<name>`` (hatch force-include); in a source
checkout or editable install they are the top-level folders ``envs/``, ``offline_cache/`` and
``policies/``. Callers never care which.
"""

from __future__ import annotations

from pathlib import Path

from mmsearch_gym.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
_KNOWN = ("envs", "offline_cache", "policies")


def resource_dir(name: str) -> Path:
    """Return the folder holding the shipped resource ``name`` (one of envs, offline_cache, policies)."""
    if name not in _KNOWN:
        raise ConfigError(f"unknown resource folder {name!r}; expected one of {_KNOWN}")
    for candidate in (PACKAGE_DIR / "_bundled" / name, PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise ConfigError(
        f"the shipped folder {name!r} was not found next to {PACKAGE_DIR}; reinstall mmsearch-gym"
    )


def resource_path(name: str, filename: str) -> Path:
    """Path of ``filename`` inside the shipped folder ``name``; raises ConfigError if absent."""
    path = resource_dir(name) / filename
    if not path.exists():
        available = sorted(p.name for p in resource_dir(name).iterdir())
        raise ConfigError(f"{filename!r} is not in the shipped {name}/ folder; available: {available}")
    return path
