"""veRL's custom reward function: ``score_episode``'s reward and breakdown, nothing re-scored.

Point veRL at it with ``reward.custom_reward_function.path=<this file>`` and
``reward.custom_reward_function.name=compute_score``. veRL's reward manager merges the agent
loop's ``extra_fields`` into ``extra_info``; :class:`~.agent_loop.MMSearchAgentLoop` puts the
episode's assistant turns there (``mmsearch_turns``) and the env's reward spec
(``mmsearch_reward``), so this function scores exactly the turns the env saw, with the env's
spec. Without them (a single-turn dataset) the whole response is one turn.
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


def _turns(solution_str: str, extra_info: Mapping[str, Any]) -> list[str]:
    turns = extra_info.get("mmsearch_turns")
    if turns is None:
        return [solution_str]
    if isinstance(turns, str) or not isinstance(turns, Sequence) and not hasattr(turns, "tolist"):
        raise ConfigError("extra_info['mmsearch_turns'] must be a list of assistant turns")
    return [str(t) for t in (turns.tolist() if hasattr(turns, "tolist") else turns)]


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
