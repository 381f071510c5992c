"""The built-in world's task generator: seeded recipes.

A *recipe* is a small JSON record that says everything about one task: the question, the gold
answers, the scene (which background photo and crop, which flags where, their size, rotation
and colour jitter, the JPEG quality), the scene annotations, the template and the oracle plan.
The image is rendered from the recipe on demand (:func:`~mmsearch_gym.world.scene.render_scene`):
every random number was drawn when the recipe was made, from the task's own
``numpy.random.Generator``. :mod:`mmsearch_gym.world.splits` holds the shipped test split
and ``load_tasks``; the train split is generated on the fly from a seed, without limit.

Six categories, each with a different best policy:

- ``search_free``: count / layout questions about flags on a photo; answer at once.
- ``image_search``: one flag, "Which country's flag is this?"; search the image.
- ``image_then_text``: one flag, a fact of its country; image search, then text search.
- ``crop``: a photo with 2-4 small flags, one named by position or size; crop, then search.
- ``text_only``: a fact question naming the country by another fact; one text search.
- ``multi_hop``: the same, but the two facts sit in different passages; a text search, then
  a refined one written from its result.

Countries are split into train and test by a stable hash of their id (about 60/40), so no
test entity is ever seen in training; photos (backgrounds) are shared.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mmsearch_gym.errors import ConfigError, DataError
from mmsearch_gym.grounding import AnnotationGrounder, position_name
from mmsearch_gym.tasks import SEARCH_FREE, SceneObject, Task
from mmsearch_gym.world.knowledge import FACT_LABELS, Entity, Knowledge, load_knowledge
from mmsearch_gym.world.reader import FACT_NOUNS, number_words
from mmsearch_gym.world.scene import (
    _BORDER_COLOURS,
    _RENDER_CACHE,
    FLAG_ASPECT,
    SCENE_SIZE,
    _cell_name,
    _flag_box,
    _no_image,
    _r,
    _rotated_half_extent,
    _row_word,
    confusable_flags,
    render_scene,
)

__all__ = [
    "CATEGORIES",
    "CORE_CATEGORIES",
    "MULTI_HOP",
    "RECIPE_FORMAT",
    "TaskGenerator",
    "entity_split",
    "render_scene",
    "task_from_recipe",
]

MULTI_HOP = "multi_hop"
CORE_CATEGORIES: tuple[str, ...] = (SEARCH_FREE, "image_search", "image_then_text", "crop", "text_only")
"""The first five categories: task ``i`` of a split has category ``CORE_CATEGORIES[i % 5]``."""
CATEGORIES: tuple[str, ...] = CORE_CATEGORIES + (MULTI_HOP,)
"""All task categories. ``multi_hop`` tasks have their own index stream (ids ``...-mh-NNNNNN``),
so adding them left every task of the five core categories unchanged."""

RECIPE_FORMAT = 1
"""Bumped whenever the meaning of a recipe field (and so the rendered pixels) changes."""

TRAIN_PERCENT = 60
"""Share of countries (by stable hash of the id) that belong to the train split."""

_SPLIT_SALT = "mmsearch-gym/world/split/v1"
_SPLIT_CODES = {"train": 1, "test": 2}


_CELLS = [(row, col) for row in range(3) for col in range(3)]
_CORNER_CELLS = [(0, 0), (0, 2), (2, 0), (2, 2)]
_ORDINALS = {1: "first", 2: "second", 3: "third", 4: "fourth"}
_CELL_PHRASE = {(0, 0): "in the top left corner", (0, 2): "in the top right corner",
                (2, 0): "in the bottom left corner", (2, 2): "in the bottom right corner",
                (1, 1): "in the center"}

# How often each fact is asked in image_then_text (low-entropy facts rarely, so that guessing
# the most common answer cannot pass for knowledge).
_FACT_WEIGHTS = {"capital": 5, "highest_point": 2, "national_symbol": 2, "national_anthem": 2,
                 "currency": 2, "region": 1, "government_type": 1, "independence": 1}

_TEMPLATES_IMAGE_SEARCH = (
    "Which country's flag is this?",
    "This flag belongs to which country?",
    "Name the country whose flag is shown in the image.",
)
_TEMPLATES_FACT = {
    "capital": ("What is the capital of the country whose flag is shown?",
                "This is the flag of a country. What is its capital city?"),
    "region": ("In which region of the world is the country whose flag is shown?",),
    "highest_point": ("What is the highest point of the country whose flag is shown?",),
    "national_symbol": ("What is the national symbol of the country whose flag is shown?",),
    "national_anthem": ("What is the national anthem of the country whose flag is shown?",),
    "currency": ("What is the currency of the country whose flag is shown?",),
    "independence": ("In which year did the country whose flag is shown become independent?",),
    "government_type": ("What type of government does the country whose flag is shown have?",),
}
# text_only: (asked fact or None for "which country", bridge fact) and their weights.
_TEXT_TEMPLATES = {
    ("capital", "national_anthem"): 3, ("capital", "national_symbol"): 3,
    (None, "national_anthem"): 2, (None, "national_symbol"): 2, (None, "highest_point"): 2,
    (None, "currency"): 1, ("national_anthem", "capital"): 1, ("national_symbol", "capital"): 1,
}
# multi_hop: (asked fact, bridge fact) pairs whose values sit in different Factbook sections
# (Government vs Geography), so the passage the bridge query finds lacks the asked fact.
_MULTI_HOP_TEMPLATES = {
    ("highest_point", "capital"): 2, ("highest_point", "national_anthem"): 2,
    ("highest_point", "national_symbol"): 2, ("capital", "highest_point"): 2,
    ("national_anthem", "highest_point"): 1, ("national_symbol", "highest_point"): 1,
}
_BRIDGE_NOUN = {"capital": "capital", "national_anthem": "national anthem",
                "national_symbol": "national symbol", "highest_point": "highest point",
                "currency": "currency"}


# --------------------------------------------------------------------------------------------
# Splits and small helpers
# --------------------------------------------------------------------------------------------


def entity_split(entity_id: str) -> str:
    """"train" or "test": a fixed partition of countries by a stable hash of their id."""
    digest = hashlib.sha256(f"{_SPLIT_SALT}:{entity_id}".encode()).hexdigest()
    return "train" if int(digest[:8], 16) % 100 < TRAIN_PERCENT else "test"


def _fold(text: str) -> str:
    """Lowercase, accents and punctuation removed, words single-spaced (for leak checks)."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return " ".join(re.findall(r"[a-z0-9]+", plain.lower()))


