"""label-search-need: MMSearch-R1's no-search probe, with scripted and OpenAI-served policies."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from data_fixtures import FakeServer, knows_paris_server, write_tasks

from mmsearch_gym.errors import ConfigError, DataError
from mmsearch_gym.search_need import (
    SearchNeedRule,
    balanced_labels,
    label_search_need,
    no_search_overrides,
    read_labels,
)
from mmsearch_gym.world import load_tasks


def test_direct_policy_recovers_the_worlds_categories(tmp_path: Path) -> None:
    out = tmp_path / "labels.jsonl"
    labels = label_search_need("MMSearch-v0", "direct", out, rule=SearchNeedRule(k=2), episodes=30, progress=False)
    world = load_tasks("test")
    pairs = Counter((world.by_id(t).category == "search_free", r["label"]) for t, r in labels.items())
    assert pairs == Counter({(True, "search_free"): 6, (False, "search_required"): 24})
    assert all(r["k"] == 2 and r["min_correct"] == 2 and r["policy"] == "direct" for r in labels.values())
    balanced = balanced_labels(labels, seed=1)
    assert Counter(r["label"] for r in balanced) == {"search_free": 6, "search_required": 6}


def test_rag_policy_is_search_required_everywhere_because_search_is_blocked(tmp_path: Path) -> None:
    labels = label_search_need("MMSearch-v0", "rag", tmp_path / "l.jsonl", rule=SearchNeedRule(k=1),
                               episodes=10, progress=False)
    assert {r["label"] for r in labels.values()} == {"search_required"}


def test_resume_skips_labelled_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "labels.jsonl"
    label_search_need("MMSearch-v0", "direct", out, rule=SearchNeedRule(k=1), episodes=8, chunk=3, progress=False)
    first = out.read_text().splitlines()
    assert len(first) == 8
    import mmsearch_gym.search_need as sn

    played: list[int] = []
    real_play = sn.play
    monkeypatch.setattr(sn, "play", lambda *a, **k: played.append(len(a[3])) or real_play(*a, **k))
    labels = label_search_need("MMSearch-v0", "direct", out, rule=SearchNeedRule(k=1), episodes=12, progress=False)
    assert played == [4] and len(labels) == 12
    assert out.read_text().splitlines()[:8] == first  # earlier labels untouched


def test_openai_policy_gets_a_tool_free_prompt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    source = write_tasks(tmp_path)
    server = FakeServer()
    server.reply = knows_paris_server
    try:
        labels = label_search_need("MMSearch-v0", f"openai:{server.url}#teacher", tmp_path / "labels.jsonl",
                                   rule=SearchNeedRule(k=2, min_correct=1), overrides={"tasks": source},
                                   progress=False)
    finally:
        server.close()
    assert {t: r["label"] for t, r in labels.items()} == {
        "k1": "search_free", "k2": "search_free", "u1": "search_required", "u2": "search_required",
        "u3": "search_required"}
    assert len(server.requests) == 10  # one turn per episode, k=2 episodes per task
    assert all("No search tool is available" in r["messages"][0]["content"] for r in server.requests)


def test_rules_and_label_files_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="min_correct must be between 1 and k=2"):
        SearchNeedRule(k=2, min_correct=3)
    with pytest.raises(ConfigError, match="k must be"):
        SearchNeedRule(k=0)
    assert SearchNeedRule(k=4, min_correct=3).label(3) == "search_free"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task_id": "a", "label": "maybe"}) + "\n")
    with pytest.raises(DataError, match="bad.jsonl:1"):
        read_labels(bad)
    from mmsearch_gym.actions import get_dialect
    blocked = no_search_overrides(get_dialect("tool-json"))
    assert blocked["image_search_budget"] == blocked["text_search_budget"] == 0 and blocked["max_turns"] == 1
    assert "<answer>your final answer</answer>" in blocked["system_prompt"]
