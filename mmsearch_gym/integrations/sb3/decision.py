"""The decision problem: which discrete actions exist, how observations are built from the
question, the task image and the hits so far, and how a decision becomes action text.

Shared by the training wrapper (:mod:`.wrapper`) and the evaluation policy (:mod:`.policy`),
so a policy sees at evaluation exactly the features it was trained on.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from itertools import pairwise
from typing import Any, Literal

import numpy as np
from gymnasium import spaces
from PIL import Image

from mmsearch_gym.actions import UNABLE_TO_ANSWER, Action, Answer, Dialect, ImageSearch, Region, TextSearch
from mmsearch_gym.errors import ConfigError
from mmsearch_gym.grounding import Grounder
from mmsearch_gym.lru import LRU
from mmsearch_gym.policies import EvidenceReaderLike, default_reader
from mmsearch_gym.search.base import Hit
from mmsearch_gym.search.image_features import FEATURE_DIM, image_feature
from mmsearch_gym.tasks import Task

CROP_POSITIONS: tuple[str, ...] = ("top left", "top", "top right", "left", "center", "right",
                                   "bottom left", "bottom", "bottom right")
"""The 3x3 grid names of :func:`mmsearch_gym.grounding.position_name`, which the world
generator writes into questions and scene annotations."""
CROP_TARGETS: tuple[str, ...] = (*CROP_POSITIONS, "largest", "smallest", "second from the left")
"""What a crop decision can point at: a grid position, or the size and order selectors the
world's crop questions use ("the largest flag", "the second flag from the left"). The
grounder turns each into the box of one object; together they reach the target of every crop
task of the world."""

ACTION_ANSWER = "answer"
ACTION_IMAGE = "image_search"
ACTION_TEXT = "text_search"

EvidenceKind = Literal["image", "crop", "text", "other"]

_TOKEN = re.compile(r"[a-z0-9]+")
_LAYOUT_SIDE = 4
_IMAGE_BLOCKS = {"layout": _LAYOUT_SIDE * _LAYOUT_SIDE * 3, "descriptor": FEATURE_DIM, "none": 0}
_FEATURE_CACHE_SIZE = 50_000
_REASONS = {
    ACTION_IMAGE: "I need to identify what the image shows.",
    ACTION_TEXT: "I need a fact about what I identified.",
}


# --------------------------------------------------------------------------------------------
# Configuration and evidence
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecisionConfig:
    """Shape of the decision problem: which actions exist and how observations are built.

    The episode limits are copied from the env the wrapper wraps (they are part of what the
    policy was trained on, so a saved policy carries them).
    """

    question_dim: int = 128
    """Buckets of the hashed bag of words (and word pairs) of the question."""
    title_dim: int = 16
    """Buckets of the hashed words of the top image hit's title (a flag page vs a photo page)."""
    image_features: Literal["layout", "descriptor", "none"] = "layout"
    """How the task image enters the observation: ``layout``, its mean colour on a 4x4 grid
    (48 numbers: a single flag or a photo scene, and where colour sits); ``descriptor``, the
    image-search descriptor :func:`~mmsearch_gym.search.image_features.image_feature` (hundreds
    of numbers; rich enough to memorise training images, which hurts on unseen ones); ``none``."""
    crop_targets: tuple[str, ...] = CROP_TARGETS
    max_turns: int = 3
    image_search_budget: int = 1
    text_search_budget: int = 2

    def __post_init__(self) -> None:
        if self.image_features not in _IMAGE_BLOCKS:
            raise ConfigError(f"image_features must be one of {sorted(_IMAGE_BLOCKS)}, got {self.image_features!r}")
        if self.question_dim < 1 or self.title_dim < 1:
            raise ConfigError("question_dim and title_dim must be >= 1")
        if self.max_turns < 1 or self.image_search_budget < 0 or self.text_search_budget < 0:
            raise ConfigError("max_turns must be >= 1 and budgets >= 0")
        object.__setattr__(self, "crop_targets", tuple(str(p) for p in self.crop_targets))

    @property
    def action_names(self) -> tuple[str, ...]:
        """Discrete action i means ``action_names[i]``."""
        return (ACTION_ANSWER, ACTION_IMAGE, *(f"crop:{p}" for p in self.crop_targets), ACTION_TEXT)

    @property
    def block_sizes(self) -> dict[str, int]:
        """Length of each observation block, in order (documentation and debugging)."""
        return {"image": _IMAGE_BLOCKS[self.image_features], "question": self.question_dim,
                "turn": 4, "budget": 5, "image_hits": 4, "image_title": self.title_dim, "text_hits": 4}

    @property
    def observation_dim(self) -> int:
        return sum(self.block_sizes.values())

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["crop_targets"] = list(self.crop_targets)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DecisionConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown decision config keys {sorted(unknown)}; known: {sorted(known)}")
        values = dict(data)
        if "crop_targets" in values:
            values["crop_targets"] = tuple(values["crop_targets"])
        return cls(**values)


