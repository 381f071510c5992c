"""SearXNG: a self-hosted metasearch engine as a free, key-less text search backend.

Point ``SEARXNG_URL`` (or ``base_url``) at your instance. Its JSON output must be enabled
(``search: formats: [html, json]`` in settings.yml); instances answer 403 otherwise. The
instance URL is part of ``cache_params()`` because two instances with different engine
settings return different results; any user:password in it is treated as a secret.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.search.base import Hit, ImageQuery, SearchError
from mmsearch_gym.search.deadline import DEFAULT_SEARCH_DEADLINE, check_seconds, search_deadline
from mmsearch_gym.search.http import (
    HttpClient,
    HttpStatusError,
    hit_rank_score,
    public_url,
    require_positive_k,
)

SEARXNG_URL_ENV = "SEARXNG_URL"
_TIME_RANGES = ("day", "week", "month", "year")


class SearxngBackend:
    """Text search through a SearXNG instance's ``/search?format=json`` API.

    Hits are the instance's ``results`` (title, url, content) in its order, scored 1/rank.
    SearXNG returns about 20 results a page; up to ``max_pages`` pages are read when ``k``
    asks for more. Image search is not offered. ``search_timeout`` bounds one whole search
    (all pages) in seconds.
    """

    name = "searxng"
    version = "1"

    def __init__(self, base_url: str | None = None, *, language: str | None = None,
                 categories: str | Sequence[str] | None = None, engines: str | Sequence[str] | None = None,
                 safesearch: int = 0, time_range: str | None = None, max_pages: int = 3,
                 search_timeout: float | None = DEFAULT_SEARCH_DEADLINE, client: HttpClient | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        if base_url is None:
            base_url = (environ if environ is not None else os.environ).get(SEARXNG_URL_ENV, "").strip()
        if not base_url:
            raise ConfigError(f"SearXNG needs the URL of an instance: set the environment variable "
                              f"{SEARXNG_URL_ENV} (e.g. http://localhost:8888) or pass base_url=...")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{SEARXNG_URL_ENV} must be an http(s) URL like http://localhost:8888, "
                              f"got {public_url(base_url)!r}")
        if safesearch not in (0, 1, 2):
            raise ConfigError(f"SearXNG safesearch must be 0 (off), 1 (moderate) or 2 (strict), got {safesearch!r}")
        if time_range is not None and time_range not in _TIME_RANGES:
            raise ConfigError(f"SearXNG time_range must be one of {_TIME_RANGES} or None, got {time_range!r}")
        if max_pages < 1:
            raise ConfigError("max_pages must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.language = language
        self.categories = _csv(categories)
        self.engines = _csv(engines)
        self.safesearch = safesearch
        self.time_range = time_range
        self.max_pages = int(max_pages)
        self.search_timeout = check_seconds(search_timeout, "search_timeout")
        self.client = client if client is not None else HttpClient()
        if parts.password:  # requests sends these as "Basic base64(user:password)"
            for password in {parts.password, unquote(parts.password)}:
                self.client.add_secret(password)
                self.client.add_secret(f"{unquote(parts.username or '')}:{password}")

    def cache_params(self) -> dict[str, str | int | float | bool]:
        """The instance (without credentials) and every filter that changes results."""
        return {"instance": public_url(self.base_url), "language": self.language or "",
                "categories": self.categories, "engines": self.engines, "safesearch": self.safesearch,
                "time_range": self.time_range or ""}

    def text_search(self, query: str, k: int) -> list[Hit]:
        require_positive_k(k)
        if not query.strip():
            return []
        with search_deadline(self.search_timeout, "SearXNG search"):
            return self.client.redact_hits(self._hits(query, k))

    def _hits(self, query: str, k: int) -> list[Hit]:
        hits: list[Hit] = []
        seen: set[str] = set()
        for page in range(1, self.max_pages + 1):
            fresh = 0
            for row in self._page(query, page):
                title = " ".join(str(row.get("title") or "").split())
                url = str(row.get("url") or "").strip()
                if not title or not url or url in seen:
                    continue
                seen.add(url)
                fresh += 1
                hits.append(Hit(title=title, url=url, snippet=" ".join(str(row.get("content") or "").split()),
                                score=hit_rank_score(len(hits) + 1), source=self.name))
                if len(hits) == k:
                    return hits
            if fresh == 0:
                break
        return hits

    def image_search(self, image: ImageQuery, k: int) -> list[Hit]:
        raise SearchError("the SearXNG backend does not support image search; use SerpApiBackend "
                          "(Google Lens) or GoogleVisionBackend for image queries")

    def _page(self, query: str, page: int) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"q": query, "format": "json", "pageno": page, "safesearch": self.safesearch}
        if self.language:
            params["language"] = self.language
        if self.categories:
            params["categories"] = self.categories
        if self.engines:
            params["engines"] = self.engines
        if self.time_range:
            params["time_range"] = self.time_range
        try:
            data = self.client.get_json(self.base_url + "/search", service="SearXNG", params=params)
        except HttpStatusError as exc:
            if exc.status == 403:
                raise SearchError("SearXNG refused format=json (HTTP 403): enable JSON output on the "
                                  "instance (settings.yml: search.formats: [html, json])") from None
            if exc.status == 401:
                raise SearchError(f"SearXNG asked for credentials (HTTP 401): put them in "
                                  f"{SEARXNG_URL_ENV} as http://user:password@host") from None
            raise
        results = data.get("results") if isinstance(data, dict) else None
        if not isinstance(results, list):
            raise SearchError("SearXNG answered with unexpected JSON: no 'results' list "
                              "(is SEARXNG_URL the instance root?)")
        return [r for r in results if isinstance(r, dict)]

    def __repr__(self) -> str:
        return (f"SearxngBackend(instance={public_url(self.base_url)!r}, language={self.language!r}, "
                f"categories={self.categories!r}, engines={self.engines!r}, safesearch={self.safesearch})")


def _csv(value: str | Sequence[str] | None) -> str:
    """A comma-separated, whitespace-free list (SearXNG's format), stable for cache keys."""
    if value is None:
        return ""
    items = value.split(",") if isinstance(value, str) else list(value)
    return ",".join(item.strip() for item in items if item.strip())
