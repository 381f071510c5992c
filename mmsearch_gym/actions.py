"""Actions and dialects: the one place where model text becomes meaning, and back.

An *action* is what one assistant turn asks for: ``TextSearch``, ``ImageSearch`` (of a
``Region``: the whole image, a pixel box, or a referring expression), ``Answer`` or
``Invalid``. A *dialect* is one grammar between text and actions: its tags, its prompts, how it
formats tool results, and (for the reward) which turn sequences are format-valid and which turns
count as searches.

Parsing is total and linear-time: every string maps to an action using only ``str.find`` /
``str.rfind`` scans (no backtracking regular expressions), and nothing in this module raises on
model text. Every number a model writes is bounded before it is used (``MAX_COORDINATE``,
``MAX_TOOL_CALL_CHARS``, ``_MAX_JSON_INT_DIGITS``); :func:`safe_text` is what the env applies to
model text at its boundary so that it can always be encoded as UTF-8.
"""

from __future__ import annotations

import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Union

from mmsearch_gym.errors import ConfigError

MAX_QUERY_CHARS = 2048
"""Longer text-search queries are Invalid: no search engine takes them, and they bloat cache keys."""
MAX_EXPRESSION_CHARS = 512
MAX_COORDINATE = 1_000_000
"""Crop-box coordinates beyond +-this many pixels are Invalid (no image is that large); the bound
is checked before any int -> float conversion, so no model-written number can overflow."""
MAX_TOOL_CALL_CHARS = 65_536
"""Longer tool-call payloads are Invalid before JSON decoding: no legal call is near this size
(a query is at most MAX_QUERY_CHARS), and it bounds the decoder's time and memory."""
_MAX_JSON_INT_DIGITS = 32
"""Longer integers in tool-call JSON are Invalid without being converted (Python's own limit,
``sys.get_int_max_str_digits()``, is 4300 digits by default and can be switched off)."""
_MAX_BOX_CHARS = 200
_SURROGATES = re.compile(r"[\ud800-\udfff]")
UNABLE_TO_ANSWER = "Unable to answer due to lack of relevant information"
THUMBNAIL_MARKER = "[image]"
"""Stands for a result thumbnail in tool-result text. Chat messages put the thumbnail's image
block exactly there; it is deliberately no VLM's image token, so placeholders and images never
disagree in number."""


def safe_text(text: str) -> str:
    """``text`` with every surrogate code point (U+D800..U+DFFF) replaced by U+FFFD.

    A lone surrogate (a JSON ``"\\ud800"`` escape decodes to one) is a Python ``str`` that
    cannot be encoded as UTF-8, so it would break cache keys, HTTP requests and files. Nothing
    else is changed: NUL, control and bidi characters are valid Unicode, are JSON-escaped where
    needed and are kept verbatim, so the reward sees what the model wrote. Idempotent; returns
    ``text`` itself (no copy) when it has no surrogate, the common case.
    """
    if text.isascii() or _SURROGATES.search(text) is None:
        return text
    return "\ufffd".join(_SURROGATES.split(text))  # faster than .sub when there are many


# --------------------------------------------------------------------------------------------
# Regions and actions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Region:
    """What an image search looks at: the whole image, a pixel box, or a referring expression.

    Boxes are ``(x1, y1, x2, y2)`` in pixels of the *original* task image (not the letterboxed
    observation), with ``x1 < x2`` and ``y1 < y2``; the env clamps them to the image.
    """

    kind: Literal["whole", "box", "expression"] = "whole"
    box: tuple[float, float, float, float] | None = None
    expression: str | None = None

    @classmethod
    def whole(cls) -> "Region":
        return _WHOLE

    @classmethod
    def from_box(cls, x1: float, y1: float, x2: float, y2: float) -> "Region":
        return cls("box", (float(x1), float(y1), float(x2), float(y2)))

    @classmethod
    def refer(cls, expression: str) -> "Region":
        return cls("expression", expression=expression)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "box": None if self.box is None else list(self.box),
                "expression": self.expression}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Region":
        box = data.get("box")
        return cls(data["kind"], None if box is None else tuple(float(v) for v in box),  # type: ignore[arg-type]
                   data.get("expression"))


_WHOLE = Region()


