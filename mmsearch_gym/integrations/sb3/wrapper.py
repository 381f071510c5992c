"""SearchDecisionEnv: an MMSearchEnv seen as a small discrete decision problem (a Gymnasium
wrapper whose actions become action text in the env's dialect)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np

from mmsearch_gym.env import MMSearchEnv
from mmsearch_gym.errors import ConfigError
from mmsearch_gym.grounding import Grounder
from mmsearch_gym.policies import EvidenceReaderLike, first_image

from .decision import DecisionConfig, DecisionCore, Evidence, FeatureCache, _default_grounder


class SearchDecisionEnv(gym.Wrapper[np.ndarray, np.int64, dict[str, Any], str]):
    """An :class:`~mmsearch_gym.env.MMSearchEnv` seen as a small decision problem for SB3.

    Each step takes a discrete decision, turns it into action text in the env's dialect, and
    steps the wrapped env with it; the reward and ``truncated`` are the wrapped env's,
    unchanged. ``terminated`` is the wrapped env's ``terminated or truncated``: the turn and
    search limits that truncate an MMSearch episode are part of the decision problem (the
    observation counts turns and budgets left, and the episode reward is final when they run
    out), so the episode has ended for good, and SB3 must not bootstrap a value past it as it
    does for a time-limit truncation (it would learn that running out of turns pays). ``info``
    is the wrapped env's info plus ``decision`` (the action name) and ``action_text``, without
    the chat ``messages`` unless ``info_messages`` is set (SB3's vector envs deep-copy every
    info, and the chat holds images; ``env.unwrapped.transcript()`` has the text).

    Args:
        env: an MMSearchEnv, possibly wrapped (``gym.make("MMSearch-Train-v0")``).
        config: observation and action shape; its episode limits are taken from ``env``.
        reader: evidence reader (default: the world's ``EvidenceReader``).
        grounder: for crops; ``"env"`` (default) uses the env's grounder, else an
            :class:`~mmsearch_gym.grounding.AnnotationGrounder`; ``None`` crops fixed windows.
        feature_cache: image feature vectors by task id; pass one cache to every copy of the
            env in a vector env so each task's image is described once.
        info_messages: keep the wrapped env's ``messages`` in ``info``.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}  # noqa: RUF012 (Gymnasium's convention)

    def __init__(self, env: gym.Env[Any, str], *, config: DecisionConfig | None = None,
                 reader: EvidenceReaderLike | None = None, grounder: Grounder | str | None = "env",
                 feature_cache: FeatureCache | None = None, info_messages: bool = False) -> None:
        base = env.unwrapped
        if not isinstance(base, MMSearchEnv):
            raise ConfigError(f"SearchDecisionEnv wraps an MMSearchEnv, got {type(base).__name__}")
        super().__init__(env)
        config = replace(config or DecisionConfig(), max_turns=base.max_turns,
                         image_search_budget=base.image_search_budget,
                         text_search_budget=base.text_search_budget)
        if grounder == "env":
            grounder = base.grounder if base.grounder is not None else _default_grounder()
        if isinstance(grounder, str):
            raise ConfigError(f"grounder must be 'env', a Grounder or None, got {grounder!r}")
        self.core = DecisionCore(config, reader=reader, grounder=grounder)
        self.config = config
        self.observation_space = self.core.observation_space
        self.action_space = self.core.action_space
        self._vectors = feature_cache if feature_cache is not None else FeatureCache()
        self.info_messages = info_messages
        self._question = ""
        self._image_vector = np.zeros(0, dtype=np.float32)
        self._image_size = (1, 1)
        self._history: list[Evidence] = []

    @property
    def mmsearch_env(self) -> MMSearchEnv:
        """The MMSearchEnv at the bottom of the wrapper stack (``self.unwrapped``, typed)."""
        base = self.env.unwrapped
        assert isinstance(base, MMSearchEnv)
        return base

    @property
    def action_names(self) -> tuple[str, ...]:
        return self.config.action_names

    @property
    def history(self) -> list[Evidence]:
        """The evidence of the current episode so far (a copy)."""
        return list(self._history)

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        _, info = self.env.reset(seed=seed, options=options)
        self._question = str(info["question"])
        image = first_image(info["messages"])
        if image is None:
            raise ConfigError("the wrapped env's reset info has no image in its messages")
        self._image_size = image.size
        self._image_vector = self._vectors.get(str(info["task_id"]), lambda: self.core.image_vector(image))
        self._history = []
        return self.core.observe(self._question, self._image_vector, self._history), self._info(info)

    def step(self, action: np.int64 | int | np.ndarray) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        index = int(np.asarray(action).reshape(-1)[0]) if not isinstance(action, (int, np.integer)) else int(action)
        base = self.mmsearch_env
        chosen, reason = self.core.action(index, self._question, self._history,
                                          task=base.task, image_size=self._image_size)
        text = self.core.text(chosen, reason, base.dialect)
        _, reward, terminated, truncated, info = self.env.step(text)
        self._history.append(Evidence.of(info.get("action", chosen), info.get("hits") or []))
        info = dict(self._info(info), decision=self.config.action_names[index], action_text=text)
        obs = self.core.observe(self._question, self._image_vector, self._history)
        return obs, float(reward), bool(terminated or truncated), bool(truncated), info

    def _info(self, info: dict[str, Any]) -> dict[str, Any]:
        return info if self.info_messages else {k: v for k, v in info.items() if k != "messages"}

    def render(self) -> str | None:
        return self.mmsearch_env.transcript() if self.mmsearch_env.render_mode == "ansi" else None
