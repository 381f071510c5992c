"""Read the pages behind text hits and put their content (or a summary) into the snippets.

MMSearch-R1's text search is a pipeline, not a bare search API: search, fetch the top 5
pages, summarise each page for the question, and return the summaries. ``ReadingBackend``
rebuilds that pipeline around any backend: ``JinaReader`` turns a URL into page text, and a
``Summarizer`` (any callable, typically an LLM call) condenses it for the query.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, runtime_checkable

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.search.base import Hit, ImageQuery, SearchBackend, SearchError
from mmsearch_gym.search.deadline import (
    DEFAULT_READING_DEADLINE,
    check_seconds,
    search_deadline,
)
from mmsearch_gym.search.http import (
    HttpClient,
    HttpStatusError,
    Secret,
    public_url,
    redact_url_text,
    secret_from,
)

logger = logging.getLogger(__name__)

JINA_KEY_ENV = "JINA_API_KEY"
DEFAULT_JINA_URL = "https://r.jina.ai"
_RETURN_FORMATS = ("markdown", "text", "html")

Summarizer = Callable[[str, str], str]
"""``summarizer(query, page_text) -> summary``: condenses one page for one query (e.g. an LLM)."""

CacheParams = dict[str, str | int | float | bool]


@runtime_checkable
class PageReader(Protocol):
    """Turns a web page URL into its readable text. Raises SearchError when it cannot."""

    name: str
    version: str

    def read(self, url: str) -> str: ...

    def cache_params(self) -> CacheParams: ...


def truncate_text(text: str, max_chars: int) -> str:
    """``text`` cut to at most ``max_chars`` characters, at a word boundary when one is near."""
    if len(text) <= max_chars:
        return text
    if max_chars <= 1:
        return text[:max_chars]
    cut = text[: max_chars - 1]
    space = cut.rfind(" ")
    if not text[max_chars - 1].isspace() and space >= max_chars * 0.8:  # don't split a word
        cut = cut[:space]
    return cut.rstrip() + "…"


class JinaReader:
    """Jina AI's reader API: ``GET {base_url}/{page_url}`` answers with the page as text.

    The key (``api_key`` or ``JINA_API_KEY``) is optional: without one the reader works at a
    lower rate limit. Page text is truncated to ``max_chars``, and any form of the key in it
    (a page echoing the request's headers) is masked.
    """

    name = "jina-reader"
    version = "1"

    def __init__(self, api_key: str | Secret | None = None, *, base_url: str = DEFAULT_JINA_URL,
                 max_chars: int = 20_000, return_format: str = "markdown", client: HttpClient | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self._key = secret_from(api_key, JINA_KEY_ENV, "Jina reader", environ=environ, required=False)
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"Jina reader base_url must be an http(s) URL, got {public_url(base_url)!r}")
        if max_chars < 1:
            raise ConfigError("max_chars must be a positive number of characters")
        if return_format not in _RETURN_FORMATS:
            raise ConfigError(f"return_format must be one of {_RETURN_FORMATS}, got {return_format!r}")
        self.base_url = base_url.rstrip("/")
        self.max_chars = int(max_chars)
        self.return_format = return_format
        self.client = client if client is not None else HttpClient(max_attempts=2)
        self.client.add_secret(self._key)

    def cache_params(self) -> CacheParams:
        return {"max_chars": self.max_chars, "return_format": self.return_format}

    def read(self, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise SearchError(f"the Jina reader can only read http(s) pages, not {redact_url_text(url)[:80]!r}")
        headers = {"Accept": "text/plain", "X-Return-Format": self.return_format}
        if self._key is not None:
            headers["Authorization"] = f"Bearer {self._key.reveal()}"
        try:
            response = self.client.request("GET", f"{self.base_url}/{url}", service="Jina reader", headers=headers)
        except HttpStatusError as exc:
            if exc.status in (401, 403) and self._key is not None:
                raise SearchError(f"invalid API key for the Jina reader (HTTP {exc.status}: {exc.api_message}); "
                                  f"set {JINA_KEY_ENV} to a valid key or unset it") from None
            raise
        text = self.client.mask_secrets(response.text()).strip()
        if not text:
            raise SearchError(f"the Jina reader returned an empty page for {redact_url_text(url)}")
        return truncate_text(text, self.max_chars)

    def __repr__(self) -> str:
        key = "***" if self._key is not None else None
        return (f"JinaReader(base_url={public_url(self.base_url)!r}, max_chars={self.max_chars}, "
                f"return_format={self.return_format!r}, api_key={key})")


class ReadingBackend:
    """Wraps a backend: text hits come back with page content (or its summary) as snippet.

    For the first ``top_n`` hits of ``inner.text_search`` the page is read (in parallel) and
    the snippet replaced by ``summarizer(query, page_text)`` (or by the page text itself when
    there is no summarizer), cut to ``max_chars``. A page that cannot be read keeps its
    original snippet and logs a warning; a summarizer that raises fails the search
    (SearchError, never cached). Image search passes straight through to ``inner``.

    Callables have no stable identity, so a summarizer needs a ``summarizer_id`` naming it
    (model and prompt version, e.g. ``"qwen2.5-7b/summary-v2"``): it goes into the cache key.

    ``search_timeout`` bounds the whole text search (inner search and page reads, which run
    under the same deadline in their threads); pages not read in time keep their snippet.
    """

    version_suffix = "read1"

    def __init__(self, inner: SearchBackend, reader: PageReader, summarizer: Summarizer | None = None, *,
                 summarizer_id: str | None = None, top_n: int = 5, max_chars: int = 2_000,
                 max_workers: int | None = None, search_timeout: float | None = DEFAULT_READING_DEADLINE) -> None:
        if summarizer is not None and not (summarizer_id and summarizer_id.strip()):
            raise ConfigError("a summarizer needs a summarizer_id (e.g. 'my-llm/prompt-v1'): callables have no "
                              "stable identity, and the id keys the search cache")
        if summarizer is None and summarizer_id:
            raise ConfigError("summarizer_id was given without a summarizer")
        if top_n < 1 or max_chars < 1:
            raise ConfigError("top_n and max_chars must be positive")
        self.inner = inner
        self.reader = reader
        self.summarizer = summarizer
        self.summarizer_id = summarizer_id.strip() if summarizer_id else None
        self.top_n = int(top_n)
        self.max_chars = int(max_chars)
        self.max_workers = max(1, int(max_workers if max_workers is not None else top_n))
        self.search_timeout = check_seconds(search_timeout, "search_timeout")
        self.name = f"{inner.name}+{reader.name}"
        self.version = f"{inner.version}+{reader.version}+{self.version_suffix}"

    def cache_params(self) -> CacheParams:
        """The inner backend's parameters plus the reader's and the summarizer's identity."""
        inner_params = getattr(self.inner, "cache_params", None)
        params: CacheParams = dict(inner_params()) if callable(inner_params) else {}
        params.update({f"reader.{key}": value for key, value in self.reader.cache_params().items()})
        params.update({"read.top_n": self.top_n, "read.max_chars": self.max_chars,
                       "read.summarizer": self.summarizer_id or ""})
        return params

    def text_search(self, query: str, k: int) -> list[Hit]:
        with search_deadline(self.search_timeout, "reading search"):
            return self._read_hits(query, k)

    def _read_hits(self, query: str, k: int) -> list[Hit]:
        hits = self.inner.text_search(query, k)
        targets = [i for i, hit in enumerate(hits[: self.top_n]) if hit.url.startswith(("http://", "https://"))]
        pages = self._read_all([hits[i].url for i in targets])
        out = list(hits)
        for i, page in zip(targets, pages, strict=False):
            if page is None:
                continue
            out[i] = dataclasses.replace(hits[i], snippet=self._condense(query, hits[i].url, page))
        return out

    def image_search(self, image: ImageQuery, k: int) -> list[Hit]:
        return self.inner.image_search(image, k)

    def _read_all(self, urls: list[str]) -> list[str | None]:
        if len(urls) <= 1 or self.max_workers == 1:
            return [self._read_one(url) for url in urls]
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(urls))) as pool:
            # each read runs in a copy of this context: the search deadline follows it
            futures = [pool.submit(contextvars.copy_context().run, self._read_one, url) for url in urls]
            return [future.result() for future in futures]

    def _read_one(self, url: str) -> str | None:
        try:
            return self.reader.read(url)
        except SearchError as exc:
            logger.warning("%s could not read %s; keeping the search snippet: %s", self.reader.name,
                           redact_url_text(url), exc)
            return None

    def _condense(self, query: str, url: str, page: str) -> str:
        if self.summarizer is None:
            return truncate_text(" ".join(page.split()), self.max_chars)
        try:
            summary = self.summarizer(query, page)
        except Exception as exc:  # user code (often a remote LLM): fail this search, uncached
            raise SearchError(f"summarizer {self.summarizer_id!r} failed on {redact_url_text(url)}: "
                              f"{exc.__class__.__name__}: {redact_url_text(str(exc))}") from None
        if not isinstance(summary, str):
            raise SearchError(f"summarizer {self.summarizer_id!r} returned {type(summary).__name__}, not str")
        summary = summary.strip() or " ".join(page.split())
        return truncate_text(summary, self.max_chars)

    def __repr__(self) -> str:
        return (f"ReadingBackend(inner={self.inner!r}, reader={self.reader!r}, "
                f"summarizer_id={self.summarizer_id!r}, top_n={self.top_n}, max_chars={self.max_chars})")