@dataclass(frozen=True, slots=True)
class TextSearch:
    query: str
    kind: ClassVar[str] = "text_search"


@dataclass(frozen=True, slots=True)
class ImageSearch:
    region: Region = _WHOLE
    kind: ClassVar[str] = "image_search"


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    kind: ClassVar[str] = "answer"


@dataclass(frozen=True, slots=True)
class Invalid:
    """A turn that asks for nothing the env can do; ``reason`` tells the model what was wrong."""

    reason: str
    kind: ClassVar[str] = "invalid"


Action = Union[TextSearch, ImageSearch, Answer, Invalid]


def action_to_json(action: Action) -> dict[str, Any]:
    """A JSON-safe dict for trajectories and logs."""
    if isinstance(action, TextSearch):
        return {"kind": action.kind, "query": action.query}
    if isinstance(action, ImageSearch):
        return {"kind": action.kind, "region": action.region.to_json()}
    if isinstance(action, Answer):
        return {"kind": action.kind, "text": action.text}
    return {"kind": action.kind, "reason": action.reason}


def action_from_json(data: dict[str, Any]) -> Action:
    kind = data.get("kind")
    if kind == "text_search":
        return TextSearch(str(data["query"]))
    if kind == "image_search":
        return ImageSearch(Region.from_json(data["region"]))
    if kind == "answer":
        return Answer(str(data["text"]))
    if kind == "invalid":
        return Invalid(str(data["reason"]))
    raise ConfigError(f"unknown action kind {kind!r}")


