"""TaskSets to veRL's parquet dataset format and back (pyarrow only; no veRL import).

A row is what ``verl.utils.dataset.RLHFDataset`` reads: ``prompt`` (chat messages whose user
text starts with ``<image>``, the placeholder RLHFDataset swaps for ``images[0]``), ``images``
(PNG bytes), ``data_source``, ``ability``, ``agent_name`` (which agent loop plays the row),
``reward_model`` (``{"style": "rule", "ground_truth": [answers]}``) and ``extra_info`` (the task
id the agent loop and tools reset the env with, the tools' ``create_kwargs``, and what
:func:`from_verl_rows` needs to rebuild the task). The prompt text is the env's own (an env
renders it at reset), so a veRL prompt is exactly the prompt of every other route.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mmsearch_gym.env import MMSearchEnv
from mmsearch_gym.errors import ConfigError, DataError
from mmsearch_gym.search.base import MemoryBackend
from mmsearch_gym.tasks import SceneObject, Task, TaskSet

__all__ = ["AGENT_NAME", "TOOL_NAMES", "from_verl_rows", "read_parquet", "to_verl_rows", "write_parquet"]

AGENT_NAME = "mmsearch_agent"
"""The name :class:`~mmsearch_gym.integrations.verl.agent_loop.MMSearchAgentLoop` is registered as."""
TOOL_NAMES = ("text_search", "image_search")
IMAGE_PLACEHOLDER = "<image>"


def _png(task: Task) -> bytes:
    if task.image_bytes is not None:
        return task.image_bytes
    buffer = io.BytesIO()
    task.load_image().save(buffer, format="PNG")
    return buffer.getvalue()


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(block.get("text") or "" for block in content if block.get("type") == "text")


def _json_meta(meta: Mapping[str, Any]) -> str:
    safe = {}
    for key, value in meta.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            continue
        safe[str(key)] = value
    return json.dumps(safe, sort_keys=True)


def to_verl_rows(tasks: TaskSet, *, dialect: str = "mmsearch-r1", agent_name: str = AGENT_NAME,
                 system_prompt: str | None = None, data_source: str | None = None) -> list[dict[str, Any]]:
    """One veRL row per task, its prompt rendered by an env in ``dialect``."""
    if not isinstance(tasks, TaskSet):
        raise ConfigError(f"tasks must be a TaskSet, got {type(tasks).__name__}")
    renderer = MMSearchEnv(tasks, MemoryBackend(), dialect=dialect, system_prompt=system_prompt,
                           info_messages="full")
    source = data_source or f"mmsearch_gym/{tasks.name}"
    rows = []
    for index, task in enumerate(tasks):
        _, info = renderer.reset(options={"task_id": task.id})
        system, user = info["messages"][:2]
        create = {"create_kwargs": {"task_id": task.id}}
        rows.append({
            "data_source": source,
            "agent_name": agent_name,
            "prompt": [{"role": "system", "content": _text(system["content"])},
                       {"role": "user", "content": IMAGE_PLACEHOLDER + _text(user["content"])}],
            "images": [{"bytes": _png(task)}],
            "ability": "multimodal_search",
            "reward_model": {"style": "rule", "ground_truth": list(task.answers)},
            "extra_info": {
                "index": index, "task_id": task.id, "question": task.question,
                "category": task.category, "split": task.split, "dialect": renderer.dialect.name,
                "image_url": task.image_url or "",
                "objects": json.dumps([o.to_json() for o in task.objects]),
                "meta": _json_meta(task.meta),
                "need_tools_kwargs": True,
                "tools_kwargs": {name: create for name in TOOL_NAMES},
            },
        })
    return rows


def _task_of(row: Mapping[str, Any], position: int) -> Task:
    try:
        info = row["extra_info"]
        answers = tuple(str(a) for a in row["reward_model"]["ground_truth"])
        images = row.get("images") or []
        image = images[0]["bytes"] if images else None
        objects = tuple(SceneObject.from_json(o) for o in json.loads(info.get("objects") or "[]"))
        return Task(id=str(info["task_id"]), question=str(info["question"]), answers=answers,
                    category=str(info.get("category") or "unknown"), split=str(info.get("split") or "test"),
                    objects=objects, image_bytes=image, image_url=info.get("image_url") or None,
                    meta=json.loads(info.get("meta") or "{}"))
    except (KeyError, TypeError, IndexError, ValueError, ConfigError) as err:
        raise DataError(f"veRL row {position} is not an mmsearch_gym task row ({type(err).__name__}: {err})") from None


def from_verl_rows(rows: Iterable[Mapping[str, Any]], name: str = "verl") -> TaskSet:
    """The TaskSet that :func:`to_verl_rows` made ``rows`` from (ids, questions, answers, images)."""
    return TaskSet([_task_of(row, i) for i, row in enumerate(rows)], name=name)


def write_parquet(tasks: TaskSet, path: str | Path, *, overwrite: bool = False, **options: Any) -> Path:
    """Write ``to_verl_rows(tasks, **options)`` as parquet; an existing file is kept unless ``overwrite``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(to_verl_rows(tasks, **options))
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


def read_parquet(path: str | Path, name: str | None = None) -> TaskSet:
    """The TaskSet of a parquet file written by :func:`write_parquet`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} does not exist")
    try:
        rows: Sequence[Mapping[str, Any]] = pq.read_table(path).to_pylist()
    except (OSError, pa.ArrowException) as err:
        raise DataError(f"{path} is not a readable parquet file: {err}") from None
    return from_verl_rows(rows, name=name or path.stem)
