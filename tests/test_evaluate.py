"""Tests of evaluate(): the metrics, the tables, and that parallel runs equal serial ones."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from fixture_world import CapitalReader, planned, strip_timing

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.evaluate import EpisodeResult, EvalReport, Metrics, evaluate, format_reports
from mmsearch_gym.policies import EpisodeView, make_policy
from mmsearch_gym.registration import make_env
from mmsearch_gym.reward import RewardBreakdown
from mmsearch_gym.search.base import MemoryBackend
from mmsearch_gym.search.cache import CacheMiss
from mmsearch_gym.tasks import TaskSet


def factory(tasks: TaskSet, backend: MemoryBackend, cache_dir: Path | None = None, **kwargs: object):
    cache = {"mode": "readthrough", "dir": str(cache_dir)} if cache_dir is not None else None
    return functools.partial(make_env, tasks=tasks, backend=backend, cache=cache, **kwargs)


def _breakdown(reward: float, raw: float, fmt: float = 1.0) -> RewardBreakdown:
    return RewardBreakdown(reward=reward, score=raw, raw_score=raw, format=fmt, searches=0, image_searches=0,
                           text_searches=0, penalty=0.0, answer="x")


# ---------------------------------------------------------------------------------------------
# Metrics and tables
# ---------------------------------------------------------------------------------------------


def test_metrics_by_hand() -> None:
    results = [
        EpisodeResult(0, "a", "crop", _breakdown(0.91, 1.0), 1, 0, 2),
        EpisodeResult(1, "b", "crop", _breakdown(0.0, 0.0, 0.0), 0, 0, 1),
        EpisodeResult(2, "c", "text_only", _breakdown(0.81, 1.0), 0, 2, 3),
        EpisodeResult(3, "d", "text_only", _breakdown(0.1, 0.0), 1, 1, 3),
    ]
    m = Metrics.of(results)
    assert (m.episodes, m.accuracy, m.search_ratio, m.format_rate) == (4, 0.5, 0.75, 0.75)
    assert m.image_calls == 0.5 and m.text_calls == 0.75 and m.mean_turns == 2.25
    assert m.mean_reward == pytest.approx((0.91 + 0.81 + 0.1) / 4)
    report = EvalReport(list(reversed(results)), env="E", policy="p", seed=0)
    assert [r.episode for r in report.results] == [0, 1, 2, 3]
    data = report.to_json()
    for key in ("accuracy", "search_ratio", "mean_reward", "format_rate", "calls_per_episode", "episodes",
                "per_category"):
        assert key in data
    assert data["per_category"]["crop"]["accuracy"] == 0.5
    assert data["per_category"]["text_only"]["calls_per_episode"] == {"image_search": 0.5, "text_search": 1.5}
    assert set(data["per_category"]["crop"]) >= {"accuracy", "search_ratio", "mean_reward", "episodes"}
    assert Metrics.of([]).episodes == 0


def test_tables_text_and_markdown() -> None:
    results = [EpisodeResult(0, "a", "crop", _breakdown(0.91, 1.0), 1, 0, 2),
               EpisodeResult(1, "b", "search_free", _breakdown(1.0, 1.0), 0, 0, 1)]
    reports = {"rag": EvalReport(results, env="E", policy="rag"), "direct": EvalReport(results[1:], env="E",
                                                                                        policy="direct")}
    text = format_reports(reports, "text", title="T")
    lines = text.splitlines()
    assert lines[0] == "T" and lines[1].split()[:3] == ["policy", "category", "n"]
    assert any(line.split()[:2] == ["rag", "all"] for line in lines)
    assert "100.0" in text and "50.0" in text  # search ratio of rag: 1 of 2 episodes
    md = format_reports(reports, "markdown")
    rows = [line for line in md.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + 3 + 2  # header, rule, rag (all + 2 categories), direct (all + 1)
    assert all(row.count("|") == rows[0].count("|") for row in rows)
    with pytest.raises(ConfigError):
        format_reports(reports, "html")


def test_search_behaviour_block() -> None:
    """The second block splits image searches into crops and whole images, counts refined text
    queries and gives the answer behaviour; the first block is the same with or without it."""
    log = [("crop", "text", "text"), ("image",), (), ("text", "image")]
    results = [EpisodeResult.from_search_log(kinds, episode=i, task_id=str(i), category="c",
                                             reward=_breakdown(1.0, 1.0), turns=len(kinds) + 1, answered=i != 3)
               for i, kinds in enumerate(log)]
    reports = {"p": EvalReport(results, env="E", policy="p")}
    plain = format_reports(reports, "text")
    text = format_reports(reports, "text", behaviour=True)
    assert text.startswith(plain) and "search behaviour" in text and "search behaviour" not in plain
    lines = text.splitlines()
    header = lines[lines.index("search behaviour") + 1].split()
    assert header[:4] == ["policy", "category", "n", "crop/ep"]
    row = next(line.split() for line in lines[lines.index("search behaviour"):] if line.split()[:2] == ["p", "all"])
    # crop 1/4, whole 2/4, text 3/4, refined 1/4; answers: none 1/4, after image 1/4, after text 1/4, no answer 1/4
    assert row[2:] == ["4", "0.25", "0.50", "0.75", "0.25", "25.0", "25.0", "25.0", "25.0"]
    md = format_reports(reports, "markdown", behaviour=True)
    rows = [line for line in md.splitlines() if line.startswith("|")]
    assert len(rows) == 2 * (2 + 2) and "| p | all | 4 | 0.25 | 0.50 | 0.75 | 0.25 | 25.0 | 25.0 | 25.0 | 25.0 |" in md
    assert "search behaviour" not in format_reports(reports, "markdown")
    report = reports["p"]
    assert "search behaviour" in report.to_text() and "search behaviour" not in report.to_markdown()
    assert "search behaviour" in report.to_markdown(behaviour=True)


# ---------------------------------------------------------------------------------------------
# evaluate()
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["oracle", "random"])
def test_parallel_equals_serial(tiny_tasks: TaskSet, memory_backend: MemoryBackend, tmp_path: Path,
                                spec: str) -> None:
    tasks = planned(tiny_tasks, copies=3)
    make = factory(tasks, memory_backend, tmp_path / "cache")
    outputs = []
    for workers in (1, 2):
        policy = make_policy(spec, tasks=tasks, reader=CapitalReader(), seed=3)
        traj = tmp_path / f"w{workers}.jsonl"
        report = evaluate(make, policy, workers=workers, seed=3, batch_size=4, trajectories=traj, progress=False)
        outputs.append((json.dumps(report.to_json(include_episodes=True), sort_keys=True), strip_timing(traj)))
    assert outputs[0] == outputs[1]
    assert len(outputs[0][1]) == 9


def test_batch_size_does_not_change_results(tiny_tasks: TaskSet, memory_backend: MemoryBackend) -> None:
    tasks = planned(tiny_tasks, copies=2)
    reports = [evaluate(factory(tasks, memory_backend), make_policy("random", tasks=tasks, seed=1),
                        batch_size=b, seed=1, progress=False).to_json(include_episodes=True) for b in (1, 4, 32)]
    assert reports[0] == reports[1] == reports[2]


def test_oracle_numbers_and_episode_seeds(tiny_tasks: TaskSet, memory_backend: MemoryBackend,
                                          tmp_path: Path) -> None:
    tasks = planned(tiny_tasks)
    policy = make_policy("oracle", tasks=tasks, reader=CapitalReader())
    traj = tmp_path / "t.jsonl"
    report = evaluate(factory(tasks, memory_backend), policy, seed=10, trajectories=traj, progress=False)
    assert report.accuracy == 1.0
    cats = report.per_category
    assert cats["search_free"].search_ratio == 0.0 and cats["crop"].image_calls == 1.0
    assert cats["image_then_text"].text_calls == 1.0
    assert report.mean_reward == pytest.approx((0.91 + 0.91 + 1.0) / 3)
    rows = [json.loads(line) for line in traj.read_text().splitlines()]
    assert sorted((r["episode"], r["task_index"], r["seed"]) for r in rows) == [(0, 0, 10), (1, 1, 11), (2, 2, 12)]
    crop = next(r for r in rows if r["category"] == "crop")
    assert crop["turns"][0]["box"] == [200, 20, 300, 90]


def test_evaluate_subset_and_bad_arguments(tiny_tasks: TaskSet, memory_backend: MemoryBackend) -> None:
    make = factory(tiny_tasks, memory_backend)
    report = evaluate(make, make_policy("direct", tasks=tiny_tasks, reader=CapitalReader()), episodes=2,
                      progress=False)
    assert [r.task_id for r in report.results] == ["t0", "t1"]
    for bad in ({"episodes": 0}, {"episodes": 4}, {"workers": 0}, {"batch_size": 0}, {"seed": "x"}):
        with pytest.raises(ConfigError):
            evaluate(make, make_policy("direct", tasks=tiny_tasks), progress=False, **bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown env id"):
        evaluate("NoSuchEnv-v9", "direct", progress=False)
    with pytest.raises(ConfigError, match="picklable"):
        evaluate(lambda: make(), make_policy("direct", tasks=tiny_tasks), workers=2, progress=False)


class _ShortPolicy:
    name = "short"

    def act(self, episodes: Sequence[EpisodeView]) -> list[str]:
        return ["<reason>x</reason><answer>y</answer>"][: max(0, len(episodes) - 1)]


def test_policy_must_answer_every_episode(tiny_tasks: TaskSet, memory_backend: MemoryBackend) -> None:
    with pytest.raises(ConfigError, match="one string per episode"):
        evaluate(factory(tiny_tasks, memory_backend), _ShortPolicy(), progress=False)


def test_worker_errors_arrive_typed(tiny_tasks: TaskSet, tmp_path: Path) -> None:
    """A strict-replay miss inside a worker process stops the run with the same CacheMiss."""
    empty = tmp_path / "empty-cache"
    make = functools.partial(make_env, tasks=planned(tiny_tasks), backend=MemoryBackend(),
                             cache={"mode": "replay", "dir": str(empty)})
    policy = make_policy("rag", tasks=planned(tiny_tasks), reader=CapitalReader())
    with pytest.raises(CacheMiss, match="strict replay"):
        evaluate(make, policy, workers=2, progress=False)


def test_cache_stats_show_the_lifetime_hits_and_misses_of_evaluations(
        tiny_tasks: TaskSet, memory_backend: MemoryBackend, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """evaluate() closes its envs (also in worker processes), which writes the cache's counters."""
    from mmsearch_gym.cli import main

    tasks = planned(tiny_tasks)
    stats = []
    for workers in (1, 2):
        evaluate(factory(tasks, memory_backend, tmp_path / "cache"), make_policy("oracle", tasks=tasks,
                 reader=CapitalReader()), workers=workers, progress=False)
        capsys.readouterr()
        assert main(["cache", "stats", str(tmp_path / "cache"), "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        stats.append((data["hits"], data["misses"]))
    searches = stats[0][1]
    assert searches > 0 and stats == [(0, searches), (searches, searches)]  # the second run only hits
