"""Stores: where a SearchCache keeps its checksummed entries (a directory, or Redis).

A :class:`Store` maps cache keys (sha256 hex) to encoded entries (bytes, see ``entry.py``)
and keeps two lifetime counters. :class:`DiskStore` is `diskcache
<https://grantjenks.com/docs/diskcache/>`_ (SQLite in WAL mode plus files for large values),
which many processes can share; :class:`ReadOnlyDiskStore` reads the same layout with plain
SQLite and writes nothing at all, so a cache on a read-only mount or a CD can be replayed;
``redis_store.RedisStore`` shares one cache between machines. :func:`open_store` picks one
from a location (a directory path or a ``redis://`` URL).

Values are bytes (and the counters ints), never pickle: :class:`JSONDisk` refuses to store or
load anything else, so opening a cache directory from a stranger cannot run code. A write
that fails (disk full, read-only media) raises :class:`SearchError` and leaves no partial file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import diskcache
from diskcache.core import MODE_BINARY, MODE_RAW, UNKNOWN

from mmsearch_gym.errors import ConfigError, DataError
from mmsearch_gym.search.base import SearchError
from mmsearch_gym.search.entry import CacheEntry

__all__ = ["DiskStore", "JSONDisk", "ReadOnlyDiskStore", "Store", "is_url", "iter_entries", "open_store"]

META_PREFIX = "~mmsearch_gym/"
"""Reserved key prefix for bookkeeping rows; entry keys are sha256 hex and never start with it."""
HITS_KEY = META_PREFIX + "hits"
MISSES_KEY = META_PREFIX + "misses"
_LOCK_NAME = "mmsearch_gym.lock"
_READONLY_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM}
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@runtime_checkable
class Store(Protocol):
    """What SearchCache needs from a storage engine. Keys are str, values bytes.

    Reads of a missing key return None; writes raise :class:`SearchError` when the medium
    refuses them (full, read-only, unreachable), never a raw OSError.
    """

    location: str
    """A directory path or a URL without credentials (for messages)."""
    readonly: bool

    def get(self, key: str) -> bytes | None: ...
    def put(self, key: str, value: bytes) -> None:
        """Store or overwrite (record mode, repairs)."""
    def add(self, key: str, value: bytes) -> bool:
        """Store only if absent, atomically across processes; True if this call stored it."""
    def put_many(self, items: Iterable[tuple[str, bytes]]) -> int:
        """Store many entries at once (cassette import); returns how many."""
    def delete(self, key: str) -> bool: ...
    def keys(self) -> list[str]:
        """Every entry key, sorted (bookkeeping rows excluded)."""
    def count(self) -> int: ...
    def volume(self) -> int:
        """Bytes used (approximate for Redis)."""
    def add_counts(self, hits: int, misses: int) -> None:
        """Add to the lifetime hit/miss counters."""
    def counts(self) -> tuple[int, int, list[str]]:
        """Lifetime ``(hits, misses, problems)``; a damaged counter reads 0 and is named in problems."""
    def reset_counts(self) -> None:
        """Rewrite damaged counters as 0 (repair)."""
    def close(self) -> None: ...


def is_url(location: str | Path) -> bool:
    return isinstance(location, str) and location.startswith(("redis://", "rediss://", "unix://"))


def _full_error(location: str, err: BaseException) -> SearchError:
    return SearchError(f"search cache {location}: could not store an entry ({err}); nothing was written. "
                       "Free disk space (or point the cache at another directory) and retry")


def _damaged_db(db: Path, err: BaseException) -> DataError:
    return DataError(f"{db}: not a readable cache database ({err}); the cache is damaged. Move the directory "
                     "away and rebuild it: re-record, or `mmsearch-gym cache import CASSETTE --dir DIR`")


def _is_full(err: BaseException) -> bool:
    if isinstance(err, OSError):
        return err.errno in _FULL_ERRNOS
    return isinstance(err, sqlite3.OperationalError) and "full" in str(err)


class JSONDisk(diskcache.Disk):
    """A diskcache Disk that stores only ``str`` keys and ``bytes``/``int`` values: never pickle.

    The default Disk pickles any other type on write and unpickles on read, so a cache
    directory received from someone else could run code when read. This one refuses both.
    A value file whose write fails (disk full) is removed, never left half-written.
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

    def _write(self, full_path: str, iterator: Any, mode: str, encoding: str | None = None) -> int:
        try:
            return super()._write(full_path, iterator, mode, encoding)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(full_path)
            raise


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


def _meta_value(value: Any, name: str, problems: list[str]) -> int:
    if value is None:
        return 0
    if type(value) is int and value >= 0:
        return value
    problems.append(f"the {name} counter is damaged ({type(value).__name__} {str(value)[:40]!r}); reads as 0")
    return 0


