"""Search: the backend protocol, the deterministic disk cache, cassettes and web backends.

The web backends import ``requests`` machinery and are loaded on first use
(``from mmsearch_gym.search import SerpApiBackend`` works, but costs nothing until then).
"""

from __future__ import annotations

import importlib
from typing import Any

from mmsearch_gym.search.base import Hit, ImageQuery, MemoryBackend, SearchBackend, SearchError

_LAZY = {
    "SearchCache": "mmsearch_gym.search.cache",
    "CacheMiss": "mmsearch_gym.search.cache",
    "CacheStats": "mmsearch_gym.search.cache",
    "default_cache_dir": "mmsearch_gym.search.cache",
    "CassetteFallback": "mmsearch_gym.search.fallback",
    "export_cassette": "mmsearch_gym.search.cassette",
    "import_cassette": "mmsearch_gym.search.cassette",
    "verify_cassette": "mmsearch_gym.search.cassette",
    "CassetteInfo": "mmsearch_gym.search.cassette",
    "BM25Index": "mmsearch_gym.search.bm25",
    "tokenize": "mmsearch_gym.search.bm25",
    "SerpApiBackend": "mmsearch_gym.search.serpapi",
    "SearxngBackend": "mmsearch_gym.search.searxng",
    "GoogleVisionBackend": "mmsearch_gym.search.vision",
    "JinaReader": "mmsearch_gym.search.reader",
    "ReadingBackend": "mmsearch_gym.search.reader",
    "HttpClient": "mmsearch_gym.search.http",
}

__all__ = ["Hit", "ImageQuery", "MemoryBackend", "SearchBackend", "SearchError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mmsearch_gym.search' has no attribute {name!r}")
