"""Actions, regions and the model-text helpers every dialect shares.

An *action* is what one assistant turn asks for: ``TextSearch``, ``ImageSearch`` (of a
``Region``: the whole image, a pixel box, or a referring expression), ``Answer`` or
``Invalid``. The helpers here scan text in linear time (``str.find`` / ``str.rfind``, no
backtracking regular expressions), bound every number a model writes (``MAX_COORDINATE``,
``MAX_TOOL_CALL_CHARS``) and make text encodable (:func:`safe_text`, applied by the env at its
boundary). Nothing here raises on model text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

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
    def whole(cls) -> Region:
        return _WHOLE

    @classmethod
    def from_box(cls, x1: float, y1: float, x2: float, y2: float) -> Region:
        return cls("box", (float(x1), float(y1), float(x2), float(y2)))

    @classmethod
    def refer(cls, expression: str) -> Region:
        return cls("expression", expression=expression)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "box": None if self.box is None else list(self.box),
                "expression": self.expression}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Region:
        """The region of a recorded action; ConfigError (never an overflow) for a malformed one."""
        kind, box, expression = data.get("kind"), data.get("box"), data.get("expression")
        if kind not in ("whole", "box", "expression"):
            raise ConfigError(f"region kind must be whole, box or expression, got {str(kind)[:40]!r}")
        if expression is not None and not isinstance(expression, str):
            raise ConfigError("region expression must be text or null")
        if box is None:
            return cls(kind, None, expression)
        if (not isinstance(box, (list, tuple)) or len(box) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
                or not all(abs(v) <= MAX_COORDINATE for v in box)):  # False for NaN and inf; ints not float()ed
            raise ConfigError(f"region box must be four finite numbers within +-{MAX_COORDINATE}")
        return cls(kind, tuple(float(v) for v in box), expression)  # type: ignore[arg-type]


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


Action = TextSearch | ImageSearch | Answer | Invalid


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
