"""JSONL and FVQA parquet loaders: exact schemas in, Tasks out, clear DataErrors otherwise."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from mmsearch_gym.errors import ConfigError, DataError
from mmsearch_gym.loaders import extract_question, load_fvqa_parquet, load_jsonl
from mmsearch_gym.tasks import SEARCH_FREE, TaskSet


def _png(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (32, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


# --- JSONL ---------------------------------------------------------------------------

def test_jsonl_round_trip(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(_png())
    absolute = tmp_path / "b.png"
    absolute.write_bytes(_png((0, 0, 255)))
    path = _write_jsonl(tmp_path / "set.jsonl", [
        {"id": "q1", "image": "imgs/a.png", "image_url": "https://example.org/a.png",
         "question": "Which country's flag is this?", "answers": ["France", "French Republic"],
         "category": "image_search", "split": "train",
         "objects": [{"label": "flag", "box": [1, 2, 30, 20], "entity": "FR",
                      "attributes": {"position": "center"}}],
         "source": "handmade"},
        "",
        {"image": str(absolute), "question": " How many flags? ", "answers": "1",
         "category": "search free"},
    ])
    tasks = load_jsonl(path)
    assert isinstance(tasks, TaskSet) and len(tasks) == 2
    first, second = tasks
    assert first.id == "q1" and first.answers == ("France", "French Republic")
    assert first.category == "image_search" and first.split == "train"
    assert first.image_url == "https://example.org/a.png"
    assert first.objects[0].box == (1, 2, 30, 20) and first.objects[0].entity == "FR"
    assert first.objects[0].attributes == {"position": "center"}
    assert first.meta == {"source": "handmade"}
    assert first.load_image().getpixel((0, 0)) == (200, 30, 30)
    # Defaults, a single-string answer, a stripped question, folded category, line-based id.
    assert second.id == "set-000003" and second.answers == ("1",)
    assert second.question == "How many flags?" and second.category == SEARCH_FREE
    assert second.split == "test" and second.load_image().getpixel((0, 0)) == (0, 0, 255)


def test_jsonl_split_filter(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_png())
    rows = [{"id": f"t{i}", "image": "a.png", "question": "q", "answers": ["a"],
             "split": "train" if i % 2 else "test"} for i in range(6)]
    path = _write_jsonl(tmp_path / "s.jsonl", rows)
    assert [t.id for t in load_jsonl(path, split="train")] == ["t1", "t3", "t5"]
    assert len(load_jsonl(path)) == 6
    with pytest.raises(DataError, match="no tasks of split 'dev'"):
        load_jsonl(path, split="dev")


@pytest.mark.parametrize("bad,message", [
    ("{not json", "line 2: not valid JSON"),
    ('["a list"]', "line 2: expected a JSON object"),
    ({"image": "a.png", "answers": ["x"]}, "line 2: missing required field 'question'"),
    ({"image": "a.png", "question": "q"}, "line 2: missing required field 'answers'"),
    ({"question": "q", "answers": ["x"]}, "line 2: missing required field 'image'"),
    ({"image": "a.png", "question": "q", "answers": []}, "line 2: 'answers' is empty"),
    ({"image": "a.png", "question": "q", "answers": ["  "]}, "line 2: 'answers' is empty"),
    ({"image": "a.png", "question": "q", "answers": [{"x": 1}]}, "line 2: every answer"),
    ({"image": "missing.png", "question": "q", "answers": ["x"]}, "line 2: image file .*missing.png"),
    ({"image": "a.png", "question": "q", "answers": ["x"], "objects": [{"label": "flag"}]},
     "line 2: objects\\[0\\] needs 'label' and 'box'"),
    ({"image": "a.png", "question": "q", "answers": ["x"], "objects": [{"label": "f", "box": [1, 2, 3]}]},
     "line 2: objects\\[0\\].box must be"),
    ({"image": "a.png", "question": "q", "answers": ["x"], "objects": [{"label": "f", "box": [5, 5, 5, 9]}]},
     "line 2: objects\\[0\\].box .* is empty"),
    ({"id": "dup", "image": "a.png", "question": "q", "answers": ["x"]}, "line 2: the task id 'dup' appears twice"),
])
def test_jsonl_bad_lines_name_the_line(tmp_path: Path, bad: object, message: str) -> None:
    (tmp_path / "a.png").write_bytes(_png())
    good = {"id": "dup", "image": "a.png", "question": "q", "answers": ["x"]}
    path = _write_jsonl(tmp_path / "bad.jsonl", [good, bad])
    with pytest.raises(DataError, match=message):
        load_jsonl(path)


def test_jsonl_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_jsonl(tmp_path / "nope.jsonl")


# --- FVQA parquet --------------------------------------------------------------------

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

FVQA_PROMPT = (
    "Answer the user's question based on the provided image. You must conduct reasoning inside "
    "<reason> and </reason> first. If you need more information, call a search tool with "
    "<search><img></search> or <text_search>query</text_search>. Give the final answer inside "
    "<answer> and </answer>.\n\n<image>\nQuestion: {question}"
)

FVQA_SCHEMA = pa.schema([
    ("data_source", pa.string()),
    ("prompt", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))),
    ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
    ("reward_model", pa.struct([("candidate_answers", pa.string()), ("ground_truth", pa.string()),
                                ("style", pa.string())])),
    ("image_urls", pa.list_(pa.string())),
    ("data_id", pa.string()),
    ("category", pa.string()),
])


def _fvqa_row(i: int, question: str, truth: str, candidates: list[str], category: str,
              url: str | None, prompt: str | None = None) -> dict:
    return {
        "data_source": "fvqa",
        "prompt": [{"role": "system", "content": "You are helpful."},
                   {"role": "user",
                    "content": prompt if prompt is not None else FVQA_PROMPT.format(question=question)}],
        "images": [{"bytes": _png((i * 40 % 255, 10, 10)), "path": None}],
        "reward_model": {"candidate_answers": json.dumps(candidates), "ground_truth": truth, "style": "rule"},
        "image_urls": [url],
        "data_id": f"fvqa_{i}",
        "category": category,
    }


def _write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows, schema=FVQA_SCHEMA), path)
    return path


def test_fvqa_parquet(tmp_path: Path) -> None:
    rows = [
        _fvqa_row(0, "Which landmark is shown in the picture?", "Eiffel Tower",
                  ["Eiffel Tower", "La tour Eiffel", "Tour Eiffel"], "search_required", "https://x.org/0.jpg"),
        _fvqa_row(1, "What colour is the sky?", "blue", [], "search_free", None),
        _fvqa_row(2, "", "42", ["forty-two"], "search_required", None,
                  prompt="<image>What is the answer to everything?"),
    ]
    tasks = load_fvqa_parquet(_write_parquet(tmp_path / "fvqa_test.parquet", rows))
    assert len(tasks) == 3
    a, b, c = tasks
    assert a.id == "fvqa_0" and a.question == "Which landmark is shown in the picture?"
    assert a.answers == ("Eiffel Tower", "La tour Eiffel", "Tour Eiffel")
    assert a.category == "search_required" and a.search_required
    assert a.image_url == "https://x.org/0.jpg" and a.split == "test"
    assert a.meta["prompt"][1]["content"].endswith("Question: Which landmark is shown in the picture?")
    assert a.meta["data_source"] == "fvqa" and a.meta["reward_style"] == "rule"
    assert a.load_image().getpixel((0, 0)) == (0, 10, 10)
    assert b.category == SEARCH_FREE and not b.search_required and b.image_url is None
    assert b.answers == ("blue",)
    assert c.question == "What is the answer to everything?" and c.answers == ("42", "forty-two")


def test_fvqa_split_from_file_name(tmp_path: Path) -> None:
    rows = [_fvqa_row(0, "q?", "a", [], "search_free", None)]
    assert load_fvqa_parquet(_write_parquet(tmp_path / "fvqa_train.parquet", rows))[0].split == "train"
    assert load_fvqa_parquet(tmp_path / "fvqa_train.parquet", split="dev")[0].split == "dev"


def test_fvqa_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_fvqa_parquet(tmp_path / "nope.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not a readable parquet"):
        load_fvqa_parquet(tmp_path / "junk.parquet")
    pq.write_table(pa.table({"question": ["q"]}), tmp_path / "other.parquet")
    with pytest.raises(DataError, match="lacks the FVQA columns"):
        load_fvqa_parquet(tmp_path / "other.parquet")
    row = _fvqa_row(0, "q?", "a", [], "search_free", None)
    row["images"] = []
    with pytest.raises(DataError, match="row 0: 'images' is empty"):
        load_fvqa_parquet(_write_parquet(tmp_path / "noimg.parquet", [row]))
    row = _fvqa_row(0, "q?", "a", [], "search_free", None)
    row["reward_model"]["candidate_answers"] = "[broken"
    with pytest.raises(DataError, match="candidate_answers is not a JSON list"):
        load_fvqa_parquet(_write_parquet(tmp_path / "badcand.parquet", [row]))


def test_fvqa_without_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins
    real_import = builtins.__import__

    def fake_import(name: str, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError("no pyarrow")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ConfigError, match=r"pip install mmsearch-gym\[parquet\]"):
        load_fvqa_parquet(tmp_path / "x.parquet")


@pytest.mark.parametrize("prompt,question", [
    ("<image>\nQuestion: Who painted this?", "Who painted this?"),
    ("Question: Who painted this?\n\nAnswer with <answer></answer> tags.", "Who painted this?"),
    ("<image> Who painted this?", "Who painted this?"),
    ("You must reason inside <reason></reason>.\n<image>\nWho painted this?\nPut the answer in <answer> tags.",
     "Who painted this?"),
])
def test_extract_question(prompt: str, question: str) -> None:
    assert extract_question(prompt) == question
