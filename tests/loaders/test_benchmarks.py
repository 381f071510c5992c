"""Each benchmark loader on small files shaped like its published schema (real PIL images)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from mmsearch_gym.errors import ConfigError, DataError
from mmsearch_gym.loaders import BENCHMARKS, answer_aliases, load_benchmark, load_source

datasets = pytest.importorskip("datasets")
pytest.importorskip("pyarrow")


def _png(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _jpg_file(path: Path, color: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), color).save(path, format="JPEG")
    return path


def _hub_dataset(rows: dict, image_columns: tuple[str, ...] = ("image",)) -> datasets.Dataset:
    """A Dataset with Image features, as the hub's parquet / Arrow files hold them."""
    features = {}
    ds = datasets.Dataset.from_dict(rows)
    for name in image_columns:
        features[name] = datasets.Image()
        ds = ds.cast_column(name, datasets.Image())
    return ds


def test_every_benchmark_records_where_its_schema_comes_from() -> None:
    for name in ("infoseek", "mmsearch", "simplevqa", "livevqa", "encvqa", "dynvqa", "okvqa", "aokvqa", "fvqa"):
        bench = BENCHMARKS[name]
        assert bench.schema and bench.paper in ("MMSearch-R1", "DeepMMSearch-R1")


def test_simplevqa_hub_parquet(tmp_path: Path) -> None:
    # m-a-p/SimpleVQA: data_id, image (Image feature), image_description, language, question, answer,
    # original_category, source, atomic_question, atomic_fact, vqa_category.
    ds = _hub_dataset({
        "data_id": [0, 1], "image": [Image.new("RGB", (30, 20), (255, 0, 0)), Image.new("RGB", (30, 20), (0, 255, 0))],
        "image_description": ["a red square", "a green square"], "language": ["EN", "CN"],
        "question": ["Which building is this?", "这是哪座山？"], "answer": ["Eiffel Tower", "泰山"],
        "original_category": ["landmark", "nature"], "source": ["web", "web"],
        "atomic_question": ["What is it?", "什么山"], "atomic_fact": ["f1", "f2"], "vqa_category": ["obj", "obj"],
    })
    path = tmp_path / "test.parquet"
    ds.to_parquet(str(path))
    tasks = load_source(f"simplevqa:{path}")
    assert [t.id for t in tasks] == ["0", "1"] and tasks[0].answers == ("Eiffel Tower",)
    assert tasks[0].load_image().getpixel((0, 0)) == (255, 0, 0)
    assert tasks[1].question == "这是哪座山？" and tasks[1].meta["taxonomy"] == "nature"
    assert tasks[0].meta["language"] == "EN" and "image" not in tasks[0].meta
    assert tasks[0].split == "test"


def test_simplevqa_base64_json_images(tmp_path: Path) -> None:
    import base64
    rows = [{"data_id": 7, "image": base64.b64encode(_png((9, 9, 9), (600, 400))).decode(), "question": "q?",
             "answer": "a", "original_category": "x"}]
    path = tmp_path / "simplevqa.json"
    path.write_text(json.dumps(rows))
    (task,) = load_benchmark("simplevqa", path)
    assert task.load_image().size == (600, 400)


def test_infoseek_jsonl_with_oven_image_folder(tmp_path: Path) -> None:
    # infoseek_val.jsonl: data_id, image_id (OVEN id), question, answer, answer_eng, data_split;
    # numeric answers as {"wikidata": value, "range": [lo, hi]}.
    _jpg_file(tmp_path / "oven" / "04" / "oven_04911624.jpg", (200, 0, 0))
    _jpg_file(tmp_path / "oven" / "05" / "oven_05000001.jpg", (0, 0, 200))
    rows = [
        {"data_id": "infoseek_val_00000001", "image_id": "oven_04911624", "question": "Who designed this building?",
         "answer": ["Gustave Eiffel", "Eiffel"], "answer_eng": ["Gustave Eiffel"], "data_split": "val_unseen_entity"},
        {"data_id": "infoseek_val_00000002", "image_id": "oven_05000001", "question": "How tall is this tower?",
         "answer": [{"wikidata": 330.0, "range": [300.0, 360.0]}], "answer_eng": ["330"],
         "data_split": "val_unseen_question"},
    ]
    path = tmp_path / "infoseek_val.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    tasks = load_source(f"infoseek:{path}?image_dir={tmp_path / 'oven'}")
    assert tasks[0].answers == ("Gustave Eiffel", "Eiffel") and tasks[0].split == "val"
    assert tasks[1].answers == ("330",)
    assert tasks[0].load_image().getpixel((5, 5))[0] > 150 and tasks[1].meta["data_split"] == "val_unseen_question"
    with pytest.raises(DataError, match="image 'oven_04911624' not found"):
        load_source(f"infoseek:{path}")


