"""GRPO reward functions: they read the env's rewards (nothing is re-scored here) and log the
papers' numbers through TRL's ``log_metric``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mmsearch_gym.errors import ConfigError

from .data import Content, _text_of
from .tool_env import MMSearchToolEnv

Completion = str | Sequence[Mapping[str, Any]]
"""What TRL hands a reward function per rollout: the completion text or its messages."""


def episode_metrics(breakdowns: Sequence[Mapping[str, Any]],
                    tool_calls: Sequence[Mapping[str, int]] | None = None) -> dict[str, float]:
    """Batch means of the papers' evaluation numbers, from the env's reward breakdowns."""
    n = max(1, len(breakdowns))
    metrics = {
        "mmsearch/accuracy": sum(b["raw_score"] > 0.5 for b in breakdowns) / n,
        "mmsearch/search_ratio": sum(b["searches"] > 0 for b in breakdowns) / n,
        "mmsearch/format_rate": sum(b["format"] > 0.5 for b in breakdowns) / n,
        "mmsearch/image_search_calls": sum(b["image_searches"] for b in breakdowns) / n,
        "mmsearch/text_search_calls": sum(b["text_searches"] for b in breakdowns) / n,
        "mmsearch/env_reward": sum(b["reward"] for b in breakdowns) / n,
    }
    if tool_calls is not None:
        metrics["mmsearch/executed_image_searches"] = sum(t.get("image_search", 0) for t in tool_calls) / n
        metrics["mmsearch/executed_text_searches"] = sum(t.get("text_search", 0) for t in tool_calls) / n
    return metrics


def _log(kwargs: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
    log_metric = kwargs.get("log_metric")
    if callable(log_metric):
        for name, value in metrics.items():
            log_metric(name, float(value))


def env_reward(prompts: list[Content], completions: list[Completion], env_reward: list[float] | None = None,
               reward_breakdown: list[Mapping[str, Any]] | None = None, **kwargs: Any) -> list[float]:
    """GRPO reward of the rollout route: the env's episode reward, as the env computed it.

    Also logs accuracy, search ratio, format rate and calls per tool through TRL's
    ``log_metric`` (they appear next to ``reward`` in the trainer logs).
    """
    if env_reward is None or reward_breakdown is None:
        raise ConfigError("env_reward reads the env rewards of mmsearch_gym's rollout_func; "
                          "pass rollout_func=make_rollout_func(...) to GRPOTrainer")
    _log(kwargs, episode_metrics(reward_breakdown, kwargs.get("env_tool_calls")))
    return [float(r) for r in env_reward]


def _final_assistant_text(completion: Completion) -> str | None:
    """The last assistant message's text when it ends the rollout (None if it is a tool call)."""
    if isinstance(completion, str):
        return completion
    for message in reversed(completion):
        if message.get("role") == "assistant":
            if message.get("tool_calls"):
                return None
            return _text_of(message.get("content") or "")
    return None


def episode_accuracy(prompts: list[Content], completions: list[Completion],
                     environments: list[MMSearchToolEnv] | None = None,
                     **kwargs: Any) -> list[float]:
    """Weight-0 reward function of the tool route: finishes each episode, logs metrics.

    It steps each rollout's final assistant message into its env (so the env scores the
    answer), logs accuracy, search ratio, format rate and tool calls, and returns the
    correctness score for logging (give it weight 0: the GRPO reward is the env's, from
    ``get_reward``). TRL calls synchronous reward functions in order before the
    environment's ``get_reward``.
    """
    if environments is None:
        raise ConfigError("episode_accuracy belongs to the environment_factory route")
    for environment, completion in zip(environments, completions):
        if isinstance(environment, MMSearchToolEnv):
            environment._finish(_final_assistant_text(completion))
    breakdowns = [e.breakdown.to_json() for e in environments]
    _log(kwargs, episode_metrics(breakdowns, [e.tool_calls for e in environments]))
    return [float(b["raw_score"]) for b in breakdowns]
