"""The CLI's contract with the user's files and flags: check first, write atomically, fail in one line."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import pytest

from mmsearch_gym import cli
from mmsearch_gym.cli import _user_error, main
from mmsearch_gym.commands.options import check_env_overrides, env_option_types
from mmsearch_gym.errors import ConfigError
from mmsearch_gym.registration import make_env
from mmsearch_gym.search.base import MemoryBackend
from mmsearch_gym.tasks import TaskSet

ROOT = Path(__file__).resolve().parents[1]
TINY_ID = "TinyFiles-v0"


@pytest.fixture
def tiny_env(tiny_tasks: TaskSet, memory_backend: MemoryBackend, tmp_path: Path) -> Iterator[str]:
    gym.register(id=TINY_ID, entry_point=functools.partial(make_env, tasks=tiny_tasks, backend=memory_backend),
                 kwargs={"cache": {"mode": "readthrough", "dir": str(tmp_path / "cache")}})
    yield TINY_ID
    del gym.registry[TINY_ID]


def _eval(*extra: str) -> int:
    return main(["eval", "--env", TINY_ID, "--policy", "random", "--no-progress", *extra])


def _one_line(err: str) -> str:
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    return err


# -- eval --trajectories ----------------------------------------------------------------------


def test_eval_refuses_to_append_silently(tiny_env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    traj = tmp_path / "run.jsonl"
    assert _eval("--trajectories", str(traj)) == 0
    first = traj.read_text()
    assert len(first.splitlines()) == 3 and "wrote 3 trajectories" in capsys.readouterr().err

    assert _eval("--trajectories", str(traj)) == 2
    assert "--append" in _one_line(capsys.readouterr().err) and traj.read_text() == first

    assert _eval("--trajectories", str(traj), "--append") == 0
    assert len(traj.read_text().splitlines()) == 6 and "appended 3" in capsys.readouterr().err

    assert _eval("--trajectories", str(traj), "--overwrite", "--seed", "7") == 0
    assert len(traj.read_text().splitlines()) == 3 and "replaced" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".run.jsonl")] == []

    kept = traj.read_text()
    assert _eval("--trajectories", str(traj), "--overwrite", "--episodes", "99") == 2  # fails inside evaluate
    assert "episodes must be between" in _one_line(capsys.readouterr().err)
    assert traj.read_text() == kept  # the old file survives a failed --overwrite
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".run.jsonl")] == []

    fresh = tmp_path / "fresh.jsonl"
    assert _eval("--trajectories", str(fresh), "--episodes", "99") == 2
    assert not fresh.exists()  # no empty file left by a run that wrote nothing
    assert _eval("--append") == 2 and "--trajectories" in capsys.readouterr().err


def test_eval_json_outputs_are_written_only_on_success(tiny_env: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    out.write_text('{"earlier": true}\n')
    assert _eval("--json", str(out), "--policy", "nope") == 2
    assert "unknown policy spec 'nope'" in _one_line(capsys.readouterr().err)
    assert json.loads(out.read_text()) == {"earlier": True}
    assert _eval("--json", str(out)) == 0
    assert json.loads(out.read_text())["episodes"] == 3


# -- --set and policy extras --------------------------------------------------------------------


@pytest.mark.parametrize(("pair", "message"), [
    ("max_turns=abc", "max_turns takes an integer or null"),
    ("top_k=2.5", "top_k takes an integer"),
    ("top_k=true", "top_k takes an integer"),
    ("image_size=[1]", "a pair of integers"),
    ("system_prompt=[1]", "system_prompt takes a string or null"),
    ("bogus=1", "the env has no option 'bogus'"),
])
def test_set_values_are_checked(tiny_env: str, capsys: pytest.CaptureFixture[str], pair: str, message: str) -> None:
    assert _eval("--set", pair) == 2
    assert message in _one_line(capsys.readouterr().err)


def test_env_option_types_follow_the_signature() -> None:
    types = env_option_types()
    assert types["max_turns"] == {"int", "None"} and types["tasks"] == {"str", "object"}
    assert "render_mode" not in types and "self" not in types
    check_env_overrides({"max_turns": 3, "image_size": [64, 64], "tasks": "world:train", "reward": None,
                         "cache": {"mode": "replay"}, "system_prompt": "Be brief."})
    with pytest.raises(ConfigError, match="quote a string"):
        check_env_overrides({"dialect": 3})


@pytest.mark.parametrize(("policy", "extra"), [("transformers:./model", "trl"), ("sb3:model.zip", "sb3")])
def test_model_policies_name_their_extra_without_torch(policy: str, extra: str) -> None:
    code = ("import sys; sys.modules['torch'] = None; from mmsearch_gym.cli import main; "
            f"raise SystemExit(main(['eval', '--policy', {policy!r}, '--episodes', '1', '--no-progress']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2, done.stderr
    assert "torch" in _one_line(done.stderr) and f"pip install 'mmsearch-gym[{extra}]'" in done.stderr


# -- demo -----------------------------------------------------------------------------------------


def test_demo_bad_policy_keeps_earlier_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    out.mkdir()
    (out / "trajectories.jsonl").write_text("earlier episodes\n")
    assert main(["demo", "--policies", "direct,foo", "--out", str(out), "--episodes", "2", "--no-progress"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "unknown policy spec 'foo'" in err and "direct" not in capsys.readouterr().out  # nothing was played
    assert (out / "trajectories.jsonl").read_text() == "earlier episodes\n"
    assert sorted(p.name for p in out.iterdir()) == ["trajectories.jsonl"]


# -- the top-level guard --------------------------------------------------------------------------


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    traj = tmp_path / "t.jsonl"
    traj.write_text("")
    assert main(["render", str(traj), "-o", str(blocker / "report.html")]) == 2  # a file where a folder belongs
    assert str(blocker) in _one_line(capsys.readouterr().err)

    assert "pip install 'mmsearch-gym[sb3]'" in str(_user_error(ModuleNotFoundError("x", name="stable_baselines3")))
    assert _user_error(ModuleNotFoundError("x", name="mmsearch_gym.nothing")) is None
    assert _user_error(ZeroDivisionError()) is None

    def bug(args: object) -> int:
        raise ZeroDivisionError("a real bug")

    real = cli.build_parser

    def parser_with_bug() -> object:
        parser = real()
        parser.set_defaults(_run=bug)
        for action in parser._subparsers._group_actions:  # type: ignore[union-attr]
            for sub in action.choices.values():
                sub.set_defaults(_run=bug)
        return parser

    monkeypatch.setattr(cli, "build_parser", parser_with_bug)
    with pytest.raises(ZeroDivisionError):
        main(["render", str(traj)])
    monkeypatch.setattr(cli, "build_parser", real)
    with pytest.raises(ConfigError):
        main(["--debug", "render", str(tmp_path / "missing.jsonl")])
    assert main(["render", str(tmp_path / "missing.jsonl")]) == 2
    assert "no trajectories file" in _one_line(capsys.readouterr().err)
