"""Grounders: turn a referring expression ("the flag in the top right corner") into a box.

DeepMMSearch-R1 crops before it searches: the model names a region in words and a grounding
model (Grounding DINO there) returns its box. The env asks a :class:`Grounder` for that box.
:class:`AnnotationGrounder` is the built-in one: it needs no model because every task of the
built-in world (and any task set with ``objects``) carries scene annotations, so it resolves
positions ("top left", "center"), extremes ("leftmost", "topmost"), sizes ("largest",
"second smallest"), orders ("the second flag from the left") and label words ("the flag")
against those annotations, deterministically. An expression that names nothing it can resolve
returns ``None``, which the env reports as an Invalid action.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from mmsearch_gym.tasks import Box, SceneObject, Task

__all__ = ["AnnotationGrounder", "Grounder", "position_name"]


@runtime_checkable
class Grounder(Protocol):
    """Anything that resolves a referring expression to a pixel box of the task image."""

    def ground(self, expression: str, task: Task) -> Box | None:
        """The box ``expression`` refers to in ``task``'s image, or ``None`` if nothing matches."""
        ...


# --- the 3x3 grid of positions shared with the world generator --------------------------

_ROWS = ("top", "middle", "bottom")
_COLS = ("left", "center", "right")


def _cell(box: Box, size: tuple[int, int]) -> tuple[str, str]:
    """(row, column) of the box centre in a 3x3 grid over the image."""
    width, height = size
    cx = (box[0] + box[2]) / 2 / max(width, 1)
    cy = (box[1] + box[3]) / 2 / max(height, 1)
    col = _COLS[min(2, max(0, int(cx * 3)))]
    row = _ROWS[min(2, max(0, int(cy * 3)))]
    return row, col


def position_name(box: Box, size: tuple[int, int]) -> str:
    """The words for where ``box`` sits in an image of ``size``: "top left", "top", "left",
    "center", "bottom right" ... (3x3 grid of the box centre).

    The world generator writes these into ``SceneObject.attributes["position"]`` and the
    grounder reads them back, so questions and grounding agree on what "top left" means.
    """
    row, col = _cell(box, size)
    words = [w for w in (row, col) if w not in ("middle", "center")]
    return " ".join(words) if words else "center"


def _cell_from_name(name: str) -> tuple[str, str] | None:
    """Inverse of :func:`position_name` (lenient: accepts "upper left", "middle left" ...)."""
    spec = _parse(name)
    if spec.vertical is None and spec.horizontal is None:
        return None
    return (spec.vertical or "middle", spec.horizontal or "center")


# --- parsing referring expressions ------------------------------------------------------

_VERTICAL = {"top": "top", "upper": "top", "up": "top", "bottom": "bottom", "lower": "bottom",
             "down": "bottom"}
_VERTICAL_EXTREME = {"topmost": "top", "uppermost": "top", "highest": "top", "bottommost": "bottom",
                     "lowest": "bottom", "lowermost": "bottom"}
_HORIZONTAL = {"left": "left", "right": "right"}
_HORIZONTAL_EXTREME = {"leftmost": "left", "rightmost": "right"}
_CENTER = {"center", "centre", "middle", "central", "centered", "centred"}
_COMPOUNDS = {f"{v}{h}": (v, h) for v in ("top", "upper", "bottom", "lower") for h in ("left", "right")}
_SIZE = {"largest": "large", "biggest": "large", "big": "large", "large": "large", "larger": "large",
         "bigger": "large", "huge": "large", "smallest": "small", "tiniest": "small", "small": "small",
         "smaller": "small", "little": "small", "tiny": "small", "littlest": "small"}
_ORDINAL = {"first": 1, "1st": 1, "second": 2, "2nd": 2, "third": 3, "3rd": 3, "fourth": 4, "4th": 4,
            "fifth": 5, "5th": 5, "sixth": 6, "6th": 6, "last": -1, "final": -1}
_FILLER = frozenset(
    ["the", "a", "an", "of", "in", "at", "on", "to", "from", "is", "that", "which", "this", "one",
     "ones", "object", "objects", "thing", "item", "region", "area", "part", "side", "corner",
     "corners", "edge", "half", "hand", "image", "picture", "photo", "scene", "row", "column",
     "position", "located", "placed", "positioned", "shown", "visible", "sitting", "crop", "zoom",
     "into", "onto", "search", "find", "look", "show", "me", "please", "most", "near", "towards",
     "toward", "and", "with", "its", "there", "here", "only", "single", "just", "box", "portion",
     "section", "quadrant", "select", "locate", "focus", "frame"]
)


