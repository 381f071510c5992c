"""One validation layer for the JSON lines people share: trajectories and cassettes.

A shared file may be truncated, hand-edited or hostile. Everything read from one goes through
here, so that a bad line is a :class:`~mmsearch_gym.errors.DataError` saying
``FILE line N: what is wrong`` and never a traceback, wrong data or a hung process:

* :func:`loads` parses one line with bounds the standard ``json.loads`` lacks: nesting depth
  (a cheap pre-scan, so 100,000 ``[`` never reach the recursive parser), integer length (a
  5,000-digit integer would raise ``ValueError`` or cost quadratic time), finite floats only
  (``1e999``, ``NaN``, ``Infinity`` are refused) and at most ``MAX_LINE_CHARS`` characters;
* :func:`check_tree` checks a parsed (or caller-built) value the same way: depth, finite
  numbers, bounded integers, strings without lone surrogates (they cannot be written back as
  UTF-8) and bounded in size;
* :class:`Fields` reads one JSON object field by field with types and ranges (a string or null
  where a number belongs, a negative size, bad base64), naming the field in the message;
* :func:`at_line` puts the file and line in front of a message.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmsearch_gym.errors import DataError

__all__ = ["MAX_DEPTH", "SHA256_HEX", "MAX_INT", "MAX_INT_DIGITS", "MAX_LINE_CHARS", "MAX_STRING_CHARS", "Fields",
           "at_line", "check_tree", "loads"]

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects accepted (a trajectory line needs about 8)."""
MAX_INT_DIGITS = 20
"""Longest integer accepted, in digits (covers signed and unsigned 64-bit values)."""
MAX_INT = 2**63 - 1
"""Largest magnitude of an integer field unless the field says otherwise."""
MAX_NUMBER_CHARS = 64
"""Longest float literal accepted (``1.7976931348623157e+308`` is 23)."""
MAX_STRING_CHARS = 64 * 1024 * 1024
"""Longest string accepted (an embedded base64 image is the longest legitimate one)."""
MAX_LINE_CHARS = 256 * 1024 * 1024
"""Longest line accepted; readers pass ``MAX_LINE_CHARS + 1`` as their readline limit."""

_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
"""A lowercase sha256 hex digest (how trajectories and cassettes name images)."""


def at_line(path: str | Path, lineno: int, message: object) -> DataError:
    """The error to raise for line ``lineno`` (1-based) of ``path``: ``FILE line N: message``."""
    return DataError(f"{path} line {lineno}: {message}")


def _kind(value: Any) -> str:
    return "null" if value is None else {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
                                         list: "an array", dict: "an object"}.get(type(value), type(value).__name__)


# -- parsing -----------------------------------------------------------------------------------


def _depth_ok(text: str, max_depth: int) -> bool:
    """Whether no array/object nesting in ``text`` exceeds ``max_depth`` (strings skipped)."""
    if text.count("[") + text.count("{") <= max_depth:
        return True  # the common case, at C speed
    depth = 0
    for match in _TOKENS.finditer(text):
        char = match.group()
        if char in "[{":
            depth += 1
            if depth > max_depth:
                return False
        elif char in "]}":
            depth -= 1
    return True


def _parse_int(literal: str) -> int:
    if len(literal.lstrip("-")) > MAX_INT_DIGITS:
        raise DataError(f"an integer of {len(literal.lstrip('-'))} digits is out of range "
                        f"(at most {MAX_INT_DIGITS} digits)")
    return int(literal)


def _parse_float(literal: str) -> float:
    if len(literal) > MAX_NUMBER_CHARS:
        raise DataError(f"a number literal of {len(literal)} characters is too long (at most {MAX_NUMBER_CHARS})")
    value = float(literal)
    if not math.isfinite(value):
        raise DataError(f"the number {literal} is out of range (numbers must be finite)")
    return value


def _reject_constant(name: str) -> Any:
    raise DataError(f"{name} is not valid JSON (numbers must be finite)")


