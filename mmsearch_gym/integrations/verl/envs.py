"""One pool of sibling envs per env description and process, shared by the tools and the loop.

veRL builds an agent loop per trajectory and a tool instance per call; rebuilding the world's
task set and search indexes each time would cost seconds. A pool keeps idle envs built by one
:class:`~mmsearch_gym.env_factory.EnvFactory` (siblings share tasks, backend and grounder).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

from mmsearch_gym.env import MMSearchEnv
from mmsearch_gym.env_factory import EnvFactory, unwrap_env
from mmsearch_gym.errors import ConfigError

DEFAULT_ENV: dict[str, Any] = {"id": "MMSearch-v0", "kwargs": {}}

_POOLS: dict[str, EnvPool] = {}
_LOCK = threading.Lock()


def plain(value: Any) -> Any:
    """``value`` with OmegaConf containers (what hydra hands over) turned into dicts and lists."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - veRL always has omegaconf
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def env_description(env: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """A JSON env description (see :meth:`EnvFactory.from_json`) from an id, a mapping or None."""
    env = plain(env)
    if env is None:
        return dict(DEFAULT_ENV)
    if isinstance(env, str):
        return {"id": env, "kwargs": {}}
    if isinstance(env, Mapping):
        return dict(env)
    raise ConfigError(f"env must be an env id or an env description object, got {type(env).__name__}")


class EnvPool:
    """Idle envs of one factory: :meth:`acquire` one per trajectory, :meth:`release` it after."""

    def __init__(self, factory: EnvFactory) -> None:
        self.factory = factory
        self._siblings = factory.siblings()
        self._idle: list[MMSearchEnv] = []
        self._lock = threading.Lock()

    def acquire(self) -> MMSearchEnv:
        with self._lock:
            if self._idle:
                return self._idle.pop()
            return unwrap_env(self._siblings.new())

    def release(self, env: MMSearchEnv) -> None:
        with self._lock:
            self._idle.append(env)


def env_pool(env: str | Mapping[str, Any] | None) -> EnvPool:
    """The process-wide pool for an env description (built on first use)."""
    description = env_description(env)
    key = json.dumps(description, sort_keys=True)
    with _LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = EnvPool(EnvFactory.from_json(description))
        return pool
