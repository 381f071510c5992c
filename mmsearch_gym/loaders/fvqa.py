"""MMSearch-R1's FVQA parquet schema, and its released image-search cache as a cassette.

The FVQA loader reads MMSearch-R1's released parquet files as they are, so their train and
test sets run in this env unchanged. Every malformed row raises a :class:`DataError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmsearch_gym.errors import ConfigError, DataError
from mmsearch_gym.loaders.jsonl import _category
from mmsearch_gym.tasks import Task, TaskSet

__all__ = ["extract_question", "load_fvqa_parquet"]


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


# --- FVQA's released image-search cache --------------------------------------------------


def fvqa_search_cassette(cache_json: str | Path, tasks: TaskSet, out: str | Path, *,
                         images_dir: str | Path | None = None, backend: str = "fvqa-cache",
                         backend_version: str = "1", k: int = 5) -> int:
    """Write MMSearch-R1's released image-search cache as a cassette; returns its entry count.

    MMSearch-R1 ships ``search_cache/fvqa_train_image_search_results_cache.json``: an object
    mapping a ``data_id`` to ``{"tool_returned_web_title": [...], "cached_images_path": [...]}``
    (the titles and thumbnails its image search returned for that task's whole image; the
    thumbnails are in ``cached_images/train.zip``, unzipped into ``images_dir``). Each task of
    ``tasks`` whose id is in the file becomes one whole-image search entry keyed by the task
    image's digest and ``k`` (the env's ``top_k``), so a replay cache of backend
    ``backend@backend_version`` answers the env's first image search exactly as in the paper.
    Hits whose thumbnail file is missing are dropped, as MMSearch-R1's own loader does. Text
    searches were not released, so none are imported. The cassette is written with
    :func:`mmsearch_gym.search.cassette.write_cassette` (canonical, atomic).
    """
    from mmsearch_gym.search.base import Hit
    from mmsearch_gym.search.cache import CacheEntry
    from mmsearch_gym.search.cassette import write_cassette
    from mmsearch_gym.tasks import image_digest

    path = Path(cache_json)
    if not path.is_file():
        raise DataError(f"search cache file {path} does not exist")
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(cache, dict):
        raise DataError(f"{path}: expected an object mapping data_id to search results")
    base = Path(images_dir) if images_dir is not None else path.parent
    entries = []
    for task in tasks:
        record = cache.get(task.id)
        if not record:
            continue
        if not isinstance(record, dict):
            raise DataError(f"{path} [{task.id!r}]: expected an object with tool_returned_web_title and "
                            "cached_images_path")
        titles = record.get("tool_returned_web_title") or []
        images = record.get("cached_images_path") or []
        if not isinstance(titles, list) or not isinstance(images, list):
            raise DataError(f"{path} [{task.id!r}]: tool_returned_web_title and cached_images_path must be lists")
        hits = []
        for rank, (title, image) in enumerate(zip(titles, images, strict=False)):
            thumb = _thumbnail_file(base, image)
            if thumb is None:
                continue
            hits.append(Hit(title=str(title), url=f"fvqa-cache:{Path(str(image)).name}", snippet="",
                            score=float(len(titles) - rank), source="fvqa-cache", thumbnail=thumb.read_bytes()))
        entries.append(CacheEntry(kind="image", k=int(k), backend=backend, backend_version=backend_version,
                                  hits=tuple(hits[:k]), digest=image_digest(task.load_image()), box=None))
    if not entries:
        raise DataError(f"{path} holds results for none of the {len(tasks)} tasks of {tasks.name!r} "
                        "(its keys are FVQA data_ids)")
    return write_cassette(entries, out, backend=backend, backend_version=backend_version)


def _thumbnail_file(base: Path, image: Any) -> Path | None:
    if not isinstance(image, str) or not image:
        return None
    candidate = Path(image)
    for path in (candidate, base / candidate, base / candidate.name):
        if path.is_file():
            return path
    return None
