"""The ``environment_factory`` route: MMSearchEnv behind TRL's own tool-calling loop
(``tool-json`` dialect; ``text_search`` and ``image_search`` are tool methods)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from PIL import Image
from trl.chat_template_utils import add_response_schema

from mmsearch_gym.actions import ImageSearch, Region, TextSearch
from mmsearch_gym.env import MMSearchEnv
from mmsearch_gym.errors import ConfigError, DataError
from mmsearch_gym.metrics import EpisodeResult
from mmsearch_gym.policies import text_only_content
from mmsearch_gym.reward import RewardBreakdown

from .data import _text_of
from .envs import EnvMaker, EnvSource, _episode_result, _searches_run, env_factory
from .generation import Processing, _tokenizer_of

ToolResult = str | list[dict[str, str | Image.Image]]
"""A tool's answer to TRL: the result text, or (VLMs) text and thumbnail image blocks."""


class MMSearchToolEnv:
    """One MMSearchEnv episode behind TRL's ``environment_factory`` tool-calling loop.

    TRL builds one instance per rollout, calls :meth:`reset` with the dataset row, exposes the
    public methods :meth:`text_search` and :meth:`image_search` as JSON tools (their docstrings
    become the schemas), and calls :meth:`get_reward` after the rollout. Each tool call is one
    env step in the ``tool-json`` dialect; the final assistant message (the ``<answer>``) is
    stepped in by ``_finish`` (private: TRL turns every public method into a tool), which
    :func:`episode_accuracy` calls for every rollout before TRL asks for the reward.
    """

    _factory: EnvMaker | None = None
    _vision: bool = False

    def __init__(self) -> None:
        if type(self)._factory is None:
            raise ConfigError("use make_tool_env_factory(...) to build MMSearchToolEnv classes")
        self._env = type(self)._factory()  # type: ignore[misc]
        if self._env.dialect.name != "tool-json":
            raise ConfigError("the environment_factory route needs an env with dialect='tool-json'")
        self._done = True
        self._breakdown: RewardBreakdown | None = None
        self.steps = 0
        self.observations: list[str] = []
        self.tool_calls = {"image_search": 0, "text_search": 0}
        self.final_text: str | None = None
        self._last_info: dict[str, Any] = {}

    @property
    def env(self) -> MMSearchEnv:
        return self._env

    def reset(self, **row: Any) -> str:
        """Start the episode on the row's task; returns the question for the user turn."""
        task_id = row.get("task_id")
        if task_id is None:
            raise DataError("the dataset row has no task_id column; build it with to_dataset(..., route='environment')")
        _, info = self._env.reset(options={"task_id": str(task_id)})
        self._last_info = info
        self._done = False
        self._breakdown = None
        self.steps = 0
        self.observations = []
        self.tool_calls = {"image_search": 0, "text_search": 0}
        self.final_text = None
        content = info["messages"][1]["content"]  # a VLM gets the image from the dataset's column
        return _text_of(content) if type(self)._vision else text_only_content(content)

    def text_search(self, query: str) -> str:
        """Search the web for text and return summaries of the top pages.

        Args:
            query: The search query, e.g. the name of what the image shows plus the fact asked for.
        """
        return self._call(self._env.dialect.format(TextSearch(query)) if query.strip()
                          else _raw_call("text_search", {"query": query}))

    def image_search(self, x1: int | None = None, y1: int | None = None, x2: int | None = None,
                     y2: int | None = None) -> ToolResult:
        """Reverse image search with the whole image, or with a crop when a box is given.

        Args:
            x1: Left edge of the crop in pixels of the original image (omit all four for the whole image).
            y1: Top edge of the crop in pixels.
            x2: Right edge of the crop in pixels.
            y2: Bottom edge of the crop in pixels.
        """
        coords = (x1, y1, x2, y2)
        if all(v is None for v in coords):
            text = self._env.dialect.format(ImageSearch(Region.whole()))
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in coords) \
                and x1 < x2 and y1 < y2:  # type: ignore[operator]
            text = self._env.dialect.format(ImageSearch(Region.from_box(*coords)))  # type: ignore[arg-type]
        else:  # the env turns a partial or reversed box into Invalid feedback
            text = _raw_call("image_search", {"bbox_2d": list(coords)})
        return self._call(text, image_results=True)

    def _call(self, turn_text: str, image_results: bool = False) -> ToolResult:
        if self._done:
            return "The episode is over: no more tool calls. Give your final answer as <answer>answer</answer>."
        _obs, _r, terminated, truncated, info = self._env.step(turn_text)
        self.steps += 1
        self._last_info = info
        self.tool_calls = _searches_run(info)
        if terminated or truncated:
            self._done = True
            self._breakdown = info["reward_breakdown"]
        last = info["messages"][-1]
        if last["role"] != "user":  # the env ended the episode without a result turn
            return "The episode is over. Give your final answer as <answer>answer</answer>."
        result = _strip_tool_response(text_only_content(last["content"]))  # as SFT renders recorded results
        self.observations.append(result)
        images = [b["image"] for b in last["content"] if b.get("type") == "image" and b.get("image") is not None]
        if image_results and type(self)._vision and images:
            return [{"type": "text", "text": result}] + [{"type": "image", "image": im} for im in images]
        return result

    def _finish(self, final_text: str | None) -> None:
        """Step the final assistant text (the answer) into the env, once, if it is still running.

        None (the rollout ended on a tool call, e.g. at TRL's ``max_tool_calling_iterations``)
        steps nothing: the env scores the turns it saw (no answer, so no correctness).
        """
        if self._done:
            return
        if final_text is None:
            self._done = True
            return
        self.final_text = final_text
        _obs, _r, terminated, truncated, info = self._env.step(self.final_text)
        self.steps += 1
        self._last_info = info
        if terminated or truncated:
            self._breakdown = info["reward_breakdown"]
        self._done = True

    @property
    def breakdown(self) -> RewardBreakdown:
        """The env's reward breakdown (of the turns so far if the episode never ended)."""
        return self._breakdown if self._breakdown is not None else self._env.score()

    @property
    def result(self) -> EpisodeResult:
        """What the episode counts (:mod:`mmsearch_gym.metrics`), from the env's last info."""
        if not self._last_info:
            raise ConfigError("the episode has not started: TRL calls reset() first")
        return _episode_result(self._last_info, self.breakdown)

    def get_reward(self) -> float:
        """The env's episode reward (TRL adds it to the GRPO reward with weight 1)."""
        return float(self.breakdown.reward)


