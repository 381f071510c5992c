"""Parser and formatter of every dialect: round trips, totality, crop boxes."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmsearch_gym.actions import (
    DIALECTS,
    Answer,
    ImageSearch,
    Invalid,
    Region,
    TextSearch,
    action_from_json,
    action_to_json,
    clamp_box,
    get_dialect,
    last_answer,
)
from mmsearch_gym.errors import ConfigError

TAGS = ["<reason>", "</reason>", "<answer>", "</answer>", "<text_search>", "</text_search>",
        "<search><img></search>", "<search>", "<img>", "</search>", "<crop>", "</crop>",
        "<img_search>", "</img_search>", "<tool_call>", "</tool_call>", "{", "}", '"name"', ":",
        '"text_search"', '"image_search"', '"arguments"', '"query"', '"bbox_2d"', "[", "]", ",",
        "1", "-3", "nan", "1e999", " ", "\n", "é", "中", "🙂"]
tag_soup = st.lists(st.one_of(st.sampled_from(TAGS), st.text(max_size=5)), max_size=40).map("".join)
any_text = st.one_of(st.text(), tag_soup)
plain = st.text(alphabet=st.characters(blacklist_characters="<>", blacklist_categories=("Cs",)),
                min_size=1, max_size=40).filter(lambda s: s.strip() == s and s)
coord = st.integers(-50, 2000)


@st.composite
def boxes(draw):
    x1, y1 = draw(coord), draw(coord)
    return Region.from_box(x1, y1, x1 + draw(st.integers(1, 500)), y1 + draw(st.integers(1, 500)))


def actions_for(dialect_name: str):
    regions = [st.just(Region.whole()), boxes()]
    if dialect_name == "deepmmsearch-r1":
        regions.append(plain.filter(lambda s: not (s[0].isdigit() or s[0] in "[(-+.")).map(Region.refer))
    return st.one_of(plain.map(TextSearch), st.one_of(*regions).map(ImageSearch), plain.map(Answer))


@pytest.mark.parametrize("name", sorted(DIALECTS))
def test_format_then_parse_round_trips(name: str) -> None:
    dialect = get_dialect(name)

    @settings(max_examples=300, deadline=None)
    @given(actions_for(name), st.text(alphabet="abc xyz.", max_size=30))
    def check(action, reasoning):
        assert dialect.parse(dialect.format(action, reasoning)) == action

    check()


@pytest.mark.parametrize("name", sorted(DIALECTS))
@settings(max_examples=500, deadline=None)
@given(text=any_text)
def test_parse_is_total(name: str, text: str) -> None:
    action = get_dialect(name).parse(text)
    assert isinstance(action, (TextSearch, ImageSearch, Answer, Invalid))
    if isinstance(action, ImageSearch) and action.region.kind == "box":
        x1, y1, x2, y2 = action.region.box
        assert all(math.isfinite(v) for v in action.region.box) and x1 < x2 and y1 < y2


@pytest.mark.parametrize("name", sorted(DIALECTS))
@pytest.mark.parametrize("text", [
    "", " ", "<answer>", "</answer>" * 100_000, "<answer>" * 100_000, "<reason>" * 120_000,
    "<text_search>" * 80_000 + "</text_search>", "<tool_call>{" * 50_000 + "</tool_call>",
    "<tool_call>" + "[" * 100_000 + "</tool_call>", "<crop>" * 60_000 + "<search><img></search>",
    "x" * 1_000_000, "\x00\ud800", "<img_search>" + "a" * 2_000_000 + "</img_search>",
])
def test_parse_survives_pathological_input(name: str, text: str) -> None:
    assert get_dialect(name).parse(text) is not None


def test_non_text_action_is_invalid() -> None:
    for dialect in DIALECTS.values():
        assert isinstance(dialect.parse(None), Invalid)  # type: ignore[arg-type]


@pytest.mark.parametrize("text,expected", [
    ("<reason>r</reason><search><img></search>", ImageSearch()),
    ("<reason>r</reason><crop>10, 20, 110, 220</crop><search><img></search>",
     ImageSearch(Region.from_box(10, 20, 110, 220))),
    ("<reason>r</reason><crop>[10,20,110,220]</crop><search><img></search>",
     ImageSearch(Region.from_box(10, 20, 110, 220))),
    ("<reason>r</reason><text_search>  capital of France </text_search>", TextSearch("capital of France")),
    ("<reason>r</reason><answer> Paris </answer>", Answer("Paris")),
    ("<answer>a</answer><answer>b</answer>", Answer("b")),  # the scorer's answer: the last one
    ("<reason>r</reason><text_search>q</text_search> trailing <answer>x</answer>", TextSearch("q")),
])
def test_mmsearch_r1_examples(text, expected) -> None:
    assert get_dialect("mmsearch-r1").parse(text) == expected


@pytest.mark.parametrize("text,reason_part", [
    ("<reason>r</reason>", "no action"),
    ("<reason>r</reason><text_search>   </text_search>", "empty"),
    ("<crop>1,2,3</crop><search><img></search>", "four numbers"),
    ("<crop>nan,2,3,4</crop><search><img></search>", "finite"),
    ("<crop>1,2,inf,4</crop><search><img></search>", "finite"),
    ("<crop>5,5,1,9</crop><search><img></search>", "x1 < x2"),
    ("<crop>a,b,c,d</crop><search><img></search>", "numbers"),
    ("<text_search>" + "q" * 5000 + "</text_search>", "longer"),
])
def test_mmsearch_r1_invalid_reasons(text: str, reason_part: str) -> None:
    action = get_dialect("mmsearch-r1").parse(text)
    assert isinstance(action, Invalid) and reason_part in action.reason


def test_deepmmsearch_r1_forms() -> None:
    d = get_dialect("deepmmsearch-r1")
    assert d.parse("<reason>r</reason><img_search><img></img_search>") == ImageSearch()
    assert d.parse("<reason>r</reason><img_search>the flag at the top right</img_search>") == \
        ImageSearch(Region.refer("the flag at the top right"))
    assert d.parse("<reason>r</reason><img_search>[1, 2, 30, 40]</img_search>") == \
        ImageSearch(Region.from_box(1, 2, 30, 40))
    assert isinstance(d.parse("<img_search><b>x</b></img_search>"), Invalid)


@pytest.mark.parametrize("payload,expected", [
    ('{"name": "text_search", "arguments": {"query": "Eiffel Tower height"}}', TextSearch("Eiffel Tower height")),
    ('{"name": "text_search", "arguments": "{\\"query\\": \\"q\\"}"}', TextSearch("q")),
    ('{"name": "image_search", "arguments": {}}', ImageSearch()),
    ('{"name": "image_search", "arguments": {"bbox_2d": [1, 2, 3, 4]}}', ImageSearch(Region.from_box(1, 2, 3, 4))),
    ('{"name": "answer", "arguments": {"answer": " Paris "}}', Answer("Paris")),
])
def test_tool_json_forms(payload, expected) -> None:
    assert get_dialect("tool-json").parse(f"<tool_call>{payload}</tool_call>") == expected


@pytest.mark.parametrize("payload", [
    "not json", "[1, 2]", '{"name": 3}', '{"name": "browse", "arguments": {}}',
    '{"name": "image_search", "arguments": {"bbox_2d": [1, 2, 3]}}',
    '{"name": "image_search", "arguments": {"bbox_2d": [1, 2, "x", 4]}}',
    '{"name": "image_search", "arguments": {"bbox_2d": [true, 2, 3, 4]}}',
    '{"name": "text_search", "arguments": {"query": 5}}', '{"name": "text_search", "arguments": 7}',
])
def test_tool_json_invalid(payload: str) -> None:
    assert isinstance(get_dialect("tool-json").parse(f"<tool_call>{payload}</tool_call>"), Invalid)


@settings(max_examples=300, deadline=None)
@given(x1=st.floats(-1e4, 1e4), y1=st.floats(-1e4, 1e4), w=st.floats(0.001, 1e4), h=st.floats(0.001, 1e4),
       width=st.integers(1, 2000), height=st.integers(1, 2000), min_side=st.integers(1, 64))
def test_clamped_boxes_stay_inside_the_image(x1, y1, w, h, width, height, min_side) -> None:
    box = clamp_box((x1, y1, x1 + w, y1 + h), width, height, min_side)
    if box is None:
        assert x1 + w <= 0 or y1 + h <= 0 or x1 >= width or y1 >= height or w <= 0 or h <= 0 \
            or math.ceil(x1 + w) <= max(0, math.floor(x1)) or math.ceil(y1 + h) <= max(0, math.floor(y1))
        return
    bx1, by1, bx2, by2 = box
    assert 0 <= bx1 < bx2 <= width and 0 <= by1 < by2 <= height
    assert bx2 - bx1 >= min(min_side, width) and by2 - by1 >= min(min_side, height)


def test_degenerate_or_outside_boxes_are_rejected() -> None:
    assert clamp_box((500, 500, 600, 600), 100, 100) is None
    assert clamp_box((10, 10, 10, 20), 100, 100) is None
    assert clamp_box((float("nan"), 0, 5, 5), 100, 100) is None
    assert clamp_box((40, 40, 41, 41), 100, 100, min_side=28) == (26, 26, 54, 54)
    assert clamp_box((-5, -5, 3, 3), 100, 100, min_side=28) == (0, 0, 28, 28)


def test_last_answer_matches_regex_semantics() -> None:
    import re
    for text in ["<answer>a<answer>b</answer>", "<answer> x </answer>tail<answer>y", "<answer></answer>",
                 "</answer><answer>z</answer>", "no answer"]:
        matches = list(re.finditer(r"<answer>(.*?)</answer>", text, re.DOTALL))
        expected = matches[-1].group(1).strip() if matches else None
        assert last_answer(text) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["<answer>", "</answer>", "a", " ", "<", "answer>"]), max_size=30).map("".join))
def test_last_answer_equals_the_papers_regex(text: str) -> None:
    import re
    matches = list(re.finditer(r"<answer>(.*?)</answer>", text, re.DOTALL))
    assert last_answer(text) == (matches[-1].group(1).strip() if matches else None)


def test_actions_serialise_to_json() -> None:
    for action in [TextSearch("q"), ImageSearch(), ImageSearch(Region.from_box(1, 2, 3, 4)),
                   ImageSearch(Region.refer("the cat")), Answer("a"), Invalid("why")]:
        assert action_from_json(action_to_json(action)) == action


def test_unknown_dialect_and_unformattable_actions_raise_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown dialect"):
        get_dialect("search-r2")
    with pytest.raises(ConfigError):
        get_dialect("mmsearch-r1").format(ImageSearch(Region.refer("the cat")))
    with pytest.raises(ConfigError):
        get_dialect("tool-json").format(Invalid("x"))


@pytest.mark.parametrize("name", sorted(DIALECTS))
def test_prompts_document_the_actions(name: str) -> None:
    d = get_dialect(name)
    prompt = d.system_prompt()
    assert "answer" in prompt and "pixels of the original image" in prompt
    assert d.stop_sequences and all(s.startswith("</") for s in d.stop_sequences)


@pytest.mark.parametrize("number,reason_part", [
    ("9" * 400, "longer than 32 digits"), ("9" * 5000, "longer than 32 digits"),
    ("1e999", "finite"), ("NaN", "finite"), ("-Infinity", "finite"), ("4e10", "within"), ("1000001", "within"),
])
def test_tool_json_numbers_are_bounded_before_use(number: str, reason_part: str) -> None:
    text = f'<tool_call>{{"name": "image_search", "arguments": {{"bbox_2d": [1, 2, 3, {number}]}}}}</tool_call>'
    action = get_dialect("tool-json").parse(text)
    assert isinstance(action, Invalid) and reason_part in action.reason


def test_tool_json_size_depth_and_surrogate_escapes() -> None:
    tool = get_dialect("tool-json")
    assert "longer than" in tool.parse("<tool_call>" + " " * 70_000 + "{}</tool_call>").reason  # type: ignore[union-attr]
    assert "nested too deeply" in tool.parse("<tool_call>" + "[" * 50_000 + "</tool_call>").reason  # type: ignore[union-attr]
    query = '<tool_call>{"name": "text_search", "arguments": {"query": "a\\ud800b"}}</tool_call>'
    assert tool.parse(query) == TextSearch("a\ufffdb")
    answer = '<tool_call>{"name": "answer", "arguments": "{\\"answer\\": \\"\\\\udfff\\"}"}</tool_call>'
    assert tool.parse(answer) == Answer("\ufffd")


def test_text_crop_coordinates_are_bounded() -> None:
    r1 = get_dialect("mmsearch-r1")
    assert "within" in r1.parse("<crop>0,0,1e300,5</crop><search><img></search>").reason  # type: ignore[union-attr]
    assert r1.parse("<crop>0,0,1000000,5</crop><search><img></search>") == ImageSearch(Region.from_box(0, 0, 1e6, 5))


def test_safe_text_replaces_only_surrogates() -> None:
    from mmsearch_gym.actions import safe_text
    text = "ok \x00\u202e\ufeff\U0001f600"
    assert safe_text(text) is text
    assert safe_text("\ud83d\ude00 \udc00") == "\ufffd\ufffd \ufffd"  # a pair of surrogate code points too


@pytest.mark.parametrize("region", [
    {"kind": "box", "box": [1, 2, 3, 10 ** 400]}, {"kind": "box", "box": [1, 2, 3, float("inf")]},
    {"kind": "box", "box": [1, 2, 3, True]}, {"kind": "box", "box": "1,2,3,4"}, {"kind": "nope"},
    {"kind": "expression", "expression": 5},
])
def test_recorded_regions_are_checked(region: dict) -> None:
    with pytest.raises(ConfigError, match="region"):
        action_from_json({"kind": "image_search", "region": region})
