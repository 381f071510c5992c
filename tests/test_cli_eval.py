"""End-to-end tests of ``mmsearch-gym eval / replay / rescore / render / demo``."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import pytest

from mmsearch_gym.cli import main
from mmsearch_gym.registration import make_env
from mmsearch_gym.search.base import MemoryBackend
from mmsearch_gym.tasks import TaskSet

TINY_ID = "TinyCLI-v0"


@pytest.fixture
def tiny_env(tiny_tasks: TaskSet, memory_backend: MemoryBackend, tmp_path: Path) -> Iterator[Path]:
    """A registered env id over the tiny fixtures, searching through a readthrough cache in tmp_path."""
    cache_dir = tmp_path / "cache"
    gym.register(id=TINY_ID, entry_point=functools.partial(make_env, tasks=tiny_tasks, backend=memory_backend),
                 kwargs={"cache": {"mode": "readthrough", "dir": str(cache_dir)}})
    yield cache_dir
    del gym.registry[TINY_ID]


def _eval(tmp_path: Path, *extra: str) -> Path:
    traj = tmp_path / "run.jsonl"
    code = main(["eval", "--env", TINY_ID, "--policy", "random", "--seed", "4", "--no-progress",
                 "--trajectories", str(traj), *extra])
    assert code == 0
    return traj


def test_eval_writes_table_json_markdown(tiny_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    _eval(tmp_path, "--json", str(out_json), "--markdown", str(out_md), "--per-episode")
    printed = capsys.readouterr()
    assert f"{TINY_ID} · policy random · 3 episodes · seed 4" in printed.out
    assert "acc %" in printed.out and "search %" in printed.out and "3 episodes in" in printed.err
    data = json.loads(out_json.read_text())
    for key in ("accuracy", "search_ratio", "mean_reward", "format_rate", "calls_per_episode", "episodes",
                "per_category"):
        assert key in data
    assert data["episodes"] == 3 and len(data["per_episode"]) == 3
    assert set(data["per_category"]) == {"crop", "image_then_text", "search_free"}
    assert out_md.read_text().count("| random |") == 4


def test_eval_prints_the_search_behaviour_block(tiny_env: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out_md = tmp_path / "r.md"
    _eval(tmp_path, "--markdown", str(out_md), "--markdown-behaviour")
    printed = capsys.readouterr().out
    assert "search behaviour" in printed and "crop/ep" in printed and "ans after-txt %" in printed
    md = out_md.read_text()
    assert "**search behaviour**" in md and md.count("| random |") == 8  # both blocks, 4 rows each


def test_eval_bad_input_is_a_clear_error(tiny_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--env", TINY_ID, "--episodes", "9", "--no-progress"]) == 2
    assert "episodes must be between 1 and the 3 tasks" in capsys.readouterr().err
    assert main(["eval", "--env", "Nope-v0", "--no-progress"]) == 2
    assert "unknown env id" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--split", "test", "--tasks", "jsonl:x"])  # mutually exclusive
    assert main(["eval", "--env", TINY_ID, "--policy-set", "novalue", "--no-progress"]) == 2
    assert "--policy-set takes KEY=VALUE" in capsys.readouterr().err


def test_eval_policy_and_env_options(tiny_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--policy-set`` reaches the policy (a scripted one rejects an unknown option clearly) and
    ``--set`` reaches the env (the system prompt lands in the recorded chat)."""
    assert main(["eval", "--env", TINY_ID, "--policy", "oracle", "--policy-set", "bogus=1", "--no-progress"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert main(["eval", "--env", TINY_ID, "--policy-set", "seed=3", "--no-progress"]) == 2
    assert "come from the evaluation itself" in capsys.readouterr().err
    traj = _eval(tmp_path, "--set", "system_prompt=Be brief.")
    first = json.loads(traj.read_text().splitlines()[0])
    assert "Be brief." in json.dumps(first)


def test_replay_cli_ok_tampered_and_missing(tiny_env: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    traj = _eval(tmp_path)
    capsys.readouterr()
    assert main(["replay", str(traj), "--no-progress"]) == 0
    assert "replay OK: 3 episodes" in capsys.readouterr().out

    rows = [json.loads(line) for line in traj.read_text().splitlines()]
    target = next(r for r in rows if len(r["turns"]) >= 2)
    target["turns"][0]["observation"] += " (edited)"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["replay", str(bad), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert f"replay mismatch in episode {target['episode']} (task {target['task_id']}" in captured.err
    assert "turn 1" in captured.err and "--- recorded" in captured.err and "(edited)" in captured.err
    assert "replay FAILED" in captured.out

    target["turns"][0]["observation"] = target["turns"][0]["observation"].replace(" (edited)", "")
    target["turns"][0]["text"] = "<reason>r</reason><text_search>a query nobody made</text_search>"
    miss = tmp_path / "miss.jsonl"
    miss.write_text(json.dumps(target) + "\n")
    assert main(["replay", str(miss), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "CacheMiss" in captured.err and "a query nobody made" in captured.err
    assert "Traceback" not in captured.err

    assert main(["replay", str(traj), "--cache-dir", str(tmp_path / "nowhere"), "--no-progress"]) == 2
    assert "--cassette" in capsys.readouterr().err


def test_rescore_and_render_cli(tiny_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    traj = _eval(tmp_path)
    capsys.readouterr()
    out = tmp_path / "rescored.json"
    assert main(["rescore", str(traj), "--reward", "deepmmsearch-r1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "recorded reward: mmsearch-r1" in printed and "rescored reward: deepmmsearch-r1" in printed
    data = json.loads(out.read_text())
    assert data["recorded"]["random"]["episodes"] == 3
    assert data["rescored"]["random"]["reward_spec"]["search_penalty"] == 0.0
    assert data["rescored"]["random"]["reward_spec"]["dialect"] == "mmsearch-r1"  # the turns' own format rule
    html = tmp_path / "r.html"
    assert main(["render", str(traj), "-o", str(html)]) == 0
    text = html.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.count("<section class=episode") == 3


# ---------------------------------------------------------------------------------------------
# The built-in world
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_world_eval_parallel_equals_serial_and_replays(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outputs = []
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}.json"
        traj = tmp_path / f"w{workers}.jsonl"
        code = main(["eval", "--env", "MMSearch-v0", "--policy", "oracle", "--split", "test", "--episodes", "10",
                     "--workers", workers, "--json", str(out), "--trajectories", str(traj), "--no-progress"])
        assert code == 0
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1]
    data = json.loads(outputs[0])
    assert data["episodes"] == 10 and data["env"] == "MMSearch-v0" and data["tasks"] == "world:test"
    assert len(data["per_category"]) == 5
    capsys.readouterr()
    assert main(["replay", str(tmp_path / "w2.jsonl"), "--no-progress"]) == 0
    assert "replay OK: 10 episodes" in capsys.readouterr().out


@pytest.mark.slow
def test_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--episodes", "5", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for policy in ("direct", "rag", "oracle"):
        assert any(line.split()[:2] == [policy, "all"] for line in printed.splitlines())
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"direct", "rag", "oracle"}
    assert results["oracle"]["accuracy"] >= results["direct"]["accuracy"]
    assert results["direct"]["search_ratio"] == 0.0 and results["rag"]["search_ratio"] == 1.0
    assert (out / "results.md").read_text().count("| all |") == 3
    html = (out / "report.html").read_text()
    assert html.count("<section class=episode") == 15 and "data:image/jpeg;base64," in html
    assert len((out / "trajectories.jsonl").read_text().splitlines()) == 15