def _raw_call(name: str, arguments: Mapping[str, Any]) -> str:
    """A tool-call turn for arguments the dialect cannot format (the env reports them invalid)."""
    return "<tool_call>" + json.dumps({"name": name, "arguments": dict(arguments)}, ensure_ascii=False) + "</tool_call>"


def _strip_tool_response(text: str) -> str:
    """The env's tool-json result without its ``<tool_response>`` wrapper, which the chat
    template adds back around tool messages (so the rendered turn is the env's text exactly)."""
    head, tail = "<tool_response>\n", "\n</tool_response>"
    if text.startswith(head) and text.endswith(tail):
        return text[len(head):-len(tail)]
    return text


def make_tool_env_factory(env: EnvSource, *, vision: bool = False,
                          **env_kwargs: Any) -> type[MMSearchToolEnv]:
    """An ``environment_factory`` for GRPOTrainer: a MMSearchToolEnv subclass bound to ``env``.

    ``vision=True`` makes image_search return the result thumbnails as image content blocks
    (for VLM processors); text models get the results as text.
    """
    factory = env_factory(env, **env_kwargs)
    return type("MMSearchToolEnv", (MMSearchToolEnv,), {"_factory": staticmethod(factory), "_vision": bool(vision)})


def prepare_tool_calling(processing: Processing) -> Processing:
    """Give Qwen2.5-VL processors the Qwen response parser (TRL 1.16 only knows it for Qwen2.5,
    Qwen3 and Qwen3-VL templates, and Qwen2.5-VL emits the same ``<tool_call>`` JSON)."""
    tokenizer = _tokenizer_of(processing)
    if getattr(tokenizer, "response_template", None) is None and getattr(tokenizer, "response_schema", None) is None:
        try:
            add_response_schema(processing)
        except ValueError:
            from trl.chat_template_utils import qwen3_template
            tokenizer.response_template = qwen3_template
    return processing


def _tool_schemas() -> list[dict[str, Any]]:
    """The JSON schemas TRL renders for MMSearchToolEnv's tools (from their signatures and docstrings)."""
    import types

    from transformers.utils import get_json_schema

    holder = object()
    return [get_json_schema(types.MethodType(fn, holder))
            for fn in (MMSearchToolEnv.image_search, MMSearchToolEnv.text_search)]
