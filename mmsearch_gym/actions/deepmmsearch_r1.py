"""The deepmmsearch-r1 dialect: DeepMMSearch-R1's tags, grounded crops and format rule."""

from __future__ import annotations

from collections.abc import Sequence

from mmsearch_gym.actions.base import (
    MAX_EXPRESSION_CHARS,
    Action,
    Answer,
    ImageSearch,
    Invalid,
    Region,
    TextSearch,
    _check_query,
    _crop_before,
    _first_element,
    _fmt_box,
    last_answer,
    parse_box,
)
from mmsearch_gym.actions.dialect import Dialect, Limits, _reason_shape_ok
from mmsearch_gym.errors import ConfigError


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
