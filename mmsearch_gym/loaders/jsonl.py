"""The hand-written JSONL task format, and the field checks every loader shares.

Researchers bring their own questions. The JSONL format is the one to write by hand. Every
malformed input raises a :class:`DataError` naming the file and line and saying what is wrong.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmsearch_gym.errors import DataError
from mmsearch_gym.tasks import SEARCH_FREE, SceneObject, Task, TaskSet

__all__ = ["load_jsonl"]

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
