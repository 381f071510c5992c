"""Actions and dialects: the one place where model text becomes meaning, and back.

An *action* is what one assistant turn asks for (``base``: ``TextSearch``, ``ImageSearch`` of a
``Region``, ``Answer``, ``Invalid``). A *dialect* is one grammar between text and actions
(``dialect``: the contract; one module per dialect): its tags, its prompts, how it formats tool
results, and (for the reward) which turn sequences are format-valid and which turns count as
searches. Parsing is total and linear-time, and nothing here raises on model text.

Import everything from here (``from mmsearch_gym.actions import get_dialect, Answer``).
"""

from __future__ import annotations

from mmsearch_gym.actions.base import (
    MAX_COORDINATE,
    MAX_EXPRESSION_CHARS,
    MAX_QUERY_CHARS,
    MAX_TOOL_CALL_CHARS,
    THUMBNAIL_MARKER,
    UNABLE_TO_ANSWER,
    Action,
    Answer,
    ImageSearch,
    Invalid,
    Region,
    TextSearch,
    action_from_json,
    action_to_json,
    clamp_box,
    last_answer,
    parse_box,
    safe_text,
)
from mmsearch_gym.actions.deepmmsearch_r1 import DeepMMSearchR1
from mmsearch_gym.actions.dialect import Dialect, Limits, SearchCounts
from mmsearch_gym.actions.mmsearch_r1 import MMSearchR1
from mmsearch_gym.actions.tool_json import TOOL_SCHEMAS, ToolJSON
from mmsearch_gym.errors import ConfigError

__all__ = [
    "DIALECTS", "MAX_COORDINATE", "MAX_EXPRESSION_CHARS", "MAX_QUERY_CHARS", "MAX_TOOL_CALL_CHARS",
    "THUMBNAIL_MARKER", "TOOL_SCHEMAS", "UNABLE_TO_ANSWER", "Action", "Answer", "DeepMMSearchR1", "Dialect",
    "ImageSearch", "Invalid", "Limits", "MMSearchR1", "Region", "SearchCounts", "TextSearch", "ToolJSON",
    "action_from_json", "action_to_json", "clamp_box", "get_dialect", "last_answer", "parse_box", "safe_text",
]

DIALECTS: dict[str, Dialect] = {d.name: d for d in (MMSearchR1(), DeepMMSearchR1(), ToolJSON())}


def get_dialect(dialect: str | Dialect) -> Dialect:
    """Look a dialect up by name (``mmsearch-r1``, ``deepmmsearch-r1``, ``tool-json``)."""
    if isinstance(dialect, Dialect):
        return dialect
    try:
        return DIALECTS[dialect]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown dialect {dialect!r}; choose one of {sorted(DIALECTS)}") from None
