"""FVQA's released image-search cache becomes a cassette the env replays."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from mmsearch_gym.errors import DataError
from mmsearch_gym.loaders import fvqa_search_cassette, load_source

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def _png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 32), color).save(buf, format="PNG")
    return buf.getvalue()


def _fvqa_file(path: Path) -> Path:
    rows = [{"data_source": "fvqa", "data_id": f"fvqa_train_{i}", "category": "search_required",
             "prompt": [{"role": "user", "content": f"<image>\nQuestion: What landmark is this ({i})?"}],
             "images": [{"bytes": _png((40 * i, 0, 0)), "path": None}],
             "reward_model": {"ground_truth": "Eiffel Tower", "candidate_answers": "[]", "style": "rule"},
             "image_urls": [None]} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_released_cache_replays_in_the_env(tmp_path: Path) -> None:
    from mmsearch_gym.env import MMSearchEnv
    from mmsearch_gym.search.cache import SearchCache
    from mmsearch_gym.search.cassette import read_cassette

    tasks = load_source(f"fvqa:{_fvqa_file(tmp_path / 'fvqa_train.parquet')}")
    thumbs = tmp_path / "cached_images" / "train"
    thumbs.mkdir(parents=True)
    Image.new("RGB", (16, 16), (0, 200, 0)).save(thumbs / "0_0.jpg")
    cache = {"fvqa_train_0": {"tool_returned_web_title": ["Eiffel Tower - Wikipedia", "Lost result"],
                              "cached_images_path": ["cached_images/train/0_0.jpg", "cached_images/train/gone.jpg"]},
             "fvqa_train_2": {"tool_returned_web_title": [], "cached_images_path": []},
             "not_in_tasks": {"tool_returned_web_title": ["x"], "cached_images_path": ["y"]}}
    cache_json = tmp_path / "fvqa_train_image_search_results_cache.json"
    cache_json.write_text(json.dumps(cache))
    out = tmp_path / "fvqa-cache.jsonl"
    assert fvqa_search_cassette(cache_json, tasks, out, images_dir=tmp_path) == 2
    info = read_cassette(out)
    assert info.backend == "fvqa-cache" and info.entries == 2

    store = SearchCache(None, tmp_path / "cache", mode="replay", name="fvqa-cache", version="1")
    store.import_cassette(out)
    env = MMSearchEnv(tasks, store)
    env.reset(options={"task_id": "fvqa_train_0"})
    _, _, _, _, step = env.step("<reason>I should look it up.</reason><search><img></search>")
    assert [h.title for h in step["hits"]] == ["Eiffel Tower - Wikipedia"]
    assert step["hits"][0].thumbnail_image().getpixel((8, 8))[1] > 150


def test_released_cache_errors(tmp_path: Path) -> None:
    tasks = load_source(f"fvqa:{_fvqa_file(tmp_path / 'fvqa_test.parquet')}")
    with pytest.raises(DataError, match="does not exist"):
        fvqa_search_cassette(tmp_path / "none.json", tasks, tmp_path / "o.jsonl")
    (tmp_path / "other.json").write_text(json.dumps({"x": {"tool_returned_web_title": []}}))
    with pytest.raises(DataError, match="none of the 3 tasks"):
        fvqa_search_cassette(tmp_path / "other.json", tasks, tmp_path / "o.jsonl")
    assert not (tmp_path / "o.jsonl").exists()
