"""The built-in offline world: countries, flags and photos, their search engine, and tasks.

``load_tasks("test")`` is the shipped fixed test split (1,000 tasks in five categories);
``load_tasks("train", n, seed)`` generates training tasks on entities disjoint from it.
Everything is imported lazily, so ``import mmsearch_gym.world`` costs nothing until used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from mmsearch_gym.grounding import AnnotationGrounder
    from mmsearch_gym.world.engine import WorldSearchEngine
    from mmsearch_gym.world.generator import CATEGORIES, TaskGenerator
    from mmsearch_gym.world.knowledge import Knowledge, load_knowledge
    from mmsearch_gym.world.reader import EvidenceReader
    from mmsearch_gym.world.scene import render_scene
    from mmsearch_gym.world.splits import load_tasks

__all__ = [
    "CATEGORIES",
    "AnnotationGrounder",
    "EvidenceReader",
    "Knowledge",
    "TaskGenerator",
    "WorldSearchEngine",
    "load_knowledge",
    "load_tasks",
    "render_scene",
]

_WHERE = {
    "CATEGORIES": "mmsearch_gym.world.generator",
    "TaskGenerator": "mmsearch_gym.world.generator",
    "load_tasks": "mmsearch_gym.world.splits",
    "render_scene": "mmsearch_gym.world.scene",
    "AnnotationGrounder": "mmsearch_gym.grounding",
    "EvidenceReader": "mmsearch_gym.world.reader",
    "Knowledge": "mmsearch_gym.world.knowledge",
    "load_knowledge": "mmsearch_gym.world.knowledge",
    "WorldSearchEngine": "mmsearch_gym.world.engine",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'mmsearch_gym.world' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
