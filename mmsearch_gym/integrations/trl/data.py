"""GRPO prompts: one dataset row per task, rendered by the env's own ``reset`` (the single
source of prompts)."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import datasets
from PIL import Image

from mmsearch_gym.actions import Dialect, get_dialect
from mmsearch_gym.env import MMSearchEnv
from mmsearch_gym.errors import ConfigError
from mmsearch_gym.policies import text_only_content
from mmsearch_gym.search.base import MemoryBackend
from mmsearch_gym.tasks import TaskSet

from .envs import _resolve_tasks

Content = str | Sequence[Mapping[str, Any]]
"""A chat message's content: a string or a list of typed blocks."""


def _prompt_renderer(tasks: TaskSet, dialect: Dialect) -> MMSearchEnv:
    """An env used only to render prompts: its reset() messages are the single source of prompts."""
    return MMSearchEnv(tasks, MemoryBackend(), dialect=dialect)


def _text_of(content: Content) -> str:
    if isinstance(content, str):
        return content
    return "".join(block.get("text") or "" for block in content if block.get("type") == "text")


def to_dataset(source: TaskSet | str, split: str | None = None, dialect: str | Dialect | None = None, *,
               images: bool = False, route: str = "rollout", n: int | None = None, seed: int = 0,
               shuffle: bool = False, system_prompt: str | None = None,
               categories: Sequence[str] | None = None) -> datasets.Dataset:
    """GRPO prompts for a task set, one row per task.

    Args:
        source: a TaskSet, an env id (``"MMSearch-Train-v0"``: its spec's task set) or a task
            source (``"world:train"``, ``"jsonl:PATH"``).
        split: with an env id, read this split of the built-in world instead of the spec's.
        dialect: prompt template; default: the env spec's dialect, else ``mmsearch-r1``.
        images: add the ``image`` column (the task image) that TRL feeds VLM processors. Leave
            it off for text-only models (TRL would hand the images to a tokenizer).
        route: ``"rollout"`` (the prompt carries the question) or ``"environment"`` (the user
            turn is left empty: :meth:`MMSearchToolEnv.reset` appends the question).
        n / seed / shuffle: keep the first ``n`` tasks (after a seeded shuffle if asked).
        system_prompt: replace the dialect's system prompt (e.g. a short one for tiny CPU
            models; use the same one for SFT).
        categories: keep only tasks of these categories.

    Columns: ``prompt`` (system + user turn; the user message also carries ``task_id`` so a
    ``rollout_func``, which sees only prompts, can reset the env on the right task),
    ``task_id``, ``answers`` and ``category`` (for logging), and ``image`` when asked.
    TRL repeats each row ``num_generations`` times, so a whole GRPO group plays one task.
    """
    if route not in ("rollout", "environment"):
        raise ConfigError(f"route must be 'rollout' or 'environment', got {route!r}")
    tasks, spec_dialect = _resolve_tasks(source, split)
    dialect_obj = get_dialect(dialect or spec_dialect or ("tool-json" if route == "environment" else "mmsearch-r1"))
    order = [i for i, task in enumerate(tasks) if categories is None or task.category in categories]
    if shuffle:
        random.Random(seed).shuffle(order)
    if n is not None:
        if n < 1:
            raise ConfigError(f"n must be >= 1, got {n}")
        order = order[:n]
    renderer = _prompt_renderer(tasks, dialect_obj)
    system = system_prompt if system_prompt is not None else _system_prompt(dialect_obj, route)
    rows: dict[str, list[Any]] = {"prompt": [], "task_id": [], "answers": [], "category": []}
    if images:
        rows["image"] = []
    for index in order:
        task = tasks[index]
        _, info = renderer.reset(options={"task_index": index})
        content = info["messages"][1]["content"]
        user_text = "" if route != "rollout" else _text_of(content) if images else text_only_content(content)
        rows["prompt"].append([
            {"role": "system", "content": system},
            {"role": "user", "content": user_text, "task_id": task.id},
        ])
        rows["task_id"].append(task.id)
        rows["answers"].append(list(task.answers))
        rows["category"].append(task.category)
        if images:
            rows["image"].append(task.load_image())
    return datasets.Dataset.from_dict(rows)  # PIL images become an Image feature


def _system_prompt(dialect: Dialect, route: str) -> str:
    """The dialect's system prompt; for TRL's tool route without the JSON tool list, which the
    chat template renders itself from the environment's methods."""
    prompt = dialect.system_prompt()
    if route == "environment" and dialect.name == "tool-json":
        start, end = prompt.find("# Tools\n<tools>"), prompt.find("</tools>\n")
        if start != -1 and end != -1:
            prompt = prompt[:start] + prompt[end + len("</tools>\n"):]
        # the route's image_search takes x1, y1, x2, y2 (TRL builds the schema from the method)
        prompt = prompt.replace("bbox_2d is [x1, y1, x2, y2] in pixels of the original image.",
                                "Crop boxes x1, y1, x2, y2 are in pixels of the original image.")
    return prompt


def _with_image(prompt: list[dict[str, Any]], image: Image.Image) -> list[dict[str, Any]]:
    """The prompt as TRL hands it to a VLM: the image block before the first user text."""
    out = []
    placed = False
    for message in prompt:
        message = dict(message)
        if message["role"] == "user" and not placed and isinstance(message["content"], str):
            message["content"] = [{"type": "image", "image": image}, {"type": "text", "text": message["content"]}]
            placed = True
        out.append(message)
    return out
