"""The search contract: Hit, ImageQuery, the SearchBackend protocol and SearchError.

Every backend (the built-in world's local engine, the disk cache, live web APIs, test fakes)
speaks this protocol, so the env never knows where results come from.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from mmsearch_gym.errors import MMSearchError
from mmsearch_gym.tasks import Box, image_digest


class SearchError(MMSearchError):
    """A backend failed to answer (network, quota, bad response). Never cached."""


@dataclass(frozen=True)
class Hit:
    """One search result, as a web search engine would show it."""

    title: str
    url: str
    snippet: str
    score: float = 0.0
    source: str = ""
    thumbnail: bytes | None = field(default=None, repr=False)
    """Encoded image bytes (PNG/JPEG) of the result's thumbnail, for image-search results."""

    @property
    def id(self) -> str:
        """A stable id for logs and trajectories: the result URL."""
        return self.url

    def thumbnail_image(self) -> Image.Image | None:
        if self.thumbnail is None:
            return None
        return Image.open(io.BytesIO(self.thumbnail)).convert("RGB")

    def to_json(self) -> dict[str, Any]:
        """JSON-safe dict; the thumbnail is base64 text."""
        return {
            "title": self.title,
            "url": self.url,
            "snippet": self.snippet,
            "score": self.score,
            "source": self.source,
            "thumbnail": None if self.thumbnail is None else base64.b64encode(self.thumbnail).decode("ascii"),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Hit:
        thumb = data.get("thumbnail")
        return cls(
            title=str(data["title"]),
            url=str(data["url"]),
            snippet=str(data.get("snippet", "")),
            score=float(data.get("score", 0.0)),
            source=str(data.get("source", "")),
            thumbnail=None if thumb is None else base64.b64decode(thumb, validate=True),
        )


class ImageQuery:
    """What an image search looks at: a source image and an optional crop box.

    The env builds one per image-search action. ``digest`` (a content hash of the *source*
    image) is computed once per task and, with ``box``, keys the cache, so that a cache hit
    never re-encodes or re-hashes pixels. ``url`` is a public URL of the source image when one
    is known (APIs that search by URL use it for whole-image searches).
    """

    __slots__ = ("image", "box", "url", "_digest", "_cropped")

    def __init__(self, image: Image.Image, box: Box | None = None, url: str | None = None,
                 digest: str | None = None) -> None:
        self.image = image
        self.box = box
        self.url = url
        self._digest = digest
        self._cropped: Image.Image | None = None

    @property
    def digest(self) -> str:
        if self._digest is None:
            self._digest = image_digest(self.image)
        return self._digest

    def cropped(self) -> Image.Image:
        """The pixels to search: the crop if a box is set, else the whole image."""
        if self._cropped is None:
            self._cropped = self.image if self.box is None else self.image.crop(self.box)
        return self._cropped

    def png_bytes(self) -> bytes:
        buf = io.BytesIO()
        self.cropped().save(buf, format="PNG")
        return buf.getvalue()

    def __repr__(self) -> str:
        return f"ImageQuery(digest={self.digest[:12]}, box={self.box}, url={self.url!r})"


@runtime_checkable
class SearchBackend(Protocol):
    """Anything that answers text and image searches with Hits.

    ``name`` and ``version`` identify the backend in cache keys and cassettes: bump
    ``version`` whenever results for the same query could change. A backend may also define
    ``cache_params() -> dict`` returning every other setting that changes results (engine,
    locale, ...); the cache puts it into its keys. It must never contain a secret.
    """

    name: str
    version: str

    def text_search(self, query: str, k: int) -> list[Hit]: ...

    def image_search(self, image: ImageQuery, k: int) -> list[Hit]: ...


class MemoryBackend:
    """A dictionary-backed backend for tests and benchmarks: canned results, no I/O.

    Text queries are matched after case/whitespace folding; image queries by (digest, box),
    falling back to ``default_image_hits``. Unknown text queries return ``default_text_hits``.
    """

    name = "memory"
    version = "1"

    def __init__(self, text: Mapping[str, list[Hit]] | None = None,
                 image: Mapping[tuple[str, Box | None], list[Hit]] | None = None,
                 default_text_hits: list[Hit] | None = None,
                 default_image_hits: list[Hit] | None = None) -> None:
        self._text = {self._fold(q): list(h) for q, h in (text or {}).items()}
        self._image = dict(image or {})
        self._default_text = list(default_text_hits or [])
        self._default_image = list(default_image_hits or [])
        self.calls: list[tuple[str, Any]] = []

    @staticmethod
    def _fold(query: str) -> str:
        return " ".join(query.lower().split())

    def text_search(self, query: str, k: int) -> list[Hit]:
        self.calls.append(("text", query))
        return self._text.get(self._fold(query), self._default_text)[:k]

    def image_search(self, image: ImageQuery, k: int) -> list[Hit]:
        self.calls.append(("image", image.box))
        return self._image.get((image.digest, image.box), self._default_image)[:k]
