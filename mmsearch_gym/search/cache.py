"""SearchCache: a deterministic, disk-backed, multi-process-safe cache around any SearchBackend.

Live search costs money and drifts from day to day; an RL run repeats the same queries
thousands of times. SearchCache stores every answer under a key that depends only on what
changes results (backend name, version and ``cache_params()``, the normalised query or the
image's content digest and crop box, and ``k``), so reruns are free and bit-for-bit
reproducible, and a recorded cache can be shipped as a cassette (see ``cassette.py``).

Storage is `diskcache <https://grantjenks.com/docs/diskcache/>`_ (SQLite in WAL mode plus
files for large values), which many processes can share: gymnasium AsyncVectorEnv workers and
several trainers may point at one directory. Values are JSON plus raw image bytes, never
pickle: :class:`JSONDisk` refuses to store or load anything else, so opening a cache directory
from a stranger cannot run code.

Modes:

``readthrough``
    a hit is served from disk; a miss asks the backend and stores its answer.
``record``
    always asks the backend and overwrites the stored answer (refresh a cache).
``replay``
    never asks the backend; a miss goes to ``fallback`` if one is set (its answer is *not*
    stored) or raises :class:`CacheMiss` (strict replay).

A backend exception propagates and is never cached.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import json.scanner
import os
import sqlite3
import struct
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from json.encoder import encode_basestring as _encode_str  # JSON string literal, ensure_ascii=False
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import diskcache
from diskcache.core import MODE_BINARY, MODE_RAW, UNKNOWN

from mmsearch_gym.errors import ConfigError, DataError, MMSearchError
from mmsearch_gym.search.base import Hit, ImageQuery, SearchBackend
from mmsearch_gym.tasks import Box

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

_META_PREFIX = "~mmsearch_gym/"
"""Reserved key prefix for bookkeeping rows; entry keys are sha256 hex and never start with it."""
_HITS_KEY = _META_PREFIX + "hits"
_MISSES_KEY = _META_PREFIX + "misses"
_LOCK_NAME = "mmsearch_gym.lock"

_MAGIC = b"MSGC1"
_LENGTH = struct.Struct(">I")
_JSON_SEPARATORS = (",", ":")
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=_JSON_SEPARATORS)
"""Reused: ``json.dumps`` with options builds a new encoder per call, which dominates key cost."""


def default_cache_dir() -> Path:
    """Where caches live unless told otherwise: ``$MMSEARCH_GYM_CACHE`` or ``~/.cache/mmsearch_gym``."""
    env = os.environ.get("MMSEARCH_GYM_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "mmsearch_gym"


class CacheMiss(MMSearchError, KeyError):
    """Strict replay found no stored answer for a search.

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
    """Hit/miss counts of one SearchCache instance, and the size of its directory."""

    hits: int
    misses: int
    entries: int
    bytes: int

    def to_json(self) -> dict[str, int]:
        return asdict(self)


def normalize_query(query: str) -> str:
    """The form of a text query that keys the cache: Unicode canonical caseless, whitespace collapsed.

    ``"  Capital of  FRANCE "`` and ``"capital of france"`` share one entry. Composed and
    decomposed accents match (NFD, case-fold, then NFC).
    """
    if query.isascii():
        return " ".join(query.lower().split())
    folded = unicodedata.normalize("NFD", query).casefold()
    return " ".join(unicodedata.normalize("NFC", folded).split())


