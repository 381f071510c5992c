"""The world's scenes: drawing a recipe's picture, and the geometry of pasted flags.

A recipe's ``scene`` (background photo crop or plain colour, the flags with their size,
rotation and colour jitter, the JPEG quality) holds every random number; drawing it is a pure
function with fixed Pillow filters, so the same recipe gives the same pixels on every machine.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from mmsearch_gym.grounding import position_name
from mmsearch_gym.lru import LRU
from mmsearch_gym.world.knowledge import Knowledge, load_knowledge

__all__ = ["CONFUSABLE_COSINE", "FLAG_ASPECT", "SCENE_SIZE", "confusable_flags", "render_scene"]

SCENE_SIZE = (640, 480)
"""Width and height of photo scenes (search_free, crop, text_only)."""

FLAG_ASPECT = 0.7
"""Height / width of a pasted flag (the stored flags are 160 x 112)."""

CONFUSABLE_COSINE = 0.97
"""Flags whose image feature is this close to another flag's are never the flag to identify
(Monaco / Indonesia, Chad / Romania ...): no reverse image search can tell them apart."""

_RESAMPLE = Image.Resampling.BICUBIC
_BORDER_COLOURS = ((255, 255, 255), (236, 236, 236), (200, 200, 200), (128, 128, 128),
                   (64, 64, 64), (20, 20, 20), (245, 240, 225), (225, 232, 240))


def _r(x: float, digits: int = 3) -> float:
    return float(round(float(x), digits))


def _rotated_half_extent(w: float, h: float, angle: float) -> tuple[float, float]:
    rad = math.radians(angle)
    c, s = abs(math.cos(rad)), abs(math.sin(rad))
    return (w * c + h * s) / 2, (w * s + h * c) / 2


def _flag_box(center: Sequence[float], size: Sequence[int], angle: float,
              canvas: Sequence[int]) -> tuple[int, int, int, int]:
    """The annotated box of a pasted flag: the bounding box of its rotated rectangle."""
    hw, hh = _rotated_half_extent(size[0], size[1], angle)
    x1 = max(0, math.floor(center[0] - hw))
    y1 = max(0, math.floor(center[1] - hh))
    x2 = min(canvas[0], math.ceil(center[0] + hw))
    y2 = min(canvas[1], math.ceil(center[1] + hh))
    return x1, y1, x2, y2


def _no_image() -> Image.Image:  # placeholder image for annotation-only checks
    raise RuntimeError("annotation-only task has no image")


def confusable_flags(knowledge: Knowledge, threshold: float = CONFUSABLE_COSINE) -> frozenset[str]:
    """Ids of countries whose flag's feature is within ``threshold`` cosine of another's."""
    countries = knowledge.countries()
    index = {eid: i for i, eid in enumerate(knowledge.entities)}
    rows = np.asarray(knowledge.features(), dtype=np.float64)[[index[c.id] for c in countries]]
    rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    sims = rows @ rows.T
    np.fill_diagonal(sims, -1.0)
    return frozenset(c.id for c, best in zip(countries, sims.max(axis=1), strict=False) if best >= threshold)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _paste_flag(canvas: Image.Image, flag: Image.Image, spec: Mapping[str, Any]) -> None:
    width, height = (int(v) for v in spec["size"])
    patch = flag.resize((width, height), _RESAMPLE)
    brightness, contrast, saturation = (float(v) for v in spec.get("jitter", (1.0, 1.0, 1.0)))
    patch = ImageEnhance.Brightness(patch).enhance(brightness)
    patch = ImageEnhance.Contrast(patch).enhance(contrast)
    patch = ImageEnhance.Color(patch).enhance(saturation)
    angle = float(spec.get("angle", 0.0))
    if angle:
        patch = patch.convert("RGBA").rotate(angle, resample=_RESAMPLE, expand=True)
    cx, cy = (float(v) for v in spec["center"])
    offset = (round(cx - patch.width / 2), round(cy - patch.height / 2))
    if patch.mode == "RGBA":
        canvas.paste(patch.convert("RGB"), offset, patch.getchannel("A"))
    else:
        canvas.paste(patch, offset)


def render_scene(scene: Mapping[str, Any], knowledge: Knowledge | None = None) -> Image.Image:
    """Draw a recipe's scene: background (photo crop or plain colour), flags, JPEG round trip.

    A pure function of ``scene`` and the world's pictures: fixed filters, no randomness.
    """
    knowledge = knowledge or load_knowledge()
    width, height = (int(v) for v in scene["size"])
    background = scene["background"]
    if "photo" in background:
        photo = knowledge.image(background["photo"])
        x1, y1, x2, y2 = (int(v) for v in background["crop"])
        canvas = photo.crop((x1, y1, x2, y2)).resize((width, height), _RESAMPLE)
    else:
        canvas = Image.new("RGB", (width, height), tuple(int(v) for v in background["color"]))
    for spec in scene.get("flags", ()):
        _paste_flag(canvas, knowledge.image(spec["entity"]), spec)
    quality = scene.get("jpeg_quality")
    if quality:
        buf = io.BytesIO()
        canvas.save(buf, format="JPEG", quality=int(quality))
        canvas = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return canvas


class _RenderCache:
    """A small LRU of rendered task images, so that reset() and the image searches of one
    episode render the scene once."""

    def __init__(self, size: int = 32) -> None:
        self._items: LRU[str, Image.Image] = LRU(size)

    def get(self, key: str, make: Callable[[], Image.Image]) -> Image.Image:
        return self._items.get_or_make(key, make).copy()


_RENDER_CACHE = _RenderCache()


def _cell_name(cell: tuple[int, int]) -> str:
    """The position words of a grid cell (row, column), as :func:`position_name` writes them."""
    row, col = cell
    return position_name((col, row, col + 1, row + 1), (3, 3))


def _row_word(position: str) -> str:
    words = position.split()
    return "top" if "top" in words else "bottom" if "bottom" in words else "middle"
