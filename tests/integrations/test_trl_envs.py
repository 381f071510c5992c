"""TRL's env sources go through the core EnvFactory: siblings share tasks and backend, an env
instance is copied (never handed out), categories filter the task set."""

from __future__ import annotations

import pytest

pytest.importorskip("trl")

from mmsearch_gym.env_factory import EnvFactory  # noqa: E402
from mmsearch_gym.errors import ConfigError  # noqa: E402
from mmsearch_gym.integrations import trl as T  # noqa: E402
from mmsearch_gym.registration import make_env  # noqa: E402
from mmsearch_gym.search.base import MemoryBackend  # noqa: E402
from mmsearch_gym.tasks import TaskSet  # noqa: E402


def test_an_env_instance_is_copied_with_its_settings(tiny_tasks: TaskSet, memory_backend: MemoryBackend) -> None:
    env = make_env(tasks=tiny_tasks, backend=memory_backend, dialect="deepmmsearch-r1", max_turns=4, top_k=2,
                   system_prompt="be brief", info_messages="delta")
    make = T.env_factory(env)
    a, b = make(), make()
    assert a is not env and b is not a
    assert a.tasks is env.tasks and a.backend is env.backend and b.grounder is env.grounder
    for attr in ("max_turns", "top_k", "system_prompt", "info_messages", "image_search_budget", "on_invalid"):
        assert getattr(a, attr) == getattr(env, attr)
    assert a.dialect.name == "deepmmsearch-r1" and a.reward_spec == env.reward_spec
    with pytest.raises(ConfigError, match="env_kwargs"):
        T.env_factory(env, top_k=3)


def test_ids_factories_and_categories(tiny_tasks: TaskSet, memory_backend: MemoryBackend) -> None:
    make = T.env_factory("MMSearch-v0", max_turns=2)
    a, b = make(), make()
    assert a is not b and a.tasks is b.tasks and a.backend is b.backend and a.max_turns == 2
    assert T.EnvFactory is EnvFactory
    core = EnvFactory.create("MMSearch-v0", {"top_k": 3})
    assert T.env_factory(core)().top_k == 3 and T.env_factory(core.to_json())().top_k == 3
    only = T.env_factory(make_env(tasks=tiny_tasks, backend=memory_backend), categories=["crop"])()
    assert [t.id for t in only.tasks] == ["t0"] and only.backend is memory_backend
    with pytest.raises(ConfigError):
        T.env_factory(lambda: make_env(tasks=tiny_tasks, backend=memory_backend), top_k=3)
    with pytest.raises(ConfigError, match="MMSearchEnv"):
        T.env_factory(lambda: object())()  # type: ignore[arg-type, return-value]
