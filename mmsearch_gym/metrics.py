"""EpisodeResult and Metrics: the one definition of what an episode counts and how runs are summed.

Every route that reports numbers (``mmsearch-gym eval``, the TRL logs, the SB3 summaries) builds
an :class:`EpisodeResult` per ended episode, with :meth:`EpisodeResult.from_info` (the ``info``
of the step that ended it) or :meth:`EpisodeResult.from_trajectory` (a recorded episode), and
sums them with :meth:`Metrics.of`. Nobody else counts.

What is counted, per episode (``EpisodeResult``):

* ``searches_run``: searches the env actually executed (image + text). A turn the env rejected
  (an invalid crop, a search over budget) runs nothing.
* ``searches_scored``: searches the paper's scorer counts from the turns' text
  (``RewardBreakdown.searches``; at most one per turn, every turn but the last). It is what the
  search penalty uses, and it can differ from ``searches_run``: "invalid crop search, then an
  answer" has 0 searches run and 1 scored.
* ``image_searches`` (run; ``crop_searches`` of them on a crop box, ``whole_image_searches`` on
  the whole image) and ``text_searches`` (run; ``text_refinements`` of them directly follow
  another text search, i.e. the model rewrote its query).
* answer behaviour, as in MMSearch-R1's analysis: whether the episode ended with an answer, and
  the kind of the last search run before it (``last_search``: None, ``"image"`` or ``"text"``).
* ``correct``: ``raw_score > 0.5`` (before the search penalty); ``turns``; ``invalid_turns``.

Aggregated (``Metrics``, over a group of episodes; "ratio" and "rate" are shares in [0, 1],
"per episode" values are means):

* ``accuracy``, ``mean_reward``, ``format_rate``, ``mean_turns``, ``invalid_turns``;
* ``searches_run`` / ``searches_scored`` per episode and ``searches_run_ratio`` /
  ``searches_scored_ratio``, the share of episodes with at least one. ``search_ratio`` (the
  papers' "search ratio" column of the eval table) is ``searches_run_ratio``;
* ``image_searches``, ``crop_searches``, ``whole_image_searches``, ``text_searches``,
  ``text_refinements`` per episode (``image_calls`` / ``text_calls`` are the table's names for
  the image and text searches run);
* ``answered_without_search``, ``answered_after_image_search``, ``answered_after_text_search``:
  shares of episodes that ended with an answer after no search, after an image search last, after
  a text search last (with ``unanswered``, the episodes that ended otherwise, they sum to 1).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Literal, Protocol

from mmsearch_gym.actions import Answer
from mmsearch_gym.errors import ConfigError
from mmsearch_gym.reward import RewardBreakdown

__all__ = ["SEARCH_KINDS", "EpisodeResult", "Metrics", "SearchKind"]

SearchKind = Literal["image", "crop", "text"]
SEARCH_KINDS: tuple[str, ...] = ("image", "crop", "text")
"""What ``info["search_log"]`` holds, one entry per search the env ran: a whole-image search, an
image search on a crop box, a text search."""



class RecordedTurn(Protocol):
    """What a recorded turn tells the metrics (a :class:`mmsearch_gym.trajectories.Turn`)."""

    @property
    def counts(self) -> Mapping[str, int]: ...
    @property
    def box(self) -> Any: ...
    @property
    def action(self) -> Mapping[str, Any]: ...


class RecordedEpisode(Protocol):
    """What a recorded episode tells the metrics (a :class:`mmsearch_gym.trajectories.Trajectory`);
    a Protocol, so the metrics import nothing of the trajectories that record them."""

    @property
    def episode(self) -> int: ...
    @property
    def task_id(self) -> str: ...
    @property
    def category(self) -> str: ...
    @property
    def reward(self) -> RewardBreakdown: ...
    @property
    def turns(self) -> Sequence[RecordedTurn]: ...


_INFO_KEYS = ("task_id", "category", "reward_breakdown", "image_searches", "text_searches", "turn", "search_log")


@dataclass(frozen=True)
class EpisodeResult:
    """What one ended episode counts (see the module docstring for each name)."""

    episode: int
    task_id: str
    category: str
    reward: RewardBreakdown
    image_searches: int
    """Image searches the env ran (whole image and crops)."""
    text_searches: int
    """Text searches the env ran."""
    turns: int
    crop_searches: int = 0
    """Of ``image_searches``, those on a crop box."""
    text_refinements: int = 0
    """Of ``text_searches``, those run directly after another text search."""
    answered: bool = False
    """Whether the last turn was an answer."""
    last_search: Literal["image", "text"] | None = None
    """The kind of the last search run (None: no search ran)."""
    invalid_turns: int = 0

    @property
    def correct(self) -> bool:
        return self.reward.raw_score > 0.5

    @property
    def searches_run(self) -> int:
        return self.image_searches + self.text_searches

    @property
    def searches_scored(self) -> int:
        return self.reward.searches

    @property
    def searched(self) -> bool:
        """At least one search ran (what the papers' search ratio counts)."""
        return self.searches_run > 0

    @property
    def whole_image_searches(self) -> int:
        return self.image_searches - self.crop_searches

    @classmethod
    def from_search_log(cls, search_log: Sequence[str], *, episode: int, task_id: str, category: str,
                        reward: RewardBreakdown, turns: int, answered: bool,
                        invalid_turns: int = 0) -> EpisodeResult:
        """The result of an episode given the kinds of searches it ran, in order."""
        unknown = sorted({kind for kind in search_log if kind not in SEARCH_KINDS})
        if unknown:
            raise ConfigError(f"unknown search kinds {unknown}; a search log holds {list(SEARCH_KINDS)}")
        texts = [kind == "text" for kind in search_log]
        last: Literal["image", "text"] | None = None
        if search_log:
            last = "text" if texts[-1] else "image"
        return cls(episode=episode, task_id=task_id, category=category, reward=reward,
                   image_searches=len(search_log) - sum(texts), text_searches=sum(texts), turns=turns,
                   crop_searches=sum(kind == "crop" for kind in search_log),
                   text_refinements=sum(a and b for a, b in pairwise(texts)),
                   answered=answered, last_search=last, invalid_turns=invalid_turns)

    @classmethod
    def from_info(cls, info: Mapping[str, Any], *, episode: int = 0) -> EpisodeResult:
        """The result of an episode from the ``info`` of the step that ended it (an MMSearchEnv's)."""
        missing = [key for key in _INFO_KEYS if key not in info]
        if missing:
            raise ConfigError(f"EpisodeResult.from_info needs the info of the step that ended an episode; "
                              f"missing {missing}")
        return cls.from_search_log(tuple(info["search_log"]), episode=episode, task_id=str(info["task_id"]),
                                   category=str(info["category"]), reward=info["reward_breakdown"],
                                   turns=int(info["turn"]), answered=isinstance(info.get("action"), Answer),
                                   invalid_turns=int(info.get("invalid_turns", 0)))

    @classmethod
    def from_trajectory(cls, traj: RecordedEpisode, reward: RewardBreakdown | None = None) -> EpisodeResult:
        """The result of a recorded episode (optionally re-scored with another breakdown).

        The searches run are read off each turn's counters (an image search with a box is a crop).
        """
        log: list[str] = []
        image = text = 0
        for turn in traj.turns:
            new_image = int(turn.counts.get("image_searches", 0))
            new_text = int(turn.counts.get("text_searches", 0))
            if new_image > image:
                log.append("crop" if turn.box is not None else "image")
            if new_text > text:
                log.append("text")
            image, text = new_image, new_text
        last = traj.turns[-1] if traj.turns else None
        return cls.from_search_log(
            log, episode=traj.episode, task_id=traj.task_id, category=traj.category,
            reward=reward if reward is not None else traj.reward, turns=len(traj.turns),
            answered=last is not None and last.action.get("kind") == "answer",
            invalid_turns=int(last.counts.get("invalid_turns", 0)) if last is not None else 0)

    def to_json(self) -> dict[str, Any]:
        return {"episode": self.episode, "task_id": self.task_id, "category": self.category,
                "correct": self.correct, "reward": self.reward.reward, "format": self.reward.format,
                "answer": self.reward.answer, "image_searches": self.image_searches,
                "text_searches": self.text_searches, "turns": self.turns,
                "crop_searches": self.crop_searches, "text_refinements": self.text_refinements,
                "searches_scored": self.searches_scored, "answered": self.answered,
                "last_search": self.last_search, "invalid_turns": self.invalid_turns}


@dataclass(frozen=True)
class Metrics:
    """The numbers of a group of episodes (see the module docstring for each name)."""

    episodes: int
    accuracy: float
    mean_reward: float
    format_rate: float
    mean_turns: float
    searches_run: float
    searches_run_ratio: float
    searches_scored: float
    searches_scored_ratio: float
    image_searches: float
    crop_searches: float
    text_searches: float
    text_refinements: float
    answered_without_search: float
    answered_after_image_search: float
    answered_after_text_search: float
    invalid_turns: float

    @classmethod
    def of(cls, results: Sequence[EpisodeResult]) -> Metrics:
        n = len(results)
        if n == 0:
            return cls(0, *([0.0] * 16))

        def mean(values: Iterable[float]) -> float:
            return math.fsum(values) / n  # exact sum: the same numbers whatever the order

        answered = [r for r in results if r.answered]
        return cls(episodes=n,
                   accuracy=mean(float(r.correct) for r in results),
                   mean_reward=mean(r.reward.reward for r in results),
                   format_rate=mean(r.reward.format for r in results),
                   mean_turns=mean(r.turns for r in results),
                   searches_run=mean(r.searches_run for r in results),
                   searches_run_ratio=mean(float(r.searches_run > 0) for r in results),
                   searches_scored=mean(r.searches_scored for r in results),
                   searches_scored_ratio=mean(float(r.searches_scored > 0) for r in results),
                   image_searches=mean(r.image_searches for r in results),
                   crop_searches=mean(r.crop_searches for r in results),
                   text_searches=mean(r.text_searches for r in results),
                   text_refinements=mean(r.text_refinements for r in results),
                   answered_without_search=mean(float(r.last_search is None) for r in answered),
                   answered_after_image_search=mean(float(r.last_search == "image") for r in answered),
                   answered_after_text_search=mean(float(r.last_search == "text") for r in answered),
                   invalid_turns=mean(r.invalid_turns for r in results))

    @property
    def search_ratio(self) -> float:
        """The papers' search ratio: the share of episodes in which a search ran."""
        return self.searches_run_ratio

    @property
    def image_calls(self) -> float:
        """Image searches run per episode (the table's img/ep)."""
        return self.image_searches

    @property
    def text_calls(self) -> float:
        """Text searches run per episode (the table's txt/ep)."""
        return self.text_searches

    @property
    def whole_image_searches(self) -> float:
        return self.image_searches - self.crop_searches

    @property
    def unanswered(self) -> float:
        """Share of episodes that ended without an answer (truncated, or an invalid turn ended them)."""
        return 1.0 - self.answered_without_search - self.answered_after_image_search - \
            self.answered_after_text_search if self.episodes else 0.0

    def to_json(self) -> dict[str, Any]:
        """The eval report's keys (``search_ratio``, ``calls_per_episode``, ...) plus every count."""
        return {"episodes": self.episodes, "accuracy": self.accuracy, "search_ratio": self.search_ratio,
                "mean_reward": self.mean_reward, "format_rate": self.format_rate,
                "calls_per_episode": {"image_search": self.image_calls, "text_search": self.text_calls},
                "mean_turns": self.mean_turns, "searches_run": self.searches_run,
                "searches_run_ratio": self.searches_run_ratio, "searches_scored": self.searches_scored,
                "searches_scored_ratio": self.searches_scored_ratio, "crop_searches": self.crop_searches,
                "text_refinements": self.text_refinements,
                "answer_behaviour": {"without_search": self.answered_without_search,
                                     "after_image_search": self.answered_after_image_search,
                                     "after_text_search": self.answered_after_text_search},
                "invalid_turns": self.invalid_turns}

    def to_log(self, prefix: str = "") -> dict[str, float]:
        """Flat ``{prefix + name: number}`` for training loggers (TRL, SB3, TensorBoard)."""
        names = ("accuracy", "mean_reward", "format_rate", "mean_turns", "searches_run", "searches_run_ratio",
                 "searches_scored", "searches_scored_ratio", "image_searches", "crop_searches", "text_searches",
                 "text_refinements", "answered_without_search", "answered_after_image_search",
                 "answered_after_text_search", "invalid_turns")
        out = {prefix + "episodes": float(self.episodes)}
        out.update({prefix + name: float(getattr(self, name)) for name in names})
        return out
