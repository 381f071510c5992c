"""Tests of EpisodeRunner: the events it yields, their order, and that workers do not change them."""

from __future__ import annotations

import functools
from typing import Any

import pytest
from fixture_world import CapitalReader, planned

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.metrics import EpisodeResult
from mmsearch_gym.policies import make_policy
from mmsearch_gym.registration import make_env
from mmsearch_gym.runner import EpisodeEnd, EpisodeRunner, StepEvent
from mmsearch_gym.search.base import MemoryBackend
from mmsearch_gym.tasks import TaskSet


def _factory(tasks: TaskSet, backend: MemoryBackend) -> Any:
    return functools.partial(make_env, tasks=tasks, backend=backend)


def _summary(event: StepEvent | EpisodeEnd) -> tuple:
    if isinstance(event, StepEvent):
        return ("step", event.episode, event.task_index, event.turn, event.text, event.observation["text"],
                event.reward, event.terminated, event.truncated, event.info["search_log"],
                len(event.info["messages"]))
    return ("end", event.episode, event.task_index, event.seed, event.result, len(event.view.steps))


def test_steps_then_an_end_per_episode(tiny_tasks: TaskSet, memory_backend: MemoryBackend) -> None:
    tasks = planned(tiny_tasks)
    policy = make_policy("oracle", tasks=tasks, reader=CapitalReader())
    with EpisodeRunner(_factory(tasks, memory_backend), batch_size=2) as runner:
        events = list(runner.run(policy, [2, 0, 1, 1], seed=5))
    ends = [e for e in events if isinstance(e, EpisodeEnd)]
    assert sorted(e.episode for e in ends) == [0, 1, 2, 3]
    assert {e.episode: (e.task_index, e.seed) for e in ends} == {0: (2, 5), 1: (0, 6), 2: (1, 7), 3: (1, 8)}
    for end in ends:
        steps = [e for e in events if isinstance(e, StepEvent) and e.episode == end.episode]
        assert [s.turn for s in steps] == list(range(1, len(steps) + 1)) == list(range(1, end.result.turns + 1))
        assert steps[-1].terminated or steps[-1].truncated
        assert not any(s.terminated or s.truncated for s in steps[:-1])
        assert events.index(end) == events.index(steps[-1]) + 1  # the end follows its last step
        assert end.result == EpisodeResult.from_info(steps[-1].info, episode=end.episode)
        assert end.info is steps[-1].info and end.view.task_id == tasks[end.task_index].id
        chat = steps[-1].info["messages"]
        assert chat[0]["role"] == "system" and sum(m["role"] == "assistant" for m in chat) == len(steps)
    # episodes 0 and 1 start together (batch 2); episode 2 waits for a free slot
    first_steps = [e.episode for e in events if isinstance(e, StepEvent) and e.turn == 1]
    assert first_steps[:2] == [0, 1]


def test_workers_give_the_same_events(tiny_tasks: TaskSet, memory_backend: MemoryBackend) -> None:
    tasks = planned(tiny_tasks, copies=2)
    runs = []
    for workers in (1, 2):
        policy = make_policy("random", tasks=tasks, seed=3)
        with EpisodeRunner(_factory(tasks, memory_backend), workers=workers, batch_size=3) as runner:
            runs.append([_summary(e) for e in runner.run(policy, seed=1)])
    assert runs[0] == runs[1]
    assert sum(item[0] == "end" for item in runs[0]) == len(tasks)


def test_bad_arguments_are_clear_errors(tiny_tasks: TaskSet, memory_backend: MemoryBackend) -> None:
    make = _factory(tiny_tasks, memory_backend)
    with pytest.raises(ConfigError, match="workers"):
        EpisodeRunner(make, workers=0)
    with pytest.raises(ConfigError, match="batch_size"):
        EpisodeRunner(make, batch_size=True)  # type: ignore[arg-type]
    policy = make_policy("direct", tasks=tiny_tasks)
    with EpisodeRunner(make) as runner:
        for episodes in (0, 4, [3], [], "1"):
            with pytest.raises(ConfigError, match="episodes"):
                list(runner.run(policy, episodes))  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="seed"):
            list(runner.run(policy, 1, seed=1.5))  # type: ignore[arg-type]

        class Mute:
            name = "mute"

            def act(self, episodes: Any) -> list[str]:
                return []

        with pytest.raises(ConfigError, match="returned 0 actions"):
            list(runner.run(Mute(), 1))