def clamp_box(box: Sequence[float], width: int, height: int,
              min_side: int = 28) -> tuple[int, int, int, int] | None:
    """Clamp a box to the image and grow boxes smaller than ``min_side`` around their centre.

    Returns integer pixel coordinates ``(x1, y1, x2, y2)`` (exclusive end) always inside the
    image, or None when the box does not overlap the image at all.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
        return None
    cx1, cy1 = max(0, math.floor(x1)), max(0, math.floor(y1))
    cx2, cy2 = min(width, math.ceil(x2)), min(height, math.ceil(y2))
    if cx2 <= cx1 or cy2 <= cy1:
        return None
    cx1, cx2 = _grow(cx1, cx2, min(min_side, width), width)
    cy1, cy2 = _grow(cy1, cy2, min(min_side, height), height)
    return cx1, cy1, cx2, cy2


def _grow(lo: int, hi: int, side: int, limit: int) -> tuple[int, int]:
    if hi - lo >= side:
        return lo, hi
    centre = (lo + hi) / 2
    lo = int(math.floor(centre - side / 2))
    lo = min(max(lo, 0), limit - side)
    return lo, lo + side


# --------------------------------------------------------------------------------------------
# Small linear-time scanning helpers
# --------------------------------------------------------------------------------------------


def _first_element(text: str, open_tag: str, close_tag: str) -> tuple[int, int, str] | None:
    """The first ``close_tag`` and the content since the nearest ``open_tag`` before it.

    Returns ``(start, end, content)`` or None. Nested or repeated openers resolve to the
    innermost one, which is what a model that stops at the first closing tag meant.
    """
    opener = text.find(open_tag)
    if opener == -1:
        return None
    close = text.find(close_tag, opener + len(open_tag))
    if close == -1:
        return None
    opener = text.rfind(open_tag, opener, close)
    return opener, close + len(close_tag), text[opener + len(open_tag):close]


def _crop_before(text: str, end: int) -> Action:
    """Image search of the last ``<crop>x1,y1,x2,y2</crop>`` before ``end``, or the whole image."""
    close = text.rfind("</crop>", 0, end)
    opener = text.rfind("<crop>", 0, close) if close != -1 else -1
    if opener == -1:
        return ImageSearch(_WHOLE)
    box = parse_box(text[opener + 6:close])
    return Invalid(box) if isinstance(box, str) else ImageSearch(Region("box", box))


def last_answer(text: str) -> str | None:
    """MMSearch-R1's answer extraction: the last non-overlapping ``<answer>(.*?)</answer>`` match.

    Equivalent to ``re.finditer(r'<answer>(.*?)</answer>', text, re.DOTALL)`` taking the last
    match, stripped; written with ``str.find`` so it is linear on any input.
    """
    result = None
    pos = 0
    while True:
        opener = text.find("<answer>", pos)
        if opener == -1:
            return result
        close = text.find("</answer>", opener + 8)
        if close == -1:
            return result
        result = text[opener + 8:close].strip()
        pos = close + 9


def parse_box(content: str) -> tuple[float, float, float, float] | str:
    """Parse ``x1,y1,x2,y2`` (brackets and spaces allowed); returns the box or an error reason."""
    if len(content) > _MAX_BOX_CHARS:
        return "the crop box is too long; write four numbers x1,y1,x2,y2"
    cleaned = content.strip().strip("[]()").replace(",", " ").split()
    if len(cleaned) != 4:
        return f"a crop box needs exactly four numbers x1,y1,x2,y2, got {content.strip()[:60]!r}"
    try:
        x1, y1, x2, y2 = (float(v) for v in cleaned)
    except ValueError:
        return f"crop box coordinates must be numbers, got {content.strip()[:60]!r}"
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return "crop box coordinates must be finite numbers"
    if not all(abs(v) <= MAX_COORDINATE for v in (x1, y1, x2, y2)):
        return f"crop box coordinates must be within +-{MAX_COORDINATE} pixels"
    if x2 <= x1 or y2 <= y1:
        return "a crop box needs x1 < x2 and y1 < y2 (pixels of the original image)"
    return x1, y1, x2, y2


def _fmt_num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(float(v))


def _fmt_box(box: Sequence[float]) -> str:
    return ",".join(_fmt_num(v) for v in box)


def _check_query(query: str) -> Action:
    query = query.strip()
    if not query:
        return Invalid("the text search query is empty")
    if len(query) > MAX_QUERY_CHARS:
        return Invalid(f"the text search query is longer than {MAX_QUERY_CHARS} characters")
    return TextSearch(query)


# --------------------------------------------------------------------------------------------
# Dialects
# --------------------------------------------------------------------------------------------


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


# ---- mmsearch-r1 ---------------------------------------------------------------------------

_IMG = "<search><img></search>"


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


def _paper_direct_answer_ok(s: str) -> bool:
    if s.count("<reason>") != 1 or s.count("</reason>") != 1:
        return False
    if s.count("<answer>") != 1 or s.count("</answer>") != 1:
        return False
    if _IMG in s or "<text_search>" in s or "</text_search>" in s:
        return False
    # ^<reason>.*</reason>.*<answer>.*</answer>$ : with one of each tag, the answer opener must
    # follow </reason> and the whole turn must end with </answer>.
    if not _reason_shape_ok(s, "</answer>"):
        return False
    return s.find("<answer>") >= s.find("</reason>") + 9


def _paper_image_search_ok(s: str) -> bool:
    if s.count("<reason>") != 1 or s.count("</reason>") != 1 or s.count(_IMG) != 1:
        return False
    if "<answer>" in s or "</answer>" in s or "<text_search>" in s or "</text_search>" in s:
        return False
    return _reason_shape_ok(s, _IMG)


def _paper_text_search_ok(s: str) -> bool:
    if s.count("<reason>") != 1 or s.count("</reason>") != 1:
        return False
    if s.count("<text_search>") != 1 or s.count("</text_search>") != 1:
        return False
    if "<answer>" in s or "</answer>" in s or _IMG in s:
        return False
    if not _reason_shape_ok(s, "</text_search>"):
        return False
    return s.find("<text_search>") >= s.find("</reason>") + 9


class MMSearchR1(Dialect):
    """MMSearch-R1's tags, exactly; plus ``<crop>x1,y1,x2,y2</crop>`` before the image tag.

    The crop extension keeps the paper's literal ``<search><img></search>`` at the end of the
    turn, so MMSearch-R1's own scorer counts a cropped search as an image search and judges its
    format exactly as a whole-image search.
    """

    name = "mmsearch-r1"
    limits = Limits(max_turns=3, image_searches=1, text_searches=2)
    stop_sequences = ("</search>", "</text_search>", "</answer>")

    def parse(self, text: str) -> Action:
        if not isinstance(text, str):
            return Invalid("the action must be text")
        best_end, best = -1, None
        img = text.find(_IMG)
        if img != -1:
            best_end, best = img + len(_IMG), ("image", img)
        found = _first_element(text, "<text_search>", "</text_search>")
        if found is not None and (best is None or found[1] < best_end):
            best_end, best = found[1], ("text", found[2])
        found = _first_element(text, "<answer>", "</answer>")
        if found is not None and (best is None or found[1] < best_end):
            best_end, best = found[1], ("answer", found[2])
        if best is None:
            return Invalid("no action found")
        kind, payload = best
        if kind == "answer":
            return Answer(last_answer(text) or "")
        if kind == "text":
            return _check_query(payload)  # type: ignore[arg-type]
        return _crop_before(text, payload)  # type: ignore[arg-type]

    def format(self, action: Action, reasoning: str = "") -> str:
        head = f"<reason>{reasoning}</reason>"
        if isinstance(action, TextSearch):
            return f"{head}<text_search>{action.query}</text_search>"
        if isinstance(action, Answer):
            return f"{head}<answer>{action.text}</answer>"
        if isinstance(action, ImageSearch):
            if action.region.kind == "whole":
                return head + _IMG
            if action.region.kind == "box":
                return f"{head}<crop>{_fmt_box(action.region.box)}</crop>{_IMG}"  # type: ignore[arg-type]
            raise ConfigError("the mmsearch-r1 dialect has no referring-expression crop; "
                              "use a pixel box or the deepmmsearch-r1 dialect")
        raise ConfigError(f"{self.name} cannot format {action!r}")

    def action_hint(self) -> str:
        return ("End your turn with exactly one of: <search><img></search> (search the whole image), "
                "<crop>x1,y1,x2,y2</crop><search><img></search> (search a crop), "
                "<text_search>query</text_search>, or <answer>answer</answer>.")

    def system_prompt(self) -> str:
        return (
            "You answer questions about an image. You may search the web to find knowledge you "
            "are missing.\n"
            "In every turn, first think inside <reason> and </reason>, then end the turn with "
            "exactly one action:\n"
            "- <search><img></search> searches the web with the whole image and returns the top "
            "matching pages, each with a thumbnail and a title;\n"
            "- <crop>x1,y1,x2,y2</crop><search><img></search> searches with a crop of the image; "
            "x1,y1 is the top-left and x2,y2 the bottom-right corner, in pixels of the original "
            "image (its size is given with the question);\n"
            "- <text_search>query</text_search> searches the web for text and returns summaries "
            "of the top pages;\n"
            "- <answer>answer</answer> gives your final answer, as short as possible.\n"
            "Results come back inside <information> and </information>. You may search the "
            "image at most once (first turn only) and use text search at most twice; you have at "
            "most three turns. Search only when you lack the knowledge. If the information is "
            f"still missing after searching, answer \"{UNABLE_TO_ANSWER}\"."
        )

    def count_searches(self, turns: Sequence[str]) -> SearchCounts:
        counted = turns if len(turns) == 1 else turns[:-1]
        image = text = 0
        for turn in counted:
            t = turn.strip()
            if _IMG in t:
                image += 1
            if "<text_search>" in t and "</text_search>" in t:
                text += 1
        return SearchCounts(image, text)

    def format_valid(self, turns: Sequence[str]) -> bool:
        t = [turn.strip() for turn in turns]
        if len(t) == 1:
            return _paper_direct_answer_ok(t[0])
        if len(t) == 2:
            return _paper_direct_answer_ok(t[1]) and (
                _paper_image_search_ok(t[0]) or _paper_text_search_ok(t[0]))
        if len(t) == 3:
            return (_paper_image_search_ok(t[0]) and _paper_text_search_ok(t[1])
                    and _paper_direct_answer_ok(t[2]))
        return False


# ---- deepmmsearch-r1 -----------------------------------------------------------------------


def _tag_turn_ok(s: str, open_tag: str, close_tag: str, others: Sequence[str]) -> bool:
    """``<reason>..</reason>`` once, then exactly one ``open..close`` element ending the turn."""
    if s.count("<reason>") != 1 or s.count("</reason>") != 1:
        return False
    if s.count(open_tag) != 1 or s.count(close_tag) != 1 or any(o in s for o in others):
        return False
    if not _reason_shape_ok(s, close_tag):
        return False
    return s.find(open_tag) >= s.find("</reason>") + 9


class DeepMMSearchR1(Dialect):
    """DeepMMSearch-R1: ``<img_search><img></img_search>`` for the whole image,
    ``<img_search>EXPRESSION</img_search>`` for a grounded crop, and the same ``<crop>`` box
    extension as mmsearch-r1; text search unlimited up to 10 tool calls."""

    name = "deepmmsearch-r1"
    limits = Limits(max_turns=11, image_searches=1, text_searches=None)
    stop_sequences = ("</img_search>", "</text_search>", "</answer>")
    max_tool_calls = 10
    _TAGS = ("<img_search>", "</img_search>", "<text_search>", "</text_search>", "<answer>", "</answer>")

    def parse(self, text: str) -> Action:
        if not isinstance(text, str):
            return Invalid("the action must be text")
        candidates = []
        for kind, o, c in (("image", "<img_search>", "</img_search>"),
                           ("text", "<text_search>", "</text_search>"),
                           ("answer", "<answer>", "</answer>")):
            found = _first_element(text, o, c)
            if found is not None:
                candidates.append((found[1], found[0], kind, found[2]))
        if not candidates:
            return Invalid("no action found")
        _, start, kind, content = min(candidates)
        if kind == "answer":
            return Answer(last_answer(text) or "")
        if kind == "text":
            return _check_query(content)
        inner = content.strip()
        if inner == "<img>" or inner == "":
            return _crop_before(text, start)
        if inner[:1].isdigit() or inner[:1] in "[(-+.":
            box = parse_box(inner)
            if not isinstance(box, str):
                return ImageSearch(Region("box", box))
        if len(inner) > MAX_EXPRESSION_CHARS:
            return Invalid(f"the referring expression is longer than {MAX_EXPRESSION_CHARS} characters")
        if "<" in inner or ">" in inner:
            return Invalid("the referring expression contains a tag")
        return ImageSearch(Region.refer(inner))

    def format(self, action: Action, reasoning: str = "") -> str:
        head = f"<reason>{reasoning}</reason>"
        if isinstance(action, TextSearch):
            return f"{head}<text_search>{action.query}</text_search>"
        if isinstance(action, Answer):
            return f"{head}<answer>{action.text}</answer>"
        if isinstance(action, ImageSearch):
            region = action.region
            if region.kind == "whole":
                return f"{head}<img_search><img></img_search>"
            if region.kind == "box":
                return f"{head}<crop>{_fmt_box(region.box)}</crop><img_search><img></img_search>"  # type: ignore[arg-type]
            return f"{head}<img_search>{region.expression}</img_search>"
        raise ConfigError(f"{self.name} cannot format {action!r}")

    def action_hint(self) -> str:
        return ("End your turn with exactly one of: <img_search><img></img_search> (whole image), "
                "<img_search>a description of the part to search</img_search> (a crop), "
                "<crop>x1,y1,x2,y2</crop><img_search><img></img_search> (a crop by pixel box), "
                "<text_search>query</text_search>, or <answer>answer</answer>.")

    def system_prompt(self) -> str:
        return (
            "You answer questions about an image and may use web search tools.\n"
            "In every turn, first think inside <reason> and </reason>, then end the turn with "
            "exactly one action:\n"
            "- <img_search><img></img_search> searches the web with the whole image;\n"
            "- <img_search>EXPRESSION</img_search> searches with a crop of the part of the image "
            "that EXPRESSION describes (for example: the flag at the top right);\n"
            "- <crop>x1,y1,x2,y2</crop><img_search><img></img_search> searches with a crop given "
            "in pixels of the original image (x1,y1 top-left, x2,y2 bottom-right);\n"
            "- <text_search>query</text_search> searches the web for text;\n"
            "- <answer>answer</answer> gives your final, short answer.\n"
            "Results come back inside <information> and </information>. Image search (whole or "
            "crop) may be used at most once; text search as often as needed, up to 10 tool calls "
            "in all. Search only when you lack the knowledge."
        )

    def format_valid(self, turns: Sequence[str]) -> bool:
        if not turns or len(turns) - 1 > self.max_tool_calls:
            return False
        images = 0
        for turn in turns[:-1]:
            s = turn.strip()
            if _tag_turn_ok(s, "<img_search>", "</img_search>", self._TAGS[2:]):
                images += 1
            elif not _tag_turn_ok(s, "<text_search>", "</text_search>",
                                  self._TAGS[:2] + self._TAGS[4:]):
                return False
        return images <= 1 and _tag_turn_ok(turns[-1].strip(), "<answer>", "</answer>", self._TAGS[:4])


# ---- tool-json (Hermes / Qwen tool calls) ---------------------------------------------------

TOOL_SCHEMAS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "text_search",
        "description": "Search the web for text; returns summaries of the top pages.",
        "parameters": {"type": "object", "properties": {
            "query": {"type": "string", "description": "the search query"}},
            "required": ["query"]}}},
    {"type": "function", "function": {
        "name": "image_search",
        "description": ("Reverse image search with the whole image, or with a crop when bbox_2d "
                        "[x1, y1, x2, y2] (pixels of the original image) is given."),
        "parameters": {"type": "object", "properties": {
            "bbox_2d": {"type": ["array", "null"], "items": {"type": "number"},
                        "minItems": 4, "maxItems": 4}},
            "required": []}}},
]


class _NumberTooLong(ValueError):
    """An integer in tool-call JSON has more than _MAX_JSON_INT_DIGITS digits."""


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > _MAX_JSON_INT_DIGITS:
        raise _NumberTooLong
    return int(digits)


_TOOL_DECODER = json.JSONDecoder(parse_int=_bounded_int)


def _load_tool_json(payload: str, what: str) -> Any:
    """Decode tool-call JSON with bounded size, depth and integer length, or say what is wrong.

    ``NaN``/``Infinity`` and ``1e999`` decode (to non-finite floats) and are rejected where a
    number is used (:func:`parse_box`); the decoder's own recursion limit bounds the depth.
    """
    if len(payload) > MAX_TOOL_CALL_CHARS:
        return Invalid(f"{what} is longer than {MAX_TOOL_CALL_CHARS} characters")
    try:
        return _TOOL_DECODER.decode(payload)
    except _NumberTooLong:
        return Invalid(f"{what} holds an integer longer than {_MAX_JSON_INT_DIGITS} digits")
    except RecursionError:
        return Invalid(f"{what} is nested too deeply")
    except ValueError:  # JSONDecodeError, and any other number the decoder refuses
        return Invalid(f"{what} is not valid JSON")


class ToolJSON(Dialect):
    """Hermes/Qwen tool calls: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.

    Tools: ``text_search(query)`` and ``image_search(bbox_2d=None)``. The answer convention is
    ``<answer>...</answer>`` (a tool call ``answer(answer=...)`` is accepted too).
    """

    name = "tool-json"
    limits = Limits(max_turns=3, image_searches=1, text_searches=2)
    stop_sequences = ("</tool_call>", "</answer>")

    def parse(self, text: str) -> Action:
        if not isinstance(text, str):
            return Invalid("the action must be text")
        call = _first_element(text, "<tool_call>", "</tool_call>")
        answer = _first_element(text, "<answer>", "</answer>")
        if call is None and answer is None:
            return Invalid("no action found")
        if call is None or (answer is not None and answer[1] < call[1]):
            return Answer(last_answer(text) or "")
        return self._parse_call(call[2])

    def _parse_call(self, payload: str) -> Action:
        data = _load_tool_json(payload, "the tool call")
        if isinstance(data, Invalid):
            return data
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return Invalid('a tool call must be a JSON object with "name" and "arguments"')
        args = data.get("arguments", {})
        if isinstance(args, str):
            args = _load_tool_json(args, "the tool call arguments") if args.strip() else {}
            if isinstance(args, Invalid):
                return args
        if args is None:
            args = {}
        if not isinstance(args, dict):
            return Invalid("tool call arguments must be a JSON object")
        name = data["name"]
        if name == "text_search":
            query = args.get("query")
            if not isinstance(query, str):
                return Invalid('text_search needs a string argument "query"')
            return _check_query(safe_text(query))  # a JSON "\\ud800" escape decodes to a surrogate
        if name == "image_search":
            bbox = args.get("bbox_2d")
            if bbox is None:
                return ImageSearch(_WHOLE)
            if (not isinstance(bbox, list) or len(bbox) != 4
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
                return Invalid("bbox_2d must be a list of four numbers [x1, y1, x2, y2]")
            if any(isinstance(v, int) and abs(v) > MAX_COORDINATE for v in bbox):  # before float()
                return Invalid(f"bbox_2d coordinates must be within +-{MAX_COORDINATE} pixels")
            box = parse_box(",".join(repr(float(v)) for v in bbox))
            return Invalid(box) if isinstance(box, str) else ImageSearch(Region("box", box))
        if name == "answer":
            value = args.get("answer", args.get("text"))
            if not isinstance(value, str):
                return Invalid('the answer tool needs a string argument "answer"')
            return Answer(safe_text(value).strip())
        return Invalid(f"unknown tool {name[:40]!r}; the tools are text_search and image_search")

    def format(self, action: Action, reasoning: str = "") -> str:
        head = reasoning + ("\n" if reasoning else "")
        if isinstance(action, Answer):
            return f"{head}<answer>{action.text}</answer>"
        if isinstance(action, TextSearch):
            call = {"name": "text_search", "arguments": {"query": action.query}}
        elif isinstance(action, ImageSearch):
            if action.region.kind == "expression":
                raise ConfigError("the tool-json dialect has no referring-expression crop; pass bbox_2d")
            bbox = None if action.region.box is None else [float(v) for v in action.region.box]
            call = {"name": "image_search", "arguments": {"bbox_2d": bbox}}
        else:
            raise ConfigError(f"{self.name} cannot format {action!r}")
        return f"{head}<tool_call>{json.dumps(call, ensure_ascii=False)}</tool_call>"

    def action_hint(self) -> str:
        return ('Call one tool as <tool_call>{"name": "text_search", "arguments": {"query": "..."}}'
                '</tool_call> or <tool_call>{"name": "image_search", "arguments": {"bbox_2d": null}}'
                "</tool_call>, or give the final answer as <answer>answer</answer>.")

    def system_prompt(self) -> str:
        tools = "\n".join(json.dumps(t, ensure_ascii=False) for t in TOOL_SCHEMAS)
        return (
            "You answer questions about an image and may call tools to search the web.\n"
            "# Tools\n<tools>\n" + tools + "\n</tools>\n"
            "To call a tool, end your turn with <tool_call>{\"name\": NAME, \"arguments\": ARGS}"
            "</tool_call>. bbox_2d is [x1, y1, x2, y2] in pixels of the original image. Results "
            "come back inside <tool_response>. When you know the answer, end with "
            "<answer>answer</answer>. Image search at most once, text search at most twice, three "
            "turns in all. Search only when you lack the knowledge."
        )

    def format_results(self, action: Action, hits: Sequence[Any]) -> str:
        return "<tool_response>\n" + super().format_results(action, hits) + "\n</tool_response>"

    def format_valid(self, turns: Sequence[str]) -> bool:
        if not turns or len(turns) > self.limits.max_turns:
            return False
        images = texts = 0
        for turn in turns[:-1]:
            s = turn.strip()
            if s.count("<tool_call>") != 1 or not s.endswith("</tool_call>") or "<answer>" in s:
                return False
            action = self.parse(s)
            if isinstance(action, ImageSearch):
                images += 1
            elif isinstance(action, TextSearch):
                texts += 1
            else:
                return False
        last = turns[-1].strip()
        ok_last = (last.endswith("</answer>") and last.count("<answer>") == 1
                   and last.count("</answer>") == 1 and "<tool_call>" not in last)
        return ok_last and images <= 1 and texts <= (self.limits.text_searches or 0)


DIALECTS: dict[str, Dialect] = {d.name: d for d in (MMSearchR1(), DeepMMSearchR1(), ToolJSON())}


def get_dialect(dialect: str | Dialect) -> Dialect:
    """Look a dialect up by name (``mmsearch-r1``, ``deepmmsearch-r1``, ``tool-json``)."""
    if isinstance(dialect, Dialect):
        return dialect
    try:
        return DIALECTS[dialect]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown dialect {dialect!r}; choose one of {sorted(DIALECTS)}") from None
