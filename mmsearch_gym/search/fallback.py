"""CassetteFallback: approximate answers for queries a replay cache never recorded.

Strict replay stops a run at the first unrecorded query. With a fallback, a policy that
drifts from the recorded queries (new wording, a different crop) still gets plausible,
deterministic results drawn from everything that *was* recorded: text queries are ranked
over every recorded document (title + snippet) with BM25, image queries over every recorded
thumbnail by cosine similarity of :func:`~mmsearch_gym.search.image_features.image_feature`.
Its hits say ``source="fallback"`` so logs show which answers were approximate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mmsearch_gym.search.base import Hit, ImageQuery
from mmsearch_gym.search.bm25 import BM25Index
from mmsearch_gym.search.cache import SearchCache
from mmsearch_gym.search.cassette import read_cassette
from mmsearch_gym.search.entry import CacheEntry
from mmsearch_gym.search.store import iter_entries, open_store

if TYPE_CHECKING:
    from mmsearch_gym.search.image_features import ImageIndex

__all__ = ["CassetteFallback"]


class CassetteFallback:
    """A SearchBackend over the documents and thumbnails of recorded cache entries.

    Documents are the distinct hits by URL (the first occurrence in key order wins), so the
    index and every ranking are a pure function of the recorded contents. Thumbnail features
    are computed lazily on the first image search.
    """

    name = "fallback"

    def __init__(self, entries: Iterable[CacheEntry], *, k1: float = 1.5, b: float = 0.75) -> None:
        ordered = sorted(entries, key=lambda e: e.key)
        docs: dict[str, Hit] = {}
        images: dict[tuple[str, str], Hit] = {}
        digest = hashlib.sha256()
        for entry in ordered:
            digest.update(entry.key.encode("ascii"))
            for hit in entry.hits:
                docs.setdefault(hit.url, hit)
                if hit.thumbnail is not None:
                    sha = hashlib.sha256(hit.thumbnail).hexdigest()
                    images.setdefault((hit.url, sha), hit)
        self._docs: list[Hit] = list(docs.values())
        self._text_index = BM25Index([f"{h.title}\n{h.snippet}" for h in self._docs], k1=k1, b=b)
        self._images: list[Hit] = list(images.values())
        self._image_index: ImageIndex | None = None
        self.version: str = "1+" + digest.hexdigest()[:16]
        """Changes with the recorded contents, so a fallback's answers are traceable to its source."""

    @classmethod
    def from_cassette(cls, path: str | Path) -> CassetteFallback:
        """Index a cassette file (validated in full)."""
        return cls(read_cassette(path).entry_list)

    @classmethod
    def from_cache(cls, cache: SearchCache | str | Path) -> CassetteFallback:
        """Index a cache: a SearchCache's own backend's entries, or every entry of a directory."""
        if isinstance(cache, SearchCache):
            return cls(entry for _, entry in cache.entries())
        store = open_store(cache, create=False, readonly="auto")
        try:
            return cls([entry for _, entry in iter_entries(store)])
        finally:
            store.close()

    @property
    def documents(self) -> int:
        return len(self._docs)

    @property
    def thumbnails(self) -> int:
        return len(self._images)

    def __repr__(self) -> str:
        return f"CassetteFallback({self.documents} documents, {self.thumbnails} thumbnails)"

    def text_search(self, query: str, k: int) -> list[Hit]:
        """The ``k`` recorded documents that best match ``query`` by BM25 (score > 0 only)."""
        docs = self._docs
        return [Hit(docs[i].title, docs[i].url, docs[i].snippet, score, "fallback")
                for i, score in self._text_index.search(query, k)]

    def image_search(self, image: ImageQuery, k: int) -> list[Hit]:
        """The hits whose thumbnails look most like the query's (cropped) pixels, one per URL."""
        if k <= 0 or not self._images:
            return []
        from mmsearch_gym.search.image_features import ImageIndex, image_feature

        if self._image_index is None:
            features: dict[str, np.ndarray] = {}
            rows = []
            for hit in self._images:
                sha = hashlib.sha256(hit.thumbnail).hexdigest()  # type: ignore[arg-type]
                if sha not in features:
                    features[sha] = image_feature(hit.thumbnail_image())  # type: ignore[arg-type]
                rows.append(features[sha])
            self._image_index = ImageIndex(np.stack(rows))
        scores = self._image_index.scores(image_feature(image.cropped()))
        order = np.lexsort((np.arange(scores.shape[0]), -scores))
        hits: list[Hit] = []
        seen: set[str] = set()
        for i in order:
            hit = self._images[int(i)]
            if hit.url in seen:
                continue
            seen.add(hit.url)
            hits.append(Hit(hit.title, hit.url, hit.snippet, float(scores[i]), "fallback", hit.thumbnail))
            if len(hits) == k:
                break
        return hits
