"""Tests of the trajectory format, its reader and writer, replay and rescore."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fixture_world import CapitalReader, planned
from hypothesis import given, settings
from hypothesis import strategies as st

from mmsearch_gym.errors import ConfigError, DataError
from mmsearch_gym.evaluate import evaluate
from mmsearch_gym.policies import make_policy
from mmsearch_gym.registration import make_env
from mmsearch_gym.replay import replay
from mmsearch_gym.reward import RewardBreakdown, RewardSpec, score_episode
from mmsearch_gym.search.base import MemoryBackend
from mmsearch_gym.search.cache import SearchCache
from mmsearch_gym.tasks import TaskSet
from mmsearch_gym.trajectories import (
    SCHEMA_VERSION,
    HitRecord,
    ImageRecord,
    Trajectory,
    TrajectoryWriter,
    Turn,
    read_trajectories,
    rescore,
)

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "docs" / "trajectory-schema.json"


@pytest.fixture
def recorded(tiny_tasks: TaskSet, memory_backend: MemoryBackend, tmp_path: Path) -> dict[str, Any]:
    """An oracle run over the tiny tasks, recorded through a readthrough cache."""
    tasks = planned(tiny_tasks)
    cache_dir = tmp_path / "cache"
    make = functools.partial(make_env, tasks=tasks, backend=memory_backend,
                             cache={"mode": "readthrough", "dir": str(cache_dir)})
    path = tmp_path / "run.jsonl"
    report = evaluate(make, make_policy("oracle", tasks=tasks, reader=CapitalReader()), trajectories=path,
                      progress=False, embed_images=True)
    replay_env = functools.partial(make_env, tasks=tasks, backend=MemoryBackend(),
                                   cache={"mode": "replay", "dir": str(cache_dir)})
    return {"path": path, "tasks": tasks, "cache_dir": cache_dir, "replay_env": replay_env, "report": report}


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# The published JSON Schema, checked with jsonschema (the test extra)
# ---------------------------------------------------------------------------------------------


def schema_errors(value: Any, schema: dict[str, Any]) -> list[str]:
    """Every violation of ``schema`` (Draft 2020-12) by ``value``, as ``path: message``."""
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{error.json_path}: {error.message[:120]}" for error in validator.iter_errors(value)]


def test_recorded_lines_follow_the_published_schema(recorded: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)  # the schema itself is valid
    assert schema["properties"]["version"]["const"] == SCHEMA_VERSION
    rows = _lines(recorded["path"])
    assert len(rows) == 3
    for row in rows:
        assert schema_errors(row, schema) == []
    broken = dict(rows[0], turns=[dict(rows[0]["turns"][0], box=[1, 2, 3])])
    assert schema_errors(broken, schema)  # the checker can fail
    assert schema_errors(dict(rows[0], extra=1), schema)


@pytest.mark.parametrize(("path", "value"), [
    (["turns", 0, "box"], [-1, 0, 10, 10]),
    (["turns", 0, "reward"], "0.5"),
    (["turns", 0, "counts", "text_searches"], -1),
    (["image", "width"], 0),
    (["image", "thumbnail", "data"], "not base64!"),
    (["turns", 0, "hits", 0, "thumbnail", "data"], "%%%"),
    (["env", "limits", "image_size"], [0, 224]),
    (["answers"], []),
    (["task_index"], -1),
    (["episode"], None),
    (["image", "digest"], "abc"),
    (["turns", 0, "hits", 0, "thumbnail", "digest"], "Z" * 64),
])
def test_the_schema_is_as_strict_as_the_reader(recorded: dict[str, Any], tmp_path: Path, path: list[Any],
                                               value: Any) -> None:
    """What the reader refuses, the published schema refuses too."""
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    row = next(r for r in _lines(recorded["path"]) if r["turns"][0]["hits"] and r["turns"][0]["box"])
    node = row
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert schema_errors(row, schema)
    with pytest.raises(DataError):
        read_trajectories(_write(tmp_path / "x.jsonl", [row]))


def test_trajectory_content(recorded: dict[str, Any]) -> None:
    trajs = {t.task_id: t for t in read_trajectories(recorded["path"])}
    crop = trajs["t0"]
    assert crop.env["id"] is None and crop.env["cache"]["mode"] == "readthrough"
    assert crop.env["cache"]["dir"] == str(recorded["cache_dir"].resolve())
    assert crop.env["dialect"] == "mmsearch-r1" and crop.env["limits"]["max_turns"] == 3
    assert crop.env["backend"] == {"name": "memory", "version": "1"}
    assert crop.policy == "oracle" and crop.answers == ["France", "French Republic"]
    assert crop.turns[0].box == (200, 20, 300, 90) and crop.turns[0].action["kind"] == "image_search"
    hit = crop.turns[0].hits[0]
    assert hit.url == "https://example.org/flag/fr" and hit.thumbnail is not None and hit.thumbnail_digest
    assert crop.image.thumbnail is not None and crop.image.width == 320
    assert crop.reward.reward == pytest.approx(0.91) and crop.total_return == crop.reward.reward
    assert all(t.env_s >= 0 and t.policy_s >= 0 for t in crop.turns)
    text = trajs["t1"]
    assert [t.action["kind"] for t in text.turns] == ["image_search", "text_search", "answer"]
    assert "Paris" in text.turns[1].observation and text.turns[0].reasoning


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=80), st.text(max_size=80), st.floats(allow_nan=False, allow_infinity=False),
       st.one_of(st.none(), st.tuples(*[st.integers(0, 5000)] * 4)))
def test_roundtrip_any_text(text: str, observation: str, score: float, box: tuple[int, ...] | None) -> None:
    hit = HitRecord("https://x/" + text, text, observation, score, "s", "0" * 64, b"\x89PNG\r\n\x1a\n")
    counts = {"image_searches": 0, "text_searches": 0, "invalid_turns": 0}
    turn = Turn(text=text, action={"kind": "answer", "text": text}, observation=observation,
                box=box, hits=[hit], reward=score, terminated=True, counts=counts)  # type: ignore[arg-type]
    breakdown = RewardBreakdown(score, 1.0, 1.0, 1.0, 0, 0, 0, 0.0, text)
    traj = Trajectory(0, "id", "crop", text, [text or "a"], 0, "p", {"id": None}, ImageRecord("f" * 64, 3, 4),
                      [turn], breakdown, True, False)
    again = Trajectory.from_line(traj.to_line())
    assert again.to_json() == traj.to_json()
    assert "\n" not in traj.to_line()


# ---------------------------------------------------------------------------------------------
# Writer and reader
# ---------------------------------------------------------------------------------------------


def test_reader_names_the_bad_line(recorded: dict[str, Any], tmp_path: Path) -> None:
    lines = recorded["path"].read_text(encoding="utf-8").splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2] + "\n" + lines[2] + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl line 2: "):
        read_trajectories(bad)
    row = json.loads(lines[0])
    for mutate, message in ((lambda r: r.update(version=SCHEMA_VERSION + 1), "newer"),
                            (lambda r: r.update(schema="other"), "not an mmsearch_gym trajectory"),
                            (lambda r: r.pop("turns"), "missing field 'turns'"),
                            (lambda r: r["turns"][0].update(action={"kind": "fly"}), "action"),
                            (lambda r: r["image"].update(thumbnail={"mime": "text/html", "width": 1, "height": 1,
                                                                    "data": ""}), "thumbnail")):
        copy = json.loads(json.dumps(row))
        mutate(copy)
        path = _write(tmp_path / "one.jsonl", [row, copy])
        with pytest.raises(DataError, match=message) as err:
            read_trajectories(path)
        assert " line 2:" in str(err.value)
    with pytest.raises(ConfigError):
        read_trajectories(tmp_path / "missing.jsonl")


def test_writer_appends_and_isolates_a_partial_line(recorded: dict[str, Any], tmp_path: Path) -> None:
    trajs = read_trajectories(recorded["path"])
    path = tmp_path / "out.jsonl"
    with TrajectoryWriter(path, mode="w") as writer:
        writer.write(trajs[0])
    assert len(read_trajectories(path)) == 1  # flushed and readable
    with path.open("a", encoding="utf-8") as handle:  # a crash in the middle of a line
        handle.write(trajs[1].to_line()[:50])
    with TrajectoryWriter(path) as writer:
        assert writer.existing_lines == 2
        writer.write(trajs[2])
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["task_id"] == trajs[2].task_id
    with pytest.raises(DataError, match=r" line 2: "):
        read_trajectories(path)
    with pytest.raises(ConfigError):
        TrajectoryWriter(path, mode="x")


# ---------------------------------------------------------------------------------------------
# Replay
# ---------------------------------------------------------------------------------------------


def test_replay_of_a_recording_matches(recorded: dict[str, Any]) -> None:
    report = replay(recorded["path"], env=recorded["replay_env"])
    assert report.ok and report.episodes == 3 and report.turns == 6
    assert "replay OK" in report.summary()


@pytest.mark.parametrize("field", ["observation", "reward", "hit", "box", "breakdown", "answers", "image"])
def test_tampering_is_caught(recorded: dict[str, Any], tmp_path: Path, field: str) -> None:
    rows = _lines(recorded["path"])
    row = next(r for r in rows if r["task_id"] == ("t1" if field != "box" else "t0"))
    if field == "observation":
        row["turns"][1]["observation"] = row["turns"][1]["observation"].replace("Paris", "Lyon")
    elif field == "reward":
        row["turns"][-1]["reward"] += 1e-12
    elif field == "hit":
        row["turns"][0]["hits"][0]["score"] = 0.5
    elif field == "box":
        row["turns"][0]["box"] = [200, 20, 301, 90]
    elif field == "answers":
        row["answers"] = ["Lyon"]
    elif field == "image":
        row["image"]["digest"] = "0" * 64
    else:
        row["reward"]["format"] = 0.0
    report = replay(_write(tmp_path / "t.jsonl", rows), env=recorded["replay_env"])
    assert not report.ok and len(report.mismatches) == 1
    mismatch = report.mismatches[0]
    assert mismatch.task_id == row["task_id"] and mismatch.episode == row["episode"]
    expected_turn = {"observation": 2, "reward": 3, "hit": 1, "box": 1, "breakdown": None, "answers": 0,
                     "image": 0}[field]
    assert mismatch.turn == expected_turn
    assert mismatch.diff.startswith("--- recorded") and "\n-" in mismatch.diff and "\n+" in mismatch.diff
    if field == "observation":
        assert "-  France. Capital: Lyon." in mismatch.diff and "+  France. Capital: Paris." in mismatch.diff


def test_replay_reports_a_cache_miss(recorded: dict[str, Any], tmp_path: Path) -> None:
    rows = _lines(recorded["path"])
    row = next(r for r in rows if r["task_id"] == "t1")
    row["turns"][1]["text"] = "<reason>r</reason><text_search>never searched</text_search>"
    report = replay(_write(tmp_path / "m.jsonl", [row]), env=recorded["replay_env"])
    assert not report.ok
    assert report.mismatches[0].turn == 2 and "CacheMiss" in report.mismatches[0].diff
    assert "never searched" in report.mismatches[0].diff


def test_replay_from_a_cassette_and_env_checks(recorded: dict[str, Any], tmp_path: Path) -> None:
    cassette = tmp_path / "run.cassette.jsonl"
    with SearchCache(MemoryBackend(), recorded["cache_dir"]) as cache:
        assert cache.export_cassette(cassette) > 0
    tasks = recorded["tasks"]
    make = functools.partial(make_env, tasks=tasks, backend=MemoryBackend(),
                             cache={"mode": "replay", "dir": str(tmp_path / "fresh"), "cassette": str(cassette)})
    assert replay(recorded["path"], env=make).ok
    other = functools.partial(make_env, tasks=tasks, backend=MemoryBackend(), dialect="deepmmsearch-r1",
                              cache={"mode": "replay", "dir": str(recorded["cache_dir"])})
    with pytest.raises(ConfigError, match="differs from the recorded one"):
        replay(recorded["path"], env=other)
    with pytest.raises(ConfigError, match="custom env factory"):
        replay(recorded["path"])  # recorded with a factory: the file cannot rebuild it


# ---------------------------------------------------------------------------------------------
# Rescore
# ---------------------------------------------------------------------------------------------


def test_rescore_under_another_spec(recorded: dict[str, Any]) -> None:
    trajs = read_trajectories(recorded["path"])
    same = rescore(trajs, RewardSpec.mmsearch_r1())
    assert [b.to_json() for b in same] == [t.reward.to_json() for t in trajs]
    deep = rescore(trajs, RewardSpec.deepmmsearch_r1(dialect="mmsearch-r1"))
    for traj, breakdown in zip(trajs, deep, strict=True):
        assert breakdown.penalty == 0.0 and breakdown.reward == pytest.approx(1.0)
        assert breakdown == score_episode([t.text for t in traj.turns], traj.answers,
                                          RewardSpec.deepmmsearch_r1(dialect="mmsearch-r1"), traj.question)
