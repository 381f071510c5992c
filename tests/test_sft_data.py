"""make-sft: teacher episodes judged, deduplicated, balanced 50:50 and sampled uniformly over topics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_fixtures import FakeServer, knows_paris_server, write_tasks

from mmsearch_gym.errors import DataError
from mmsearch_gym.search_need import SearchNeedRule, label_search_need, write_jsonl
from mmsearch_gym.sft_data import make_sft, select_episodes
from mmsearch_gym.trajectories import read_trajectories

pytest.importorskip("datasets")


def test_oracle_on_the_world_is_balanced_and_resumable(tmp_path: Path) -> None:
    out = tmp_path / "sft"
    summary = make_sft("MMSearch-Train-v0", "oracle", out, episodes=40, progress=False)
    assert summary.kept["search_free"] == summary.kept["search_required"] > 0
    assert summary.played == 40 and summary.new_episodes == 40
    kept = read_trajectories(out / "sft.jsonl")
    assert len(kept) == sum(summary.kept.values()) and len({t.task_id for t in kept}) == len(kept)
    assert all(t.correct and t.reward.format == 1.0 for t in kept)
    report = json.loads((out / "summary.json").read_text())
    assert report["kept_total"] == len(kept) and "search_required beyond the balance" in report["dropped"]
    teacher_lines = (out / "teacher.jsonl").read_text()
    again = make_sft("MMSearch-Train-v0", "oracle", out, episodes=40, progress=False)
    assert again.new_episodes == 0 and (out / "teacher.jsonl").read_text() == teacher_lines
    assert read_trajectories(out / "sft.jsonl")[0].to_json() == kept[0].to_json()


def test_one_class_is_kept_with_a_shortfall_unless_strict(tmp_path: Path) -> None:
    out = tmp_path / "sft"
    make_sft("MMSearch-Train-v0", "oracle", out, episodes=12, progress=False, hf=False)
    labels = tmp_path / "labels.jsonl"
    write_jsonl(({"task_id": t.task_id, "label": "search_required"} for t in read_trajectories(out / "teacher.jsonl")),
                labels)
    summary = make_sft("MMSearch-Train-v0", "oracle", out, episodes=12, labels=labels, progress=False, hf=False)
    correct = sum(t.correct for t in read_trajectories(out / "teacher.jsonl"))
    assert summary.kept == {"search_free": 0, "search_required": correct}
    assert summary.shortfall == {"search_free": correct}
    with pytest.raises(DataError, match="cannot balance 50% search-free: 0 search-free"):
        make_sft("MMSearch-Train-v0", "oracle", out, episodes=12, labels=labels, progress=False, hf=False,
                 strict=True)


def test_duplicates_and_wrong_episodes_are_dropped_with_reasons(tmp_path: Path) -> None:
    out = tmp_path / "sft"
    make_sft("MMSearch-Train-v0", "oracle", out, episodes=10, progress=False, hf=False)
    teacher = read_trajectories(out / "teacher.jsonl")
    _, summary = select_episodes(teacher + teacher[:3], None, free_share=0.5)
    assert summary.dropped.get("duplicate (task already kept)", 0) >= 1
    random_dir = tmp_path / "random"
    rnd = make_sft("MMSearch-Train-v0", "random", random_dir, episodes=10, progress=False, hf=False)
    assert rnd.dropped.get("incorrect (judge)", 0) + rnd.dropped.get("format invalid", 0) > 0


def test_openai_teacher_with_labels_and_uniform_topics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    source = write_tasks(tmp_path)
    server = FakeServer()
    server.reply = knows_paris_server
    spec = f"openai:{server.url}#teacher"
    try:
        label_search_need("MMSearch-v0", spec, tmp_path / "labels.jsonl", rule=SearchNeedRule(k=1),
                          overrides={"tasks": source}, progress=False)
        summary = make_sft("MMSearch-v0", spec, tmp_path / "sft", overrides={"tasks": source},
                           labels=tmp_path / "labels.jsonl", progress=False)
    finally:
        server.close()
    assert summary.kept == {"search_free": 2, "search_required": 2}
    # Three correct search-required episodes (art, art, sports): uniform over topics keeps both topics.
    assert summary.taxonomy["search_required"] == {"art": 1, "sports": 1}
    kept = read_trajectories(tmp_path / "sft" / "sft.jsonl")
    searched = {t.task_id: t.image_searches for t in kept}
    assert searched["k1"] == searched["k2"] == 0 and all(searched[t] == 1 for t in searched if t.startswith("u"))


def test_sft_recipe_reads_the_output(tmp_path: Path) -> None:
    pytest.importorskip("trl")
    from mmsearch_gym.integrations.trl import build_sft_dataset

    out = tmp_path / "sft"
    summary = make_sft("MMSearch-Train-v0", "oracle", out, episodes=20, progress=False, hf=False)
    data = build_sft_dataset(str(out / "sft.jsonl"), env="MMSearch-Train-v0", balance=None, progress=False)
    assert len(data) == sum(summary.kept.values())
    assert data[0]["messages"][0]["role"] == "system" and data[0]["messages"][-1]["role"] == "assistant"
