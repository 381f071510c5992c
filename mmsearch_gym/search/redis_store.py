"""A SearchCache store on a Redis server, shared by every worker of a cluster.

Same keys, same checksummed values and same modes as a cache directory; only where the bytes
live changes. Layout (one namespace per backend name and version, and per value format)::

    mmsearch_gym:2:<backend>@<version>:e:<sha256 key>   -> encoded entry (entry.py; never pickle)
    mmsearch_gym:2:<backend>@<version>:c:hits|misses    -> lifetime counters (INCRBY)

A readthrough miss stores with ``SET NX`` (put if absent): when two workers miss one key at
once, one value is stored and both serve it. An optional in-process LRU (``local_cache``
entries) in front answers hot keys without a round trip; it is safe because a key's value
only changes in record mode, which writes through it.

A store opened by a SearchCache is bound to its backend's namespace; one opened from a URL
alone (the CLI: stats, export, import, verify, repair) sees every namespace. Connection
failures are :class:`SearchError` (the env shows a tool error; the next call reconnects).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any, cast
from urllib.parse import quote, urlsplit, urlunsplit

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.lru import LRU
from mmsearch_gym.search.base import SearchError
from mmsearch_gym.search.entry import CacheEntry

__all__ = ["ROOT", "RedisStore", "namespace_for"]

ROOT = "mmsearch_gym:2:"
"""Prefix of every key; the digit is the value format (MSGC2), so a format change never mixes."""
_ENTRY = ":e:"
_COUNTER = ":c:"
_SCAN_COUNT = 1000


def namespace_for(backend: str, version: str) -> str:
    """The namespace of one backend identity (no ``:`` or glob characters survive quoting)."""
    return quote(f"{backend}@{version}", safe="@.-_+")


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class RedisStore:
    """A :class:`~mmsearch_gym.search.store.Store` on Redis (``redis://HOST:PORT/DB``).

    Args:
        url: the server; a password in the URL is used but never shown.
        namespace: bind to one backend identity (:func:`namespace_for`); None sees all.
        local_cache: entries of an in-process LRU in front of the server (0: none).
        timeout: seconds for connecting and for each command.
    """

    readonly = False

    def __init__(self, url: str, *, namespace: str | None = None, local_cache: int = 0,
                 timeout: float = 5.0) -> None:
        try:
            import redis
        except ModuleNotFoundError:
            raise ConfigError("a redis:// cache store needs the redis client: pip install 'mmsearch-gym[redis]'") \
                from None
        self.location = _redacted(url)
        self.namespace = namespace
        self._prefix = None if namespace is None else f"{ROOT}{namespace}{_ENTRY}"
        self._errors: tuple[type[BaseException], ...] = (redis.exceptions.ConnectionError,
                                                          redis.exceptions.TimeoutError, OSError)
        self._response_error = redis.exceptions.ResponseError
        try:
            self._client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        except ValueError as err:
            raise ConfigError(f"bad Redis URL {self.location}: {err}") from None
        self._local: LRU[str, bytes] | None = LRU(local_cache) if local_cache > 0 else None
        self._where: dict[str, str] = {}
        """Unbound stores: entry key -> its full Redis key (filled by keys())."""
        with self._talking("connect to"):
            self._client.ping()

    @contextlib.contextmanager
    def _talking(self, what: str = "use") -> Iterator[None]:
        try:
            yield
        except self._errors as err:
            raise SearchError(f"search cache: could not {what} the Redis store {self.location} ({err}); "
                              "check that the server is up, then retry") from None
        except self._response_error as err:
            raise SearchError(f"search cache: the Redis store {self.location} refused a command ({err})") from None

    # -- key layout ----------------------------------------------------------------------------

    def _ns_for_value(self, value: bytes) -> str:
        entry = CacheEntry.decode(value)
        return namespace_for(entry.backend, entry.backend_version)

    def _full(self, key: str, value: bytes | None = None) -> str | None:
        if self.namespace is not None:
            return f"{ROOT}{self.namespace}{_ENTRY}{key}"
        if key in self._where:
            return self._where[key]
        if value is not None:
            return f"{ROOT}{self._ns_for_value(value)}{_ENTRY}{key}"
        with self._talking():
            for found in self._client.scan_iter(match=f"{ROOT}*{_ENTRY}{key}", count=_SCAN_COUNT):
                return self._remember(found)[1]
        return None

    def _write_key(self, key: str, value: bytes) -> str:
        """The full Redis key to write ``value`` under (its namespace comes from the value)."""
        full = self._full(key, value)
        assert full is not None  # with a value, _full always names a key
        return full

    def _remember(self, raw: bytes | str) -> tuple[str, str]:
        full = raw.decode() if isinstance(raw, bytes) else raw
        key = full.rsplit(_ENTRY, 1)[1]
        self._where[key] = full
        return key, full

    def _counter_keys(self, name: str) -> list[str]:
        if self.namespace is not None:
            return [f"{ROOT}{self.namespace}{_COUNTER}{name}"]
        with self._talking():
            return sorted(k.decode() for k in self._client.scan_iter(match=f"{ROOT}*{_COUNTER}{name}",
                                                                     count=_SCAN_COUNT))

    # -- Store ---------------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        """The stored bytes or None (the hot path of a hit: one GET, no context managers)."""
        local = self._local
        if local is not None:
            value = local.get(key)
            if value is not None:
                return value
        full = self._prefix + key if self._prefix is not None else self._full(key)
        if full is None:
            return None
        try:
            value = cast("bytes | None", self._client.get(full))
        except self._errors + (self._response_error,):
            with self._talking():
                raise
        if value is not None and local is not None:
            local.put(key, value)
        return value

    def put(self, key: str, value: bytes) -> None:
        full = self._write_key(key, value)
        with self._talking():
            self._client.set(full, value)
        if self._local is not None:
            self._local.put(key, value)

    def add(self, key: str, value: bytes) -> bool:
        full = self._write_key(key, value)
        with self._talking():
            stored = bool(self._client.set(full, value, nx=True))
        if stored and self._local is not None:
            self._local.put(key, value)
        return stored

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> int:
        n = 0
        with self._talking():
            pipe = self._client.pipeline(transaction=True)
            for key, value in items:
                pipe.set(self._write_key(key, value), value)
                n += 1
            pipe.execute()
        if self._local is not None:
            self._local.clear()
        return n

    def delete(self, key: str) -> bool:
        full = self._full(key)
        if self._local is not None:
            self._local.discard(key)
        if full is None:
            return False
        with self._talking():
            return bool(self._client.delete(full))

    def keys(self) -> list[str]:
        ns = "*" if self.namespace is None else self.namespace
        with self._talking():
            found = [self._remember(raw)[0]
                     for raw in self._client.scan_iter(match=f"{ROOT}{ns}{_ENTRY}*", count=_SCAN_COUNT)]
        return sorted(set(found))

    def count(self) -> int:
        return len(self.keys())

    def volume(self) -> int:
        keys = self.keys()
        with self._talking():
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                full = self._full(key)
                if full is not None:
                    pipe.strlen(full)
            return int(sum(pipe.execute()))

    def add_counts(self, hits: int, misses: int) -> None:
        if self.namespace is None:
            raise ConfigError("counters of a Redis store are per backend: open it through a SearchCache")
        with self._talking():
            pipe = self._client.pipeline(transaction=True)
            for name, delta in (("hits", hits), ("misses", misses)):
                if delta:
                    pipe.incrby(f"{ROOT}{self.namespace}{_COUNTER}{name}", delta)
            pipe.execute()

    def _read_counters(self) -> tuple[dict[str, int], list[str], list[str]]:
        totals = {"hits": 0, "misses": 0}
        problems: list[str] = []
        damaged: list[str] = []
        for name in totals:
            keys = self._counter_keys(name)
            with self._talking():
                values = self._client.mget(keys) if keys else []
            for key, raw in zip(keys, values, strict=True):
                if raw is None:
                    continue
                try:
                    totals[name] += int(raw)
                except ValueError:
                    problems.append(f"the {name} counter {key} is damaged ({raw[:40]!r}); reads as 0")
                    damaged.append(key)
        return totals, problems, damaged

    def counts(self) -> tuple[int, int, list[str]]:
        totals, problems, _ = self._read_counters()
        return totals["hits"], totals["misses"], problems

    def reset_counts(self) -> None:
        _, _, damaged = self._read_counters()
        with self._talking():
            for key in damaged:
                self._client.set(key, 0)

    def close(self) -> None:
        with contextlib.suppress(*self._errors):
            self._client.close()

    @property
    def client(self) -> Any:
        """The redis-py client (for tools and benchmarks)."""
        return self._client
