"""Deadlines: search_deadline nesting and thread propagation, the socket watchdog."""

from __future__ import annotations

import contextvars
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.search.deadline import (
    DEFAULT_REQUEST_DEADLINE,
    DEFAULT_SEARCH_DEADLINE,
    Watchdog,
    check_seconds,
    current_search_deadline,
    search_deadline,
)
from mmsearch_gym.search.http import HttpClient


def test_nested_search_deadlines_keep_the_earlier_one() -> None:
    assert current_search_deadline() is None
    with search_deadline(10.0, "outer") as outer:
        with search_deadline(100.0, "inner") as inner:
            assert inner is outer and current_search_deadline() is outer
        with search_deadline(1.0, "inner") as inner:
            assert inner is not None and inner.what == "inner" and inner.end < outer.end  # type: ignore[union-attr]
        with search_deadline(None) as same:
            assert same is outer
        assert current_search_deadline() is outer
    assert current_search_deadline() is None


def test_search_deadline_reaches_threads_started_with_a_copied_context() -> None:
    with search_deadline(5.0, "reading"), ThreadPoolExecutor(2) as pool:
        copied = pool.submit(contextvars.copy_context().run, current_search_deadline).result()
        bare = pool.submit(current_search_deadline).result()
    assert copied is not None and copied.what == "reading"
    assert bare is None


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "5", True])
def test_bad_deadlines_are_config_errors(bad: object) -> None:
    with pytest.raises(ConfigError, match="positive number of seconds"):
        check_seconds(bad, "deadline")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        HttpClient(deadline=bad)  # type: ignore[arg-type]


def test_client_default_deadline_covers_one_slow_try() -> None:
    assert HttpClient().deadline == DEFAULT_REQUEST_DEADLINE == 45.0
    assert DEFAULT_SEARCH_DEADLINE == 60.0
    assert HttpClient(read_timeout=120.0).deadline == 125.0  # an LLM server's long generation
    assert HttpClient(deadline=None).deadline is None
    assert HttpClient(deadline=2).deadline == 2.0


def test_watchdog_wakes_a_blocked_read() -> None:
    left, right = socket.socketpair()
    got: list[bytes] = []
    try:
        with Watchdog(0.2) as watchdog:
            watchdog.watch(left)
            reader = threading.Thread(target=lambda: got.append(left.recv(10)))  # the peer never writes
            reader.start()
            reader.join(timeout=5)
        assert watchdog.fired and got == [b""] and not reader.is_alive()
    finally:
        left.close()
        right.close()


def test_watchdog_that_did_not_fire_leaves_sockets_alone() -> None:
    left, right = socket.socketpair()
    try:
        with Watchdog(30.0) as watchdog:
            watchdog.watch(left)
        right.sendall(b"ok")
        assert not watchdog.fired and left.recv(2) == b"ok"
    finally:
        left.close()
        right.close()