def test_mmsearch_end2end_skips_text_only_queries(tmp_path: Path) -> None:
    # CaraJ/MMSearch end2end: sample_id, query, query_image (null for text-only), gt_answer,
    # alternative_gt_answers, area, subfield, timestamp, gt_requery.
    ds = datasets.Dataset.from_dict({
        "sample_id": ["1", "2"], "query": ["What is the name of this car?", "Who won the 2024 final?"],
        "query_image": [{"bytes": _png((1, 2, 3)), "path": None}, None],
        "gt_answer": ["Model Y"], "alternative_gt_answers": [["Tesla Model Y"], []],
        "area": ["tech", "sports"], "subfield": ["cars", "tennis"], "timestamp": ["2024-05", "2024-07"],
        "gt_requery": ["tesla car", "2024 final winner"],
    } | {"gt_answer": ["Model Y", "Sinner"]}).cast_column("query_image", datasets.Image())
    folder = tmp_path / "end2end"
    ds.save_to_disk(str(folder))
    with pytest.warns(UserWarning, match="skipped 1 row"):
        tasks = load_source(f"mmsearch:{folder}")
    (task,) = tasks
    assert task.id == "1" and task.answers == ("Model Y", "Tesla Model Y")
    assert task.meta["taxonomy"] == "cars" and task.split == "end2end"


def test_encvqa_csv_aliases_and_image_ids(tmp_path: Path) -> None:
    # encyclopedic_vqa test.csv: question, answer ('|' annotators, '&&' multi-answer), dataset_image_ids,
    # dataset_name, question_type, wikipedia_url, encyclopedic_vqa_split ...
    _jpg_file(tmp_path / "inat" / "train" / "a1b2.jpg", (0, 120, 0))
    _jpg_file(tmp_path / "gldv2" / "c3d4.jpg", (120, 120, 0))
    path = tmp_path / "test.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["question", "answer", "dataset_image_ids", "dataset_name",
                                                     "question_type", "wikipedia_url", "encyclopedic_vqa_split"])
        writer.writeheader()
        writer.writerow({"question": "How tall does this plant grow?", "answer": "2 m|200 cm",
                         "dataset_image_ids": "missing|a1b2", "dataset_name": "inaturalist",
                         "question_type": "templated", "wikipedia_url": "https://en.wikipedia.org/wiki/X",
                         "encyclopedic_vqa_split": "test"})
        writer.writerow({"question": "Which colours does this bird have?", "answer": "red&&blue",
                         "dataset_image_ids": "c3d4", "dataset_name": "landmarks",
                         "question_type": "multi_answer", "wikipedia_url": "u", "encyclopedic_vqa_split": "test"})
    tasks = load_source(f"encvqa:{path}?image_dir={tmp_path}")
    assert tasks[0].answers == ("2 m", "200 cm") and tasks[0].meta["taxonomy"] == "templated"
    assert tasks[1].answers == ("red, blue",) and tasks[0].split == "test"
    assert tasks[0].image_path.endswith("a1b2.jpg")  # the first id whose file exists


def test_okvqa_hub_arrow_folder_and_official_answers(tmp_path: Path) -> None:
    # lmms-lab/OK-VQA: question_id, image, question, answers (10 strings), question_type, answer_type.
    ds = _hub_dataset({"question_id": ["2971475"], "image": [Image.new("RGB", (20, 20), (3, 3, 3))],
                       "question": ["What sport can you use this for?"],
                       "answers": [["race"] * 2 + ["motocross"] * 6 + ["ride"] * 2],
                       "question_type": ["sports"], "answer_type": ["other"]})
    ds.save_to_disk(str(tmp_path / "okvqa"))
    (task,) = load_source(f"ok-vqa:{tmp_path / 'okvqa'}")
    assert task.answers == ("motocross", "race", "ride") and task.meta["taxonomy"] == "sports"
    # The official annotations: answers as dicts, images as COCO val2014 files by image_id.
    _jpg_file(tmp_path / "coco" / "COCO_val2014_000000000042.jpg", (9, 9, 9))
    row = {"question_id": 1, "image_id": 42, "question": "What is this?", "question_type": "other",
           "answers": [{"answer": "kite", "raw_answer": "kites", "answer_confidence": "yes", "answer_id": 1}] * 3}
    path = tmp_path / "okvqa.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (task,) = load_benchmark("okvqa", path, image_dir=tmp_path / "coco")
    assert task.answers == ("kite", "kites") and task.image_path.endswith("000000000042.jpg")


