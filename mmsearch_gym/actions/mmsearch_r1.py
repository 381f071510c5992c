"""The mmsearch-r1 dialect: MMSearch-R1's tags and format rule, exactly, plus ``<crop>``."""

from __future__ import annotations

from collections.abc import Sequence

from mmsearch_gym.actions.base import (
    UNABLE_TO_ANSWER,
    Action,
    Answer,
    ImageSearch,
    Invalid,
    TextSearch,
    _check_query,
    _crop_before,
    _first_element,
    _fmt_box,
    last_answer,
)
from mmsearch_gym.actions.dialect import Dialect, Limits, SearchCounts, _reason_shape_ok
from mmsearch_gym.errors import ConfigError

_IMG = "<search><img></search>"


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
        best_end, best = -1, None  # type: int, tuple[str, int | str] | None
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
        """MMSearch-R1's count: a turn counts at most once (as an image search when it holds
        both tags), every turn but the last (a single turn counts itself)."""
        counted = turns if len(turns) == 1 else turns[:-1]
        image = text = 0
        for turn in counted:
            t = turn.strip()
            if _IMG in t:
                image += 1
            elif "<text_search>" in t and "</text_search>" in t:
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
