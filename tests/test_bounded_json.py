"""loads_bounded: JSON from strangers decodes within limits or fails with one clear error."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmsearch_gym.bounded_json import JsonLimitError, loads_bounded, nesting_depth


@pytest.mark.parametrize("text, needle, malformed", [
    ("[" * 100_000 + "]" * 100_000, "nested deeper than 64", False),
    ("[" * 65 + "]" * 65, "nested deeper than 64", False),
    ('{"a":' * 70 + "1" + "}" * 70, "nested deeper than 64", False),
    ("9" * 5000, "a number of 5000 characters", False),
    ("-" + "1" * 101, "a number of 102 characters", False),
    ("0." + "1" * 200, "a number of 202 characters", False),
    ("1e999", "out of range", False),
    ("[-1e400]", "out of range", False),
    ("NaN", "NaN is not a JSON number", False),
    ("[Infinity]", "Infinity is not a JSON number", False),
    ('{"a": ', "malformed JSON", True),
    (b"\xff\xfe", "not UTF-8", True),
])
def test_hostile_json_gives_one_clear_error(text: str | bytes, needle: str, malformed: bool) -> None:
    with pytest.raises(JsonLimitError, match=needle) as info:
        loads_bounded(text)
    assert info.value.malformed is malformed
    assert info.value.__context__ is None  # nothing holding the text is chained


def test_limits_are_inclusive_and_configurable() -> None:
    assert nesting_depth(loads_bounded("[" * 64 + "]" * 64)) == 64
    assert loads_bounded("1" * 100) == int("1" * 100)
    assert loads_bounded("[[1]]", max_depth=2) == [[1]]
    with pytest.raises(JsonLimitError):
        loads_bounded("[[[1]]]", max_depth=2)
    with pytest.raises(JsonLimitError):
        loads_bounded("12345", max_number_chars=4)


def test_nesting_depth_counts_containers_and_stops_early() -> None:
    assert nesting_depth(1) == 0 and nesting_depth([]) == 1 and nesting_depth({"a": [1, {"b": []}]}) == 4
    deep: list = []
    for _ in range(10_000):
        deep = [deep]
    assert nesting_depth(deep, stop_after=5) == 6


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**30, 10**30) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=30)


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_ordinary_json_round_trips_unchanged(value: object) -> None:
    assert loads_bounded(json.dumps(value)) == value
