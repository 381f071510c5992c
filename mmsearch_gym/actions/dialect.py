"""The Dialect contract: one grammar between model text and actions, its prompts and format rule."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from mmsearch_gym.actions.base import THUMBNAIL_MARKER, Action, ImageSearch, Invalid, TextSearch, last_answer


@dataclass(frozen=True)
class Limits:
    """A dialect's default episode limits (the papers' training settings)."""

    max_turns: int
    image_searches: int
    text_searches: int | None  # None: unlimited (up to max_turns)


@dataclass(frozen=True)
class SearchCounts:
    image: int = 0
    text: int = 0

    @property
    def total(self) -> int:
        return self.image + self.text


class Dialect(ABC):
    """One grammar between model text and actions, plus the prompts and the format rule."""

    name: ClassVar[str]
    limits: ClassVar[Limits]
    stop_sequences: ClassVar[tuple[str, ...]]
    """Closing tags at which generation of one turn should stop."""

    # -- text -> action ----------------------------------------------------------------------
    @abstractmethod
    def parse(self, text: str) -> Action:
        """The action one assistant turn asks for; never raises."""

    @abstractmethod
    def format(self, action: Action, reasoning: str = "") -> str:
        """The canonical text of an action (``parse(format(a)) == a``)."""

    # -- prompts and tool results ---------------------------------------------------------
    @abstractmethod
    def system_prompt(self) -> str:
        """The dialect's instructions (tags, tools, coordinates, budgets)."""

    def user_prompt(self, question: str) -> str:
        return f"Question: {question}"

    def format_results(self, action: Action, hits: Sequence[Any]) -> str:
        """The tool-result turn: numbered results inside ``<information>``."""
        if not hits:
            body = "No results found."
        else:
            lines = []
            for i, hit in enumerate(hits, 1):
                if isinstance(action, ImageSearch):
                    marker = f"{THUMBNAIL_MARKER} " if hit.thumbnail is not None else ""
                    lines.append(f"{i}. {marker}{hit.title}\n{hit.snippet}".rstrip())
                else:
                    lines.append(f"{i}. {hit.title} ({hit.url})\n{hit.snippet}".rstrip())
            body = "\n".join(lines)
        return f"<information>\n{body}\n</information>"

    def format_error(self, message: str) -> str:
        """Tool-result text for a search that failed (the episode goes on)."""
        return f"<information>\nThe search failed: {message}\n</information>"

    def format_feedback(self, invalid: Invalid) -> str:
        """What the model is told after an Invalid turn (Search-R1 style)."""
        return (f"Your previous action is invalid: {invalid.reason}. {self.action_hint()} "
                "Let me try again.")

    @abstractmethod
    def action_hint(self) -> str:
        """One sentence listing the legal action forms."""

    # -- reward side (one source of truth for the format rule) ----------------------------
    def final_answer(self, turns: Sequence[str]) -> str | None:
        """The predicted answer of an episode: the last answer of the last turn."""
        return last_answer(turns[-1]) if turns else None

    def count_searches(self, turns: Sequence[str]) -> SearchCounts:
        """How many searches the episode made, as the papers' scorers count them.

        Default: every turn but the last (a single turn counts itself, as MMSearch-R1 does)
        that parses to a search.
        """
        image = text = 0
        for turn in turns[:-1] if len(turns) > 1 else turns:
            action = self.parse(turn)
            if isinstance(action, ImageSearch):
                image += 1
            elif isinstance(action, TextSearch):
                text += 1
        return SearchCounts(image, text)

    @abstractmethod
    def format_valid(self, turns: Sequence[str]) -> bool:
        """Whether the list of assistant turns follows the dialect's format rule."""


def _reason_shape_ok(s: str, action_end: str) -> bool:
    """``re.match(r'^<reason>.*</reason>.*' + ACTION + '$', s, re.DOTALL)`` without backtracking.

    The regex asks for a prefix ``<reason>``, some ``</reason>`` after it, and the action suffix
    after that ``</reason>``; checking the earliest ``</reason>`` against the start of the
    suffix is equivalent.
    """
    if not s.startswith("<reason>") or not s.endswith(action_end):
        return False
    close = s.find("</reason>", 8)
    return close != -1 and close + 9 <= len(s) - len(action_end)