@dataclass(frozen=True)
class Evidence:
    """What one finished turn did and got back: the only history a decision looks at."""

    kind: EvidenceKind
    hits: tuple[Hit, ...] = ()

    @classmethod
    def of(cls, action: Action, hits: Sequence[Hit]) -> Evidence:
        """The evidence of a turn the env parsed as ``action`` and answered with ``hits``."""
        if isinstance(action, ImageSearch):
            return cls("image" if action.region.kind == "whole" else "crop", tuple(hits))
        if isinstance(action, TextSearch):
            return cls("text", tuple(hits))
        return cls("other", ())


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------


def _bucket(token: str, dim: int) -> int:
    """A stable bucket (unlike ``hash``, the same in every process and on every machine)."""
    digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % dim


@lru_cache(maxsize=65_536)
def _hashed_words(text: str, dim: int, pairs: bool) -> tuple[int, ...]:
    words = _TOKEN.findall(text.lower())
    tokens = list(words)
    if pairs:
        tokens += [f"{a}_{b}" for a, b in pairwise(words)]
    return tuple(sorted({_bucket(t, dim) for t in tokens}))


def hashed_bag(text: str, dim: int, *, pairs: bool = True) -> np.ndarray:
    """Presence (0/1) of the text's words, and adjacent word pairs, hashed into ``dim`` buckets."""
    out = np.zeros(dim, dtype=np.float32)
    out[list(_hashed_words(text, dim, pairs))] = 1.0
    return out


def _squash(value: float) -> float:
    """Map an unbounded score (BM25) into (-1, 1), keeping order."""
    return value / (1.0 + abs(value))


