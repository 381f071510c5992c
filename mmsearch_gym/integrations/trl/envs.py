"""Sibling envs for TRL, built by the core :class:`~mmsearch_gym.env_factory.EnvFactory`: an env
id, a JSON description, an EnvFactory, an env instance or a callable -> fresh MMSearchEnvs that
share one task set and search backend (one env per concurrent episode), plus the task lookup of
env ids."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym

from mmsearch_gym.env import MMSearchEnv
from mmsearch_gym.env_factory import EnvFactory, SiblingEnvs, unwrap_env
from mmsearch_gym.errors import ConfigError
from mmsearch_gym.metrics import EpisodeResult
from mmsearch_gym.reward import RewardBreakdown
from mmsearch_gym.tasks import TaskSet

EnvMaker = Callable[[], MMSearchEnv]
"""A zero-argument callable returning a fresh MMSearchEnv (what :func:`env_factory` returns)."""

EnvSource = str | Mapping[str, Any] | EnvFactory | MMSearchEnv | Callable[..., gym.Env]
"""What the TRL helpers accept as an env: an env id, a JSON env description, an
:class:`EnvFactory`, an env (copied, never stepped) or a callable returning an env."""


def env_siblings(env: EnvSource, *, categories: Sequence[str] | None = None, **env_kwargs: Any) -> SiblingEnvs:
    """The core's sibling envs of ``env`` (``env_kwargs`` are overrides of an id or a spec);
    ``categories`` keeps only the tasks of those categories."""
    if isinstance(env, gym.Env):
        if env_kwargs:
            raise ConfigError("env_kwargs only apply when the env is given by id or spec")
        siblings = EnvFactory.like(env).siblings()
    else:
        siblings = EnvFactory.create(env, env_kwargs).siblings()
    if categories is None:
        return siblings
    first = unwrap_env(siblings.new())
    wanted = set(categories)
    tasks = first.tasks.filter(lambda task: task.category in wanted, name=f"{first.tasks.name}[{','.join(categories)}]")
    return EnvFactory.like(first, tasks).siblings()


def env_factory(env: EnvSource, *, categories: Sequence[str] | None = None, **env_kwargs: Any) -> EnvMaker:
    """An :data:`EnvMaker` for ``env`` (see :func:`env_siblings`): each call returns a fresh
    MMSearchEnv sharing the task set and search backend of the others (an instance you pass is
    copied, never stepped itself)."""
    siblings = env_siblings(env, categories=categories, **env_kwargs)
    return lambda: unwrap_env(siblings.new())


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


def _episode_result(info: Mapping[str, Any], breakdown: RewardBreakdown) -> EpisodeResult:
    """What an episode counts (:meth:`EpisodeResult.from_info`), given the info of its last step
    (or of its reset, when no turn was played) and its reward breakdown: the env's, or
    ``env.score()`` for an episode the rollout cut short."""
    start = {"turn": 0, "image_searches": 0, "text_searches": 0, "search_log": ()}
    return EpisodeResult.from_info({**start, **info, "reward_breakdown": breakdown})