@dataclass(frozen=True)
class _Spec:
    vertical: str | None = None        # "top" | "middle" | "bottom"
    horizontal: str | None = None      # "left" | "center" | "right"
    vertical_extreme: bool = False
    horizontal_extreme: bool = False
    size: str | None = None            # "large" | "small"
    ordinal: int | None = None         # 1-based, -1 = last
    order_from: str | None = None      # "left" | "right" | "top" | "bottom"
    content: tuple[str, ...] = ()      # words left over: label / attribute words

    @property
    def spatial(self) -> bool:
        return self.vertical is not None or self.horizontal is not None


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower().replace("-", " ").replace("_", " "))


def _singular(word: str) -> str:
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _parse(expression: str) -> _Spec:
    tokens = _tokens(expression)
    vertical = horizontal = size = order_from = None
    v_ext = h_ext = center = False
    ordinal: int | None = None
    content: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if tok == "from" and nxt in ("the",) and i + 2 < len(tokens):
            nxt = tokens[i + 2]
            i += 1
        if tok == "from" and (nxt in _HORIZONTAL or nxt in _VERTICAL):
            order_from = _HORIZONTAL.get(nxt) or _VERTICAL[nxt]
            i += 2
            continue
        if tok in _COMPOUNDS:
            vertical, horizontal = _VERTICAL[_COMPOUNDS[tok][0]], _COMPOUNDS[tok][1]
        elif tok in _VERTICAL_EXTREME:
            vertical, v_ext = _VERTICAL_EXTREME[tok], True
        elif tok in _HORIZONTAL_EXTREME:
            horizontal, h_ext = _HORIZONTAL_EXTREME[tok], True
        elif tok in _VERTICAL:
            vertical = _VERTICAL[tok]
            if nxt == "most":
                v_ext = True
        elif tok in _HORIZONTAL:
            horizontal = _HORIZONTAL[tok]
            if nxt == "most":
                h_ext = True
        elif tok in _CENTER:
            center = True
        elif tok in _SIZE:
            size = _SIZE[tok]
        elif tok in _ORDINAL:
            ordinal = _ORDINAL[tok]
        elif tok not in _FILLER:
            content.append(_singular(tok))
        i += 1
    if center:
        if vertical is None and horizontal is None:
            vertical, horizontal = "middle", "center"
        elif vertical is None:
            vertical = "middle"
        elif horizontal is None:
            horizontal = "center"
    return _Spec(vertical, horizontal, v_ext, h_ext, size, ordinal, order_from, tuple(content))


# --- resolution against annotations ----------------------------------------------------

_GEOMETRY_KEYS = frozenset({"position", "size_rank", "order", "x_rank", "y_rank"})


def _object_words(obj: SceneObject) -> set[str]:
    """Words a referring expression may use to name ``obj`` (label and descriptive attributes)."""
    words = {_singular(w) for w in _tokens(obj.label)}
    for key, value in obj.attributes.items():
        if key in _GEOMETRY_KEYS:
            continue
        if isinstance(value, str):
            words.update(_singular(w) for w in _tokens(value))
        elif isinstance(value, (list, tuple)):
            for item in value:
                if isinstance(item, str):
                    words.update(_singular(w) for w in _tokens(item))
    return words - _FILLER


