"""Tests of EnvFactory: JSON descriptions, building, siblings that share tasks and backend."""

from __future__ import annotations

import functools
import json
import pickle

import pytest

from mmsearch_gym.env import MMSearchEnv
from mmsearch_gym.env_factory import EnvFactory, SiblingEnvs, describe_env, unwrap_env
from mmsearch_gym.errors import ConfigError
from mmsearch_gym.evaluate import EnvRecipe
from mmsearch_gym.registration import make_env
from mmsearch_gym.search.base import MemoryBackend
from mmsearch_gym.tasks import TaskSet


def test_an_env_id_with_overrides_round_trips_through_json_and_pickle() -> None:
    factory = EnvFactory.create("MMSearch-v0", {"max_turns": 2, "top_k": 3})
    data = factory.to_json()
    assert data == {"id": "MMSearch-v0", "kwargs": {"max_turns": 2, "top_k": 3}}
    assert EnvFactory.from_json(json.loads(json.dumps(data))) == factory
    assert EnvFactory.create(data) == factory and pickle.loads(pickle.dumps(factory)) == factory
    env = factory.build()
    try:
        base = unwrap_env(env)
        assert (base.max_turns, base.top_k) == (2, 3)
        block = factory.describe(env)
        assert block["id"] == "MMSearch-v0" and block["kwargs"] == {"max_turns": 2, "top_k": 3}
        assert block == describe_env(base, env_id="MMSearch-v0", kwargs={"max_turns": 2, "top_k": 3})
    finally:
        env.close()
    assert EnvRecipe is EnvFactory  # the former name


def test_a_spec_builds_without_registration(tiny_tasks: TaskSet, memory_backend: MemoryBackend) -> None:
    factory = EnvFactory.create({"spec": {"id": "Mine-v0", "kwargs": {"dialect": "tool-json", "max_turns": 4}}},
                                {"tasks": tiny_tasks, "backend": memory_backend})
    assert factory.label == "Mine-v0" and factory.shares_objects()
    env = factory.build()
    assert isinstance(env, MMSearchEnv) and env.dialect.name == "tool-json" and env.max_turns == 4
    with pytest.raises(ConfigError, match="objects, not JSON"):
        factory.to_json()


@pytest.mark.parametrize("bad,match", [
    ("Nope-v0", "unknown env id"),
    ({"id": "MMSearch-v0", "path": "x"}, "keys id, kwargs"),
    ({"kwargs": {}}, "'id' string or a 'spec'"),
    ({"spec": "world"}, "spec must be an object"),
    (3, "env id, a spec, or a factory"),
])
def test_bad_descriptions_are_clear_errors(bad: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        EnvFactory.create(bad)  # type: ignore[arg-type]


def test_a_callable_factory_takes_no_overrides_and_has_no_json(tiny_tasks: TaskSet,
                                                                memory_backend: MemoryBackend) -> None:
    make = functools.partial(make_env, tasks=tiny_tasks, backend=memory_backend)
    factory = EnvFactory.create(make)
    assert factory.label == "<make_env>" and factory.shares_objects()
    with pytest.raises(ConfigError, match="overrides"):
        EnvFactory.create(make, {"max_turns": 2})
    with pytest.raises(ConfigError, match="Python callable"):
        factory.to_json()
    assert not EnvFactory.create(lambda: make()).shares_objects()


def test_siblings_share_tasks_backend_and_grounder(tiny_tasks: TaskSet, memory_backend: MemoryBackend) -> None:
    factory = EnvFactory.create(functools.partial(make_env, tasks=tiny_tasks, backend=memory_backend))
    first = factory.build()
    siblings = factory.siblings(first)
    assert isinstance(siblings, SiblingEnvs)
    a, b = siblings.get(0), siblings.get(1)
    assert a is first and siblings.get(0) is a and b is not a
    assert b.tasks is a.tasks and b.backend is a.backend and b.grounder is a.grounder
    extra = siblings.new()
    assert extra.backend is a.backend and extra not in siblings.envs.values()
    siblings.close()
    assert siblings.envs == {}


def test_the_env_block_of_a_trajectory_holds_no_password(tiny_tasks: TaskSet, memory_backend: MemoryBackend) -> None:
    """A Redis password in a cache URL, or a key in a query string, never reaches a trajectory."""
    env = MMSearchEnv(tiny_tasks, memory_backend)
    kwargs = {"cache": {"mode": "readthrough", "store": "redis://worker:s3cret-pw@redis-head:6379/0"},
              "backend": {"name": "searxng", "url": "http://localhost:8888/search?api_key=k3y-value"},
              "top_k": 3}
    block = describe_env(env, env_id="MMSearch-v0", kwargs=kwargs)
    text = json.dumps(block)
    assert "s3cret-pw" not in text and "k3y-value" not in text
    assert block["kwargs"]["top_k"] == 3 and "redis-head:6379/0" in block["kwargs"]["cache"]["store"]
