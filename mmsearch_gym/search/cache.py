"""SearchCache: a deterministic, multi-process-safe cache around any SearchBackend.

Live search costs money and drifts from day to day; an RL run repeats the same queries
thousands of times. SearchCache stores every answer under a key that depends only on what
changes results (see ``entry.py``), so reruns are free and bit-for-bit reproducible, and a
recorded cache can be shipped as a cassette (see ``cassette.py``).

Where entries live is a :class:`~mmsearch_gym.search.store.Store`: a cache directory
(diskcache: SQLite in WAL mode plus files, shareable by the processes of one machine, readable
from read-only media) or a Redis server (``store="redis://HOST:PORT/DB"``, shared by many
machines). Each value carries its own sha256, so a damaged value is a miss, never wrong data.

Modes:

``readthrough``
    a hit is served from the store; a miss asks the backend and stores its answer (put if
    absent: when two workers miss one key at once, both return the answer stored first).
``record``
    always asks the backend and overwrites the stored answer (refresh a cache).
``replay``
    never asks the backend; a miss goes to ``fallback`` if one is set (its answer is *not*
    stored) or raises :class:`CacheMiss` (strict replay). Works on read-only media.

A backend exception propagates and is never cached. A store that cannot write (disk full,
Redis gone) raises :class:`~mmsearch_gym.search.base.SearchError`, which the env shows as a
tool error.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import diskcache

from mmsearch_gym.errors import ConfigError, MMSearchError
from mmsearch_gym.search import cassette as _cassette
from mmsearch_gym.search.base import Hit, ImageQuery, SearchBackend, SearchError
from mmsearch_gym.search.entry import (
    CacheEntry,
    DamagedValue,
    cache_key,
    canonical_params,
    decode_hits,
    encode_str,
    key_head,
    normalize_query,
)
from mmsearch_gym.search.redis_store import namespace_for
from mmsearch_gym.search.store import JSONDisk, Store, is_url, iter_entries, open_store

if TYPE_CHECKING:
    from types import TracebackType

__all__ = [
    "MODES",
    "CacheEntry",
    "CacheMiss",
    "CacheStats",
    "CacheSummary",
    "JSONDisk",
    "SearchCache",
    "cache_key",
    "default_cache_dir",
    "iter_entries",
    "normalize_query",
    "open_store",
    "summarize_cache",
]

CacheMode = Literal["readthrough", "record", "replay"]
MODES: tuple[str, ...] = ("readthrough", "record", "replay")
_sha256 = hashlib.sha256


def default_cache_dir() -> Path:
    """Where caches live unless told otherwise: ``$MMSEARCH_GYM_CACHE`` or ``~/.cache/mmsearch_gym``."""
    env = os.environ.get("MMSEARCH_GYM_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "mmsearch_gym"


class CacheMiss(MMSearchError, KeyError):
    """Strict replay found no (intact) stored answer for a search.

    Deliberately *not* a SearchError: the env turns SearchErrors into observations, but a
    replay miss means the run is no longer reproducible, so it must stop the run.
    """

    def __init__(self, message: str, key: str = "", query: str = "") -> None:
        super().__init__(message)
        self.key = key
        self.query = query

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class CacheStats:
    """Hit/miss counts of one SearchCache instance, and the size of its store."""

    hits: int
    misses: int
    entries: int
    bytes: int

    def to_json(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class CacheSummary:
    """What ``mmsearch-gym cache stats`` shows about a cache directory or Redis store."""

    directory: str
    entries: int
    bytes: int
    hits: int
    """Lifetime hits, summed over every SearchCache that was closed on this store."""
    misses: int
    backends: dict[str, int]
    """Entries per ``name@version``."""
    kinds: dict[str, int]
    damaged: int = 0
    """Entries that failed their checksum (``cache repair`` drops them)."""
    problems: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["problems"] = list(self.problems)
        return data


def summarize_cache(location: str | Path) -> CacheSummary:
    """Count a store's entries by backend and kind (reads every entry; damaged ones are counted)."""
    store = open_store(location, create=False, readonly="auto")
    try:
        backends: Counter[str] = Counter()
        kinds: Counter[str] = Counter()
        damaged = 0
        for key in store.keys():
            data = store.get(key)
            if data is None:
                continue
            try:
                entry = CacheEntry.decode(data)
            except DamagedValue:
                damaged += 1
                continue
            backends[f"{entry.backend}@{entry.backend_version}"] += 1
            kinds[entry.kind] += 1
        hits, misses, problems = store.counts()
        return CacheSummary(directory=str(location), entries=store.count(), bytes=store.volume(),
                            hits=hits, misses=misses, backends=dict(sorted(backends.items())),
                            kinds=dict(sorted(kinds.items())), damaged=damaged, problems=tuple(problems))
    finally:
        store.close()