def _ascii_variant(text: str) -> str | None:
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").strip()
    return plain if plain and plain != text else None


def _with_variants(value: str) -> list[str]:
    variant = _ascii_variant(value)
    return [value] if variant is None else [value, variant]


def _leaks(question: str, answers: Sequence[str], extra: Sequence[str] = ()) -> bool:
    """True when the question gives away an answer: an answer (or an ``extra`` word such as
    the demonym) appears in it, or a word of the question starts with a one-word answer's
    stem ("Moroccan" for "Morocco")."""
    q = f" {_fold(question)} "
    words = q.split()
    for answer in [*answers, *extra]:
        a = _fold(answer)
        if not a:
            continue
        if f" {a} " in q:
            return True
        if " " not in a and len(a) >= 4:
            stem = a[:max(4, len(a) - 2)]
            if any(w.startswith(stem) for w in words):
                return True
    return False


def task_from_recipe(recipe: Mapping[str, Any]) -> Task:
    """A Task whose image is rendered lazily (and LRU-cached) from the recipe's scene."""
    scene = recipe["scene"]
    key = f"{recipe['id']}:{hashlib.sha1(json.dumps(scene, sort_keys=True).encode()).hexdigest()}"
    objects = tuple(SceneObject.from_json(o) for o in recipe.get("objects", ()))
    meta = {"recipe": recipe, "template": recipe["template"], "oracle_plan": recipe["oracle_plan"],
            "image_size": list(scene["size"])}
    return Task(
        id=recipe["id"], question=recipe["question"], answers=tuple(recipe["answers"]),
        category=recipe["category"], split=recipe["split"], objects=objects,
        render=lambda: _RENDER_CACHE.get(key, lambda: render_scene(scene)), meta=meta,
    )