class DiskStore:
    """A cache directory through diskcache: multi-process safe, crash safe (SQLite WAL)."""

    readonly = False

    def __init__(self, directory: str | Path, size_limit: int | None = None) -> None:
        self.directory = Path(directory).expanduser()
        self.location = str(self.directory)
        # Reads must never write: no access-time updates (LRU/LFU eviction) and no hit statistics.
        settings: dict[str, Any] = {"eviction_policy": "least-recently-stored", "statistics": 0}
        if size_limit is not None:
            settings["size_limit"] = int(size_limit)
        for attempt in range(20):
            try:
                with _init_lock(self.directory):
                    self.cache = diskcache.Cache(str(self.directory), disk=JSONDisk, **settings)
                return
            except sqlite3.OperationalError as err:
                if attempt == 19 or "locked" not in str(err):
                    raise
                time.sleep(0.05 * (attempt + 1))

    @property
    def disk(self) -> JSONDisk:
        return self.cache.disk  # type: ignore[return-value]

    def _read(self, key: str) -> Any:
        try:
            return self.cache.get(key, retry=True)
        except sqlite3.DatabaseError as err:
            raise SearchError(str(_damaged_db(self.directory / "cache.db", err))) from None

    def get(self, key: str) -> bytes | None:
        return self._read(key)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        try:
            yield
        except (OSError, sqlite3.OperationalError) as err:
            if _is_full(err) or (isinstance(err, OSError) and err.errno in _READONLY_ERRNOS):
                raise _full_error(self.location, err) from None
            raise
        except sqlite3.DatabaseError as err:
            raise SearchError(str(_damaged_db(self.directory / "cache.db", err))) from None

    def put(self, key: str, value: bytes) -> None:
        with self._writing():
            self.cache.set(key, value, retry=True)

    def add(self, key: str, value: bytes) -> bool:
        with self._writing():
            return bool(self.cache.add(key, value, retry=True))

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> int:
        n = 0
        with self._writing(), self.cache.transact(retry=True):
            for key, value in items:
                self.cache.set(key, value, retry=True)
                n += 1
        return n

    def delete(self, key: str) -> bool:
        with self._writing():
            return bool(self.cache.delete(key, retry=True))

    def keys(self) -> list[str]:
        return [k for k in self.cache.iterkeys() if isinstance(k, str) and not k.startswith(META_PREFIX)]

    def counts(self) -> tuple[int, int, list[str]]:
        problems: list[str] = []
        values = []
        for key, name in ((HITS_KEY, "hits"), (MISSES_KEY, "misses")):
            try:
                raw = self.cache.get(key, default=None, retry=True)
            except DataError:
                raw = "pickled"
            values.append(_meta_value(raw, name, problems))
        return values[0], values[1], problems

    def _meta_rows(self) -> int:
        return sum(self.cache.get(key, default=None, retry=True) is not None for key in (HITS_KEY, MISSES_KEY))

    def count(self) -> int:
        try:
            return len(self.cache) - self._meta_rows()
        except DataError:
            return len(self.keys())

    def volume(self) -> int:
        return int(self.cache.volume())

    def add_counts(self, hits: int, misses: int) -> None:
        with self._writing():
            for key, delta in ((HITS_KEY, hits), (MISSES_KEY, misses)):
                if delta:
                    try:
                        self.cache.incr(key, delta, retry=True)
                    except (TypeError, DataError):  # a damaged counter: it could not be read anyway
                        self.cache.set(key, delta, retry=True)

    def reset_counts(self) -> None:
        hits, misses, problems = self.counts()
        if problems:
            with self._writing():
                self.cache.set(HITS_KEY, hits, retry=True)
                self.cache.set(MISSES_KEY, misses, retry=True)

    def close(self) -> None:
        self.cache.close()


def connect_readonly(db: Path) -> sqlite3.Connection:
    """A SQLite connection that never writes: ``mode=ro``, or ``immutable`` on read-only media.

    ``immutable`` is needed where SQLite cannot even create its shared-memory file (a
    read-only mount) and is only correct because nothing can write there.
    """
    if not db.is_file():
        raise ConfigError(f"no search cache at {db.parent} (no cache.db there); check the directory")
    last: Exception | None = None
    for query in ("mode=ro", "immutable=1"):
        con = sqlite3.connect(f"{db.resolve().as_uri()}?{query}", uri=True, check_same_thread=False)
        try:
            con.execute("SELECT count(*) FROM Cache").fetchone()
        except sqlite3.DatabaseError as err:
            con.close()
            last = err
            if not isinstance(err, sqlite3.OperationalError) or "no such table" in str(err):
                break
            continue
        return con
    raise _damaged_db(db, last or RuntimeError("unreadable"))


