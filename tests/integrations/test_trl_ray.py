"""The TRL rollout with its envs on Ray actors (a real local Ray instance, never a mock) plays the
very episodes of the local route: the same token ids, masks, tool results, rewards and
EpisodeResults, whether the env ends an episode or the rollout cuts it short (scored remotely).

One Ray instance serves the whole module and is shut down after it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

pytest.importorskip("trl")
ray = pytest.importorskip("ray", reason="the Ray executor needs the extra: pip install 'mmsearch-gym[ray]'")

from fixture_world import ANSWER, BAD_CROP, CROP, IMAGE, TEXT, R  # noqa: E402

from mmsearch_gym.errors import ConfigError  # noqa: E402
from mmsearch_gym.integrations import trl as T  # noqa: E402
from mmsearch_gym.integrations.tiny_models import build_tokenizer  # noqa: E402
from mmsearch_gym.registration import make_env  # noqa: E402
from mmsearch_gym.search.base import MemoryBackend  # noqa: E402
from mmsearch_gym.tasks import TaskSet  # noqa: E402

SCRIPTS: list[tuple[str, list[str]]] = [
    # (task of the fixture world, the assistant turns)
    ("t1", [BAD_CROP, ANSWER]),
    ("t1", [IMAGE, TEXT, ANSWER]),
    ("t0", [CROP, R + "<answer>Italy</answer>"]),
    ("t1", [IMAGE, TEXT, TEXT]),
    ("t2", [R + "<answer>1</answer>"]),
]




@pytest.fixture
def episode_tasks(tiny_tasks: TaskSet) -> TaskSet:
    """One task per scripted episode (the script's fixture task under the episode's own id)."""
    return TaskSet([dataclasses.replace(tiny_tasks.by_id(base), id=f"e{i}") for i, (base, _) in enumerate(SCRIPTS)],
                   name="scripted")


def _play(tasks: TaskSet, backend: MemoryBackend, *, max_turns: int | None,
          **executor: Any) -> tuple[dict[str, Any], list[Any]]:
    """Play the scripted turns twice through one rollout (envs are reused across calls); returns
    the TRL output of both calls and each episode's reward breakdown."""
    env = make_env(tasks=tasks, backend=backend, max_turns=3)
    tokenizer = build_tokenizer(["".join(t for _, turns in SCRIPTS for t in turns)],
                                chat_template=T.default_chat_template(), vocab_size=400)

    def generate(batch: list[Any], max_new: int) -> list[tuple[list[int], None]]:
        return [(tokenizer.encode(SCRIPTS[int(ep.task_id[1:])][1][ep.steps], add_special_tokens=False), None)
                for ep in batch]

    prompts = T.to_dataset(tasks)["prompt"]
    with T.make_rollout_func(env, max_turns=max_turns, max_turn_tokens=4096, **executor) as rollout:
        episodes = rollout.play(prompts, tokenizer, generate, budget=100_000)
        episodes += rollout.play(prompts[::-1], tokenizer, generate, budget=100_000)
        output = rollout._output(episodes, use_vllm=False)
    return output, [ep.breakdown for ep in episodes]


@pytest.mark.parametrize("max_turns", [None, 2], ids=["env-ends", "rollout-cuts"])
def test_rollout_on_ray_equals_local(ray_cluster: str, episode_tasks: TaskSet, memory_backend: MemoryBackend,
                                     max_turns: int | None) -> None:
    local, local_breakdowns = _play(episode_tasks, memory_backend, max_turns=max_turns)
    for workers in (1, 2):
        remote, remote_breakdowns = _play(episode_tasks, memory_backend, max_turns=max_turns, executor="ray",
                                          workers=workers)
        assert remote == local  # ids, env_mask, observations, rewards, EpisodeResults, ...
        assert remote_breakdowns == local_breakdowns
    assert local["env_task_id"] == [f"e{i}" for i in range(5)] + [f"e{i}" for i in reversed(range(5))]
    assert any(v > 0 for v in local["env_reward"]) and any(v == 0 for v in local["env_reward"])
    assert all(0 in mask and 1 in mask for mask, steps in zip(local["env_mask"], local["env_steps"], strict=True)
               if steps > 1)  # tool results entered the completions, masked
    finished = local["episode_finished"]
    if max_turns is None:
        assert all(finished)
    else:  # the episodes of 3 turns were cut short by the rollout and scored by their env on the actor
        assert finished.count(False) == 4 and all(r is not None for r in local["env_results"])


def test_rollout_ray_errors_are_typed(ray_cluster: str, episode_tasks: TaskSet,
                                      memory_backend: MemoryBackend) -> None:
    env = make_env(tasks=episode_tasks, backend=memory_backend)
    with pytest.raises(ConfigError, match="executor must be 'local' or 'ray'"):
        T.make_rollout_func(env, executor="dask")
    with pytest.raises(ConfigError, match="go with executor='ray'"):
        T.make_rollout_func(env, workers=2)
    with pytest.raises(ConfigError, match="CPU"):  # more actors than the 2 CPUs could ever place
        T.make_rollout_func(env, executor="ray", workers=3)
    with pytest.raises(ConfigError, match="differs from the env's"):  # checked against the actor's env
        T.make_rollout_func(env, executor="ray", dialect="tool-json")
    with T.make_rollout_func(env, executor="ray") as rollout:
        with pytest.raises(ConfigError, match="live on Ray actors"):
            rollout.envs  # noqa: B018
        # a bad task id raises in the actor and comes back as the error the local route raises
        local = T.make_rollout_func(env)
        with pytest.raises(Exception) as here:
            local.pool.run([("reset", 0, "no-such-task", None)])
        with pytest.raises(type(here.value), match="no-such-task"):
            rollout.pool.run([("reset", 0, "no-such-task", None)])
        local.close()


def test_recipe_executor_keys(ray_cluster: str) -> None:
    """A recipe's ``executor: 'ray'`` is checked up front, and the env description it sends the
    actors builds there the envs the trainer's process would build (same task per slot)."""
    from mmsearch_gym.integrations.trl.recipe import _checked, _executor_options

    base = {"trainer": "grpo", "model": {"tiny": {}}, "env": "MMSearch-Train-v0"}
    assert _executor_options(_checked(base)) == {}
    ray_recipe = _checked({**base, "executor": "ray", "env_workers": 2})
    assert _executor_options(ray_recipe) == {"executor": "ray", "ray_address": None, "workers": 2}
    for bad, match in (({"executor": "dask"}, "executor must be 'local' or 'ray'"),
                       ({"executor": "ray", "route": "environment"}, "set route: 'rollout'"),
                       ({"env_workers": 2}, "go with executor: 'ray'"),
                       ({"executor": "ray", "categories": ["crop"]}, "cannot filter categories")):
        with pytest.raises(ConfigError, match=match):
            _checked({**base, **bad})
    description = {"id": "MMSearch-Train-v0", "kwargs": {}}
    with (T.make_rollout_func(description, **_executor_options(ray_recipe)) as remote,
          T.make_rollout_func(description) as local):
        assert (remote.dialect.name, remote.max_turns) == (local.dialect.name, local.max_turns)
        commands = [("reset", slot, slot * 7, None) for slot in range(3)]
        assert ([info["task_id"] for _, info, _ in remote.pool.run(commands)]
                == [info["task_id"] for _, info, _ in local.pool.run(commands)])
