"""WorldSearchEngine: the offline search backend over the built-in world.

Text search ranks every passage of every entity (Factbook sections, photo pages) with BM25;
image search describes the queried pixels (the crop, if the query has a box) with
:func:`~mmsearch_gym.search.image_features.image_feature` and returns the nearest reference
pictures (flags, photos). Both are exact, deterministic and fast enough that the env never
waits on them, so ``gym.make("MMSearch-v0")`` works with no network and no API key.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from PIL import Image

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.search.base import Hit, ImageQuery
from mmsearch_gym.search.bm25 import BM25Index
from mmsearch_gym.search.image_features import FEATURE_VERSION, ImageIndex, image_feature
from mmsearch_gym.world.knowledge import Entity, Knowledge, Passage, load_knowledge

__all__ = ["RANKING_VERSION", "WorldSearchEngine"]

RANKING_VERSION = "1"
"""Bumped whenever ranking or hit formatting changes (it is part of ``WorldSearchEngine.version``)."""

_SCORE_DIGITS = 6
"""Scores are rounded so that cassettes recorded on different machines compare equal."""


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise ConfigError(f"k (the number of results) must be an int, got {k!r}")
    return k


class WorldSearchEngine:
    """A :class:`~mmsearch_gym.search.base.SearchBackend` over a :class:`Knowledge`.

    Build one with :meth:`load` (the shipped world, cached per process) or
    ``WorldSearchEngine(Knowledge(path))`` for a world built elsewhere. Read-only after
    construction, so one engine can serve many threads (or be rebuilt in each process:
    results are identical).
    """

    name = "world"

    def __init__(self, knowledge: Knowledge) -> None:
        self.knowledge = knowledge
        self.version = f"{RANKING_VERSION}.{FEATURE_VERSION}+{knowledge.content_hash[:10]}"
        self._passages: list[tuple[str, Passage]] = knowledge.passages()
        self._bm25 = BM25Index([f"{p.title}\n{p.text}" for _, p in self._passages])
        self._image_ids: list[str] = list(knowledge.entities)
        self._images = ImageIndex(knowledge.features())
        self._by_url: dict[str, Entity] = {}
        for entity in knowledge.entities.values():
            self._by_url.setdefault(entity.image_url, entity)
            for passage in entity.passages:
                self._by_url.setdefault(passage.url, entity)
        self._thumbs: dict[str, bytes] = {}
        self._lock = threading.Lock()

    _default: WorldSearchEngine | None = None
    _default_lock = threading.Lock()

    @classmethod
    def load(cls) -> WorldSearchEngine:
        """The engine over the shipped world, built once per process."""
        with cls._default_lock:
            if cls._default is None:
                cls._default = cls(load_knowledge())
            return cls._default

    def __repr__(self) -> str:
        return (f"WorldSearchEngine({len(self._passages)} passages, {len(self._image_ids)} images, "
                f"version={self.version!r})")

    def cache_params(self) -> dict[str, object]:
        """Extra settings that change results (none: the data hash is in ``version``)."""
        return {}

    def entity_for_url(self, url: str) -> Entity | None:
        """The entity whose passage or picture lives at ``url`` (None for foreign URLs)."""
        return self._by_url.get(url)

    # -- text -----------------------------------------------------------------------------

    def text_search(self, query: str, k: int) -> list[Hit]:
        """The ``k`` best passages for ``query`` by BM25 (ties go to the earlier passage)."""
        if _check_k(k) <= 0 or not isinstance(query, str) or not query.strip():
            return []
        hits = []
        for doc, score in self._bm25.search(query, k):
            _, passage = self._passages[doc]
            hits.append(Hit(title=passage.title, url=passage.url, snippet=passage.text,
                            score=round(score, _SCORE_DIGITS), source=self.name))
        return hits

    # -- images ---------------------------------------------------------------------------

    def _thumbnail(self, entity_id: str) -> bytes:
        with self._lock:
            data = self._thumbs.get(entity_id)
        if data is None:
            data = self.knowledge.thumbnail(entity_id)
            with self._lock:
                data = self._thumbs.setdefault(entity_id, data)
        return data

    def search_pixels(self, image: Image.Image, k: int) -> list[tuple[Entity, float]]:
        """The ``k`` reference pictures most similar to ``image``, as (entity, cosine)."""
        if _check_k(k) <= 0:
            return []
        if image.width < 1 or image.height < 1:
            raise ConfigError(f"cannot search an empty image (size {image.size}); check the crop box")
        entities: Mapping[str, Entity] = self.knowledge.entities
        return [(entities[self._image_ids[row]], score)
                for row, score in self._images.search(image_feature(image), k)]

    def image_search(self, image: ImageQuery, k: int) -> list[Hit]:
        """Reverse image search: the query's pixels (its crop, if boxed) against every picture."""
        return [Hit(title=entity.image_title, url=entity.image_url, snippet=entity.image_snippet,
                    score=round(score, _SCORE_DIGITS), source=self.name,
                    thumbnail=self._thumbnail(entity.id))
                for entity, score in self.search_pixels(image.cropped(), k)]