class SearchCache:
    """A SearchBackend that answers from a store and asks ``backend`` only on a miss.

    Args:
        backend: the backend to wrap; may be None only in ``replay`` mode (then give
            ``name`` and ``version`` of the backend that recorded the cache).
        directory: cache directory (default :func:`default_cache_dir`); shareable by many
            processes at once. Ignored when ``store`` is given.
        mode: ``readthrough``, ``record`` or ``replay`` (see the module docstring).
        fallback: in replay mode, the backend that answers misses (e.g. a
            :class:`~mmsearch_gym.search.fallback.CassetteFallback`); its answers are not stored.
        name, version: the recorded backend's identity when ``backend`` is None.
        size_limit: bytes before diskcache evicts the least recently stored entries.
        params: the recorded backend's ``cache_params()`` when ``backend`` is None.
        store: a ``redis://HOST:PORT/DB`` URL (or an open Store) instead of a directory.
        local_cache: entries of an in-process LRU in front of a Redis store (0: none).

    ``backend.cache_params()`` (if the backend has it) is read once, here: by convention it
    returns only what changes results (engine, locale, ...), never credentials.
    """

    def __init__(self, backend: SearchBackend | None, directory: str | Path | None = None, *,
                 mode: CacheMode = "readthrough", fallback: SearchBackend | None = None,
                 name: str | None = None, version: str | None = None, size_limit: int = 2**32,
                 params: Mapping[str, Any] | None = None, store: str | Store | None = None,
                 local_cache: int = 0) -> None:
        if mode not in MODES:
            raise ConfigError(f"unknown cache mode {mode!r}; use one of {', '.join(MODES)}")
        if backend is None:
            if mode != "replay":
                raise ConfigError(f"a SearchCache in {mode!r} mode needs a backend to ask on a miss; "
                                  "pass one, or use mode='replay'")
            if name is None or version is None:
                raise ConfigError("a replay SearchCache without a backend needs name= and version= "
                                  "of the backend that recorded the cache (see `mmsearch-gym cache stats DIR`)")
        else:
            for label, given, actual in (("name", name, backend.name), ("version", version, backend.version)):
                if given is not None and given != actual:
                    raise ConfigError(f"{label}={given!r} contradicts the backend's {label} {actual!r}; drop it")
            name, version = backend.name, backend.version
            if params is None and callable(getattr(backend, "cache_params", None)):
                params = backend.cache_params()  # type: ignore[attr-defined]
        if isinstance(directory, str) and is_url(directory) and store is None:
            directory, store = None, directory
        self._backend = backend
        self._fallback = fallback
        self.name: str = str(name)
        self.version: str = str(version)
        self.mode: str = mode
        self.params: dict[str, Any] = canonical_params(params)
        self.size_limit = int(size_limit)
        self.local_cache = int(local_cache)
        self._store_url = store if isinstance(store, str) else None
        if store is None:
            self.directory: Path | None = (Path(directory).expanduser() if directory is not None
                                           else default_cache_dir())
            self._store: Store = open_store(self.directory, self.size_limit,
                                            readonly="auto" if mode == "replay" else False)
        elif isinstance(store, str):
            if not is_url(store):
                raise ConfigError(f"store={store!r} is not a redis:// URL; give a directory as directory=")
            self.directory = None
            self._store = open_store(store, local_cache=self.local_cache,
                                     namespace=namespace_for(self.name, self.version))
        else:
            self.directory = getattr(store, "directory", None)
            self._store = store
        self.location: str = self._store.location
        self._hits = 0
        self._misses = 0
        self._flushed_hits = 0
        self._flushed_misses = 0
        self._key_head = key_head(self.name, self.version, self.params)

    @classmethod
    def from_cassette(cls, path: str | Path, directory: str | Path | None = None, *,
                      backend: SearchBackend | None = None, mode: CacheMode = "replay",
                      fallback: SearchBackend | None = None, size_limit: int = 2**32,
                      store: str | None = None) -> SearchCache:
        """Open a cache for the backend that recorded a cassette, with the cassette imported.

        The cassette's header gives the backend's name, version and cache params, so replaying
        a shipped cassette needs no live backend: ``SearchCache.from_cassette(path,
        fallback=CassetteFallback.from_cassette(path))``. ``backend``, if given, must be the
        recording backend (then ``readthrough`` or ``record`` work too). Import is validated
        in full and idempotent.
        """
        info = _cassette.read_cassette(path)
        if backend is not None:
            cache = cls(backend, directory, mode=mode, fallback=fallback, size_limit=size_limit, store=store)
        else:
            cache = cls(None, directory, mode=mode, fallback=fallback, name=info.backend,
                        version=info.backend_version, size_limit=size_limit, params=info.cache_params,
                        store=store)
        try:
            _cassette.import_cassette(cache, info)
        except BaseException:
            cache.close()
            raise
        return cache

    # -- keys ---------------------------------------------------------------------------------

    def key_for_text(self, query: str, k: int) -> str:
        """The key of a text search; equals :func:`cache_key` with the normalised query."""
        canonical = f"{self._key_head}\"text\",{encode_str(normalize_query(query))},{int(k)}]"
        return _sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()

    def key_for_image(self, image: ImageQuery, k: int) -> str:
        """The key of an image search: the source image's digest, the crop box and ``k``."""
        box = image.box
        box_json = "null" if box is None else "[" + ",".join(str(int(v)) for v in box) + "]"
        canonical = f"{self._key_head}\"image\",[{encode_str(image.digest)},{box_json}],{int(k)}]"
        return _sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()

    # -- SearchBackend ------------------------------------------------------------------------

    def text_search(self, query: str, k: int) -> list[Hit]:
        key = self.key_for_text(query, k)
        hits, damaged = self._lookup(key)
        if hits is not None:
            return hits
        return self._serve_miss(
            key, damaged,
            ask=lambda backend: backend.text_search(query, k),
            describe=lambda: f"text search {query!r} (k={k})",
            entry=lambda hits: CacheEntry(kind="text", k=int(k), backend=self.name, backend_version=self.version,
                                          hits=tuple(hits), query=normalize_query(query), params=self.params))

    def image_search(self, image: ImageQuery, k: int) -> list[Hit]:
        key = self.key_for_image(image, k)
        hits, damaged = self._lookup(key)
        if hits is not None:
            return hits
        box = None if image.box is None else tuple(int(v) for v in image.box)
        return self._serve_miss(
            key, damaged,
            ask=lambda backend: backend.image_search(image, k),
            describe=lambda: f"image search of image {image.digest[:16]}... box={image.box} (k={k})",
            entry=lambda hits: CacheEntry(kind="image", k=int(k), backend=self.name, backend_version=self.version,
                                          hits=tuple(hits), digest=image.digest, box=box,  # type: ignore[arg-type]
                                          params=self.params))

    def _lookup(self, key: str) -> tuple[list[Hit] | None, str]:
        """The stored hits (counted as a hit), or None and why a stored value was unusable."""
        if self.mode == "record":
            return None, ""
        data = self._store.get(key)
        if data is None:
            return None, ""
        try:
            hits = decode_hits(data)
        except DamagedValue as err:
            return None, str(err)
        self._hits += 1
        return hits, ""

    def _serve_miss(self, key: str, damaged: str, *, ask: Callable[[SearchBackend], Iterable[Hit]],
                    describe: Callable[[], str], entry: Callable[[list[Hit]], CacheEntry]) -> list[Hit]:
        """A miss: the mode decides between the fallback, CacheMiss and the backend (then store)."""
        self._misses += 1
        if self.mode == "replay":
            if self._fallback is not None:
                return list(ask(self._fallback))
            raise self._miss(key, describe(), damaged)
        hits = self._checked(ask(self._backend))  # type: ignore[arg-type]
        value = entry(hits).encode()
        if self.mode == "record" or damaged:
            self._store.put(key, value)
        elif not self._store.add(key, value):
            # Another worker stored this key first: answer what it stored, so both agree.
            data = self._store.get(key)
            try:
                if data is not None:
                    return decode_hits(data)
            except DamagedValue:
                pass
            self._store.put(key, value)  # a row without a readable value (its file gone): heal it
        return hits

    def _checked(self, hits: Iterable[Hit]) -> list[Hit]:
        """The backend's answer as a list, refused (TypeError) if it could not round-trip through JSON.

        Checked once, before storing, so that a sloppy backend fails where the bug is rather
        than leaving entries that a cassette import later rejects.
        """
        result = list(hits)
        for hit in result:
            if not isinstance(hit, Hit):
                raise TypeError(f"backend {self.name} returned {type(hit).__name__}, not Hit")
            for name in ("title", "url", "snippet", "source"):
                if not isinstance(getattr(hit, name), str):
                    raise TypeError(f"backend {self.name} returned a Hit whose {name} is "
                                    f"{type(getattr(hit, name)).__name__}, not str: {hit!r}")
            if not isinstance(hit.score, (int, float)) or isinstance(hit.score, bool):
                raise TypeError(f"backend {self.name} returned a Hit whose score is not a number: {hit!r}")
            if hit.thumbnail is not None and not isinstance(hit.thumbnail, (bytes, bytearray)):
                raise TypeError(f"backend {self.name} returned a Hit whose thumbnail is not bytes: {hit!r}")
        return result

    def _miss(self, key: str, what: str, damaged: str = "") -> CacheMiss:
        why = (f"the stored answer is damaged ({damaged})" if damaged else "no cached result")
        where = self.location
        return CacheMiss(
            f"strict replay: {why} for {what} from backend {self.name}@{self.version} "
            f"in {where} (key {key}). Record it first (mode='readthrough' or 'record' with the live "
            f"backend), import a cassette (`mmsearch-gym cache import FILE --dir {where}`), or "
            "pass fallback=CassetteFallback.from_cassette(FILE) to answer misses approximately.",
            key=key, query=what)

    # -- entries, stats, cassettes ------------------------------------------------------------

    def get_entry(self, key: str) -> CacheEntry | None:
        """The stored entry under ``key``, or None; DamagedValue if it is damaged."""
        data = self._store.get(key)
        return None if data is None else CacheEntry.decode(data)

    def entries(self) -> Iterator[tuple[str, CacheEntry]]:
        """Every stored ``(key, entry)`` of *this* backend (name, version, params), in key order."""
        for key, entry in iter_entries(self._store):
            if self.serves(entry):
                yield key, entry

    def serves(self, entry: CacheEntry) -> bool:
        """Whether ``entry`` was recorded by this cache's backend identity."""
        return (entry.backend, entry.backend_version, dict(entry.params)) == (self.name, self.version, self.params)

    @property
    def store(self) -> Store:
        """The underlying store (a DiskStore's diskcache is ``store.cache``); for tools and benchmarks."""
        return self._store

    def stats(self) -> CacheStats:
        """This instance's hits and misses, and the store's entry count and size in bytes."""
        return CacheStats(hits=self._hits, misses=self._misses, entries=self._store.count(),
                          bytes=self._store.volume())

    def export_cassette(self, path: str | Path) -> int:
        """Write this backend's entries to a cassette file; returns the entry count."""
        return _cassette.export_cassette(self, path)

    def import_cassette(self, path: str | Path) -> int:
        """Load a cassette recorded by this backend; returns the entry count."""
        return _cassette.import_cassette(self, path)

    def flush_stats(self) -> None:
        """Add this instance's unflushed hit/miss counts to the store's lifetime counters."""
        if self._store.readonly:
            return
        dh, dm = self._hits - self._flushed_hits, self._misses - self._flushed_misses
        if dh or dm:
            self._store.add_counts(dh, dm)
        self._flushed_hits, self._flushed_misses = self._hits, self._misses

    def close(self) -> None:
        """Flush lifetime counters and close the store (a directory store reopens on next use),
        then the wrapped backend and fallback when they have ``close()`` (e.g. HTTP sessions)."""
        with contextlib.suppress(diskcache.Timeout, sqlite3.Error, SearchError, OSError):
            self.flush_stats()
        self._store.close()
        for inner in (self._backend, self._fallback):
            if callable(getattr(inner, "close", None)):
                inner.close()  # type: ignore[union-attr]

    def __enter__(self) -> SearchCache:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __len__(self) -> int:
        return self.stats().entries

    def __repr__(self) -> str:
        return f"SearchCache({self.name}@{self.version}, {self.location!r}, mode={self.mode!r})"

    # Pickling (e.g. into a spawned vector-env worker) ships the configuration, never the data:
    # the worker reopens the same directory or Redis store.
    def __getstate__(self) -> dict[str, Any]:
        if self._store_url is None and self.directory is None:
            raise TypeError("a SearchCache over a Store object cannot be pickled; open it with store=URL")
        return {"backend": self._backend, "directory": None if self.directory is None else str(self.directory),
                "mode": self.mode, "fallback": self._fallback, "name": self.name, "version": self.version,
                "size_limit": self.size_limit, "params": self.params, "store": self._store_url,
                "local_cache": self.local_cache}

    def __setstate__(self, state: dict[str, Any]) -> None:
        backend = state.pop("backend")
        directory = state.pop("directory")
        if backend is not None:
            state["name"] = state["version"] = None
        self.__init__(backend, directory, **state)  # type: ignore[misc]