class DecisionCore:
    """The deterministic half of a decision policy: observation in, action text out.

    Shared by the training wrapper and :class:`SB3Policy`, so the policy sees at evaluation
    exactly the features it was trained on and its choices become exactly the same text.

    Args:
        config: the decision problem's shape.
        reader: reads evidence (``identify``, ``build_query``, ``answer``,
            ``answer_from_scene``); default: the built-in world's ``EvidenceReader``.
        grounder: snaps a crop position to the annotated object there (``ground(expression,
            task)``); ``None`` crops fixed half-size windows.
    """

    def __init__(self, config: DecisionConfig, *, reader: EvidenceReaderLike | None = None,
                 grounder: Grounder | None = None) -> None:
        self.config = config
        self._reader = reader
        self.grounder = grounder
        self.observation_space, self.action_space = decision_spaces(config)

    @property
    def reader(self) -> EvidenceReaderLike:
        if self._reader is None:
            self._reader = default_reader()
        return self._reader

    # -- observation --------------------------------------------------------------------
    def image_vector(self, image: Image.Image) -> np.ndarray:
        """The image block of the observation (empty when image features are off)."""
        kind = self.config.image_features
        if kind == "none":
            return np.zeros(0, dtype=np.float32)
        if kind == "layout":
            small = image.convert("RGB").resize((_LAYOUT_SIDE, _LAYOUT_SIDE), Image.Resampling.BOX)
            return (np.asarray(small, dtype=np.float32).reshape(-1) / 127.5 - 1.0).astype(np.float32)
        return np.clip(image_feature(image), -1.0, 1.0).astype(np.float32)

    def observe(self, question: str, image_vector: np.ndarray, history: Sequence[Evidence]) -> np.ndarray:
        """The observation after the turns in ``history``, blocks in order:

        ``image``: ``image_vector`` (features of the task image); ``question``: hashed words and
        word pairs; ``turn``: one-hot turns taken (0, 1, 2, 3+); ``budget``: turns left
        (fraction), last-turn flag, image and text searches left (fractions), a crop was
        searched; ``image_hits`` (latest image search): any hits, top cosine, margin to the
        second, an entity was identified; ``image_title``: hashed words of the top image hit's
        title (a flag page or a photo page); ``text_hits`` (latest text search): any hits,
        squashed top BM25 score and margin, and whether the reader finds an answer to the
        question in all hits so far.
        """
        cfg = self.config
        turns = len(history)
        image_used = sum(e.kind in ("image", "crop") for e in history)
        text_used = sum(e.kind == "text" for e in history)
        turn = np.zeros(4, dtype=np.float32)
        turn[min(turns, 3)] = 1.0
        left = max(0, cfg.max_turns - turns)
        budget = np.array([
            left / cfg.max_turns,
            1.0 if left == 1 else 0.0,
            max(0, cfg.image_search_budget - image_used) / max(1, cfg.image_search_budget),
            max(0, cfg.text_search_budget - text_used) / max(1, cfg.text_search_budget),
            1.0 if any(e.kind == "crop" for e in history) else 0.0,
        ], dtype=np.float32)

        image_hits = np.zeros(4, dtype=np.float32)
        title = np.zeros(cfg.title_dim, dtype=np.float32)
        last_image = next((e for e in reversed(history) if e.kind in ("image", "crop")), None)
        if last_image is not None and last_image.hits:
            scores = [h.score for h in last_image.hits]
            image_hits[:] = (1.0, scores[0], scores[0] - (scores[1] if len(scores) > 1 else 0.0),
                             1.0 if self.reader.identify(list(last_image.hits)) is not None else 0.0)
            title = hashed_bag(last_image.hits[0].title, cfg.title_dim, pairs=False)

        text_hits = np.zeros(4, dtype=np.float32)
        last_text = next((e for e in reversed(history) if e.kind == "text"), None)
        if last_text is not None and last_text.hits:
            scores = [h.score for h in last_text.hits]
            text_hits[:3] = (1.0, _squash(scores[0]),
                             _squash(scores[0] - (scores[1] if len(scores) > 1 else 0.0)))
        hits = [h for e in history for h in e.hits]
        if hits and self.reader.answer(question, hits) is not None:
            text_hits[3] = 1.0

        parts = [image_vector, hashed_bag(question, cfg.question_dim), turn, budget, image_hits,
                 title, text_hits]
        return np.clip(np.concatenate(parts), -1.0, 1.0).astype(np.float32)

    # -- action -------------------------------------------------------------------------
    def action(self, index: int, question: str, history: Sequence[Evidence], *,
               task: Task | None, image_size: tuple[int, int]) -> tuple[Action, str]:
        """The env action that discrete choice ``index`` stands for, and a one-line reason."""
        names = self.config.action_names
        if not 0 <= int(index) < len(names):
            raise ConfigError(f"decision {index!r} is outside 0..{len(names) - 1}")
        name = names[int(index)]
        if name == ACTION_ANSWER:
            return self.answer(question, history, task)
        if name == ACTION_IMAGE:
            return ImageSearch(Region.whole()), _REASONS[ACTION_IMAGE]
        if name == ACTION_TEXT:
            hits = [h for e in history for h in e.hits]
            return TextSearch(self.reader.build_query(question, hits)), _REASONS[ACTION_TEXT]
        target = name.split(":", 1)[1]
        box = self.crop_box(target, task, image_size)
        where = f"at the {target}" if target in CROP_POSITIONS else f"the {target} one"
        return ImageSearch(Region.from_box(*box)), f"I need to identify the object {where}."

    def answer(self, question: str, history: Sequence[Evidence], task: Task | None) -> tuple[Answer, str]:
        """Scene perception (counts, layout) first, then the reader over every hit so far."""
        if task is not None and task.objects:
            seen = self.reader.answer_from_scene(question, task.objects)
            if seen is not None:
                return Answer(seen), "I can see the answer in the image."
        hits = [h for e in history for h in e.hits]
        found = self.reader.answer(question, hits) if hits else None
        if found:
            return Answer(found), "The search results contain the answer."
        return Answer(UNABLE_TO_ANSWER), "I do not have the information."

    def crop_box(self, target: str, task: Task | None, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
        """The grounded box of the object ``target`` names, else a fixed half-size window."""
        if self.grounder is not None and task is not None and task.objects:
            box = self.grounder.ground(target, task)
            if box is not None:
                return tuple(int(v) for v in box)  # type: ignore[return-value]
        return window_box(target, image_size)

    def text(self, action: Action, reason: str, dialect: Dialect) -> str:
        return dialect.format(action, reason)


def decision_spaces(config: DecisionConfig) -> tuple[spaces.Box, spaces.Discrete]:
    """The observation and action spaces of a decision problem."""
    return (spaces.Box(-1.0, 1.0, shape=(config.observation_dim,), dtype=np.float32),
            spaces.Discrete(len(config.action_names)))


def window_box(position: str, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A half-width, half-height window towards ``position`` (the centre one for anything
    that is not a grid position), inside the image: the crop when nothing can be grounded."""
    width, height = image_size
    words = position.split()
    fx = 0.0 if "left" in words else 0.5 if "right" in words else 0.25
    fy = 0.0 if "top" in words else 0.5 if "bottom" in words else 0.25
    x1, y1 = int(fx * width), int(fy * height)
    return x1, y1, max(x1 + 1, int((fx + 0.5) * width)), max(y1 + 1, int((fy + 0.5) * height))


def _default_grounder() -> Grounder:
    from mmsearch_gym.grounding import AnnotationGrounder
    return AnnotationGrounder()


class FeatureCache:
    """Image feature vectors per task id (training resets the same tasks over and over)."""

    def __init__(self, size: int = _FEATURE_CACHE_SIZE) -> None:
        self._items: LRU[str, np.ndarray] = LRU(size)

    def get(self, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        def make() -> np.ndarray:
            value = compute()
            value.setflags(write=False)
            return value
        return self._items.get_or_make(key, make)


# --------------------------------------------------------------------------------------------