def test_aokvqa_arrow_file_and_allenai_json(tmp_path: Path) -> None:
    # HuggingFaceM4/A-OKVQA: image, question_id, question, choices, correct_choice_idx, direct_answers,
    # difficult_direct_answer, rationales.
    ds = _hub_dataset({"image": [Image.new("RGB", (20, 20), (5, 5, 5))], "question_id": ["22MexNkBPpdZGX6sxbxVBH"],
                       "question": ["What is the man by the bags awaiting?"],
                       "choices": [["skateboarder", "train", "delivery", "cab"]], "correct_choice_idx": [3],
                       "direct_answers": [["ride", "ride", "bus", "taxi", "travelling", "traffic", "taxi",
                                           "cab", "cab", "his ride"]],
                       "difficult_direct_answer": [False], "rationales": [["A train would not be on the street."]]})
    ds.save_to_disk(str(tmp_path / "aok"))
    arrow = next((tmp_path / "aok").glob("*.arrow"))
    (task,) = load_source(f"aokvqa:{arrow}")
    assert task.answers[:3] == ("ride", "taxi", "cab") and "bus" in task.answers
    assert task.meta["choices"][3] == "cab" and task.split == "validation"
    _jpg_file(tmp_path / "coco2017" / "000000461751.jpg", (1, 1, 1))
    path = tmp_path / "aokvqa_v1p0_val.json"
    path.write_text(json.dumps([{"question_id": "q1", "image_id": 461751, "question": "What is this?",
                                 "choices": ["a", "b"], "correct_choice_idx": 1, "direct_answers": ["a"] * 10,
                                 "difficult_direct_answer": False, "rationales": ["r"]}]))
    (task,) = load_benchmark("aokvqa", path, image_dir=tmp_path / "coco2017")
    assert task.answers == ("a", "b")


def test_url_only_images_need_the_downloaded_folder(tmp_path: Path) -> None:
    rows = [{"id": "d1", "question": "Who is the current CEO of this company?", "answer": ["Tim Cook"],
             "image_url": "https://example.org/imgs/apple_logo.png", "topic": "business"}]
    path = tmp_path / "dyn_vqa.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(DataError, match="only a URL .*image_dir"):
        load_source(f"dynvqa:{path}")
    (tmp_path / "downloaded").mkdir()
    (tmp_path / "downloaded" / "apple_logo.png").write_bytes(_png((7, 7, 7)))
    (task,) = load_source(f"dyn-vqa:{path}?image_dir={tmp_path / 'downloaded'}")
    assert task.image_url == "https://example.org/imgs/apple_logo.png" and task.meta["taxonomy"] == "business"


def test_livevqa_generic_fields_and_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "img.png").write_bytes(_png((1, 1, 1)))
    path = tmp_path / "livevqa.jsonl"
    path.write_text(json.dumps({"id": 1, "question": "q", "answer": "a", "image_path": "img.png"}) + "\n"
                    + json.dumps({"id": 2, "question": "q", "image_path": "img.png"}) + "\n")
    with pytest.raises(DataError, match="row 1: none of the fields"):
        load_source(f"livevqa:{path}")
    assert len(load_source(f"livevqa:{path}?limit=1")) == 1


def _livevqa_level(question: str, qtype: str | None, options: list[str], letter: str, truths: list[str],
                   img: str, url: str | None) -> dict:
    level = {"question": question}
    if qtype is not None:
        level["question_type"] = qtype
    level |= {"options": options, "Ground_Truth": letter, "Ground_Truth_List": truths, "img_path": img}
    if url is not None:
        level["img_url"] = url
    return level