def loads(text: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse one JSON document within the bounds above; any problem is a DataError (no location).

    What it returns passes :func:`check_tree` (strings are bounded by the line length only), so
    readers need not walk it again.
    """
    decoded = isinstance(text, bytes)  # strict UTF-8 decoding cannot produce a surrogate
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"not UTF-8 ({err.reason} at byte {err.start})") from None
    if len(text) > MAX_LINE_CHARS:
        raise DataError(f"the line is {len(text)} characters long (at most {MAX_LINE_CHARS})")
    if not _depth_ok(text, max_depth):
        raise DataError(f"arrays and objects are nested more than {max_depth} deep")
    try:
        value = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_reject_constant)
    except DataError:
        raise
    except json.JSONDecodeError as err:
        raise DataError(f"not valid JSON ({err.msg} at column {err.colno})") from None
    except (ValueError, RecursionError, MemoryError) as err:  # the pre-scan makes these unreachable in practice
        raise DataError(f"not valid JSON ({type(err).__name__}: {str(err)[:200]})") from None
    if _SURROGATE_ESCAPE.search(text) or (not decoded and _SURROGATE.search(text)):
        # a lone surrogate comes from a \\uD800-\\uDFFF escape (or a str built in Python)
        check_tree(value, "the line", max_depth=max_depth, max_string=MAX_LINE_CHARS)
    return value


# -- checking parsed values --------------------------------------------------------------------


def _check_string(value: str, where: str, max_chars: int) -> None:
    if len(value) > max_chars:
        raise DataError(f"{where} is a string of {len(value)} characters (at most {max_chars})")
    if _SURROGATE.search(value):
        raise DataError(f"{where} holds a lone surrogate (\\ud800-\\udfff), which is not text")


def check_tree(value: Any, where: str = "the line", *, max_depth: int = MAX_DEPTH,
               max_string: int = MAX_STRING_CHARS) -> None:
    """Check a JSON-like value: only JSON types, nesting, finite numbers, bounded integers, clean strings.

    Iterative (a deep value cannot overflow the stack); raises DataError naming the first bad
    place, for example ``the line.turns[2].reward``.
    """
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, here, depth = stack.pop()
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, int):
            if abs(item) > MAX_INT:
                raise DataError(f"{here} is an integer out of range (at most {MAX_INT_DIGITS} digits)")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise DataError(f"{here} is {item!r}; numbers must be finite")
        elif isinstance(item, str):
            _check_string(item, here, max_string)
        elif isinstance(item, (dict, list)):
            if depth >= max_depth:
                raise DataError(f"{here}: arrays and objects are nested more than {max_depth} deep")
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        raise DataError(f"{here} has a key that is not a string ({_kind(key)})")
                    _check_string(key, f"a key of {here}", 10_000)
                    stack.append((child, f"{here}.{key}", depth + 1))
            else:
                stack.extend((child, f"{here}[{i}]", depth + 1) for i, child in enumerate(item))
        else:
            raise DataError(f"{here} is a {type(item).__name__}, which JSON cannot hold")


_MISSING: Any = object()


class Fields:
    """Typed, range-checked reading of one JSON object; errors name the field (``turns[1].reward``).

    Each getter takes ``default`` (used when the key is absent) and ``null`` (whether JSON null
    is allowed, returned as None).
    """

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, Mapping):
            raise DataError(f"{where} must be a JSON object, got {_kind(data)}")
        self.data = data
        self.where = where

    def name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def _get(self, key: str, default: Any, null: bool) -> tuple[bool, Any]:
        """(found, value): found is False when the default (or null) is returned as is."""
        if key not in self.data:
            if default is _MISSING:
                raise DataError(f"missing field {key!r} in {self.where or 'the line'}")
            return False, default
        value = self.data[key]
        if value is None:
            if not null:
                raise DataError(f"{self.name(key)} must not be null")
            return False, None
        return True, value

    def string(self, key: str, *, default: Any = _MISSING, null: bool = False, max_chars: int = MAX_STRING_CHARS,
            choices: tuple[str, ...] | None = None, pattern: re.Pattern[str] | None = None) -> Any:
        found, value = self._get(key, default, null)
        if not found:
            return value
        if not isinstance(value, str):
            raise DataError(f"{self.name(key)} must be a string, got {_kind(value)}")
        _check_string(value, self.name(key), max_chars)
        if choices is not None and value not in choices:
            raise DataError(f"{self.name(key)} must be one of {list(choices)}, got {value[:80]!r}")
        if pattern is not None and pattern.fullmatch(value) is None:
            raise DataError(f"{self.name(key)} must match {pattern.pattern}, got {value[:80]!r}")
        return value

    def integer(self, key: str, *, default: Any = _MISSING, null: bool = False, lo: int = 0,
            hi: int = MAX_INT) -> Any:
        found, value = self._get(key, default, null)
        if not found:
            return value
        if not isinstance(value, int) or isinstance(value, bool):
            raise DataError(f"{self.name(key)} must be an integer, got {_kind(value)}")
        if not lo <= value <= hi:
            shown = value if abs(value) <= MAX_INT else f"an integer of {len(str(abs(value)))} digits"
            raise DataError(f"{self.name(key)} must be between {lo} and {hi}, got {shown}")
        return value

    def number(self, key: str, *, default: Any = _MISSING, null: bool = False, lo: float = -math.inf,
            hi: float = math.inf) -> Any:
        found, value = self._get(key, default, null)
        if not found:
            return value
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise DataError(f"{self.name(key)} must be a number, got {_kind(value)}")
        if isinstance(value, int) and abs(value) > MAX_INT:
            raise DataError(f"{self.name(key)} is an integer out of range")
        number = float(value)
        if not math.isfinite(number) or not lo <= number <= hi:
            raise DataError(f"{self.name(key)} must be a finite number in [{lo}, {hi}], got {number!r}")
        return number

    def boolean(self, key: str, *, default: Any = _MISSING) -> Any:
        found, value = self._get(key, default, False)
        if found and not isinstance(value, bool):
            raise DataError(f"{self.name(key)} must be true or false, got {_kind(value)}")
        return value

    def array(self, key: str, *, default: Any = _MISSING, max_items: int = 1_000_000) -> Any:
        found, value = self._get(key, default, False)
        if not found:
            return value
        if not isinstance(value, list):
            raise DataError(f"{self.name(key)} must be an array, got {_kind(value)}")
        if len(value) > max_items:
            raise DataError(f"{self.name(key)} has {len(value)} items (at most {max_items})")
        return value

    def object(self, key: str, *, default: Any = _MISSING, null: bool = False) -> Any:
        """The nested object as :class:`Fields` (the default, or None for an allowed null, as is)."""
        found, value = self._get(key, default, null)
        return Fields(value, self.name(key)) if found else value

    def base64_bytes(self, key: str, *, default: Any = _MISSING, null: bool = False,
               max_bytes: int = MAX_STRING_CHARS) -> Any:
        """Decoded base64 bytes (strict alphabet and padding)."""
        value = self.string(key, default=default, null=null, max_chars=4 * (max_bytes // 3 + 1))
        if value is None:
            return None
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise DataError(f"{self.name(key)} is not valid base64") from None
