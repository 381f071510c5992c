"""RecordedService: every answer of a service goes through a SearchCache, like a search.

A service answer (a judge verdict, a summary, a box) is stored as a one-hit text search of a
pseudo-backend named after the service (``judge``, ``summarizer``, ``grounder``), whose
``cache_params()`` hold the model and the prompt version. The "query" is the sha256 of the
request's canonical JSON (images by content digest), so keys go through SearchCache's
existing key path unchanged, a cached answer is exact (no case folding of the request), and
``mmsearch-gym cache export`` writes the answers to a cassette like any search. The hit's
``title`` holds the request JSON (auditable in the cassette), its ``snippet`` the answer.

Modes follow the env's cache block: ``readthrough`` (ask the server on a miss), ``record``
(always ask), ``replay`` (never ask; a miss is a CacheMiss). Keys never hold credentials.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mmsearch_gym.search.base import Hit, ImageQuery, SearchError
from mmsearch_gym.search.cache import SearchCache, default_cache_dir
from mmsearch_gym.services.accounting import LEDGER

__all__ = ["RecordedService", "request_digest"]


def request_digest(request: Mapping[str, Any]) -> str:
    """sha256 hex of the request's canonical JSON: the service call's cache "query"."""
    text = json.dumps(dict(request), sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class _ServiceBackend:
    """The SearchBackend face of a service: ``text_search(digest, 1)`` computes the pending request."""

    def __init__(self, name: str, version: str, params: Mapping[str, Any]) -> None:
        self.name = name
        self.version = version
        self._params = dict(params)
        self._pending: dict[str, tuple[str, Callable[[], str]]] = {}
        self._lock = threading.Lock()

    def cache_params(self) -> dict[str, Any]:
        return dict(self._params)

    def expect(self, digest: str, request_json: str, compute: Callable[[], str]) -> None:
        with self._lock:
            self._pending[digest] = (request_json, compute)

    def forget(self, digest: str) -> None:
        with self._lock:
            self._pending.pop(digest, None)

    def text_search(self, query: str, k: int) -> list[Hit]:
        with self._lock:
            pending = self._pending.get(query)
        if pending is None:
            raise SearchError(f"{self.name}: no pending request for {query[:16]}...")
        request_json, compute = pending
        answer = compute()
        if not isinstance(answer, str):
            raise TypeError(f"{self.name} computed {type(answer).__name__}, not str")
        return [Hit(title=request_json, url="", snippet=answer, score=1.0, source=self.name)]

    def image_search(self, image: ImageQuery, k: int) -> list[Hit]:
        raise SearchError(f"{self.name} is a service, not an image search backend")


class RecordedService:
    """Answers service requests through a SearchCache under ``name@version`` with ``params``.

    Args:
        name: the service's kind (``judge``, ``summarizer``, ``grounder``).
        version: the prompt/protocol version; change it when the prompt changes.
        params: what else changes answers (model, temperature ...); never credentials.
        directory: the cache directory (default: ``<user cache>/services``).
        mode: ``readthrough``, ``record`` or ``replay``.
    """

    def __init__(self, name: str, version: str, params: Mapping[str, Any], *,
                 directory: str | Path | None = None, mode: str = "readthrough") -> None:
        self._backend = _ServiceBackend(name, version, params)
        self.directory = Path(directory) if directory is not None else default_cache_dir() / "services"
        self.mode = mode
        self._cache: SearchCache | None = None
        self.live_calls = 0

    @property
    def name(self) -> str:
        return self._backend.name

    @property
    def cache(self) -> SearchCache:
        """The SearchCache holding the answers (opened on first use)."""
        if self._cache is None:
            self._cache = SearchCache(self._backend, self.directory, mode=self.mode)  # type: ignore[arg-type]
        return self._cache

    def locate(self, directory: str | Path, mode: str) -> None:
        """Record under ``directory`` in ``mode`` instead (before the first answer only)."""
        if self._cache is not None and (Path(directory), mode) != (self.directory, self.mode):
            raise RuntimeError(f"{self.name}: cannot move a recorder that is already in use")
        self.directory, self.mode = Path(directory), mode

    def answer(self, request: Mapping[str, Any], compute: Callable[[], str]) -> str:
        """The recorded answer to ``request``, computed (and stored) by ``compute()`` on a miss."""
        request_json = json.dumps(dict(request), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        digest = request_digest(request)

        live = False

        def counted() -> str:
            nonlocal live
            live = True
            self.live_calls += 1
            LEDGER.add(self.name, "live_calls")
            return compute()

        self._backend.expect(digest, request_json, counted)
        try:
            hits = self.cache.text_search(digest, 1)
        finally:
            self._backend.forget(digest)
        if not live:
            LEDGER.add(self.name, "cache_hits")
        return hits[0].snippet if hits else ""

    def stats(self) -> dict[str, int]:
        """Live calls and cache hits of this instance."""
        stats = self.cache.stats()
        return {"live_calls": self.live_calls, "cache_hits": stats.hits}

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()

    # Pickled into env workers as configuration: the worker reopens the same directory.
    def __getstate__(self) -> dict[str, Any]:
        return {"name": self._backend.name, "version": self._backend.version,
                "params": self._backend.cache_params(), "directory": str(self.directory), "mode": self.mode}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["name"], state["version"], state["params"],  # type: ignore[misc]
                      directory=state["directory"], mode=state["mode"])