class ReadOnlyDiskStore:
    """A cache directory read with plain SQLite, writing nothing (no lock file, no WAL index).

    For replay and inspection of caches on read-only media (a mount, a CD, a shared
    read-only folder). Opened ``immutable`` when SQLite cannot even create its shared-memory
    file there, which is only correct because nothing writes to read-only media.
    """

    readonly = True

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).expanduser()
        self.location = str(self.directory)
        self._con: sqlite3.Connection | None = connect_readonly(self.directory / "cache.db")

    def _sql(self, query: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self._con is None:  # closed: reopen on use, like diskcache
            self._con = connect_readonly(self.directory / "cache.db")
        try:
            return self._con.execute(query, args).fetchall()
        except sqlite3.DatabaseError as err:
            raise SearchError(str(_damaged_db(self.directory / "cache.db", err))) from None

    def _value(self, key: str) -> Any:
        rows = self._sql("SELECT raw, mode, filename, value FROM Cache WHERE key = ?", (key,))
        if not rows:
            return None
        raw, mode, filename, value = rows[0]
        if not raw or mode not in (MODE_RAW, MODE_BINARY):
            raise DataError("this cache directory holds a pickled or text value; refusing to load it. "
                            "Use a cache directory written by mmsearch_gym.")
        if mode == MODE_RAW:
            return bytes(value) if isinstance(value, (bytes, memoryview)) else value
        try:
            return (self.directory / filename).read_bytes()
        except OSError:
            return None  # a value file gone missing: a miss, as diskcache treats it

    def get(self, key: str) -> bytes | None:
        return self._value(key)

    def _refuse(self, *_: Any) -> Any:
        raise SearchError(f"search cache {self.location} is read-only (opened from read-only media); "
                          "nothing can be stored in it")

    put = add = put_many = delete = add_counts = _refuse

    def reset_counts(self) -> None:
        self._refuse()

    def keys(self) -> list[str]:
        return [k for (k,) in self._sql("SELECT key FROM Cache WHERE raw = 1 ORDER BY key")
                if isinstance(k, str) and not k.startswith(META_PREFIX)]

    def count(self) -> int:
        return len(self.keys())

    def volume(self) -> int:
        (pages,), = self._sql("PRAGMA page_count")
        (page_size,), = self._sql("PRAGMA page_size")
        (files,), = self._sql("SELECT COALESCE(SUM(size), 0) FROM Cache")
        return int(pages * page_size + files)

    def counts(self) -> tuple[int, int, list[str]]:
        problems: list[str] = []
        values = []
        for key, name in ((HITS_KEY, "hits"), (MISSES_KEY, "misses")):
            try:
                raw = self._value(key)
            except DataError:
                raw = "pickled"
            values.append(_meta_value(raw, name, problems))
        return values[0], values[1], problems

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


def _is_readonly_error(err: BaseException) -> bool:
    if isinstance(err, OSError):
        return err.errno in _READONLY_ERRNOS
    text = str(err)
    return isinstance(err, sqlite3.OperationalError) and ("readonly" in text or "unable to open" in text)


def open_store(location: str | Path, size_limit: int | None = None, *, create: bool = True,
               readonly: bool | Literal["auto"] = False, **options: Any) -> Store:
    """Open the store at ``location``: a ``redis://`` URL or a cache directory.

    ``create=False`` raises ConfigError when no cache exists there (for read-only tools).
    ``readonly=True`` opens without writing anything; ``"auto"`` opens for writing and falls
    back to read-only when the medium refuses writes. A damaged database is a DataError
    naming the file. ``options`` go to the Redis store (``local_cache`` entries).
    """
    if is_url(location):
        from mmsearch_gym.search.redis_store import RedisStore

        return RedisStore(str(location), **options)
    if options:
        raise ConfigError(f"options {sorted(options)} only apply to a redis:// store")
    path = Path(location).expanduser()
    if not create and not (path / "cache.db").is_file():
        raise ConfigError(f"no search cache at {path} (no cache.db there); check the directory")
    if readonly is True:
        return ReadOnlyDiskStore(path)
    try:
        return DiskStore(path, size_limit)
    except (OSError, sqlite3.OperationalError) as err:
        if readonly == "auto" and _is_readonly_error(err) and (path / "cache.db").is_file():
            return ReadOnlyDiskStore(path)
        if _is_readonly_error(err):
            raise ConfigError(f"cannot open the search cache at {path} for writing ({err}); it is on read-only "
                              "media or not yours. Use mode='replay' to read it, or another directory") from None
        if _is_full(err):
            raise _full_error(str(path), err) from None
        if isinstance(err, sqlite3.DatabaseError):
            raise _damaged_db(path / "cache.db", err) from None
        raise
    except sqlite3.DatabaseError as err:
        raise _damaged_db(path / "cache.db", err) from None


def iter_entries(store: Store) -> Iterator[tuple[str, CacheEntry]]:
    """Every ``(key, entry)`` in a store, in key order; DamagedValue for a damaged one."""
    for key in store.keys():
        data = store.get(key)
        if data is None:  # evicted meanwhile
            continue
        yield key, CacheEntry.decode(data)