def test_livevqa_benchmark_json_as_published(tmp_path: Path) -> None:
    # fumingyang2004/LIVEVQA liveVQA_benchmarks/{News,Paper,Video}/benchmark.json: a JSON list of
    # {id, img_path, level1_qa, level2_qa, source, time}; each level {question, question_type, options,
    # Ground_Truth (letter), Ground_Truth_List, img_path, img_url}; images in <Bench>_imgs / <Bench>_images.
    news = tmp_path / "News"
    _jpg_file(news / "News_imgs" / "cnn_ba7241a5.jpg", (220, 0, 0))
    img, url = "cnn_ba7241a5.jpg", "https://media.cnn.com/api/v1/images/stellar/prod/debate.jpg?c=16x9"
    items = [{
        "id": "0_20250507132827113360", "img_path": img,
        "level1_qa": _livevqa_level("Based on the provided image, what event is taking place?", "event",
                                    ["A. 2024 Democratic National Convention", "B. CBS News vice presidential debate"],
                                    "B", ["CBS News vice presidential debate", "CBS vice presidential debate"],
                                    img, url),
        "level2_qa": _livevqa_level("What is the exact count of new clean energy jobs announced?", "count",
                                    ["A. 312,900", "B. 109,000", "C. 200,000", "D. 142,000"], "B", ["109,000"],
                                    img, url),
        "source": "CNN World", "time": "2024-10-02T01:38:01.679Z"}]
    path = news / "benchmark.json"
    path.write_text(json.dumps(items, indent=2))
    tasks = load_source(f"livevqa:{path}")
    assert [t.id for t in tasks] == ["0_20250507132827113360-level1", "0_20250507132827113360-level2"]
    first, second = tasks
    assert first.answers == ("CBS News vice presidential debate", "CBS vice presidential debate")
    assert second.answers == ("109,000",) and second.meta["taxonomy"] == "count"
    assert first.meta["level"] == "level1" and first.meta["source"] == "CNN World" and first.meta["Ground_Truth"] == "B"
    assert first.meta["item_id"] == "0_20250507132827113360" and first.image_url == url
    assert first.load_image().getpixel((5, 5))[0] > 150 and first.split == "test"
    assert len(load_benchmark("live-vqa", path, limit=1)) == 1
    # Paper: img_path "ARXIV_ID/FILE" under Paper_images, level1 without question_type, the correct
    # option's text differs from Ground_Truth_List; Video: img_url is "".
    paper = tmp_path / "Paper"
    _jpg_file(paper / "Paper_images" / "2505.00025" / "photo.png", (0, 0, 220))
    pimg = "2505.00025/photo.png"
    items = [{"id": "2505.00025", "img_path": pimg,
              "level1_qa": _livevqa_level("What is the name of the paper associated with this image?", None,
                                          ["A. Designing Networks", "B. A Method for Medical LLMs"], "B",
                                          ["A Method for Medical LLMs"], pimg, None),
              "level2_qa": _livevqa_level("Which core characteristic explains its success?", "generated_hard",
                                          ["A. Distillation only", "C. Three dimensions of optimization"], "C",
                                          ["systematically solving the problem from three dimensions"], pimg, None),
              "source": "Arxiv", "time": "2025-05"}]
    (paper / "benchmark.json").write_text(json.dumps(items))
    level1, level2 = load_source(f"live-vqa:{paper / 'benchmark.json'}")
    assert "taxonomy" not in level1.meta and level1.image_path.endswith("photo.png")
    assert level2.answers == ("systematically solving the problem from three dimensions",
                              "Three dimensions of optimization")
    video = tmp_path / "Video"
    _jpg_file(video / "Video_images" / "keyframe_26.jpg", (0, 200, 0))
    items = [{"id": "1_1747109320853_l2qidx2_time", "img_path": "keyframe_26.jpg",
              "level1_qa": _livevqa_level("Who is the teenager?", "person", ["A. Leah Shirley", "B. Amber"], "A",
                                          ["Leah Shirley", "Leah"], "keyframe_26.jpg", ""),
              "source": "YouTube_AI_Filtered_Error_Parallel"}]
    (video / "benchmark.json").write_text(json.dumps(items))
    (task,) = load_source(f"livevqa:{video / 'benchmark.json'}")
    assert task.image_url is None and task.load_image().getpixel((5, 5))[1] > 150
    # Without the image folder next to the file: a clear error that names image_dir.
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "benchmark.json").write_text(json.dumps(items))
    with pytest.raises(DataError, match="keyframe_26.jpg' not found; pass the image folder as image_dir"):
        load_source(f"livevqa:{tmp_path / 'elsewhere' / 'benchmark.json'}")
    (task,) = load_source(f"livevqa:{tmp_path / 'elsewhere' / 'benchmark.json'}?image_dir={video / 'Video_images'}")
    assert task.id == "1_1747109320853_l2qidx2_time-level1"


