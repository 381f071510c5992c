"""veRL's custom reward function: ``score_episode``'s reward and breakdown, nothing re-scored.

Point veRL at it with ``reward.custom_reward_function.path=<this file>`` and
``reward.custom_reward_function.name=compute_score``. veRL's reward manager merges the agent
loop's ``extra_fields`` into ``extra_info``; :class:`~.agent_loop.MMSearchAgentLoop` puts the
episode's assistant turns there (``mmsearch_turns``) and the env's reward spec
(``mmsearch_reward``), so this function scores exactly the turns the env saw, with the env's
spec. On veRL's ``ToolAgentLoop`` route the tools (:mod:`.tools`) write the turns the env
stepped for each call, and a reference to the loop's message history; the model's last turn
(the assistant message veRL appended after the last call) is added to them, read back from the
decoded response, so the reward is ``score_episode`` of exactly the episode the env played.
Without any of them (a single-turn dataset, or no tool was ever called) the whole response is
one turn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.reward import SCORERS, RewardBreakdown, RewardSpec, score_episode

__all__ = ["breakdown_fields", "compute_score", "spec_from_description"]

_SPEC_FIELDS = ("scorer", "format_weight", "search_penalty", "penalty_per_search", "dialect", "name")


def spec_from_description(description: Mapping[str, Any] | str | None, dialect: str | None = None) -> RewardSpec:
    """A RewardSpec from ``RewardSpec.describe()`` output, a preset name, or the dialect's preset."""
    if isinstance(description, str):
        return RewardSpec.from_name(description)
    if isinstance(description, Mapping):
        values = {k: description[k] for k in _SPEC_FIELDS if k in description}
        if values.get("scorer", "em") not in SCORERS:
            raise ConfigError(f"the reward scorer {values.get('scorer')!r} is a judge callable, which a "
                              "description cannot rebuild; let the agent loop score (reward_source: env)")
        return RewardSpec(**values)
    if dialect == "tool-json":
        return RewardSpec.mmsearch_r1(dialect="tool-json", name="tool-json")
    return RewardSpec.from_name(dialect or "mmsearch-r1")


def breakdown_fields(breakdown: RewardBreakdown) -> dict[str, float]:
    """The numeric part of a breakdown with veRL's ``score`` key first (what its logs average)."""
    return {"score": float(breakdown.reward), "correct": float(breakdown.raw_score > 0),
            "answer_score": float(breakdown.score), "raw_score": float(breakdown.raw_score),
            "format": float(breakdown.format), "searches": float(breakdown.searches),
            "image_searches": float(breakdown.image_searches),
            "text_searches": float(breakdown.text_searches), "penalty": float(breakdown.penalty)}


def _listed(value: Any, what: str) -> list[Any]:
    if isinstance(value, (str, bytes, Mapping)) or not (isinstance(value, Sequence) or hasattr(value, "tolist")):
        raise ConfigError(f"extra_info['{what}'] must be a list")
    return list(value.tolist() if hasattr(value, "tolist") else value)


def _decoded_tail(solution_str: str, content: str) -> str:
    """``content`` as it ends ``solution_str``: its longest head that the response ends with.

    veRL keeps a turn's text decoded with special tokens (``...</answer><|im_end|>``) and
    truncated nowhere; the reward manager decodes the response without them and cut at
    ``response_length``; the head both agree on is the turn the reward sees.
    """
    for cut in range(len(content), 0, -1):
        if solution_str.endswith(content[:cut]):
            return content[:cut]
    return content


def _final_turn(solution_str: str, extra_info: Mapping[str, Any]) -> str | None:
    """The model's last turn after the tools' last call (ToolAgentLoop route), if veRL kept one."""
    if "mmsearch_messages" not in extra_info or extra_info.get("mmsearch_episode_over"):
        return None
    messages = _listed(extra_info["mmsearch_messages"], "mmsearch_messages")
    after = messages[int(extra_info.get("mmsearch_call_message", len(messages))) + 1:]
    finals = [m for m in after if isinstance(m, Mapping) and m.get("role") == "assistant"]
    if not finals:  # veRL stopped on max_assistant_turns / response_length before parsing it
        return None
    content = finals[-1].get("content") or ""
    if not isinstance(content, str):
        content = "".join(b.get("text") or "" for b in content if isinstance(b, Mapping))
    return _decoded_tail(solution_str, content)


def _turns(solution_str: str, extra_info: Mapping[str, Any]) -> list[str]:
    turns = extra_info.get("mmsearch_turns")
    if turns is None:
        return [solution_str]
    if isinstance(turns, str):
        raise ConfigError("extra_info['mmsearch_turns'] must be a list of assistant turns")
    turns = [str(t) for t in _listed(turns, "mmsearch_turns")]
    final = _final_turn(solution_str, extra_info)
    return turns if final is None else [*turns, final]


def compute_score(data_source: str, solution_str: str, ground_truth: Any,
                  extra_info: Mapping[str, Any] | None = None, **_: Any) -> dict[str, float]:
    """veRL's custom-reward signature; returns ``{"score": reward, ...breakdown}``."""
    extra_info = extra_info or {}
    answers = [ground_truth] if isinstance(ground_truth, str) else list(
        ground_truth.tolist() if hasattr(ground_truth, "tolist") else ground_truth)
    if not answers:
        raise ConfigError(f"a {data_source!r} row has no gold answer")
    spec = spec_from_description(extra_info.get("mmsearch_reward"), extra_info.get("dialect"))
    breakdown = score_episode(_turns(solution_str, extra_info), [str(a) for a in answers], spec,
                              str(extra_info.get("question") or ""))
    return breakdown_fields(breakdown)
