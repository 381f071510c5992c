"""Trajectories to a Hugging Face dataset (images as Image features) and back, bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmsearch_gym.errors import DataError
from mmsearch_gym.evaluate import evaluate
from mmsearch_gym.hf_datasets import from_hf_dataset, load_trajectories, to_hf_dataset
from mmsearch_gym.reward import RewardSpec
from mmsearch_gym.trajectories import read_trajectories, rescore
from mmsearch_gym.world import load_tasks

datasets = pytest.importorskip("datasets")


def test_round_trip_with_images(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    evaluate("MMSearch-v0", "oracle", episodes=6, trajectories=path, embed_images=True, progress=False)
    trajectories = read_trajectories(path)
    data = to_hf_dataset(trajectories, tasks=load_tasks("test"))
    assert isinstance(data.features["image"], datasets.Image) and len(data) == 6
    row = data[0]
    assert row["image"].size == (trajectories[0].image.width, trajectories[0].image.height)
    searched = [i for i, t in enumerate(trajectories) if t.image_searches]
    assert searched and len(data[searched[0]]["thumbnails"]) > 0
    assert row["messages"][0] == {"role": "user", "content": trajectories[0].question}
    data.save_to_disk(str(tmp_path / "hf"))
    back = load_trajectories(tmp_path / "hf")
    assert [t.to_line() for t in back] == [t.to_line() for t in trajectories]
    assert rescore(back, RewardSpec.mmsearch_r1()) == [t.reward for t in trajectories]
    assert load_trajectories(path)[0].to_line() == trajectories[0].to_line()


def test_without_tasks_the_embedded_thumbnail_is_the_image(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    evaluate("MMSearch-v0", "direct", episodes=2, trajectories=path, embed_images=True, progress=False)
    trajectories = read_trajectories(path)
    data = to_hf_dataset(trajectories, labels={})
    assert data[0]["image"].size == trajectories[0].image.thumbnail_size
    assert data[0]["label"] in ("search_free", "search_required")


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no trajectories"):
        to_hf_dataset([])
    datasets.Dataset.from_dict({"x": [1]}).save_to_disk(str(tmp_path / "other"))
    with pytest.raises(DataError, match="no 'trajectory' column"):
        from_hf_dataset(tmp_path / "other")
    with pytest.raises(DataError, match="not a datasets save_to_disk folder"):
        from_hf_dataset(tmp_path / "missing")
