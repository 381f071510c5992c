"""Shared builders for the veRL adapter tests (imported by the test modules)."""

from __future__ import annotations

from typing import Any

from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap
from verl.utils.dataset.rl_dataset import RLHFDataset

from mmsearch_gym.integrations.verl.data import to_verl_rows
from mmsearch_gym.registration import resolve_tasks
from mmsearch_gym.tasks import TaskSet


def world_rows(n: int = 3, dialect: str = "mmsearch-r1") -> tuple[TaskSet, list[dict[str, Any]]]:
    tasks = resolve_tasks("world:test")
    picked = TaskSet(list(tasks)[:n], name="world-test-head")
    return picked, to_verl_rows(picked, dialect=dialect)


def loop_kwargs(config: Any, server: Any, tokenizer: Any, tools: list | None = None) -> dict[str, Any]:
    """The keyword arguments veRL's AgentLoopWorker gives every agent loop."""
    return {"trainer_config": DictConfigWrap(config), "server_manager": server, "tokenizer": tokenizer,
            "processor": None, "dataset_cls": RLHFDataset, "data_config": DictConfigWrap(config.data),
            "tools": ToolListWrap(tools or [])}
