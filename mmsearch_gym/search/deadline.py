"""Deadlines: how long one request, or one whole search, may take in all.

A read timeout bounds each wait for the *next* bytes, not the total: a server that drips one
byte every half second never trips a one-second read timeout and can hold an env step for
minutes. So every ``HttpClient`` request runs under a total deadline (all tries, redirects,
backoff and ``Retry-After`` sleeps and body reads included), and a backend can put a whole
search (several requests: pages, thumbnails, page reads) under one more with
``search_deadline``. The earlier of the two wins.

Two halves: ``Deadline``/``search_deadline`` are the clock side (a context variable, so the
limit follows the search into worker threads started with ``contextvars.copy_context()``);
``Watchdog`` and ``WatchedAdapter`` are the socket side: when an attempt's deadline passes,
its sockets are shut down, which wakes any blocked read at once.
"""

from __future__ import annotations

import contextvars
import math
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.poolmanager import PoolManager, ProxyManager

from mmsearch_gym.errors import ConfigError

DEFAULT_REQUEST_DEADLINE = 45.0
"""Seconds one logical request may take in all (at least connect + read timeout, so one slow
try can finish)."""

DEFAULT_SEARCH_DEADLINE = 60.0
"""Seconds one ``text_search``/``image_search`` of a live backend may take in all."""

DEFAULT_READING_DEADLINE = 90.0
"""Seconds a ``ReadingBackend`` search (inner search, then reading the top pages) may take."""


def check_seconds(value: float | None, name: str) -> float | None:
    """A positive, finite number of seconds (or None for no limit); ConfigError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number of seconds or None, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Deadline:
    """A point on the monotonic clock, with what it limits (for error messages)."""

    end: float
    seconds: float
    what: str

    @classmethod
    def after(cls, seconds: float, what: str) -> Deadline:
        return cls(time.monotonic() + seconds, seconds, what)

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def describe(self) -> str:
        return f"the {self.what} deadline of {self.seconds:g} s"


_SEARCH: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar("mmsearch_search_deadline",
                                                                           default=None)


def current_search_deadline() -> Deadline | None:
    """The innermost ``search_deadline`` in force here, if any."""
    return _SEARCH.get()


@contextmanager
def search_deadline(seconds: float | None, what: str = "search") -> Iterator[Deadline | None]:
    """Bound every HttpClient request made inside the block to ``seconds`` in all.

    Nested blocks keep the earlier deadline; ``None`` adds no limit. Worker threads see it when
    started with ``contextvars.copy_context().run``.
    """
    outer = _SEARCH.get()
    if seconds is None:
        yield outer
        return
    limit = Deadline.after(seconds, what)
    if outer is not None and outer.end <= limit.end:
        limit = outer
    token = _SEARCH.set(limit)
    try:
        yield limit
    finally:
        _SEARCH.reset(token)


def earliest(*deadlines: Deadline | None) -> Deadline:
    found = [d for d in deadlines if d is not None]
    if not found:
        raise ValueError("earliest() needs at least one deadline")
    return min(found, key=lambda d: d.end)


# -- the socket side ---------------------------------------------------------------------

_WATCH: contextvars.ContextVar[Watchdog | None] = contextvars.ContextVar("mmsearch_watchdog", default=None)


def _shut(sock: Any) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except (OSError, AttributeError):  # already closed or not a socket: nothing to wake
        pass


class Watchdog:
    """Shuts down every socket of one attempt when ``seconds`` have passed.

    Use as a context manager around the attempt; connections opened or used inside it (through
    a ``WatchedAdapter``) register their sockets. ``fired`` says whether it had to act.
    """

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self._done = False
        self._socks: list[Any] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True
        self._token: contextvars.Token[Watchdog | None] | None = None

    def __enter__(self) -> Watchdog:
        self._token = _WATCH.set(self)
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        with self._lock:
            self._done = True
            self._socks.clear()
        if self._token is not None:
            _WATCH.reset(self._token)

    def watch(self, sock: Any) -> None:
        if sock is None:
            return
        with self._lock:
            if self._done:
                return
            if self.fired:
                _shut(sock)
            elif all(s is not sock for s in self._socks):
                self._socks.append(sock)

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.fired = True
            for sock in self._socks:
                _shut(sock)


def _watch(sock: Any) -> None:
    watchdog = _WATCH.get()
    if watchdog is not None:
        watchdog.watch(sock)


class _WatchedHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _watch(sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        _watch(self.sock)  # a kept-alive connection: its socket already exists
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _watch(sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        _watch(self.sock)
        super().request(*args, **kwargs)


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class WatchedAdapter(HTTPAdapter):
    """requests' adapter whose connections register their sockets with the current Watchdog.

    SOCKS proxies keep urllib3's own connection classes (the deadline is then enforced between
    body chunks and by the per-read timeouts only).
    """

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self._watch_manager(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        self._watch_manager(manager)
        return manager

    @staticmethod
    def _watch_manager(manager: Any) -> None:
        if type(manager) in (PoolManager, ProxyManager):
            manager.pool_classes_by_scheme = _WATCHED_POOLS
