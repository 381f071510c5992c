"""Chat-message helpers shared by model policies and trainers: images in content blocks.

The env's ``info["messages"]`` are chat messages whose ``content`` is a list of ``{"type":
"text"}`` and ``{"type": "image"}`` blocks. Model policies (``transformers``, OpenAI-compatible
servers) and the TRL adapter render them with these functions, so a model is evaluated on
exactly the chat it was trained on.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image

__all__ = ["MAX_IMAGE_PIXELS", "RESULT_IMAGE_MARKER", "first_image", "image_data_url", "interleave_images",
           "text_only_content"]

RESULT_IMAGE_MARKER = "<image>"
"""A VLM image token that older recordings may carry in result text (the env now writes
``THUMBNAIL_MARKER`` and interleaves the thumbnails itself)."""


def interleave_images(content: Sequence[Mapping[str, Any]],
                      marker: str = RESULT_IMAGE_MARKER) -> list[dict[str, Any]]:
    """A message's content blocks with each image moved to its marker in the text.

    The env writes an image-search result as one text block whose numbered items carry a
    ``<image>`` marker, followed by one image block per thumbnail. Models should see each
    thumbnail next to its title, and a literal ``<image>`` left in the text would be taken for
    an image placeholder by VLM processors (one more placeholder than images: the classic
    multi-image failure). When the markers and the images pair up, the text is split at the
    markers and the images put in between; otherwise the blocks are kept in order and stray
    markers become the plain words ``[image]``.
    """
    blocks = [dict(b) for b in content]
    texts = [b for b in blocks if b.get("type") == "text"]
    images = [b for b in blocks if b.get("type") == "image"]
    markers = sum(str(b.get("text", "")).count(marker) for b in texts)
    if not images or markers != len(images):
        for b in texts:
            b["text"] = str(b.get("text", "")).replace(marker, "[image]")
        return blocks
    pending = iter(images)
    out: list[dict[str, Any]] = []
    for block in blocks:
        if block.get("type") == "image":
            continue
        if block.get("type") != "text":
            out.append(block)
            continue
        pieces = str(block.get("text", "")).split(marker)
        for i, piece in enumerate(pieces):
            if i:
                out.append(next(pending))
            if piece:
                out.append({"type": "text", "text": piece})
    return out


def text_only_content(content: str | Sequence[Mapping[str, Any]], placeholder: str = "[image]") -> str:
    """A message's content as one string for a text-only model.

    Each image becomes ``placeholder`` at its place (a result thumbnail at its marker, the task
    image before the question), and pieces that would run together are joined by a newline.
    Evaluation (``TransformersPolicy``) and training (the TRL adapter) both render text-only
    chats with this, so a model is evaluated on exactly the text it was trained on.
    """
    if isinstance(content, str):
        return content
    out = ""
    for block in interleave_images(content):
        kind = block.get("type")
        piece = placeholder if kind == "image" else str(block.get("text") or "") if kind == "text" else ""
        if out and piece and not out[-1].isspace() and not piece[0].isspace():
            out += "\n"
        out += piece
    return out


def first_image(messages: Sequence[Mapping[str, Any]]) -> Image.Image | None:
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            for block in content:
                if isinstance(block, Mapping) and block.get("type") == "image" \
                        and isinstance(block.get("image"), Image.Image):
                    return block["image"]
    return None


MAX_IMAGE_PIXELS = 672 * 672
"""MMSearch-R1 feeds images of at most 672x672 pixels; larger ones are scaled down."""


def image_data_url(image: Image.Image, max_pixels: int | None = MAX_IMAGE_PIXELS) -> str:
    """A PNG ``data:`` URL of ``image`` (scaled down to at most ``max_pixels`` pixels)."""
    image = image.convert("RGB")
    if max_pixels is not None and image.width * image.height > max_pixels:
        scale = (max_pixels / (image.width * image.height)) ** 0.5
        image = image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))),
                             Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
