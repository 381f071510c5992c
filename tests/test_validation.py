"""Unit tests of the bounded JSON-line parser and the typed field reader."""

from __future__ import annotations

import math

import pytest

from mmsearch_gym.errors import DataError
from mmsearch_gym.validation import MAX_DEPTH, Fields, at_line, check_tree, loads


def test_loads_accepts_ordinary_json() -> None:
    assert loads('{"a": [1, -2.5e3, "x", null, true], "b": "[[[[{"}') == {"a": [1, -2500.0, "x", None, True],
                                                                          "b": "[[[[{"}
    assert loads(b'{"k": "\\u00e9"}') == {"k": "é"}
    nested = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert loads(nested) is not None
    escaped = '"' + '\\"[' * 200 + '"'  # brackets inside a string do not count as nesting
    assert loads(escaped) == '"[' * 200


@pytest.mark.parametrize(("text", "message"), [
    ("9" * 5000, "digits"),
    ("[" * 100_000 + "]" * 100_000, "nested"),
    ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "nested"),
    ("1e999", "finite"),
    ("-1e999", "finite"),
    ("NaN", "finite"),
    ("[Infinity]", "finite"),
    ("1." + "0" * 100, "too long"),
    ("{", "not valid JSON"),
    (b"\xff", "not UTF-8"),
    ('["\\ud800"]', "surrogate"),
    ('["\ud800"]', "surrogate"),
])
def test_loads_refuses_with_a_data_error(text: str | bytes, message: str) -> None:
    with pytest.raises(DataError, match=message):
        loads(text)


def test_check_tree_walks_without_recursion() -> None:
    deep: list = []
    node = deep
    for _ in range(10_000):
        node.append([])
        node = node[0]
    with pytest.raises(DataError, match="nested"):
        check_tree(deep)
    for bad, message in ((math.inf, "finite"), (10**30, "out of range"), ("\ud800", "surrogate"),
                         ({1: 2}, "not a string"), ({"x": object()}, "JSON cannot hold"), (b"x", "JSON cannot hold")):
        with pytest.raises(DataError, match=message):
            check_tree({"field": bad})
    check_tree({"a": [1, 2.5, "x", None, True, {"b": []}]})


def test_fields_types_ranges_and_names() -> None:
    f = Fields({"n": 3, "s": "x", "z": None, "b": "aGk=", "o": {"v": -1}, "t": True}, "turns[2]")
    assert f.integer("n", hi=3) == 3 and f.string("s") == "x" and f.number("n") == 3.0
    assert f.string("z", null=True) is None and f.integer("missing", default=7) == 7
    assert f.base64_bytes("b") == b"hi" and f.boolean("t") is True
    for call, message in ((lambda: f.integer("n", hi=2), r"turns\[2\]\.n must be between 0 and 2"),
                          (lambda: f.integer("s"), "must be an integer, got a string"),
                          (lambda: f.number("z"), "must not be null"),
                          (lambda: f.integer("t"), "got a boolean"),
                          (lambda: f.object("o").integer("v"), r"turns\[2\]\.o\.v must be between"),
                          (lambda: f.base64_bytes("s"), "not valid base64"),
                          (lambda: f.array("s"), "must be an array"),
                          (lambda: f.string("absent"), "missing field 'absent'")):
        with pytest.raises(DataError, match=message):
            call()
    with pytest.raises(DataError, match="must be a JSON object"):
        Fields([1], "hit")


def test_at_line_format() -> None:
    assert str(at_line("run.jsonl", 7, "bad")) == "run.jsonl line 7: bad"
