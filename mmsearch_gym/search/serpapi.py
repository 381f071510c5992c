"""SerpApi: Google web search for text queries, Google Lens for image queries.

This is the live backend MMSearch-R1 used. Every call costs money (about $15 per 1000), so
wrap it in the disk cache; ``cache_params()`` lists everything that changes the results
(engines, locale, safe-search, thumbnail fetching) and never the key.

Google Lens only searches images it can download from a public URL. A whole-image query uses
``ImageQuery.url`` when the task knows one; otherwise (crops, or tasks without URLs) the
cropped PNG is handed to the ``uploader`` you supply, which must put it somewhere public and
return the URL.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Mapping
from typing import Any

from PIL import Image

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.search.base import Hit, ImageQuery, SearchError
from mmsearch_gym.search.deadline import DEFAULT_SEARCH_DEADLINE, check_seconds, search_deadline
from mmsearch_gym.search.http import (
    HttpClient,
    HttpStatusError,
    Secret,
    hit_rank_score,
    public_url,
    require_positive_k,
    secret_from,
)

logger = logging.getLogger(__name__)

SERPAPI_KEY_ENV = "SERPAPI_API_KEY"
DEFAULT_SERPAPI_URL = "https://serpapi.com/search.json"
_NO_RESULTS = "hasn't returned any results"

Uploader = Callable[[bytes], str]
"""Uploads PNG bytes somewhere public and returns the image's http(s) URL."""


