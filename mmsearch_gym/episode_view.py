"""EpisodeView: what a policy may look at for one running episode, and its finished Steps.

Build one with :meth:`EpisodeView.start` right after ``env.reset`` and call
:meth:`EpisodeView.record` after every ``env.step`` (the runner does both); policies read it in
:meth:`mmsearch_gym.policies.Policy.act`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from mmsearch_gym.actions import Action, Dialect, get_dialect
from mmsearch_gym.chat import first_image
from mmsearch_gym.errors import ConfigError
from mmsearch_gym.search.base import Hit

__all__ = ["EpisodeView", "Step"]


@dataclass
class Step:
    """One finished assistant turn of an episode: what the policy said and what came back."""

    text: str
    """The raw action text the policy emitted."""
    action: Action
    """The action as the env parsed (and resolved) it; an unresolvable crop is ``Invalid``."""
    observation_text: str
    """The env's answer: tool results, feedback on an invalid turn, or "" after an answer."""
    hits: list[Hit] = field(default_factory=list)
    box: tuple[int, int, int, int] | None = None
    """The pixel box an image search looked at (None for whole-image searches and other actions)."""


@dataclass
class EpisodeView:
    """Everything a policy may look at for one running episode.

    Build one with :meth:`start` right after ``env.reset`` and call :meth:`record` after every
    ``env.step``; the view then always holds the latest observation and info (``messages`` is
    the full chat so far, ready for a chat template) plus one :class:`Step` per finished turn.
    """

    task_id: str
    question: str
    image: Image.Image
    """The original task image (full resolution, not the letterboxed observation)."""
    dialect: Dialect
    observation: dict[str, Any]
    """The latest env observation ``{"image": uint8 array, "text": str}``."""
    info: dict[str, Any]
    """The latest env info (``messages``, ``category``, counters ...)."""
    steps: list[Step] = field(default_factory=list)

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The chat so far (system, user with the image, assistant turns, tool results)."""
        return self.info["messages"]

    @property
    def category(self) -> str | None:
        """The task's category as the env reports it (e.g. ``search_free``), if any."""
        return self.info.get("category")

    @property
    def hits(self) -> list[Hit]:
        """Every hit returned so far, in the order the searches ran."""
        return [hit for step in self.steps for hit in step.hits]

    @property
    def turn(self) -> int:
        """How many assistant turns the episode has finished."""
        return len(self.steps)

    @classmethod
    def start(cls, observation: Mapping[str, Any], info: Mapping[str, Any], *,
              dialect: str | Dialect, image: Image.Image | None = None) -> EpisodeView:
        """The view of an episode right after ``env.reset`` returned ``(observation, info)``.

        ``image`` defaults to the first image of the chat (the env puts the original task image
        in the first user message), so callers normally pass only the dialect (``env.dialect``).
        """
        if "task_id" not in info or "question" not in info or "messages" not in info:
            raise ConfigError("EpisodeView.start needs the info dict that env.reset() returned "
                              "(with task_id, question and messages)")
        if image is None:
            image = first_image(info["messages"])
            if image is None:
                raise ConfigError("the reset info has no image in its messages; pass image=")
        return cls(task_id=str(info["task_id"]), question=str(info["question"]), image=image,
                   dialect=get_dialect(dialect), observation=dict(observation), info=dict(info))

    def record(self, text: str, observation: Mapping[str, Any], info: Mapping[str, Any]) -> Step:
        """Add the turn ``text`` whose ``env.step`` returned ``(observation, info)``; returns its Step."""
        action = info.get("action")
        if action is None:
            action = self.dialect.parse(text)
        step = Step(text=text, action=action, observation_text=str(observation.get("text", "")),
                    hits=list(info.get("hits") or []), box=info.get("box"))
        self.steps.append(step)
        self.observation = dict(observation)
        self.info = dict(info)
        return step
