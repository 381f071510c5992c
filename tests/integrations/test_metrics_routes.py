"""One set of episodes, three routes, one set of numbers.

The same fixed action texts are played by ``mmsearch_gym.evaluate`` (a scripted policy), by the
TRL rollout (``MMSearchRollout.play`` with a scripted generator; its metrics are what
``env_reward`` logs through TRL's ``log_metric``) and summed by the SB3 summary
(``sb3.summarise``, what ``rollout_stats`` returns). Among them: "an invalid crop search, then
an answer" (0 searches run, 1 scored: the clash issue 15 was filed for) and a turn holding both
search tags (counted once by the scorer). A second test plays scripted SB3 decisions through
``rollout_stats`` and replays their texts through ``evaluate``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

pytest.importorskip("trl")
pytest.importorskip("stable_baselines3")

from fixture_world import ANSWER, BAD_CROP, CROP, IMAGE, TEXT, CapitalReader, R  # noqa: E402

from mmsearch_gym.evaluate import evaluate  # noqa: E402
from mmsearch_gym.integrations import sb3 as S  # noqa: E402
from mmsearch_gym.integrations import trl as T  # noqa: E402
from mmsearch_gym.integrations.tiny_models import build_tokenizer  # noqa: E402
from mmsearch_gym.metrics import EpisodeResult, Metrics  # noqa: E402
from mmsearch_gym.policies import EpisodeView  # noqa: E402
from mmsearch_gym.registration import make_env  # noqa: E402
from mmsearch_gym.search.base import MemoryBackend  # noqa: E402
from mmsearch_gym.tasks import TaskSet  # noqa: E402

BOTH = R + "<search><img></search><text_search>france capital</text_search>"

SCRIPTS: dict[str, tuple[str, list[str]]] = {
    # episode name: (task of the fixture world, the assistant turns)
    "invalid crop, then an answer": ("t1", [BAD_CROP, ANSWER]),
    "both tags in one turn": ("t1", [BOTH, TEXT, ANSWER]),
    "image, text, answer": ("t1", [IMAGE, TEXT, ANSWER]),
    "crop, then a wrong answer": ("t0", [CROP, R + "<answer>Italy</answer>"]),
    "out of turns": ("t1", [IMAGE, TEXT, TEXT]),
    "direct answer": ("t2", [R + "<answer>1</answer>"]),
    "no reason": ("t2", ["<answer>1</answer>"]),
}


@pytest.fixture
def episode_tasks(tiny_tasks: TaskSet) -> TaskSet:
    """One task per scripted episode (the script's fixture task under the episode's own id)."""
    return TaskSet([dataclasses.replace(tiny_tasks.by_id(base), id=f"e{i}")
                    for i, (base, _turns) in enumerate(SCRIPTS.values())], name="scripted")


def _turns_of(task_id: str) -> list[str]:
    return list(SCRIPTS.values())[int(task_id[1:])][1]


class ScriptedPolicy:
    """Plays each episode's fixed turns (a Policy for ``evaluate``)."""

    name = "scripted"

    def __init__(self, turns: Mapping[str, Sequence[str]] | None = None) -> None:
        self.turns = turns

    def act(self, episodes: Sequence[EpisodeView]) -> list[str]:
        return [(self.turns[e.task_id] if self.turns is not None else _turns_of(e.task_id))[len(e.steps)]
                for e in episodes]


def _same(a: Sequence[EpisodeResult], b: Sequence[EpisodeResult]) -> bool:
    """Equal results, whatever episode number each route gave them."""
    return [dataclasses.replace(r, episode=0) for r in a] == [dataclasses.replace(r, episode=0) for r in b]


def _logged(values: Mapping[str, float], expected: Metrics) -> None:
    want = expected.to_log("mmsearch/")
    assert {k: values[k] for k in want} == want
    assert values["mmsearch/search_ratio"] == expected.searches_run_ratio == expected.search_ratio
    assert values["mmsearch/image_search_calls"] == expected.image_searches
    assert values["mmsearch/text_search_calls"] == expected.text_searches
    assert values["mmsearch/env_reward"] == expected.mean_reward


