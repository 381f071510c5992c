"""veRL tools (``verl.tools.base_tool.BaseTool`` subclasses) that step the env.

Each trajectory gets one :class:`~mmsearch_gym.env.MMSearchEnv` (from a per-process pool, see
:mod:`.envs`), reset to the row's task (``create_kwargs: {task_id}``, which
:func:`~.data.to_verl_rows` writes). A call is turned into an action, written as a turn in the
env's dialect and stepped, so the search goes through the env's backend and cache (recorded,
replayable), its budgets apply and the result text is the env's. Tool arguments are read by the
tool-json dialect's own parser; a referring expression becomes ``Region.refer`` (grounded by the
env's grounder, so use a deepmmsearch-r1 env such as ``MMSearch-Deep-v0`` for it).

veRL's ``ToolAgentLoop`` creates and releases a tool instance per call, so the episode lives on
the loop's ``AgentData`` (shared by both tools) and goes back to the pool when that is freed.

Reward on this route: after every call the tools write the episode into the loop's
``extra_fields`` (which veRL's reward manager merges into ``extra_info``): the turns the env
stepped (``mmsearch_turns``), its reward spec, whether the env ended the episode, and the loop's
message history with the index of the calling assistant message. veRL appends the model's last
turn to that history after the last call, so :func:`~.reward.compute_score` scores the env's
turns plus that last turn: exactly ``score_episode`` of the episode the env played, not the whole
response as one turn.

Tool config keys (``tools[].config`` of a veRL tool yaml): ``type: native``, ``env`` (an env id
or ``{"id"|"spec", "kwargs"}`` description; default ``MMSearch-v0``), ``return_images`` (attach
result thumbnails as images, for VLMs; default false).
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

from verl.tools.base_tool import BaseTool
from verl.tools.schemas import OpenAIFunctionToolSchema, ToolResponse

from mmsearch_gym.actions import (
    TOOL_SCHEMAS,
    Action,
    ImageSearch,
    Invalid,
    Region,
    get_dialect,
)
from mmsearch_gym.env import MMSearchEnv
from mmsearch_gym.errors import ConfigError
from mmsearch_gym.integrations.verl.envs import EnvPool, env_description, env_pool

__all__ = ["ImageSearchTool", "MMSearchTool", "TextSearchTool", "tool_config"]

_EXPRESSION = {"type": ["string", "null"],
               "description": "instead of bbox_2d: the region to search, described in words"}


@dataclass
class _Episode:
    env: MMSearchEnv
    task_id: str
    over: bool = False


def _record(episode: _Episode, agent_data: Any) -> None:
    """Write the episode into the loop's ``extra_fields`` for :func:`~.reward.compute_score`.

    ``mmsearch_messages`` is the loop's own history list (not a copy): veRL appends the model's
    final turn to it after the last call, before the reward is computed.
    """
    fields, messages = getattr(agent_data, "extra_fields", None), getattr(agent_data, "messages", None)
    if not isinstance(fields, dict) or not isinstance(messages, list):
        return
    fields.update({"mmsearch_turns": episode.env.turns, "mmsearch_task_id": episode.task_id,
                   "mmsearch_reward": episode.env.reward_spec.describe(),
                   "mmsearch_episode_over": episode.over, "mmsearch_messages": messages,
                   "mmsearch_call_message": len(messages) - 1})


def _schema(name: str, expression: bool) -> OpenAIFunctionToolSchema:
    data = json.loads(json.dumps(next(s for s in TOOL_SCHEMAS if s["function"]["name"] == name)))
    if expression:
        data["function"]["parameters"]["properties"]["expression"] = dict(_EXPRESSION)
        data["function"]["description"] += " Or describe the region in words with expression."
    return OpenAIFunctionToolSchema.model_validate(data)


class MMSearchTool(BaseTool):
    """One of the env's search tools; subclasses name it and map arguments to an Action."""

    tool_name = ""

    def __init__(self, config: dict[str, Any] | None = None, tool_schema: OpenAIFunctionToolSchema | None = None):
        config = dict(config or {})
        super().__init__(config, tool_schema or _schema(self.tool_name, self._expression_schema()))
        self.env_key = json.dumps(env_description(config.get("env")), sort_keys=True)
        self.pool: EnvPool = env_pool(config.get("env"))
        self.return_images = bool(config.get("return_images", False))
        self._created: dict[str, dict[str, Any]] = {}
        self._own: dict[str, _Episode] = {}

    def _expression_schema(self) -> bool:
        return False

    def action(self, parameters: dict[str, Any]) -> Action:
        """The action a call asks for, read by the tool-json dialect's parser."""
        call = json.dumps({"name": self.tool_name, "arguments": parameters}, ensure_ascii=False)
        return get_dialect("tool-json").parse(f"<tool_call>{call}</tool_call>")

    async def create(self, instance_id: str | None = None, create_kwargs: dict[str, Any] | None = None,
                     **kwargs: Any) -> tuple[str, ToolResponse]:
        instance_id = instance_id or uuid4().hex
        self._created[instance_id] = dict(create_kwargs or kwargs.get("create_kwargs") or {})
        return instance_id, ToolResponse()

    def _episode(self, instance_id: str, agent_data: Any) -> _Episode:
        """The trajectory's episode: on ``agent_data`` (shared by the tools), else per instance."""
        holder = getattr(agent_data, "__dict__", None)
        episodes = holder.setdefault("_mmsearch_episodes", {}) if holder is not None else self._own
        key = self.env_key if holder is not None else instance_id
        episode = episodes.get(key)
        if episode is None:
            task_id = self._created.get(instance_id, {}).get("task_id")
            if task_id is None:
                raise ConfigError("the tool needs tools_kwargs.<tool>.create_kwargs.task_id "
                                  "(mmsearch_gym.integrations.verl.data writes it)")
            env = self.pool.acquire()
            env.reset(options={"task_id": str(task_id)})
            episode = episodes[key] = _Episode(env, str(task_id))
            if holder is not None:
                weakref.finalize(agent_data, self.pool.release, env)
        return episode

    async def execute(self, instance_id: str, parameters: dict[str, Any], **kwargs: Any
                      ) -> tuple[ToolResponse, float, dict]:
        episode = self._episode(instance_id, kwargs.get("agent_data"))
        if episode.over:
            return ToolResponse(text="The episode is over: no more searches."), 0.0, {"episode_over": 1}
        action = self.action(parameters if isinstance(parameters, dict) else {})
        if isinstance(action, Invalid):
            return ToolResponse(text=episode.env.dialect.format_feedback(action)), 0.0, {"invalid": 1}
        try:
            turn = episode.env.dialect.format(action)
        except ConfigError as err:
            return ToolResponse(text=str(err)), 0.0, {"invalid": 1}
        obs, _, terminated, truncated, info = episode.env.step(turn)
        episode.over = bool(terminated or truncated)
        _record(episode, kwargs.get("agent_data"))
        images = None
        if self.return_images and info.get("messages"):
            last = info["messages"][-1]
            images = [b["image"] for b in last["content"] if b.get("type") == "image"] or None
        metrics = {"image_searches": info["image_searches"], "text_searches": info["text_searches"],
                   "hits": len(info["hits"]), "search_error": int(info["search_error"] is not None)}
        response = ToolResponse(text=obs["text"], image=images) if images else ToolResponse(text=obs["text"])
        return response, 0.0, metrics

    async def calc_reward(self, instance_id: str, **kwargs: Any) -> float:
        """The env's reward of the turns stepped so far (the final answer is scored by compute_score)."""
        episode = self._own.get(instance_id)
        return float(episode.env.score().reward) if episode is not None else 0.0

    async def release(self, instance_id: str, **kwargs: Any) -> None:
        self._created.pop(instance_id, None)
        episode = self._own.pop(instance_id, None)
        if episode is not None:
            self.pool.release(episode.env)


