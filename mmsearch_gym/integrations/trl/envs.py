"""Sibling envs for TRL: an env id, instance or factory -> a factory of fresh envs sharing tasks
and backend (one env per concurrent episode), plus the task lookup of env ids."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym

from mmsearch_gym.env import MMSearchEnv
from mmsearch_gym.errors import ConfigError
from mmsearch_gym.tasks import TaskSet

EnvFactory = Callable[[], MMSearchEnv]
"""A zero-argument callable returning a fresh MMSearchEnv (one per concurrent episode)."""

EnvSource = str | MMSearchEnv | EnvFactory
"""What the TRL helpers accept as an env: an env id, an env (copied, never stepped) or a factory."""


def _clone_env(env: MMSearchEnv, tasks: TaskSet | None = None) -> MMSearchEnv:
    """A new env sharing ``env``'s backend, grounder, limits and (unless given) task set."""
    return MMSearchEnv(
        tasks if tasks is not None else env.tasks, env.backend, dialect=env.dialect, reward=env.reward_spec,
        grounder=env.grounder, max_turns=env.max_turns, image_search_budget=env.image_search_budget,
        text_search_budget=env.text_search_budget, top_k=env.top_k, on_invalid=env.on_invalid,
        image_size=env.image_size, min_crop_side=env.min_crop_side,
        max_text_length=env.max_text_length, system_prompt=env.system_prompt,
    )


def env_factory(env: EnvSource, *, categories: Sequence[str] | None = None,
                **env_kwargs: Any) -> EnvFactory:
    """Turn an env id (``"MMSearch-Train-v0"``), an env or a factory into an :data:`EnvFactory`.

    Envs made from an id or an instance share one task set and one search backend (so the disk
    cache and the backend's index are loaded once), and each call returns a fresh env (an
    instance you pass is copied, never stepped itself). ``categories`` keeps only the tasks of
    those categories.
    """
    if categories is not None:
        base = env_factory(env, **env_kwargs)()
        tasks = base.tasks.filter(lambda task: task.category in set(categories),
                                  name=f"{base.tasks.name}[{','.join(categories)}]")
        return env_factory(_clone_env(base, tasks))
    if isinstance(env, str):
        import mmsearch_gym  # noqa: F401  (registers the env ids)

        first = gym.make(env, **env_kwargs).unwrapped
        if not isinstance(first, MMSearchEnv):
            raise ConfigError(f"env {env!r} is not an MMSearchEnv")
        template = first
    elif isinstance(env, MMSearchEnv):
        if env_kwargs:
            raise ConfigError("env_kwargs only apply when the env is given by id")
        return lambda: _clone_env(env)
    elif callable(env):
        if env_kwargs:
            raise ConfigError("env_kwargs only apply when the env is given by id")
        return env
    else:
        raise ConfigError(f"env must be an env id, an MMSearchEnv or a factory, got {type(env).__name__}")
    handed_out = [False]

    def make() -> MMSearchEnv:
        if not handed_out[0]:
            handed_out[0] = True
            return template
        return _clone_env(template)

    return make


class _EnvPool:
    """Reusable envs: GRPO resets hundreds of episodes per step; envs are built only once."""

    def __init__(self, factory: EnvFactory) -> None:
        self.factory = factory
        self.envs: list[MMSearchEnv] = []

    def take(self, n: int) -> list[MMSearchEnv]:
        while len(self.envs) < n:
            env = self.factory()
            if not isinstance(env, MMSearchEnv):
                raise ConfigError(f"the env factory returned {type(env).__name__}, not an MMSearchEnv")
            self.envs.append(env)
        return self.envs[:n]

    def first(self) -> MMSearchEnv:
        return self.take(1)[0]


def _resolve_tasks(source: TaskSet | str, split: str | None) -> tuple[TaskSet, str | None]:
    """A TaskSet from a TaskSet, an env id (its spec's tasks) or a task source string."""
    from mmsearch_gym.registration import load_specs, resolve_tasks

    if isinstance(source, TaskSet):
        if split is not None:
            raise ConfigError("split only applies when the tasks come from an env id or the world")
        return source, None
    if not isinstance(source, str):
        raise ConfigError(f"tasks must be a TaskSet, an env id or 'world:SPLIT', got {type(source).__name__}")
    specs = {spec["id"]: spec for spec in load_specs()}
    if source in specs:
        kwargs = specs[source].get("kwargs", {})
        tasks = kwargs.get("tasks", "world:test")
        if split is not None:
            if isinstance(tasks, Mapping) and "world" in tasks:
                tasks = {**tasks, "world": split}
            elif isinstance(tasks, str) and tasks.startswith("world:"):
                tasks = f"world:{split}"
            else:
                raise ConfigError(f"env {source!r} does not read the built-in world; split= cannot apply")
        return resolve_tasks(tasks), kwargs.get("dialect")
    if split is not None:
        raise ConfigError(f"split only applies to env ids; got tasks {source!r}")
    return resolve_tasks(source), None


def _searches_run(info: Mapping[str, Any]) -> dict[str, int]:
    """The searches the env has sent to its backend so far in this episode (its own counters)."""
    return {"image_search": int(info["image_searches"]), "text_search": int(info["text_searches"])}
