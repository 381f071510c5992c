"""Tests of metrics.py: what an ended episode counts, from the env's info and from a trajectory,
and the table over episodes (every route builds the same numbers from the same episodes)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from fixture_world import ANSWER, BAD_CROP, IMAGE, TEXT, CapitalReader, R, planned

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.evaluate import EpisodeResult as EvalEpisodeResult
from mmsearch_gym.evaluate import Metrics as EvalMetrics
from mmsearch_gym.evaluate import evaluate
from mmsearch_gym.metrics import EpisodeResult, Metrics
from mmsearch_gym.policies import make_policy
from mmsearch_gym.registration import make_env
from mmsearch_gym.reward import RewardBreakdown
from mmsearch_gym.search.base import MemoryBackend
from mmsearch_gym.tasks import TaskSet
from mmsearch_gym.trajectories import read_trajectories


def play(env, turns: list[str], index: int = 1) -> dict:
    env.reset(seed=0, options={"task_index": index})
    for text in turns:
        *_, terminated, truncated, info = env.step(text)
        if terminated or truncated:
            return info
    raise AssertionError("the episode did not end")


def _breakdown(reward: float, raw: float, searches: int = 0, fmt: float = 1.0) -> RewardBreakdown:
    return RewardBreakdown(reward=reward, score=raw, raw_score=raw, format=fmt, searches=searches, image_searches=0,
                           text_searches=searches, penalty=0.0, answer="x")


def test_evaluate_reexports_the_one_definition() -> None:
    assert EvalEpisodeResult is EpisodeResult and EvalMetrics is Metrics


def test_an_invalid_crop_then_an_answer_runs_no_search_but_the_scorer_counts_one(
        tiny_tasks: TaskSet, memory_backend: MemoryBackend) -> None:
    env = make_env(tasks=tiny_tasks, backend=memory_backend)
    result = EpisodeResult.from_info(play(env, [BAD_CROP, ANSWER]), episode=7)
    assert (result.episode, result.task_id, result.category) == (7, "t1", "image_then_text")
    assert (result.searches_run, result.searches_scored) == (0, 1)
    assert result.last_search is None and result.answered and result.invalid_turns == 1
    m = Metrics.of([result])
    assert (m.searches_run_ratio, m.searches_scored_ratio, m.search_ratio) == (0.0, 1.0, 0.0)
    assert m.answered_without_search == 1.0 and m.unanswered == 0.0


def test_crops_refinements_and_answer_behaviour(tiny_tasks: TaskSet, memory_backend: MemoryBackend) -> None:
    env = make_env(tasks=tiny_tasks, backend=memory_backend, dialect="deepmmsearch-r1", max_turns=6)
    deep = {"crop": R + "<img_search>the flag at the top right</img_search>",
            "text": R + "<text_search>france capital</text_search>", "answer": R + "<answer>France</answer>"}
    info = play(env, [deep["crop"], deep["text"], deep["text"], deep["answer"]], index=0)
    assert info["search_log"] == ("crop", "text", "text")
    result = EpisodeResult.from_info(info)
    assert (result.image_searches, result.crop_searches, result.whole_image_searches) == (1, 1, 0)
    assert (result.text_searches, result.text_refinements, result.last_search) == (2, 1, "text")
    assert result.answered and result.correct and result.turns == 4

    env = make_env(tasks=tiny_tasks, backend=memory_backend)
    image_then_answer = EpisodeResult.from_info(play(env, [IMAGE, ANSWER]))
    truncated = EpisodeResult.from_info(play(env, [IMAGE, TEXT, TEXT]))
    assert image_then_answer.last_search == "image" and image_then_answer.text_refinements == 0
    assert not truncated.answered and truncated.text_refinements == 1
    m = Metrics.of([result, image_then_answer, truncated])
    assert m.answered_after_text_search == pytest.approx(1 / 3)
    assert m.answered_after_image_search == pytest.approx(1 / 3)
    assert m.answered_without_search == 0.0 and m.unanswered == pytest.approx(1 / 3)
    assert m.crop_searches == pytest.approx(1 / 3) and m.whole_image_searches == pytest.approx(2 / 3)
    assert m.text_refinements == pytest.approx(2 / 3)


def test_from_info_needs_the_ending_info(tiny_tasks: TaskSet, memory_backend: MemoryBackend) -> None:
    env = make_env(tasks=tiny_tasks, backend=memory_backend)
    env.reset(options={"task_index": 0})
    *_, info = env.step(IMAGE)  # not the end: no reward breakdown yet
    with pytest.raises(ConfigError, match="reward_breakdown"):
        EpisodeResult.from_info(info)
    with pytest.raises(ConfigError, match="unknown search kinds"):
        EpisodeResult.from_search_log(["video"], episode=0, task_id="t", category="c",
                                      reward=_breakdown(0, 0), turns=1, answered=False)


def test_metrics_by_hand() -> None:
    results = [
        EpisodeResult(0, "a", "c", _breakdown(0.81, 1.0, 1), 1, 0, 2, answered=True, last_search="image"),
        EpisodeResult(1, "b", "c", _breakdown(0.0, 0.0, 2, 0.0), 0, 2, 3, text_refinements=1),
        EpisodeResult(2, "c", "c", _breakdown(1.0, 1.0), 0, 0, 1, answered=True),
        EpisodeResult(3, "d", "c", _breakdown(0.1, 0.0, 1), 1, 1, 3, crop_searches=1, answered=True,
                      last_search="text", invalid_turns=1),
    ]
    m = Metrics.of(results)
    assert (m.episodes, m.accuracy, m.format_rate) == (4, 0.5, 0.75)
    assert (m.searches_run, m.searches_run_ratio) == (5 / 4, 0.75)
    assert (m.searches_scored, m.searches_scored_ratio) == (1.0, 0.75)
    assert (m.image_searches, m.crop_searches, m.text_searches, m.text_refinements) == (0.5, 0.25, 0.75, 0.25)
    assert (m.answered_without_search, m.answered_after_image_search, m.answered_after_text_search,
            m.unanswered) == (0.25, 0.25, 0.25, 0.25)
    assert m.invalid_turns == 0.25
    data = m.to_json()
    assert data["calls_per_episode"] == {"image_search": 0.5, "text_search": 0.75}
    assert data["answer_behaviour"] == {"without_search": 0.25, "after_image_search": 0.25,
                                        "after_text_search": 0.25}
    log = m.to_log("eval/")
    assert log["eval/episodes"] == 4.0 and log["eval/searches_scored_ratio"] == 0.75
    assert all(isinstance(v, float) for v in log.values())
    assert Metrics.of([]).episodes == 0 and Metrics.of([]).unanswered == 0.0


def test_eval_results_equal_the_results_read_back_from_its_trajectories(
        tiny_tasks: TaskSet, memory_backend: MemoryBackend, tmp_path: Path) -> None:
    """Two routes to the same episodes (the runner's infos, the recorded file) give one table."""
    tasks = planned(tiny_tasks, copies=2)
    make = functools.partial(make_env, tasks=tasks, backend=memory_backend, max_turns=3)
    path = tmp_path / "run.jsonl"
    for spec in ("random", "oracle"):
        report = evaluate(make, make_policy(spec, tasks=tasks, reader=CapitalReader(), seed=2),
                          trajectories=path, progress=False, batch_size=4)
        recorded = sorted((EpisodeResult.from_trajectory(t) for t in read_trajectories(path)),
                          key=lambda r: r.episode)
        assert recorded == report.results
        assert Metrics.of(recorded) == report.overall
        path.unlink()