class SerpApiBackend:
    """Google web search (``engine=google``) and Google Lens (``engine=google_lens``) via SerpApi.

    Text hits are ``organic_results`` (title, link, snippet); image hits are Lens's knowledge
    graph entries followed by its ``visual_matches`` (title, link, the site name as snippet,
    optionally the thumbnail bytes). Scores are 1/rank. The key comes from ``api_key`` or the
    ``SERPAPI_API_KEY`` environment variable.

    ``search_timeout`` bounds one whole search (the API call and any thumbnail downloads) in
    seconds; each request is also bounded by its client's ``deadline``.
    """

    name = "serpapi"
    version = "1"

    def __init__(self, api_key: str | Secret | None = None, *, base_url: str = DEFAULT_SERPAPI_URL,
                 gl: str = "us", hl: str = "en", google_domain: str = "google.com", safe: str = "off",
                 location: str | None = None, uploader: Uploader | None = None,
                 fetch_thumbnails: bool = False, thumbnail_max_bytes: int = 1 << 20,
                 search_timeout: float | None = DEFAULT_SEARCH_DEADLINE,
                 client: HttpClient | None = None, environ: Mapping[str, str] | None = None) -> None:
        self._key = secret_from(api_key, SERPAPI_KEY_ENV, "SerpApi", environ=environ)
        if safe not in ("active", "off"):
            raise ConfigError(f"SerpApi safe must be 'active' or 'off', got {safe!r}")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"SerpApi base_url must be an http(s) URL, got {public_url(base_url)!r}")
        if thumbnail_max_bytes < 1:
            raise ConfigError("thumbnail_max_bytes must be positive")
        self.base_url = base_url
        self.gl, self.hl, self.google_domain, self.safe = gl, hl, google_domain, safe
        self.location = location
        self.uploader = uploader
        self.fetch_thumbnails = bool(fetch_thumbnails)
        self.thumbnail_max_bytes = int(thumbnail_max_bytes)
        self.search_timeout = check_seconds(search_timeout, "search_timeout")
        self.client = client if client is not None else HttpClient()
        self.client.add_secret(self._key)

    def cache_params(self) -> dict[str, str | int | float | bool]:
        """Everything besides the query that changes results; never the key."""
        return {"text_engine": "google", "image_engine": "google_lens", "gl": self.gl, "hl": self.hl,
                "google_domain": self.google_domain, "safe": self.safe, "location": self.location or "",
                "fetch_thumbnails": self.fetch_thumbnails}

    # -- text ------------------------------------------------------------------------------

    def text_search(self, query: str, k: int) -> list[Hit]:
        require_positive_k(k)
        if not query.strip():
            return []
        params: dict[str, Any] = {"engine": "google", "q": query, "num": min(k, 100), "gl": self.gl,
                                  "hl": self.hl, "google_domain": self.google_domain, "safe": self.safe}
        if self.location:
            params["location"] = self.location
        with search_deadline(self.search_timeout, "SerpApi search"):
            data = self._call(params)
        if data is None:
            return []
        organic = data.get("organic_results") or []
        if not isinstance(organic, list):
            raise SearchError("SerpApi answered with an unexpected shape: organic_results is not a list")
        rows = [(_text(r.get("title")), _text(r.get("link")), _text(r.get("snippet")))
                for r in organic if isinstance(r, dict)]
        hits = _ranked([(t, u, s, None) for t, u, s in rows if t and u], k)
        return self.client.redact_hits(Hit(title=t, url=u, snippet=s, score=hit_rank_score(i + 1), source=self.name)
                                       for i, (t, u, s, _) in enumerate(hits))

    # -- image -----------------------------------------------------------------------------

    def image_search(self, image: ImageQuery, k: int) -> list[Hit]:
        require_positive_k(k)
        with search_deadline(self.search_timeout, "SerpApi search"):
            return self.client.redact_hits(self._image_hits(image, k))

    def _image_hits(self, image: ImageQuery, k: int) -> list[Hit]:
        params: dict[str, Any] = {"engine": "google_lens", "url": self._public_image_url(image),
                                  "hl": self.hl, "country": self.gl, "safe": self.safe}
        data = self._call(params)
        if data is None:
            return []
        rows: list[tuple[str, str, str, str | None]] = []
        graph = data.get("knowledge_graph") or []
        for entry in [graph] if isinstance(graph, dict) else graph if isinstance(graph, list) else []:
            if not isinstance(entry, dict):
                continue
            title = _text(entry.get("title"))
            snippet = _text(entry.get("subtitle") or entry.get("description") or entry.get("type")) or title
            rows.append((title, _text(entry.get("link")), snippet, _thumbnail_url(entry)))
        matches = data.get("visual_matches") or []
        if not isinstance(matches, list):
            raise SearchError("SerpApi answered with an unexpected shape: visual_matches is not a list")
        for match in matches:
            if isinstance(match, dict):
                rows.append((_text(match.get("title")), _text(match.get("link")),
                             _text(match.get("source")), _thumbnail_url(match)))
        hits = _ranked([r for r in rows if r[0] and r[1]], k)
        return [Hit(title=t, url=u, snippet=s, score=hit_rank_score(i + 1), source=self.name,
                    thumbnail=self._thumbnail(thumb) if self.fetch_thumbnails and thumb else None)
                for i, (t, u, s, thumb) in enumerate(hits)]

    def _public_image_url(self, image: ImageQuery) -> str:
        if image.box is None and image.url:
            return image.url
        if self.uploader is None:
            what = "a cropped image" if image.box is not None else "an image without a public URL"
            raise SearchError(
                f"Google Lens (SerpApi) can only search images at a public URL, and this is {what}: "
                "pass uploader=callable(png_bytes) -> public_url to SerpApiBackend, or give tasks image URLs")
        try:
            url = self.uploader(image.png_bytes())
        except Exception as exc:  # user code: report it as a failed search, with its reason
            raise SearchError(f"the image uploader failed: {exc.__class__.__name__}: "
                              f"{self.client.redact(str(exc))}") from None
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise SearchError(f"the image uploader must return an http(s) URL, got {url!r:.80}")
        return url

    def _thumbnail(self, url: str) -> bytes | None:
        """Thumbnail bytes if they download and decode as an image; None (and a warning) if not."""
        try:
            content = self.client.request("GET", url, service="SerpApi thumbnail",
                                          max_bytes=self.thumbnail_max_bytes).content
            with Image.open(io.BytesIO(content)) as img:
                img.verify()
            return content
        except (SearchError, OSError, Image.DecompressionBombError) as exc:
            logger.warning("SerpApi: thumbnail %s skipped: %s", self.client.redact(url),
                           self.client.redact(str(exc)))
            return None

    # -- transport -------------------------------------------------------------------------

    def _call(self, params: dict[str, Any]) -> dict[str, Any] | None:
        """One API call; None when Google found nothing, SearchError on any failure."""
        assert self._key is not None
        params = {**params, "api_key": self._key.reveal()}
        try:
            data = self.client.get_json(self.base_url, service="SerpApi", params=params)
        except HttpStatusError as exc:
            if exc.status in (401, 403):
                raise SearchError(f"invalid API key for SerpApi (HTTP {exc.status}: {exc.api_message}); "
                                  f"set {SERPAPI_KEY_ENV} to a valid key") from None
            raise
        if not isinstance(data, dict):
            raise SearchError(f"SerpApi answered with unexpected JSON: a {type(data).__name__}, not an object")
        error = data.get("error")
        if error:
            message = self.client.redact(str(error))
            if _NO_RESULTS in message:
                return None
            raise SearchError(f"SerpApi reported an error: {message}")
        status = (data.get("search_metadata") or {}).get("status")
        if status not in (None, "Success", "Processing"):
            raise SearchError(f"SerpApi search status is {self.client.redact(str(status))!r}")
        return data

    def __repr__(self) -> str:
        return (f"SerpApiBackend(base_url={public_url(self.base_url)!r}, gl={self.gl!r}, hl={self.hl!r}, "
                f"safe={self.safe!r}, fetch_thumbnails={self.fetch_thumbnails}, api_key=***)")


def _text(value: Any) -> str:
    return " ".join(str(value).split()) if isinstance(value, (str, int, float)) else ""


def _thumbnail_url(entry: Mapping[str, Any]) -> str | None:
    thumb = entry.get("thumbnail")
    if isinstance(thumb, str) and thumb.startswith(("http://", "https://")):
        return thumb
    thumbs = entry.get("thumbnails") or entry.get("images")
    if isinstance(thumbs, list):
        for item in thumbs:
            url = item.get("image") or item.get("thumbnail") if isinstance(item, dict) else None
            if isinstance(url, str) and url.startswith(("http://", "https://")):
                return url
    return None


def _ranked(rows: list[tuple[str, str, str, str | None]], k: int) -> list[tuple[str, str, str, str | None]]:
    """The first ``k`` rows with distinct URLs (a URL is a hit's id), in API order."""
    seen: set[str] = set()
    out = []
    for row in rows:
        if row[1] in seen:
            continue
        seen.add(row[1])
        out.append(row)
        if len(out) == k:
            break
    return out