class TextSearchTool(MMSearchTool):
    """``text_search(query)``: a web text search through the env."""

    tool_name = "text_search"


class ImageSearchTool(MMSearchTool):
    """``image_search(bbox_2d=None, expression=None)``: reverse image search of the whole task
    image, a pixel box of it, or a region described in words (grounded by the env)."""

    tool_name = "image_search"

    def _expression_schema(self) -> bool:
        return True

    def action(self, parameters: dict[str, Any]) -> Action:
        expression = parameters.get("expression")
        if expression is not None and parameters.get("bbox_2d") is not None:
            return Invalid("give bbox_2d or expression, not both")
        if expression is not None:
            if not isinstance(expression, str) or not expression.strip():
                return Invalid("expression must be a non-empty string")
            return ImageSearch(Region.refer(expression.strip()))
        return super().action({k: v for k, v in parameters.items() if k != "expression"})


def tool_config(env: str | dict[str, Any] | None = None, *, return_images: bool = False) -> dict[str, Any]:
    """The veRL tool yaml (as a dict) declaring both tools over ``env``."""
    config = {"type": "native", "env": env_description(env), "return_images": return_images}
    return {"tools": [{"class_name": f"{__name__}.{cls.__name__}", "config": config}
                      for cls in (TextSearchTool, ImageSearchTool)]}
