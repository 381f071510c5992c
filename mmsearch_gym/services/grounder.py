"""VLMGrounder: a vision-language model turns a referring expression into a box, recorded.

DeepMMSearch-R1 crops before an image search: the model names a region in words
(``<img_search>the food on the plate</img_search>``) and a grounding model returns its box.
:class:`VLMGrounder` is a :class:`~mmsearch_gym.grounding.Grounder` that asks any
OpenAI-compatible VLM (Qwen2.5-VL on vLLM, GPT-4o ...) for ``[x1, y1, x2, y2]``. The image is
sent scaled to at most ``max_pixels``; the answer is read in the coordinate system the spec
names (``coords``: ``pixels`` of the image sent, ``norm1000`` as Qwen-VL and Gemini answer, or
``norm1``) and mapped back to the *original* image's pixels, validated and clamped. A reply
with no box (or "none") means nothing matches, which the env reports as an Invalid action.
Every answer is recorded, keyed by the image's content digest, the expression and the model.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from mmsearch_gym.services.client import ChatClient, ServiceSpec, parse_service_spec
from mmsearch_gym.services.recorded import RecordedService
from mmsearch_gym.tasks import Box, Task, image_digest

__all__ = ["COORDS", "PROMPT_VERSION", "VLMGrounder", "parse_box"]

PROMPT_VERSION = "ground-v1"
COORDS = ("pixels", "norm1000", "norm1")
PROMPT = ("Locate \"{expression}\" in the image ({width}x{height} pixels). Answer with its bounding box as "
          "JSON [x1, y1, x2, y2]{unit}, or with the word none if it is not in the image.")
_UNITS = {"pixels": " in pixels", "norm1000": " with coordinates scaled to 0-1000",
          "norm1": " with coordinates as fractions between 0 and 1"}
_NUMBER = r"-?\d+(?:\.\d+)?"
_FOUR = re.compile(rf"({_NUMBER})\s*,\s*({_NUMBER})\s*(?:\)\s*,?\s*\(\s*|,)\s*({_NUMBER})\s*,\s*({_NUMBER})")


def parse_box(text: str) -> tuple[float, float, float, float] | None:
    """The first box in a reply: ``[x1, y1, x2, y2]``, ``{"bbox_2d": [...]}``, ``(x1,y1),(x2,y2)``.

    None when the reply holds no four numbers, or they are not finite.
    """
    if not isinstance(text, str):
        return None
    text = re.sub(r"(?is)<think>.*?</think>", " ", text)
    match = _FOUR.search(text)
    if match is None:
        return None
    values = tuple(float(v) for v in match.groups())
    if not all(math.isfinite(v) for v in values):
        return None
    return values  # type: ignore[return-value]


def to_original_box(box: tuple[float, float, float, float], coords: str, sent: tuple[int, int],
                    original: tuple[int, int]) -> Box | None:
    """``box`` (in ``coords`` of the image sent) in the original image's pixels, ordered and clamped.

    None when it is empty or lies outside the image.
    """
    width, height = original
    if coords == "pixels":
        sx, sy = width / sent[0], height / sent[1]
    elif coords == "norm1000":
        sx, sy = width / 1000.0, height / 1000.0
    else:
        sx, sy = float(width), float(height)
    x1, x2 = sorted((box[0] * sx, box[2] * sx))
    y1, y2 = sorted((box[1] * sy, box[3] * sy))
    left, top = max(0, math.floor(x1)), max(0, math.floor(y1))
    right, bottom = min(width, math.ceil(x2)), min(height, math.ceil(y2))
    if right - left < 1 or bottom - top < 1:
        return None
    return (int(left), int(top), int(right), int(bottom))


class VLMGrounder:
    """A Grounder over an OpenAI-compatible VLM endpoint (options in the spec: ``coords``, ``max_pixels``)."""

    def __init__(self, spec: ServiceSpec | str | Mapping[str, Any], *, cache_dir: str | Path | None = None,
                 cache_mode: str = "readthrough") -> None:
        from mmsearch_gym.errors import ConfigError

        self.spec = parse_service_spec(spec, what="grounder")
        self.coords = str(self.spec.options.get("coords", "pixels"))
        if self.coords not in COORDS:
            raise ConfigError(f"grounder coords must be one of {COORDS}, got {self.coords!r}")
        self.max_pixels = int(self.spec.options.get("max_pixels", 672 * 672))
        self.max_tokens = int(self.spec.options.get("max_tokens", 64))
        self.client = ChatClient(self.spec, service="grounder")
        self.recorder = RecordedService("grounder", PROMPT_VERSION,
                                        {"model": self.spec.model, "coords": self.coords,
                                         "max_pixels": self.max_pixels, "max_tokens": self.max_tokens},
                                        directory=cache_dir, mode=cache_mode)

    def _sent_size(self, size: tuple[int, int]) -> tuple[int, int]:
        width, height = size
        if width * height <= self.max_pixels:
            return width, height
        scale = (self.max_pixels / (width * height)) ** 0.5
        return max(1, int(width * scale)), max(1, int(height * scale))

    def _ask(self, image: Image.Image, expression: str, sent: tuple[int, int]) -> str:
        from mmsearch_gym.chat import image_data_url

        prompt = PROMPT.format(expression=expression, width=sent[0], height=sent[1], unit=_UNITS[self.coords])
        messages = [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image_data_url(image, self.max_pixels)}},
            {"type": "text", "text": prompt}]}]
        reply = self.client.complete(messages, max_tokens=self.max_tokens)
        box = parse_box(reply)
        return "none" if box is None else json.dumps(list(box))

    def ground(self, expression: str, task: Task) -> Box | None:
        """The box of ``expression`` in the original pixels of ``task``'s image, or None."""
        expression = " ".join(str(expression).split())
        if not expression:
            return None
        image = task.load_image()
        sent = self._sent_size(image.size)
        request = {"image": image_digest(image), "expression": expression}
        answer = self.recorder.answer(request, lambda: self._ask(image, expression, sent))
        box = parse_box(answer)
        return None if box is None else to_original_box(box, self.coords, sent, image.size)

    def __repr__(self) -> str:
        return f"VLMGrounder({self.spec.describe()!r}, coords={self.coords!r})"
