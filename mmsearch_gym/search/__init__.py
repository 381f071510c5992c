"""Search: the backend protocol, the deterministic disk cache, cassettes and web backends."""

from mmsearch_gym.search.base import Hit, ImageQuery, MemoryBackend, SearchBackend, SearchError

__all__ = ["Hit", "ImageQuery", "MemoryBackend", "SearchBackend", "SearchError"]
