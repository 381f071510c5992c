"""Load TaskSets from files: a simple JSONL format and MMSearch-R1's FVQA parquet schema.

Researchers bring their own questions. The JSONL format is the one to write by hand; the
FVQA loader reads MMSearch-R1's released parquet files as they are, so their train and test
sets run in this env unchanged. Every malformed input raises a :class:`DataError` naming the
file and line (or row) and saying what is wrong.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmsearch_gym.errors import ConfigError, DataError
from mmsearch_gym.tasks import SEARCH_FREE, SceneObject, Task, TaskSet

__all__ = ["extract_question", "load_fvqa_parquet", "load_jsonl"]

_JSONL_FIELDS = frozenset({"id", "image", "image_url", "question", "answers", "category", "split",
                           "objects"})


# --- JSONL --------------------------------------------------------------------------

def load_jsonl(path: str | Path, *, split: str | None = None) -> TaskSet:
    """Load one task per line of a JSONL file.

    Each line is an object with ``image`` (a path relative to the JSONL file's folder, or
    absolute), ``question`` and ``answers`` (a list of accepted answers, or one string), and
    optionally ``id``, ``image_url``, ``category`` (default "unknown"), ``split`` (default
    "test") and ``objects`` (``[{label, box: [x1, y1, x2, y2], entity?, attributes?}]``, the
    scene annotations the grounder uses). Other keys are kept in ``Task.meta``.
    With ``split`` given, only the lines of that split are kept.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"task file {path} does not exist")
    folder = path.parent
    tasks: list[Task] = []
    seen: set[str] = set()
    with path.open("r", encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path} line {lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
            task = _task_from_record(record, where, folder, default_id=f"{path.stem}-{lineno:06d}")
            if task.id in seen:
                raise DataError(f"{where}: the task id {task.id!r} appears twice; ids must be unique")
            seen.add(task.id)
            if split is None or task.split == split:
                tasks.append(task)
    if not tasks:
        which = f" of split {split!r}" if split is not None else ""
        raise DataError(f"{path} holds no tasks{which}")
    return TaskSet(tasks, name=path.stem if split is None else f"{path.stem}:{split}")


def _task_from_record(record: Mapping[str, Any], where: str, folder: Path, default_id: str) -> Task:
    for key in ("image", "question", "answers"):
        if key not in record or record[key] in (None, ""):
            raise DataError(f"{where}: missing required field {key!r} (need image, question, answers)")
    question = record["question"]
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: 'question' must be a non-empty string")
    answers = _answers(record["answers"], where)
    image = record["image"]
    if not isinstance(image, str):
        raise DataError(f"{where}: 'image' must be a file path string")
    image_path = Path(image) if Path(image).is_absolute() else folder / image
    if not image_path.is_file():
        raise DataError(f"{where}: image file {image_path} does not exist")
    objects = _objects(record.get("objects") or [], where)
    task_id = record.get("id", default_id)
    if not isinstance(task_id, (str, int)) or str(task_id) == "":
        raise DataError(f"{where}: 'id' must be a non-empty string")
    image_url = record.get("image_url")
    if image_url is not None and not isinstance(image_url, str):
        raise DataError(f"{where}: 'image_url' must be a string or null")
    meta = {k: v for k, v in record.items() if k not in _JSONL_FIELDS}
    return Task(
        id=str(task_id),
        question=question.strip(),
        answers=answers,
        category=_category(record.get("category") or "unknown"),
        split=str(record.get("split") or "test"),
        objects=objects,
        image_path=str(image_path),
        image_url=image_url,
        meta=meta,
    )


def _answers(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or isinstance(value, (bytes, bytearray)):
        raise DataError(f"{where}: 'answers' must be a string or a list of strings")
    out: list[str] = []
    for item in value:
        if not isinstance(item, (str, int, float)) or isinstance(item, bool):
            raise DataError(f"{where}: every answer must be a string, got {item!r}")
        text = str(item).strip()
        if text and text not in out:
            out.append(text)
    if not out:
        raise DataError(f"{where}: 'answers' is empty; give at least one accepted answer")
    return tuple(out)


def _objects(value: Any, where: str) -> tuple[SceneObject, ...]:
    if not isinstance(value, list):
        raise DataError(f"{where}: 'objects' must be a list of {{label, box, entity?, attributes?}}")
    objects = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or "label" not in item or "box" not in item:
            raise DataError(f"{where}: objects[{i}] needs 'label' and 'box'")
        box = item["box"]
        if (not isinstance(box, list) or len(box) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
            raise DataError(f"{where}: objects[{i}].box must be [x1, y1, x2, y2] in pixels")
        x1, y1, x2, y2 = (round(v) for v in box)
        if x2 <= x1 or y2 <= y1:
            raise DataError(f"{where}: objects[{i}].box {box} is empty (need x1 < x2 and y1 < y2)")
        attributes = item.get("attributes") or {}
        if not isinstance(attributes, dict):
            raise DataError(f"{where}: objects[{i}].attributes must be an object")
        entity = item.get("entity")
        objects.append(SceneObject(label=str(item["label"]), box=(x1, y1, x2, y2),
                                   entity=None if entity is None else str(entity),
                                   attributes=attributes))
    return tuple(objects)


def _category(value: Any) -> str:
    """Keep categories as given, folding spelling variants of "search free"."""
    text = str(value).strip()
    if re.sub(r"[\s_-]+", "", text.lower()) == "searchfree":
        return SEARCH_FREE
    return text


# --- FVQA parquet ---------------------------------------------------------------------

_IMAGE_PLACEHOLDER = re.compile(r"<\s*image\s*>", re.IGNORECASE)
_QUESTION_MARKER = re.compile(r"(?:^|\n)\s*(?:\*\*)?(?:user\s+)?question\s*(?:\*\*)?\s*:\s*", re.IGNORECASE)
_INSTRUCTION_HINTS = re.compile(
    r"<\s*/?\s*(reason|think|answer|search|text_search|img_search|information|img)\s*>"
    r"|\byou (must|should|can|are|will|need)\b|\bassistant\b|\bsearch (tool|engine)\b"
    r"|\bformat\b|\btags?\b|\bunable to answer\b|\bstep by step\b",
    re.IGNORECASE,
)


def extract_question(prompt_text: str) -> str:
    """The question inside a chat prompt: placeholders and instruction boilerplate removed.

    FVQA prompts wrap the question in MMSearch-R1's instructions (tag rules, search tools).
    If the text has a "Question:" marker the question is what follows the last one (up to a
    blank line); otherwise lines that read like instructions (tag names, "you must", format
    rules) are dropped and the rest kept.
    """
    text = _IMAGE_PLACEHOLDER.sub(" ", prompt_text).replace("\r\n", "\n")
    markers = list(_QUESTION_MARKER.finditer(text))
    if markers:
        tail = text[markers[-1].end():]
        question = re.split(r"\n\s*\n", tail.strip(), maxsplit=1)[0]
        question = " ".join(question.split())
        if question:
            return question
    kept = [line.strip() for line in text.split("\n")
            if line.strip() and not _INSTRUCTION_HINTS.search(line)]
    question = " ".join(" ".join(kept).split())
    return question or " ".join(text.split())


def _message_text(content: Any) -> str:
    """Text of a chat message whose content is a string or a list of typed blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict):
                if block.get("type") in ("image", "image_url"):
                    parts.append("<image>")
                elif isinstance(block.get("text"), str):
                    parts.append(block["text"])
        return "\n".join(parts)
    return ""


def load_fvqa_parquet(path: str | Path, *, split: str | None = None) -> TaskSet:
    """Load MMSearch-R1's FVQA parquet (columns ``prompt``, ``images``, ``reward_model``,
    ``data_source``, ``image_urls``, ``data_id``, ``category``) as a TaskSet.

    Question: the last user message with the ``<image>`` placeholder and instructions removed
    (the raw prompt is kept in ``meta["prompt"]``). Answers: ``ground_truth`` followed by the
    ``candidate_answers`` (a JSON list in a string), deduplicated in order. Image:
    ``images[0].bytes``; ``image_url``: ``image_urls[0]`` when not null. ``split`` defaults
    to "train" when the file name says so, else "test". Needs pyarrow.
    """
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("reading FVQA parquet files needs pyarrow: pip install mmsearch-gym[parquet]") from None
    path = Path(path)
    if not path.is_file():
        raise DataError(f"parquet file {path} does not exist")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path} is not a readable parquet file: {exc}") from None
    missing = [c for c in ("prompt", "images", "reward_model") if c not in table.column_names]
    if missing:
        raise DataError(f"{path} lacks the FVQA columns {missing}; found {table.column_names}")
    if split is None:
        split = "train" if "train" in path.stem.lower() else "test"
    tasks: list[Task] = []
    seen: set[str] = set()
    for row_index, row in enumerate(table.to_pylist()):
        where = f"{path} row {row_index}"
        task = _fvqa_task(row, where, split, default_id=f"{path.stem}-{row_index:06d}")
        if task.id in seen:
            raise DataError(f"{where}: data_id {task.id!r} appears twice")
        seen.add(task.id)
        tasks.append(task)
    if not tasks:
        raise DataError(f"{path} has no rows")
    return TaskSet(tasks, name=path.stem)


def _fvqa_task(row: Mapping[str, Any], where: str, split: str, default_id: str) -> Task:
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        try:
            prompt = json.loads(prompt)
        except json.JSONDecodeError:
            prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise DataError(f"{where}: 'prompt' must be a non-empty list of chat messages")
    users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise DataError(f"{where}: 'prompt' has no user message")
    raw_text = _message_text(users[-1].get("content"))
    question = extract_question(raw_text)
    if not question:
        raise DataError(f"{where}: the user message holds no question text")

    images = row.get("images")
    if not isinstance(images, list) or not images:
        raise DataError(f"{where}: 'images' is empty; FVQA rows need one image")
    first = images[0]
    image_bytes = first.get("bytes") if isinstance(first, dict) else first
    if not isinstance(image_bytes, (bytes, bytearray)) or not image_bytes:
        raise DataError(f"{where}: images[0] has no 'bytes'")

    reward_model = row.get("reward_model")
    if not isinstance(reward_model, dict):
        raise DataError(f"{where}: 'reward_model' must be a struct with ground_truth")
    answers = _fvqa_answers(reward_model, where)

    urls = row.get("image_urls")
    if isinstance(urls, str):
        urls = [urls]
    image_url = next((u for u in (urls or []) if isinstance(u, str) and u.strip()), None)
    data_id = row.get("data_id")
    task_id = default_id if data_id in (None, "") else str(data_id)
    category = _category(row.get("category") or "unknown")
    meta = {
        "prompt": prompt,
        "data_source": row.get("data_source"),
        "reward_style": reward_model.get("style"),
    }
    return Task(id=task_id, question=question, answers=answers, category=category, split=split,
                image_bytes=bytes(image_bytes), image_url=image_url, meta=meta)


def _fvqa_answers(reward_model: Mapping[str, Any], where: str) -> tuple[str, ...]:
    answers: list[str] = []

    def add(value: Any) -> None:
        if isinstance(value, (list, tuple)):
            for item in value:
                add(item)
        elif value is not None and not isinstance(value, bool):
            text = str(value).strip()
            if text and text not in answers:
                answers.append(text)

    add(reward_model.get("ground_truth"))
    candidates = reward_model.get("candidate_answers")
    if isinstance(candidates, str) and candidates.strip():
        try:
            candidates = json.loads(candidates)
        except json.JSONDecodeError:
            raise DataError(f"{where}: reward_model.candidate_answers is not a JSON list") from None
    add(candidates)
    if not answers:
        raise DataError(f"{where}: reward_model has no ground_truth")
    return tuple(answers)