def _rollout_results(tasks: TaskSet, backend: MemoryBackend) -> tuple[list[EpisodeResult], dict[str, float]]:
    """The scripted episodes played by the TRL rollout; returns its results and what env_reward logs."""
    env = make_env(tasks=tasks, backend=backend, max_turns=3)
    rollout = T.make_rollout_func(env, max_turn_tokens=4096)
    # No stop cutting in this test: a generation backend stops at the first closing tag, which
    # would cut the both-tags turn before it reaches the env; here every route steps it whole.
    rollout.dialect = _NoStops(rollout.dialect)  # type: ignore[assignment]
    tokenizer = build_tokenizer(["".join(t for _, turns in SCRIPTS.values() for t in turns)],
                                chat_template=T.default_chat_template(), vocab_size=400)

    def generate(batch: list[Any], max_new: int) -> list[tuple[list[int], None]]:
        return [(tokenizer.encode(_turns_of(ep.task_id)[ep.steps], add_special_tokens=False), None)
                for ep in batch]

    data = T.to_dataset(tasks)
    episodes = rollout.play(data["prompt"], tokenizer, generate, budget=100_000)
    assert [ep.turns for ep in episodes] == [_turns_of(ep.task_id) for ep in episodes]  # whole turns, in order
    assert all(ep.finished for ep in episodes)
    logged: dict[str, float] = {}
    rewards = T.env_reward(data["prompt"], [""] * len(episodes), env_reward=[ep.breakdown.reward for ep in episodes],
                           env_results=[ep.result for ep in episodes], log_metric=logged.__setitem__)
    assert rewards == [r.reward.reward for r in (ep.result for ep in episodes)]
    return [ep.result for ep in episodes], logged


class _NoStops:
    """The env's dialect with no stop strings (see :func:`_rollout_results`)."""

    stop_sequences: tuple[str, ...] = ()

    def __init__(self, dialect: Any) -> None:
        self.name = dialect.name


def test_the_same_episodes_give_the_same_numbers_on_every_route(
        episode_tasks: TaskSet, memory_backend: MemoryBackend) -> None:
    make = functools.partial(make_env, tasks=episode_tasks, backend=memory_backend, max_turns=3)
    report = evaluate(make, ScriptedPolicy(), progress=False, batch_size=3)
    by_name = dict(zip(SCRIPTS, report.results, strict=True))
    clash = by_name["invalid crop, then an answer"]
    assert (clash.searches_run, clash.searches_scored, clash.invalid_turns) == (0, 1, 1)
    both = by_name["both tags in one turn"]
    assert (both.searches_run, both.searches_scored) == (2, 2)  # the both-tags turn counts once
    overall = report.overall
    assert overall.searches_run_ratio != overall.searches_scored_ratio  # the two names really differ

    # TRL: the rollout plays the same turns; env_reward logs the core's numbers under the core's names
    trl_results, logged = _rollout_results(episode_tasks, memory_backend)
    assert _same(trl_results, report.results)
    _logged(logged, overall)
    assert logged["mmsearch/searches_run_ratio"] != logged["mmsearch/searches_scored_ratio"]
    assert T.episode_metrics(trl_results) == logged

    # SB3: the summary of the same episodes, from the infos the decision wrapper hands on
    env = make()
    infos = []
    for task in episode_tasks:
        env.reset(options={"task_id": task.id})
        for text in _turns_of(task.id):
            *_, terminated, truncated, info = env.step(text)
        assert terminated or truncated
        infos.append({k: v for k, v in info.items() if k != "messages"})
    sb3 = S.summarise([EpisodeResult.from_info(info, episode=i) for i, info in enumerate(infos)], env)
    expected = report.to_json()
    for key in ("env", "policy", "seed", "tasks"):
        sb3.pop(key, None), expected.pop(key, None)
    assert sb3 == expected


class _Decisions:
    """An SB3-like model that plays fixed decisions, in order, across episodes."""

    def __init__(self, actions: list[int]) -> None:
        self.actions = list(actions)

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> tuple[np.ndarray, None]:
        return np.array([self.actions.pop(0)]), None


def test_rollout_stats_and_evaluate_agree_on_the_same_decisions(
        tiny_tasks: TaskSet, memory_backend: MemoryBackend) -> None:
    env = make_env(tasks=tiny_tasks, backend=memory_backend, max_turns=3)
    wrapper = S.SearchDecisionEnv(env, reader=CapitalReader())
    names = wrapper.action_names
    crop = names.index("crop:top right")
    plans = [[crop, names.index("answer")],  # t0: a crop, then the answer
             [names.index("image_search"), names.index("text_search"), names.index("answer")],  # t1
             [names.index("text_search"), names.index("text_search"), names.index("text_search")]]  # t2: no answer
    texts: dict[str, list[str]] = {}
    played: list[int] = []
    for index, plan in enumerate(plans):  # the action texts these decisions become
        wrapper.reset(options={"task_index": index})
        texts[tiny_tasks[index].id] = []
        for action in plan:
            *_, terminated, truncated, info = wrapper.step(action)
            played.append(action)
            texts[tiny_tasks[index].id].append(info["action_text"])
            if terminated or truncated:
                break
        assert terminated or truncated
    stats = S.rollout_stats(_Decisions(played), wrapper)
    report = evaluate(functools.partial(make_env, tasks=tiny_tasks, backend=memory_backend, max_turns=3),
                      ScriptedPolicy(texts), progress=False)
    assert report.overall.searches_run > 0 and report.overall.crop_searches > 0
    expected = report.to_json()
    for key in ("env", "policy", "seed", "tasks"):
        stats.pop(key, None), expected.pop(key, None)
    assert stats == expected
    assert not any(isinstance(v, float) and math.isnan(v) for v in stats.values())