def _center(box: Box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _area(box: Box) -> int:
    return max(0, box[2] - box[0]) * max(0, box[3] - box[1])


def _axis_key(direction: str):
    """Sort key putting the object nearest to ``direction`` first."""
    if direction == "left":
        return lambda o: (_center(o.box)[0], _center(o.box)[1])
    if direction == "right":
        return lambda o: (-_center(o.box)[0], _center(o.box)[1])
    if direction == "top":
        return lambda o: (_center(o.box)[1], _center(o.box)[0])
    return lambda o: (-_center(o.box)[1], _center(o.box)[0])


def _pick(ordered: Sequence[SceneObject], ordinal: int | None) -> SceneObject | None:
    index = 0 if ordinal is None else (ordinal - 1 if ordinal > 0 else len(ordered) + ordinal)
    if 0 <= index < len(ordered):
        return ordered[index]
    return None


class AnnotationGrounder:
    """Resolves referring expressions against a task's scene annotations (``task.objects``).

    Deterministic and model-free. Understands grid positions ("top right", "upper-left
    corner", "center", "on the left"), extremes ("leftmost", "topmost"), sizes ("largest",
    "second smallest"), orders ("second from the left", "the last flag"), and words of the
    objects' labels and descriptive attributes ("the flag"). Positions come from each
    object's ``attributes["position"]`` when annotated, else from its box on a 3x3 grid of
    the image (``task.meta["image_size"]`` when present, else the image's own size).
    """

    def ground(self, expression: str, task: Task) -> Box | None:
        """The annotated box ``expression`` refers to, or ``None`` when nothing matches."""
        objects = list(task.objects)
        if not objects or not isinstance(expression, str):
            return None
        spec = _parse(expression)

        # Label words narrow the candidates ("the flag" vs "the car"); unknown words are
        # tolerated only when something else in the expression resolved.
        candidates = objects
        matched_label = False
        vocab = [_object_words(o) for o in objects]
        known = [w for w in spec.content if any(w in v for v in vocab)]
        if known:
            candidates = [o for o, v in zip(objects, vocab, strict=False) if all(w in v for w in known)]
            matched_label = True
            if not candidates:
                return None
        descriptive = spec.spatial or spec.size is not None or spec.ordinal is not None \
            or spec.order_from is not None
        if not descriptive:
            if matched_label and len(candidates) == 1:
                return candidates[0].box
            return None

        chosen = self._resolve(spec, candidates, task)
        return None if chosen is None else chosen.box

    # -- internals --

    def _resolve(self, spec: _Spec, candidates: list[SceneObject], task: Task) -> SceneObject | None:
        if spec.order_from is not None:
            pool = self._spatial_filter(spec, candidates, task) if spec.spatial else candidates
            return _pick(sorted(pool or candidates, key=_axis_key(spec.order_from)), spec.ordinal)
        if spec.size is not None:
            pool = self._spatial_filter(spec, candidates, task) if spec.spatial else candidates
            if spec.spatial and not pool:
                return None
            sign = -1 if spec.size == "large" else 1
            ordered = sorted(pool, key=lambda o: (sign * _area(o.box), _center(o.box)))
            return _pick(ordered, spec.ordinal)
        if spec.spatial:
            return self._resolve_spatial(spec, candidates, task)
        # A bare ordinal ("the second flag", "the last one") counts left to right.
        return _pick(sorted(candidates, key=_axis_key("left")), spec.ordinal)

    def _cells(self, candidates: list[SceneObject], task: Task) -> list[tuple[str, str]]:
        size: tuple[int, int] | None = None
        cells = []
        for obj in candidates:
            named = obj.attributes.get("position")
            cell = _cell_from_name(named) if isinstance(named, str) else None
            if cell is None:
                if size is None:
                    size = self._image_size(task)
                cell = _cell(obj.box, size)
            cells.append(cell)
        return cells

    @staticmethod
    def _image_size(task: Task) -> tuple[int, int]:
        stored = task.meta.get("image_size") if task.meta else None
        if stored is not None and len(stored) == 2:
            return int(stored[0]), int(stored[1])
        return task.load_image().size

    def _spatial_filter(self, spec: _Spec, candidates: list[SceneObject], task: Task) -> list[SceneObject]:
        """Candidates whose grid cell agrees with every non-extreme position word."""
        need_v = None if spec.vertical_extreme else spec.vertical
        need_h = None if spec.horizontal_extreme else spec.horizontal
        if need_v is None and need_h is None:
            return list(candidates)
        return [o for o, (row, col) in zip(candidates, self._cells(candidates, task), strict=False)
                if (need_v is None or row == need_v) and (need_h is None or col == need_h)]

    def _resolve_spatial(self, spec: _Spec, candidates: list[SceneObject], task: Task) -> SceneObject | None:
        pool = self._spatial_filter(spec, candidates, task)
        directions = [d for d in (spec.vertical, spec.horizontal) if d not in (None, "middle", "center")]
        if len(pool) > 1 and (spec.vertical is None) != (spec.horizontal is None) \
                and not (spec.vertical_extreme or spec.horizontal_extreme):
            # One axis named ("the flag at the top"): the edge cell of that name comes first,
            # as position_name calls the top-centre cell "top".
            want = (spec.vertical or "middle", spec.horizontal or "center")
            exact = [o for o, cell in zip(pool, self._cells(pool, task), strict=False) if cell == want]
            if len(exact) == 1:
                return exact[0]
        if pool:
            if len(pool) == 1 or not directions:
                if len(pool) > 1:  # several in the centre cell: the one nearest the middle
                    return self._nearest_middle(pool, task)
                return pool[0]
            return self._most_extreme(pool, directions)
        # No object in the named cell: accept the object that is extreme on every named axis.
        if not directions:
            return None
        winners = {id(min(candidates, key=_axis_key(d))) for d in directions}
        if len(winners) != 1:
            return None
        return min(candidates, key=_axis_key(directions[0]))

    @staticmethod
    def _most_extreme(pool: list[SceneObject], directions: list[str]) -> SceneObject:
        def score(o: SceneObject) -> tuple[float, float, float]:
            cx, cy = _center(o.box)
            total = 0.0
            for d in directions:
                total += {"left": -cx, "right": cx, "top": -cy, "bottom": cy}[d]
            return (-total, cy, cx)
        return min(pool, key=score)

    def _nearest_middle(self, pool: list[SceneObject], task: Task) -> SceneObject:
        width, height = self._image_size(task)
        def dist(o: SceneObject) -> tuple[float, float, float]:
            cx, cy = _center(o.box)
            return ((cx - width / 2) ** 2 + (cy - height / 2) ** 2, cy, cx)
        return min(pool, key=dist)
