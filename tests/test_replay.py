"""Replay takes no path, cache location or mode from a trajectory file; strict replay always."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
from fixture_world import CapitalReader, planned

from mmsearch_gym.env_factory import EnvFactory
from mmsearch_gym.errors import ConfigError
from mmsearch_gym.evaluate import evaluate
from mmsearch_gym.policies import make_policy
from mmsearch_gym.registration import make_env
from mmsearch_gym.replay import replay
from mmsearch_gym.search.base import MemoryBackend
from mmsearch_gym.tasks import TaskSet

ENV_ID = "TinyReplay-v0"
NEW_QUERY = "<reason>r</reason><text_search>a query nobody made</text_search>"


@pytest.fixture
def recorded(tiny_tasks: TaskSet, memory_backend: MemoryBackend, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """An oracle run of a registered id whose spec names a readthrough cache in tmp_path/cache."""
    tasks = planned(tiny_tasks)
    gym.register(id=ENV_ID, entry_point=functools.partial(make_env, tasks=tasks, backend=memory_backend),
                 kwargs={"cache": {"mode": "readthrough", "dir": str(tmp_path / "cache")}})
    path = tmp_path / "run.jsonl"
    evaluate(ENV_ID, make_policy("oracle", tasks=tasks, reader=CapitalReader()), trajectories=path, progress=False)
    yield {"path": path, "rows": [json.loads(line) for line in path.read_text().splitlines()], "tasks": tasks}
    del gym.registry[ENV_ID]


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_the_file_cannot_choose_the_cache_or_switch_off_strict_replay(recorded: dict[str, Any],
                                                                      tmp_path: Path) -> None:
    assert replay(recorded["path"]).ok
    rows = recorded["rows"]
    for row in rows:  # a file pointing elsewhere, in a mode that would ask the backend on a miss
        row["env"]["cache"] = {"mode": "readthrough", "dir": str(tmp_path / "elsewhere")}
        row["env"]["kwargs"]["cache"] = {"mode": "readthrough", "dir": str(tmp_path / "elsewhere")}
    assert replay(_write(tmp_path / "moved.jsonl", rows)).ok
    assert not (tmp_path / "elsewhere").exists()
    target = next(r for r in rows if len(r["turns"]) >= 2)
    target["turns"][0]["text"] = NEW_QUERY
    report = replay(_write(tmp_path / "new.jsonl", [target]))
    assert not report.ok and "CacheMiss" in report.mismatches[0].diff  # strict: never a live search


def test_the_file_cannot_name_a_task_file(recorded: dict[str, Any], tmp_path: Path) -> None:
    row = recorded["rows"][0]
    row["env"]["kwargs"]["tasks"] = "jsonl:/etc/passwd"
    with pytest.raises(ConfigError, match="takes no path"):
        replay(_write(tmp_path / "tasks.jsonl", [row]))


def test_the_caller_chooses_env_and_cache(recorded: dict[str, Any], memory_backend: MemoryBackend,
                                          tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--cassette"):
        replay(recorded["path"], cache_dir=tmp_path / "nowhere")
    assert replay(recorded["path"], env=EnvFactory.create(ENV_ID), cache_dir=tmp_path / "cache").ok
    assert replay(recorded["path"], env={"id": ENV_ID, "kwargs": {}}).ok
    live = functools.partial(make_env, tasks=recorded["tasks"], backend=memory_backend,
                             cache={"mode": "readthrough", "dir": str(tmp_path / "cache")})
    with pytest.raises(ConfigError, match="strict"):
        replay(recorded["path"], env=live)
    with pytest.raises(ConfigError, match="brings its own cache"):
        replay(recorded["path"], env=live, cache_dir=tmp_path / "cache")
    with pytest.raises(ConfigError, match="not both"):
        replay(recorded["path"], cassette=tmp_path / "c.jsonl", cache_dir=tmp_path / "cache")


def test_an_env_without_a_cache_needs_a_flag(recorded: dict[str, Any], memory_backend: MemoryBackend) -> None:
    gym.register(id="TinyNoCache-v0", entry_point=functools.partial(make_env, tasks=recorded["tasks"],
                                                                    backend=memory_backend))
    try:
        with pytest.raises(ConfigError, match="names no search cache"):
            replay(recorded["path"], env="TinyNoCache-v0")
    finally:
        del gym.registry["TinyNoCache-v0"]
