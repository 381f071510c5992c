"""The tool-json dialect: Hermes / Qwen JSON tool calls, decoded with bounded size and numbers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from mmsearch_gym.actions.base import (
    _MAX_JSON_INT_DIGITS,
    _WHOLE,
    MAX_COORDINATE,
    MAX_TOOL_CALL_CHARS,
    Action,
    Answer,
    ImageSearch,
    Invalid,
    Region,
    TextSearch,
    _check_query,
    _first_element,
    last_answer,
    parse_box,
    safe_text,
)
from mmsearch_gym.actions.dialect import Dialect, Limits
from mmsearch_gym.errors import ConfigError

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
