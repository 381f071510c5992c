"""JSON decoding with limits, for text that comes from someone else (servers, shared files).

``json.loads`` trusts its input: 100,000 nested brackets raise ``RecursionError``, a 5,000-digit
integer raises a bare ``ValueError`` (Python's 4,300-digit guard), ``1e999`` silently becomes
``inf`` and ``NaN`` is accepted although JSON has no such value. ``loads_bounded`` turns every one
of these into a ``JsonLimitError`` (a ``ValueError``) whose message says what was wrong, so a
caller can wrap it in its own typed error with one ``except``.
"""

from __future__ import annotations

import json
import math
from typing import Any

DEFAULT_MAX_DEPTH = 64
"""Nesting levels allowed (API answers and our own files use fewer than 10)."""

DEFAULT_MAX_NUMBER_CHARS = 100
"""Characters allowed in one number literal (a float64 needs at most 24)."""


class JsonLimitError(ValueError):
    """The text is not JSON (``malformed``), or is JSON beyond the limits; the message says which."""

    def __init__(self, message: str, *, malformed: bool = False) -> None:
        super().__init__(message)
        self.malformed = malformed


def loads_bounded(text: str | bytes, *, max_depth: int = DEFAULT_MAX_DEPTH,
                  max_number_chars: int = DEFAULT_MAX_NUMBER_CHARS) -> Any:
    """``json.loads`` with a nesting limit, a number-size limit and finite numbers only.

    The number hooks reject oversized literals before ``int``/``float`` see them; nesting is
    checked by one iterative walk of the decoded value (Python's own recursion guard stops the
    decoder first on absurd depths, and is reported the same way).
    """
    if isinstance(text, (bytes, bytearray)):
        bad_byte: int | None = None
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            bad_byte = exc.start
        if bad_byte is not None:  # raised outside the except block: the error holds the bytes
            raise JsonLimitError(f"not UTF-8 (byte {bad_byte})", malformed=True)

    def number(literal: str, convert: Any) -> Any:
        if len(literal) > max_number_chars:
            raise JsonLimitError(f"a number of {len(literal)} characters (limit {max_number_chars})")
        value = convert(literal)
        if isinstance(value, float) and not math.isfinite(value):
            raise JsonLimitError(f"a number out of range ({literal[:30]})")
        return value

    def constant(name: str) -> Any:
        raise JsonLimitError(f"{name} is not a JSON number")

    problem: str | None = None
    malformed = True
    try:
        value = json.loads(text, parse_int=lambda s: number(s, int), parse_float=lambda s: number(s, float),
                           parse_constant=constant)
    except JsonLimitError:
        raise
    except RecursionError:
        problem, malformed = f"nested deeper than {max_depth} levels", False
    except json.JSONDecodeError as exc:
        problem = f"malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    except ValueError as exc:  # any other conversion failure: keep the class, not the text
        problem = f"malformed JSON ({exc.__class__.__name__})"
    if problem is not None:  # raised outside the except block: no chained decoder error
        raise JsonLimitError(problem, malformed=malformed)
    if nesting_depth(value, stop_after=max_depth) > max_depth:
        raise JsonLimitError(f"nested deeper than {max_depth} levels")
    return value


def nesting_depth(value: Any, *, stop_after: int | None = None) -> int:
    """Levels of lists/dicts in ``value`` (a scalar is 0), without recursion.

    With ``stop_after``, the walk ends as soon as it sees a deeper level (the result is then
    ``stop_after + 1``): a cheap "is it too deep" test.
    """
    deepest = 0
    todo: list[tuple[Any, int]] = [(value, 0)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if stop_after is not None and deepest > stop_after:
            return deepest
        todo.extend((child, depth) for child in children if isinstance(child, (dict, list)))
    return deepest