# --------------------------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------------------------


class _Retry(Exception):
    """This draw cannot make a valid task; draw again."""


class TaskGenerator:
    """Makes task recipes for a split from a seed; recipe ``i`` depends only on
    (split, seed, i), so any prefix of a longer run is the shorter run."""

    def __init__(self, knowledge: Knowledge | None = None) -> None:
        self.knowledge = knowledge or load_knowledge()
        self.confusable = confusable_flags(self.knowledge)
        self.photos = [p.id for p in self.knowledge.photos()]
        if not self.photos:
            raise DataError("the world has no photos to use as backgrounds; rebuild it")
        countries = self.knowledge.countries()
        self.countries = {s: [c for c in countries if entity_split(c.id) == s] for s in _SPLIT_CODES}
        self.targets = {s: [c for c in cs if c.id not in self.confusable] for s, cs in self.countries.items()}
        self._unique = self._unique_values(countries)
        self._grounder = AnnotationGrounder()

    @staticmethod
    def _unique_values(countries: Sequence[Entity]) -> dict[str, set[str]]:
        """Per fact, the folded values that exactly one country has (safe bridges)."""
        counts: dict[str, dict[str, int]] = {}
        for c in countries:
            for key, value in c.facts.items():
                counts.setdefault(key, {})
                counts[key][_fold(value)] = counts[key].get(_fold(value), 0) + 1
        return {k: {v for v, n in vc.items() if n == 1} for k, vc in counts.items()}

    # -- public ------------------------------------------------------------------------------

    def task_id(self, split: str, seed: int, index: int, category: str | None = None) -> str:
        number = f"mh-{index:06d}" if category == MULTI_HOP else f"{index:06d}"
        return f"test-{number}" if split == "test" else f"{split}-s{seed}-{number}"

    def recipe(self, split: str, seed: int, index: int, category: str | None = None) -> dict[str, Any]:
        """The recipe of task ``index`` of ``split`` under ``seed``: of the core category
        ``CORE_CATEGORIES[index % 5]``, or, with ``category="multi_hop"``, task ``index`` of
        the multi_hop stream (seeded apart, so it never shifts the core tasks)."""
        if split not in _SPLIT_CODES:
            raise ConfigError(f"unknown split {split!r}; expected 'train' or 'test'")
        stream = [int(seed), int(index), _SPLIT_CODES[split]]
        if category == MULTI_HOP:
            stream.append(len(CATEGORIES))
        elif category is not None and category != CORE_CATEGORIES[index % len(CORE_CATEGORIES)]:
            raise ConfigError(f"task {index} of a split is a {CORE_CATEGORIES[index % 5]} task, not {category}")
        rng = np.random.default_rng(np.random.SeedSequence(stream))
        category = MULTI_HOP if category == MULTI_HOP else CORE_CATEGORIES[index % len(CORE_CATEGORIES)]
        build = getattr(self, f"_build_{category}")
        for _ in range(200):
            try:
                body = build(rng, split)
            except _Retry:
                continue
            recipe = {"format": RECIPE_FORMAT, "id": self.task_id(split, seed, index, category), "split": split,
                      "seed": int(seed), "index": int(index), "category": category}
            recipe.update(body)
            return recipe
        raise DataError(f"could not generate a valid {category} task for {split}/{seed}/{index}; "
                        "the world data may be too small")

    def recipes(self, split: str, n: int, seed: int = 0, *, progress: bool = False,
                categories: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The first ``n`` recipes of ``split`` under ``seed`` (only of ``categories``, if given).

        Tasks cycle through the wanted categories in :data:`CATEGORIES` order. Core task ``i``
        has category ``CORE_CATEGORIES[i % 5]`` and multi_hop tasks are numbered apart, so the
        tasks of some categories are exactly those of the unfiltered set, by the same ids.
        Without ``categories`` a generated split holds the five core categories (as before
        multi_hop existed, so every recipe and result made on it reproduces); name
        ``"multi_hop"`` in ``categories`` to train on it.
        """
        if n < 0:
            raise ConfigError(f"n must be >= 0, got {n}")
        wanted = set(CORE_CATEGORIES) if categories is None else _check_categories(categories)
        cycle = [c for c in CATEGORIES if c in wanted]
        keys: Any = [self._slot(cycle, k) for k in range(n)]
        if progress:
            from tqdm import tqdm
            keys = tqdm(keys, desc=f"generating {split} tasks", unit="task")
        return [self.recipe(split, seed, index, category) for index, category in keys]

    @staticmethod
    def _slot(cycle: Sequence[str], k: int) -> tuple[int, str | None]:
        """(index, category) of the ``k``-th task cycling through ``cycle``."""
        block, category = divmod(k, len(cycle))[0], cycle[k % len(cycle)]
        if category == MULTI_HOP:
            return block, MULTI_HOP
        return len(CORE_CATEGORIES) * block + CORE_CATEGORIES.index(category), None

    # -- scene pieces ----------------------------------------------------------------------

    def _background(self, rng: np.random.Generator, size: tuple[int, int]) -> dict[str, Any]:
        photo = self.photos[int(rng.integers(len(self.photos)))]
        pw, ph = self.knowledge.image(photo).size
        aspect = size[0] / size[1]
        cw, ch = (pw, pw / aspect) if pw / ph <= aspect else (ph * aspect, ph)
        scale = rng.uniform(0.75, 1.0)
        cw, ch = cw * scale, ch * scale
        x1 = rng.uniform(0, pw - cw)
        y1 = rng.uniform(0, ph - ch)
        return {"photo": photo, "crop": [int(x1), int(y1), int(x1 + cw), int(y1 + ch)]}

    @staticmethod
    def _jitter(rng: np.random.Generator, amount: float = 0.15) -> list[float]:
        return [_r(v) for v in rng.uniform(1 - amount, 1 + amount, size=3)]

    def _place_flags(self, rng: np.random.Generator, entities: Sequence[Entity], cells: Sequence[tuple[int, int]],
                     widths: Sequence[float], size: tuple[int, int]) -> tuple[list[dict], list[SceneObject]]:
        """Flags at the given grid cells (centre jittered inside the cell), with annotations."""
        width, height = size
        specs, boxes = [], []
        for entity, (row, col), frac in zip(entities, cells, widths, strict=False):
            fw = round(frac * width)
            fh = round(fw * FLAG_ASPECT)
            angle = _r(rng.uniform(-4.0, 4.0), 2)
            cx = (col + 0.5 + rng.uniform(-0.12, 0.12)) * width / 3
            cy = (row + 0.5 + rng.uniform(-0.12, 0.12)) * height / 3
            hw, hh = _rotated_half_extent(fw, fh, angle)
            cx = min(max(cx, hw + 2), width - hw - 2)
            cy = min(max(cy, hh + 2), height - hh - 2)
            spec: dict[str, Any] = {"entity": entity.id, "center": [_r(cx, 2), _r(cy, 2)], "size": [fw, fh],
                    "angle": angle, "jitter": self._jitter(rng)}
            box = _flag_box(spec["center"], spec["size"], angle, size)
            if position_name(box, size) != _cell_name((row, col)):
                raise _Retry()
            specs.append(spec)
            boxes.append(box)
        areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
        by_area = sorted(range(len(boxes)), key=lambda i: (-areas[i], i))
        by_x = sorted(range(len(boxes)), key=lambda i: ((boxes[i][0] + boxes[i][2]) / 2, i))
        objects = []
        for i, (spec, box) in enumerate(zip(specs, boxes, strict=False)):
            rank = by_area.index(i)
            size_rank = ("only" if len(boxes) == 1 else "largest" if rank == 0
                         else "smallest" if rank == len(boxes) - 1 else f"{_ORDINALS[rank + 1]} largest")
            objects.append(SceneObject(label="flag", box=box, entity=spec["entity"], attributes={
                "position": position_name(box, size), "size_rank": size_rank, "x_rank": by_x.index(i) + 1}))
        return specs, objects

    def _check_refers(self, expression: str, objects: Sequence[SceneObject], target: int,
                      size: tuple[int, int]) -> None:
        """The grounder must resolve the question's referring expression to the target flag."""
        probe = Task(id="probe", question="", answers=("-",), objects=tuple(objects),
                     render=_no_image, meta={"image_size": list(size)})
        if self._grounder.ground(expression, probe) != objects[target].box:
            raise _Retry()

    def _single_flag_scene(self, rng: np.random.Generator, entity: Entity) -> tuple[dict, list[SceneObject]]:
        """One flag filling the image, sometimes on a plain border and slightly rotated."""
        fw = int(rng.integers(180, 321))
        fh = round(fw * FLAG_ASPECT)
        border = 0 if rng.random() < 0.5 else int(rng.integers(6, 21))
        angle = 0.0 if border == 0 else _r(rng.uniform(-4.0, 4.0), 2)
        colour = list(_BORDER_COLOURS[int(rng.integers(len(_BORDER_COLOURS)))])
        size = (fw + 2 * border, fh + 2 * border)
        spec: dict[str, Any] = {"entity": entity.id, "center": [size[0] / 2, size[1] / 2], "size": [fw, fh],
                "angle": angle, "jitter": self._jitter(rng, 0.1)}
        scene = {"size": list(size), "background": {"color": colour}, "flags": [spec],
                 "jpeg_quality": int(rng.integers(75, 96))}
        box = _flag_box(spec["center"], spec["size"], angle, size)
        obj = SceneObject(label="flag", box=box, entity=entity.id,
                          attributes={"position": position_name(box, size), "size_rank": "only", "x_rank": 1})
        return scene, [obj]

    @staticmethod
    def _body(template: str, question: str, answers: Sequence[str], scene: dict,
              objects: Sequence[SceneObject], plan: Sequence[Mapping[str, Any]], **extra: Any) -> dict[str, Any]:
        body = {"template": template, "question": question, "answers": list(dict.fromkeys(answers)),
                "scene": scene, "objects": [o.to_json() for o in objects], "oracle_plan": [dict(p) for p in plan]}
        body.update(extra)
        return body

    @staticmethod
    def _pick(rng: np.random.Generator, items: Sequence[Any]) -> Any:
        if not items:
            raise _Retry()
        return items[int(rng.integers(len(items)))]

    @staticmethod
    def _weighted(rng: np.random.Generator, weights: Mapping[Any, int]) -> Any:
        keys = list(weights)
        p = np.array([weights[k] for k in keys], dtype=np.float64)
        return keys[int(rng.choice(len(keys), p=p / p.sum()))]

    # -- categories --------------------------------------------------------------------------

    def _build_search_free(self, rng: np.random.Generator, split: str) -> dict[str, Any]:
        n = int(rng.integers(1, 5))
        cells = [_CELLS[i] for i in rng.permutation(9)[:n]]
        pool = self.countries[split]
        entities = [pool[i] for i in rng.permutation(len(pool))[:n]]
        widths = [float(w) for w in rng.uniform(0.12, 0.22, size=n)]
        specs, objects = self._place_flags(rng, entities, cells, widths, SCENE_SIZE)
        scene = {"size": list(SCENE_SIZE), "background": self._background(rng, SCENE_SIZE), "flags": specs,
                 "jpeg_quality": int(rng.integers(75, 93))}
        kind = int(rng.integers(3))
        if kind == 0:
            question = self._pick(rng, ("How many flags are in this picture?",
                                        "How many flags can you see in the image?"))
            template, answers = "search_free/count", number_words(n)
        elif kind == 1:
            name = _cell_name(self._pick(rng, _CORNER_CELLS))
            present = any(o.attributes["position"] == name for o in objects)
            question = f"Is there a flag in the {name} corner of the picture?"
            template, answers = "search_free/corner", ("yes",) if present else ("no",)
        else:
            row = self._pick(rng, ("top", "middle", "bottom"))
            count = sum(1 for o in objects if _row_word(o.attributes["position"]) == row)
            question = f"How many flags are in the {row} row of the picture?"
            template, answers = "search_free/row_count", number_words(count)
        if _leaks(question, answers):
            raise _Retry()
        return self._body(template, question, answers, scene, objects, [{"tool": "answer"}])

    def _build_image_search(self, rng: np.random.Generator, split: str) -> dict[str, Any]:
        entity = self._pick(rng, self.targets[split])
        scene, objects = self._single_flag_scene(rng, entity)
        question = self._pick(rng, _TEMPLATES_IMAGE_SEARCH)
        answers = entity.answers
        if _leaks(question, answers):
            raise _Retry()
        plan: list[dict[str, Any]] = [{"tool": "image_search", "box": None}, {"tool": "answer"}]
        return self._body("image_search/country", question, answers, scene, objects, plan,
                          target={"entity": entity.id})

    def _build_image_then_text(self, rng: np.random.Generator, split: str) -> dict[str, Any]:
        key = self._weighted(rng, _FACT_WEIGHTS)
        entity = self._pick(rng, [c for c in self.targets[split] if key in c.facts])
        value = entity.facts[key]
        scene, objects = self._single_flag_scene(rng, entity)
        question = self._pick(rng, _TEMPLATES_FACT[key])
        answers = _with_variants(value)
        if _leaks(question, answers):
            raise _Retry()
        plan: list[dict[str, Any]] = [{"tool": "image_search", "box": None},
                {"tool": "text_search", "query": f"{entity.name} {FACT_LABELS[key]}"},
                {"tool": "answer"}]
        return self._body(f"image_then_text/{key}", question, answers, scene, objects, plan,
                          target={"entity": entity.id, "fact": key})

    def _build_crop(self, rng: np.random.Generator, split: str) -> dict[str, Any]:
        kind = self._weighted(rng, {"position": 4, "largest": 2, "smallest": 1, "extreme": 2, "ordinal": 1})
        target_entity = self._pick(rng, self.targets[split])
        n = int(rng.integers(2, 5)) if kind != "ordinal" else int(rng.integers(2, 4))
        free = [c for c in _CELLS]
        if kind == "position":
            target_cell = self._pick(rng, [*_CORNER_CELLS, (1, 1)])
            others = [c for c in free if c != target_cell]
            cells = [target_cell] + [others[i] for i in rng.permutation(len(others))[:n - 1]]
        elif kind == "extreme":
            side = self._pick(rng, ("left", "right", "top", "bottom"))
            if side in ("left", "right"):
                edge = 0 if side == "left" else 2
                target_cell = (int(rng.integers(3)), edge)
                others = [c for c in free if c[1] != edge]
            else:
                edge = 0 if side == "top" else 2
                target_cell = (edge, int(rng.integers(3)))
                others = [c for c in free if c[0] != edge]
            cells = [target_cell] + [others[i] for i in rng.permutation(len(others))[:n - 1]]
        elif kind == "ordinal":
            cols = [int(c) for c in rng.permutation(3)[:n]]
            cells = [(int(rng.integers(3)), col) for col in cols]
        else:
            cells = [free[i] for i in rng.permutation(9)[:n]]
        if kind == "largest":
            widths = [rng.uniform(0.19, 0.21)] + list(rng.uniform(0.12, 0.15, size=n - 1))
        elif kind == "smallest":
            widths = [rng.uniform(0.12, 0.125)] + list(rng.uniform(0.16, 0.20, size=n - 1))
        else:
            widths = list(rng.uniform(0.12, 0.20, size=n))
        distractors = [c for c in self.countries[split] if c.id != target_entity.id]
        entities = [target_entity] + [distractors[i] for i in rng.permutation(len(distractors))[:n - 1]]
        specs, objects = self._place_flags(rng, entities, cells, [float(w) for w in widths], SCENE_SIZE)
        target = 0
        if kind == "position":
            phrase = _CELL_PHRASE[cells[0]]
            expression = f"the flag {phrase}"
            question = self._pick(rng, (f"Which country's flag is {phrase} of the picture?",
                                        f"The flag {phrase} of the image belongs to which country?"))
        elif kind in ("largest", "smallest"):
            expression = f"the {kind} flag"
            question = self._pick(rng, (f"Which country does the {kind} flag in the picture belong to?",
                                        f"Name the country of the {kind} flag in this image."))
        elif kind == "extreme":
            expression = f"the {side}most flag"
            question = self._pick(rng, (f"Which country's flag is the {side}most one in the picture?",
                                        f"The {side}most flag in this image belongs to which country?"))
        else:
            order = sorted(range(n), key=lambda i: (objects[i].box[0] + objects[i].box[2], i))
            rank = order.index(0) + 1
            side = "left"
            if rank > (n + 1) // 2:
                rank, side = n - rank + 1, "right"
            expression = f"the {_ORDINALS[rank]} flag from the {side}"
            question = f"Which country does the {_ORDINALS[rank]} flag from the {side} belong to?"
        self._check_refers(expression, objects, target, SCENE_SIZE)
        self._check_separated(kind, objects, target, side if kind == "extreme" else None)
        answers = target_entity.answers
        if _leaks(question, answers):
            raise _Retry()
        scene = {"size": list(SCENE_SIZE), "background": self._background(rng, SCENE_SIZE), "flags": specs,
                 "jpeg_quality": int(rng.integers(75, 93))}
        plan: list[dict[str, Any]] = [{"tool": "image_search", "box": list(objects[target].box)}, {"tool": "answer"}]
        return self._body(f"crop/{kind}", question, answers, scene, objects, plan,
                          target={"entity": target_entity.id, "expression": expression})

    @staticmethod
    def _check_separated(kind: str, objects: Sequence[SceneObject], target: int, side: str | None = None) -> None:
        """Order and size references must be clear to a person too, not just to the grounder:
        sizes differ by 30 % in area, orders by 60 px between flag centres."""
        boxes = [o.box for o in objects]
        t = boxes[target]
        others = [b for i, b in enumerate(boxes) if i != target]

        def area(b: Sequence[int]) -> int:
            return (b[2] - b[0]) * (b[3] - b[1])

        def centre(b: Sequence[int], axis: int) -> float:
            return (b[axis] + b[axis + 2]) / 2

        if kind == "largest" and not area(t) >= 1.3 * max(area(b) for b in others):
            raise _Retry()
        if kind == "smallest" and not 1.3 * area(t) <= min(area(b) for b in others):
            raise _Retry()
        if kind == "extreme":
            axis = 0 if side in ("left", "right") else 1
            sign = -1 if side in ("left", "top") else 1
            if not all(sign * (centre(t, axis) - centre(b, axis)) >= 60 for b in others):
                raise _Retry()
        if kind == "ordinal":
            xs = sorted(centre(b, 0) for b in boxes)
            if any(b - a < 60 for a, b in itertools.pairwise(xs)):
                raise _Retry()

    def _build_text_only(self, rng: np.random.Generator, split: str) -> dict[str, Any]:
        asked, bridge = self._weighted(rng, _TEXT_TEMPLATES)
        candidates = [c for c in self.countries[split]
                      if bridge in c.facts and _fold(c.facts[bridge]) in self._unique.get(bridge, set())
                      and (asked is None or asked in c.facts) and '"' not in c.facts[bridge]]
        entity = self._pick(rng, candidates)
        value = entity.facts[bridge]
        noun = _BRIDGE_NOUN[bridge]
        if asked is None:
            question = self._pick(rng, (f'Which country\'s {noun} is "{value}"?',
                                        f'Which country has "{value}" as its {noun}?'))
            answers = list(entity.answers)
            extra = [entity.facts["demonym"]] if "demonym" in entity.facts else []
            template = f"text_only/country_by_{bridge}"
        else:
            question = f'What is the {FACT_NOUNS[asked]} of the country whose {noun} is "{value}"?'
            answers = _with_variants(entity.facts[asked])
            extra = []
            template = f"text_only/{asked}_by_{bridge}"
        if _leaks(question, answers, extra) or (asked is not None and _leaks(question, entity.answers)):
            raise _Retry()
        size = SCENE_SIZE
        scene = {"size": list(size), "background": self._background(rng, size), "flags": [],
                 "jpeg_quality": int(rng.integers(75, 93))}
        plan: list[dict[str, Any]] = [{"tool": "text_search", "query": f'{FACT_LABELS[bridge]} "{value}"'},
                                      {"tool": "answer"}]
        return self._body(template, question, answers, scene, [], plan,
                          target={"entity": entity.id, "fact": asked, "bridge": bridge})

    def _build_multi_hop(self, rng: np.random.Generator, split: str) -> dict[str, Any]:
        """Two text hops: the bridge fact names the country (one Factbook section), the asked
        fact sits in another section, so the first query's evidence cannot answer and the
        second query must be written from what the first one returned (the country's name)."""
        asked, bridge = self._weighted(rng, _MULTI_HOP_TEMPLATES)
        candidates = [c for c in self.countries[split]
                      if bridge in c.facts and asked in c.facts
                      and _fold(c.facts[bridge]) in self._unique.get(bridge, set())
                      and _fold(c.facts[asked]) in self._unique.get(asked, set())
                      and '"' not in c.facts[bridge]]
        entity = self._pick(rng, candidates)
        value = entity.facts[bridge]
        question = self._pick(rng, (
            f'What is the {FACT_NOUNS[asked]} of the country whose {_BRIDGE_NOUN[bridge]} is "{value}"?',
            f'Name the {FACT_NOUNS[asked]} of the country whose {_BRIDGE_NOUN[bridge]} is "{value}".'))
        answers = _with_variants(entity.facts[asked])
        if _leaks(question, answers) or _leaks(question, entity.answers):
            raise _Retry()
        size = SCENE_SIZE
        scene = {"size": list(size), "background": self._background(rng, size), "flags": [],
                 "jpeg_quality": int(rng.integers(75, 93))}
        plan: list[dict[str, Any]] = [{"tool": "text_search", "query": f'{FACT_LABELS[bridge]} "{value}"'},
                {"tool": "text_search", "query": f"{entity.name} {FACT_LABELS[asked]}"},
                {"tool": "answer"}]
        return self._body(f"multi_hop/{asked}_by_{bridge}", question, answers, scene, [], plan,
                          target={"entity": entity.id, "fact": asked, "bridge": bridge})


def _check_categories(categories: Sequence[str] | None) -> set[str]:
    """The set of categories asked for (all when ``None``); an unknown or empty list is an error."""
    if categories is None:
        return set(CATEGORIES)
    if isinstance(categories, str):
        categories = [categories]
    unknown = sorted(set(categories) - set(CATEGORIES))
    if unknown or not categories:
        raise ConfigError(f"categories must be a non-empty list of {list(CATEGORIES)}, got {list(categories)!r}")
    return set(categories)
