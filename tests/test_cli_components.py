"""--backend / --judge / --summarizer / --grounder reach the env of eval, demo, train and rescore by name."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from mmsearch_gym.cli import build_parser, main
from mmsearch_gym.commands.components import component_overrides
from mmsearch_gym.commands.eval import env_overrides


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_eval_flags_become_env_overrides_and_json_specs_are_parsed() -> None:
    args = _args("eval", "--backend", '{"name": "compose", "text": "serpapi", "image": "google-vision"}',
                 "--judge", "openai:http://h/v1#j", "--summarizer", "openai:http://h/v1#s", "--grounder", "none")
    assert env_overrides(args) == {"backend": {"name": "compose", "text": "serpapi", "image": "google-vision"},
                                   "judge": "openai:http://h/v1#j", "summarizer": "openai:http://h/v1#s",
                                   "grounder": "none"}
    assert component_overrides(_args("demo", "--backend", "world")) == {"backend": "world"}
    assert component_overrides(_args("rescore", "run.jsonl", "--reward", "mmsearch-r1",
                                     "--judge", "openai:http://h/v1#j")) == {"judge": "openai:http://h/v1#j"}


def test_train_puts_the_components_into_the_recipes_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    sb3 = pytest.importorskip("mmsearch_gym.integrations.sb3")
    seen: dict[str, Any] = {}

    def fake_train(recipe: dict[str, Any], output_dir: Any) -> dict[str, Any]:
        seen.update(recipe)
        return {"ok": True}

    monkeypatch.setattr(sb3, "train_recipe", fake_train)
    assert main(["train", "ppo-world", "-o", str(tmp_path), "--backend", "serpapi",
                 "--judge", "openai:http://h/v1#j"]) == 0
    assert seen["env"]["kwargs"]["backend"] == "serpapi"
    assert seen["env"]["kwargs"]["judge"] == "openai:http://h/v1#j"


def test_a_bad_json_spec_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--backend", "{not json", "--episodes", "1", "--no-progress"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