def _canonical_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """A JSON-safe copy of a backend's ``cache_params()``; ConfigError if it is not JSON."""
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"cache_params() must return a mapping of JSON values, got {type(params).__name__}")
    try:
        return json.loads(json.dumps(dict(params), sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"cache_params() must be JSON-serialisable (strings, numbers, lists, dicts): {err}") from None


def _subject(kind: str, query: str | None, digest: str | None, box: Box | None) -> Any:
    if kind == "text":
        return query
    return [digest, None if box is None else [int(v) for v in box]]


def cache_key(backend: str, version: str, params: Mapping[str, Any], kind: str, subject: Any, k: int) -> str:
    """The cache key: sha256 hex of canonical JSON ``[backend, version, params, kind, subject, k]``.

    ``subject`` is the normalised query for text searches and ``[digest, box or null]`` for
    image searches. Nothing else (and in particular no credential) ever enters a key.
    """
    canonical = json.dumps([backend, version, dict(params), kind, subject, int(k)], sort_keys=True,
                           ensure_ascii=False, separators=_JSON_SEPARATORS)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    """One stored answer with everything needed to export it and to recompute its key."""

    kind: Literal["text", "image"]
    k: int
    backend: str
    backend_version: str
    hits: tuple[Hit, ...]
    query: str | None = None
    """Normalised query (text searches)."""
    digest: str | None = None
    """Content digest of the source image (image searches)."""
    box: Box | None = None
    """Crop box of an image search, or None for the whole image."""
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return cache_key(self.backend, self.backend_version, self.params, self.kind,
                         _subject(self.kind, self.query, self.digest, self.box), self.k)

    def encode(self) -> bytes:
        """Bytes stored in the cache: magic, the hits as JSON, the entry's metadata as JSON, thumbnails.

        Layout: ``MSGC1``, u32 length + JSON list of hit rows ``[title, url, snippet, score,
        source, thumbnail length or null]``, u32 length + JSON metadata, then the raw thumbnail
        bytes in hit order. A cache hit parses only the hit rows; thumbnails travel as raw
        bytes (no base64). The encoding is a pure function of the entry.
        """
        thumbs: list[bytes] = []
        rows = []
        for hit in self.hits:
            thumb = hit.thumbnail
            if thumb is not None:
                thumb = bytes(thumb)
                thumbs.append(thumb)
            rows.append([hit.title, hit.url, hit.snippet, float(hit.score), hit.source,
                         None if thumb is None else len(thumb)])
        meta: dict[str, Any] = {"kind": self.kind, "k": int(self.k), "backend": self.backend,
                                "backend_version": self.backend_version, "params": dict(self.params)}
        if self.kind == "text":
            meta["query"] = self.query
        else:
            meta["digest"] = self.digest
            meta["box"] = None if self.box is None else [int(v) for v in self.box]
        head = _ENCODER.encode(rows).encode("utf-8")
        tail = _ENCODER.encode(meta).encode("utf-8")
        return b"".join([_MAGIC, _LENGTH.pack(len(head)), head, _LENGTH.pack(len(tail)), tail, *thumbs])

    @classmethod
    def decode(cls, data: bytes) -> CacheEntry:
        hits, meta = _decode_hits(data), _decode_meta(data)
        box = meta.get("box")
        try:
            return cls(kind=meta["kind"], k=int(meta["k"]), backend=meta["backend"],
                       backend_version=meta["backend_version"], hits=tuple(hits),
                       query=meta.get("query"), digest=meta.get("digest"),
                       box=None if box is None else tuple(int(v) for v in box),  # type: ignore[arg-type]
                       params=meta.get("params") or {})
        except (KeyError, TypeError, ValueError) as err:
            raise _corrupt(err) from None


def _corrupt(err: Exception) -> DataError:
    return DataError(f"a cache value is corrupt ({err!r}); delete the cache directory or re-record it")


def _check_magic(data: bytes) -> None:
    if not isinstance(data, bytes) or data[:5] != _MAGIC:
        raise DataError("a cache value is not an mmsearch_gym entry (bad magic); "
                        "was this directory written by another program? Use a fresh cache directory.")


def _decode_meta(data: bytes) -> dict[str, Any]:
    _check_magic(data)
    try:
        (n_rows,) = _LENGTH.unpack_from(data, 5)
        start = 9 + n_rows
        (n_meta,) = _LENGTH.unpack_from(data, start)
        meta = json.loads(data[start + 4:start + 4 + n_meta])
        if not isinstance(meta, dict):
            raise TypeError("metadata is not an object")
        return meta
    except (ValueError, TypeError, struct.error) as err:
        raise _corrupt(err) from None


_HIT_FIELDS = ("title", "url", "snippet", "score", "source", "thumbnail")
_FAST_HIT = ("__slots__" not in vars(Hit) and not hasattr(Hit, "__post_init__")
             and tuple(f.name for f in dataclasses.fields(Hit)) == _HIT_FIELDS)
"""Whether decoded Hits may be built by filling ``__dict__`` instead of calling ``__init__``.

A frozen dataclass sets each field through ``object.__setattr__``, which was more than a third
of a cache hit's cost; filling ``__dict__`` directly gives an identical, equal Hit. The check
falls back to the constructor if Hit ever gains slots, validation or other fields.
"""
_object_new = object.__new__
_SCAN = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


def _decode_hits(data: bytes) -> list[Hit]:
    """The hits of stored bytes (the hot path of a cache hit); DataError if they are not ours.

    Calls the C JSON scanner directly: ``json.loads(bytes)`` spends more time sniffing the
    encoding and checking trailing whitespace in Python than parsing.
    """
    if type(data) is not bytes or data[:5] != _MAGIC:
        _check_magic(data)
    try:
        (n_rows,) = _LENGTH.unpack_from(data, 5)
        text = data[9:9 + n_rows].decode("utf-8")
        rows, end = _SCAN(text, 0)
        if end != len(text):
            raise ValueError("trailing bytes after the hit rows")
        (n_meta,) = _LENGTH.unpack_from(data, 9 + n_rows)
        offset = 13 + n_rows + n_meta
        hits: list[Hit] = []
        append = hits.append
        for title, url, snippet, score, source, size in rows:
            thumb = None
            if size is not None:
                thumb = data[offset:offset + size]
                offset += size
            if _FAST_HIT:
                hit = _object_new(Hit)
                d = hit.__dict__
                d["title"], d["url"], d["snippet"], d["score"], d["source"], d["thumbnail"] = (
                    title, url, snippet, score, source, thumb)
            else:
                hit = Hit(title, url, snippet, score, source, thumb)
            append(hit)
    except (ValueError, TypeError, StopIteration, struct.error) as err:
        raise _corrupt(err) from None
    return hits


class JSONDisk(diskcache.Disk):
    """A diskcache Disk that stores only ``str`` keys and ``bytes``/``int`` values: never pickle.

    The default Disk pickles any other type on write and unpickles on read, so a cache
    directory received from someone else could run code when read. This one refuses both.
    """

    def put(self, key: Any) -> tuple[Any, bool]:
        if type(key) is not str:
            raise TypeError(f"SearchCache keys are str, got {type(key).__name__}")
        return key, True

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise DataError("this cache directory holds a pickled key; refusing to unpickle it. "
                            "Use a cache directory written by mmsearch_gym.")
        return key

    def store(self, value: Any, read: bool, key: Any = UNKNOWN) -> tuple[int, int, str | None, Any]:
        if read or type(value) not in (bytes, int):
            raise TypeError(f"SearchCache values are bytes (or int counters), got {type(value).__name__}")
        return super().store(value, read, key=key)

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if mode not in (MODE_RAW, MODE_BINARY) or read:
            raise DataError("this cache directory holds a pickled or text value; refusing to load it. "
                            "Use a cache directory written by mmsearch_gym.")
        return super().fetch(mode, filename, value, read)


@contextlib.contextmanager
def _init_lock(directory: Path) -> Iterator[None]:
    """Serialise *opening* a cache dir across processes.

    diskcache runs schema creation and PRAGMAs when a Cache is constructed, and concurrent
    construction on a fresh directory can fail with "database is locked"
    (grantjenks/python-diskcache#266). Operations after opening are process-safe.
    """
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: fall back to retries in open_store
        yield
        return
    with open(directory / _LOCK_NAME, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def open_store(directory: str | Path, size_limit: int | None = None, *, create: bool = True) -> diskcache.Cache:
    """Open (or create) the diskcache under ``directory`` with :class:`JSONDisk`, process-safely.

    ``create=False`` raises ConfigError when no cache exists there (for read-only tools).
    """
    path = Path(directory).expanduser()
    if not create and not (path / "cache.db").is_file():
        raise ConfigError(f"no search cache at {path} (no cache.db there); check the directory")
    # Reads must never write: no access-time updates (LRU/LFU eviction) and no hit statistics.
    settings: dict[str, Any] = {"eviction_policy": "least-recently-stored", "statistics": 0}
    if size_limit is not None:
        settings["size_limit"] = int(size_limit)
    for attempt in range(20):
        try:
            with _init_lock(path):
                return diskcache.Cache(str(path), disk=JSONDisk, **settings)
        except sqlite3.OperationalError:
            if attempt == 19:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def iter_entries(store: diskcache.Cache) -> Iterator[tuple[str, CacheEntry]]:
    """Every ``(key, entry)`` in a store, in key order (bookkeeping rows skipped)."""
    for key in store.iterkeys():
        if not isinstance(key, str) or key.startswith(_META_PREFIX):
            continue
        data = store.get(key, retry=True)
        if data is None:  # evicted meanwhile
            continue
        yield key, CacheEntry.decode(data)


def _meta_rows(store: diskcache.Cache) -> tuple[int, int, int]:
    hits = store.get(_HITS_KEY, default=None, retry=True)
    misses = store.get(_MISSES_KEY, default=None, retry=True)
    rows = (hits is not None) + (misses is not None)
    return int(hits or 0), int(misses or 0), rows


@dataclass(frozen=True)
class CacheSummary:
    """What ``mmsearch-gym cache stats`` shows about a cache directory."""

    directory: str
    entries: int
    bytes: int
    hits: int
    """Lifetime hits, summed over every SearchCache that was closed on this directory."""
    misses: int
    backends: dict[str, int]
    """Entries per ``name@version``."""
    kinds: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize_cache(directory: str | Path) -> CacheSummary:
    """Count a cache directory's entries by backend and kind (reads every entry)."""
    store = open_store(directory, create=False)
    try:
        backends: Counter[str] = Counter()
        kinds: Counter[str] = Counter()
        for _, entry in iter_entries(store):
            backends[f"{entry.backend}@{entry.backend_version}"] += 1
            kinds[entry.kind] += 1
        hits, misses, rows = _meta_rows(store)
        return CacheSummary(directory=str(Path(directory)), entries=len(store) - rows, bytes=int(store.volume()),
                            hits=hits, misses=misses, backends=dict(sorted(backends.items())),
                            kinds=dict(sorted(kinds.items())))
    finally:
        store.close()


class SearchCache:
    """A SearchBackend that answers from a disk cache and asks ``backend`` only on a miss.

    Args:
        backend: the backend to wrap; may be None only in ``replay`` mode (then give
            ``name`` and ``version`` of the backend that recorded the cache).
        directory: cache directory (default :func:`default_cache_dir`); shareable by many
            processes at once.
        mode: ``readthrough``, ``record`` or ``replay`` (see the module docstring).
        fallback: in replay mode, the backend that answers misses (e.g. a
            :class:`~mmsearch_gym.search.fallback.CassetteFallback`); its answers are not stored.
        name, version: the recorded backend's identity when ``backend`` is None.
        size_limit: bytes before diskcache evicts the least recently stored entries.
        params: the recorded backend's ``cache_params()`` when ``backend`` is None.

    ``backend.cache_params()`` (if the backend has it) is read once, here: by convention it
    returns only what changes results (engine, locale, ...), never credentials.
    """

    def __init__(self, backend: SearchBackend | None, directory: str | Path | None = None, *,
                 mode: CacheMode = "readthrough", fallback: SearchBackend | None = None,
                 name: str | None = None, version: str | None = None, size_limit: int = 2**32,
                 params: Mapping[str, Any] | None = None) -> None:
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
        self._backend = backend
        self._fallback = fallback
        self.name: str = str(name)
        self.version: str = str(version)
        self.mode: str = mode
        self.params: dict[str, Any] = _canonical_params(params)
        self.directory = Path(directory).expanduser() if directory is not None else default_cache_dir()
        self.size_limit = int(size_limit)
        self._store = open_store(self.directory, self.size_limit)
        self._hits = 0
        self._misses = 0
        self._flushed_hits = 0
        self._flushed_misses = 0
        # Everything in the key but the kind, subject and k, as the head of a JSON list.
        self._key_head = json.dumps([self.name, self.version, self.params], sort_keys=True, ensure_ascii=False,
                                    separators=_JSON_SEPARATORS)[:-1] + ","

    @classmethod
    def from_cassette(cls, path: str | Path, directory: str | Path | None = None, *,
                      backend: SearchBackend | None = None, mode: CacheMode = "replay",
                      fallback: SearchBackend | None = None, size_limit: int = 2**32) -> SearchCache:
        """Open a cache for the backend that recorded a cassette, with the cassette imported.

        The cassette's header gives the backend's name, version and cache params, so replaying
        a shipped cassette needs no live backend: ``SearchCache.from_cassette(path,
        fallback=CassetteFallback.from_cassette(path))``. ``backend``, if given, must be the
        recording backend (then ``readthrough`` or ``record`` work too). Import is validated
        in full and idempotent.
        """
        from mmsearch_gym.search.cassette import import_cassette, read_cassette

        info = read_cassette(path)
        if backend is not None:
            cache = cls(backend, directory, mode=mode, fallback=fallback, size_limit=size_limit)
        else:
            cache = cls(None, directory, mode=mode, fallback=fallback, name=info.backend,
                        version=info.backend_version, size_limit=size_limit, params=info.cache_params)
        try:
            import_cassette(cache, info)
        except BaseException:
            cache.close()
            raise
        return cache

    # -- keys ---------------------------------------------------------------------------------

    def key_for_text(self, query: str, k: int) -> str:
        """The key of a text search; equals :func:`cache_key` with the normalised query."""
        canonical = f"{self._key_head}\"text\",{_encode_str(normalize_query(query))},{int(k)}]"
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def key_for_image(self, image: ImageQuery, k: int) -> str:
        """The key of an image search: the source image's digest, the crop box and ``k``."""
        box = image.box
        box_json = "null" if box is None else "[" + ",".join(str(int(v)) for v in box) + "]"
        canonical = f"{self._key_head}\"image\",[{_encode_str(image.digest)},{box_json}],{int(k)}]"
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    # -- SearchBackend ------------------------------------------------------------------------

    def text_search(self, query: str, k: int) -> list[Hit]:
        return self._serve(
            self.key_for_text(query, k), k,
            ask=lambda backend: backend.text_search(query, k),
            describe=lambda: f"text search {query!r} (k={k})",
            entry=lambda hits: CacheEntry(kind="text", k=int(k), backend=self.name, backend_version=self.version,
                                          hits=tuple(hits), query=normalize_query(query), params=self.params))

    def image_search(self, image: ImageQuery, k: int) -> list[Hit]:
        box = None if image.box is None else tuple(int(v) for v in image.box)
        return self._serve(
            self.key_for_image(image, k), k,
            ask=lambda backend: backend.image_search(image, k),
            describe=lambda: f"image search of image {image.digest[:16]}... box={image.box} (k={k})",
            entry=lambda hits: CacheEntry(kind="image", k=int(k), backend=self.name, backend_version=self.version,
                                          hits=tuple(hits), digest=image.digest, box=box,  # type: ignore[arg-type]
                                          params=self.params))

    def _serve(self, key: str, k: int, *, ask: Callable[[SearchBackend], Iterable[Hit]],
               describe: Callable[[], str], entry: Callable[[list[Hit]], CacheEntry]) -> list[Hit]:
        """One search through the cache: the mode decides between the store, the fallback and the backend."""
        if self.mode != "record":
            data = self._store.get(key, retry=True)
            if data is not None:
                self._hits += 1
                return _decode_hits(data)
        self._misses += 1
        if self.mode == "replay":
            if self._fallback is not None:
                return list(ask(self._fallback))
            raise self._miss(key, describe())
        hits = self._checked(ask(self._backend))  # type: ignore[arg-type]
        self._store.set(key, entry(hits).encode(), retry=True)
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

    def _miss(self, key: str, what: str) -> CacheMiss:
        return CacheMiss(
            f"strict replay: no cached result for {what} from backend {self.name}@{self.version} "
            f"in {self.directory} (key {key}). Record it first (mode='readthrough' or 'record' with the live "
            f"backend), import a cassette (`mmsearch-gym cache import FILE --dir {self.directory}`), or "
            "pass fallback=CassetteFallback.from_cassette(FILE) to answer misses approximately.",
            key=key, query=what)

    # -- entries, stats, cassettes ------------------------------------------------------------

    def get_entry(self, key: str) -> CacheEntry | None:
        """The stored entry under ``key``, or None."""
        data = self._store.get(key, retry=True)
        return None if data is None else CacheEntry.decode(data)

    def put_entry(self, entry: CacheEntry) -> str:
        """Store an entry under its own key (used by cassette import); returns the key."""
        key = entry.key
        self._store.set(key, entry.encode(), retry=True)
        return key

    def entries(self) -> Iterator[tuple[str, CacheEntry]]:
        """Every stored ``(key, entry)`` of *this* backend (name, version, params), in key order."""
        for key, entry in iter_entries(self._store):
            if self.serves(entry):
                yield key, entry

    def serves(self, entry: CacheEntry) -> bool:
        """Whether ``entry`` was recorded by this cache's backend identity."""
        return (entry.backend, entry.backend_version, dict(entry.params)) == (self.name, self.version, self.params)

    @property
    def store(self) -> diskcache.Cache:
        """The underlying diskcache (JSONDisk); for tools and benchmarks."""
        return self._store

    def stats(self) -> CacheStats:
        """This instance's hits and misses, and the directory's entry count and size in bytes."""
        _, _, rows = _meta_rows(self._store)
        return CacheStats(hits=self._hits, misses=self._misses, entries=len(self._store) - rows,
                          bytes=int(self._store.volume()))

    def export_cassette(self, path: str | Path) -> int:
        """Write this backend's entries to a cassette file; returns the entry count."""
        from mmsearch_gym.search.cassette import export_cassette

        return export_cassette(self, path)

    def import_cassette(self, path: str | Path) -> int:
        """Load a cassette recorded by this backend; returns the entry count."""
        from mmsearch_gym.search.cassette import import_cassette

        return import_cassette(self, path)

    def flush_stats(self) -> None:
        """Add this instance's unflushed hit/miss counts to the directory's lifetime counters."""
        dh, dm = self._hits - self._flushed_hits, self._misses - self._flushed_misses
        if dh:
            self._store.incr(_HITS_KEY, dh, retry=True)
        if dm:
            self._store.incr(_MISSES_KEY, dm, retry=True)
        self._flushed_hits, self._flushed_misses = self._hits, self._misses

    def close(self) -> None:
        """Flush lifetime counters and close the SQLite connections (reopened on next use), then
        the wrapped backend and fallback when they have ``close()`` (e.g. HTTP sessions)."""
        with contextlib.suppress(diskcache.Timeout, sqlite3.Error):
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
        return f"SearchCache({self.name}@{self.version}, {str(self.directory)!r}, mode={self.mode!r})"

    # Pickling (e.g. into a spawned vector-env worker) ships the configuration, never the data:
    # the worker reopens the same directory.
    def __getstate__(self) -> dict[str, Any]:
        return {"backend": self._backend, "directory": str(self.directory), "mode": self.mode,
                "fallback": self._fallback, "name": self.name, "version": self.version,
                "size_limit": self.size_limit, "params": self.params}

    def __setstate__(self, state: dict[str, Any]) -> None:
        backend = state.pop("backend")
        directory = state.pop("directory")
        if backend is not None:
            state["name"] = state["version"] = None
        self.__init__(backend, directory, **state)  # type: ignore[misc]
