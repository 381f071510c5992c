"""GRPO reward functions: they read the env's rewards (nothing is re-scored here) and log the
papers' numbers through TRL's ``log_metric``, as :mod:`mmsearch_gym.metrics` defines them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.metrics import EpisodeResult, Metrics

from .data import Content, _text_of
from .tool_env import MMSearchToolEnv

Completion = str | Sequence[Mapping[str, Any]]
"""What TRL hands a reward function per rollout: the completion text or its messages."""

PREFIX = "mmsearch/"
"""The prefix of the metrics in the trainer logs."""

FORMER_NAMES = {"search_ratio": "searches_run_ratio", "image_search_calls": "image_searches",
                "text_search_calls": "text_searches", "env_reward": "mean_reward"}
"""Log names of earlier versions (read by existing curves and benchmarks) -> the metric each now
repeats. ``search_ratio`` is the papers' (and ``mmsearch-gym eval``'s): searches run."""


def episode_metrics(results: Sequence[EpisodeResult | Mapping[str, Any]]) -> dict[str, float]:
    """The batch's :class:`~mmsearch_gym.metrics.Metrics` as ``{"mmsearch/" + name: value}``.

    ``results`` are EpisodeResults or the infos of the steps that ended the episodes. Every
    name of :meth:`Metrics.to_log` is logged (``searches_run_ratio`` and
    ``searches_scored_ratio`` among them), plus :data:`FORMER_NAMES`.
    """
    episodes = [r if isinstance(r, EpisodeResult) else EpisodeResult.from_info(r, episode=i)
                for i, r in enumerate(results)]
    log = Metrics.of(episodes).to_log(PREFIX)
    log.update({PREFIX + old: log[PREFIX + new] for old, new in FORMER_NAMES.items()})
    return log


def _log(kwargs: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
    log_metric = kwargs.get("log_metric")
    if callable(log_metric):
        for name, value in metrics.items():
            log_metric(name, float(value))


def env_reward(prompts: list[Content], completions: list[Completion], env_reward: list[float] | None = None,
               env_results: list[EpisodeResult] | None = None, **kwargs: Any) -> list[float]:
    """GRPO reward of the rollout route: the env's episode reward, as the env computed it.

    Also logs :func:`episode_metrics` of the episodes through TRL's ``log_metric`` (they appear
    next to ``reward`` in the trainer logs).
    """
    if env_reward is None or env_results is None:
        raise ConfigError("env_reward reads the env rewards of mmsearch_gym's rollout_func; "
                          "pass rollout_func=make_rollout_func(...) to GRPOTrainer")
    _log(kwargs, episode_metrics(env_results))
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
    answer), logs :func:`episode_metrics` of the episodes, and returns the
    correctness score for logging (give it weight 0: the GRPO reward is the env's, from
    ``get_reward``). TRL calls synchronous reward functions in order before the
    environment's ``get_reward``.
    """
    if environments is None:
        raise ConfigError("episode_accuracy belongs to the environment_factory route")
    for environment, completion in zip(environments, completions, strict=False):
        if isinstance(environment, MMSearchToolEnv):
            environment._finish(_final_assistant_text(completion))
    results = [e.result for e in environments]
    _log(kwargs, episode_metrics(results))
    return [float(r.reward.raw_score) for r in results]