def test_dynvqa_jsonl_as_published(tmp_path: Path) -> None:
    # Alibaba-NLP/OmniSearch dataset/DynVQA_{en,zh}.jsonl: image_url, question, question_id (en1 / zh1),
    # answer (aliases in both languages, numbers as ints), gloden_query (sic).
    base = "https://mitalinlp.oss-cn-hangzhou.aliyuncs.com/rallm/mm_data/vfreshqa_datasets_v2/Freshqa_en_zh/"
    rows = [
        {"image_url": base + "Freshqa_en_extracted_images/image_1.jpeg",
         "question": "What is the name of his third child?", "question_id": "en1",
         "answer": ["莱昂纳多·迪卡普里奥没有任何孩子。", "Leonardo DiCaprio does not have any children."],
         "gloden_query": "What is the name of Leonardo DiCaprio's third child?"},
        {"image_url": base + "Freshqa_en_extracted_images/image_125.jpeg",
         "question": "How many humans have landed on this planet?", "question_id": "en34",
         "answer": ["目前还没有人类去过火星。", 0, "零", "No humans have been to Mars yet.", 0, "zero", "none"],
         "gloden_query": "How many humans have landed on Mars?"},
    ]
    path = tmp_path / "DynVQA_en.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    with pytest.raises(DataError, match="only a URL .*image_dir"):
        load_source(f"dynvqa:{path}")
    images = tmp_path / "Freshqa_en_extracted_images"
    _jpg_file(images / "image_1.jpeg", (200, 10, 10))
    _jpg_file(images / "image_125.jpeg", (10, 10, 200))
    first, second = load_source(f"dynvqa:{path}?image_dir={images}")
    assert first.id == "en1" and first.answers[1] == "Leonardo DiCaprio does not have any children."
    assert second.answers == ("目前还没有人类去过火星。", "0", "零", "No humans have been to Mars yet.", "zero", "none")
    assert first.meta["language"] == "en" and first.meta["gloden_query"].startswith("What is the name of Leonardo")
    assert second.image_url.endswith("image_125.jpeg") and second.load_image().getpixel((5, 5))[2] > 150
    zh = tmp_path / "DynVQA_zh.jsonl"
    zh.write_text(json.dumps({"image_url": base + "Freshqa_en_extracted_images/image_158.jpeg",
                              "question": "该国家联邦议院有多少席位？", "question_id": "zh36", "answer": [735, 735],
                              "gloden_query": "德国联邦议院有多少个席位？"}, ensure_ascii=False) + "\n")
    _jpg_file(images / "image_158.jpeg", (1, 2, 3))
    (task,) = load_benchmark("dyn-vqa", zh, image_dir=images)
    assert task.answers == ("735",) and task.meta["language"] == "zh" and task.split == "test"


def test_answer_aliases_flatten_every_shape() -> None:
    assert answer_aliases("a", ["b", "a"], '["c"]', {"answer": "d"}, 3.0, None) == ("a", "b", "c", "d", "3")
    assert answer_aliases(["x", "y", "y"], by_frequency=True) == ("y", "x")


def test_hf_source_reads_a_local_dataset_folder_offline(tmp_path: Path) -> None:
    ds = _hub_dataset({"question_id": ["1", "2"], "image": [Image.new("RGB", (8, 8), (0, 0, 0))] * 2,
                       "question": ["a?", "b?"], "answers": [["x"], ["y"]]})
    folder = tmp_path / "hub" / "data"
    folder.mkdir(parents=True)
    ds.to_parquet(str(folder / "test-00000-of-00001.parquet"))
    tasks = load_source(f"okvqa:hf:{tmp_path / 'hub'}:test")
    assert [t.answers for t in tasks] == [("x",), ("y",)] and tasks.name.startswith("okvqa:hf:")
    assert len(load_source(f"hf:{tmp_path / 'hub'}")) == 2


def test_hf_source_missing_from_the_cache_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    with pytest.raises(DataError, match="hf:nobody/no-such-dataset"):
        load_source("simplevqa:hf:nobody/no-such-dataset:test")


def test_bad_sources_say_what_to_use() -> None:
    with pytest.raises(ConfigError, match="unknown task source 'bogus'"):
        load_source("bogus:x")
    with pytest.raises(ConfigError, match="unknown task-source option 'colour'"):
        load_source("infoseek:x.jsonl?colour=red")
    with pytest.raises(ConfigError, match="limit must be an integer"):
        load_source("infoseek:x.jsonl?limit=many")
    with pytest.raises(DataError, match="does not exist"):
        load_source("infoseek:/nonexistent/infoseek.jsonl")


def test_gym_make_takes_any_source(tmp_path: Path) -> None:
    import gymnasium as gym

    import mmsearch_gym  # noqa: F401 - registers the ids

    ds = _hub_dataset({"data_id": [3], "image": [Image.new("RGB", (30, 20), (255, 0, 0))], "question": ["q?"],
                       "answer": ["a"]})
    ds.to_parquet(str(tmp_path / "s.parquet"))
    env = gym.make("MMSearch-v0", tasks=f"simplevqa:{tmp_path / 's.parquet'}")
    obs, info = env.reset(seed=0)
    assert info["task_id"] == "3" and obs["text"] == "q?"
    env.close()
