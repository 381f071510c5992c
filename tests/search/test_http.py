"""HttpClient: retries, backoff, Retry-After, timeouts, size cap, truncation, redaction."""

from __future__ import annotations

import email.utils
import logging
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.search.base import SearchError
from mmsearch_gym.search.http import (
    DeadlineError,
    HttpClient,
    HttpStatusError,
    Secret,
    public_url,
    redact_url_text,
    same_origin,
    secret_from,
)

from .webfake import FakeWebServer, Reply, exception_texts, fast_client

KEY = "sk-live-7f3a9c1e-SECRET"


def test_get_json_sends_params_and_headers() -> None:
    with FakeWebServer([Reply(200, {"ok": True, "n": 3})]) as server:
        client = fast_client()
        data = client.get_json(server.url + "/api", service="Svc", params={"q": "a b", "n": 3},
                               headers={"X-Test": "1"})
    assert data == {"ok": True, "n": 3}
    (seen,) = server.requests
    assert seen.path == "/api" and seen.param("q") == "a b" and seen.param("n") == "3"
    assert seen.header("X-Test") == "1"
    assert "mmsearch-gym" in (seen.header("User-Agent") or "")


def test_post_json_sends_body() -> None:
    with FakeWebServer([Reply(200, {"echo": 1})]) as server:
        assert fast_client().post_json(server.url + "/p", {"a": [1, 2]}, service="Svc") == {"echo": 1}
    assert server.requests[0].method == "POST" and server.requests[0].json() == {"a": [1, 2]}


def test_429_retry_after_seconds_is_honoured() -> None:
    delays: list[float] = []
    with FakeWebServer([Reply(429, {"error": "slow down"}, headers={"Retry-After": "3"}),
                        Reply(200, {"ok": 1})]) as server:
        assert fast_client(delays).get_json(server.url, service="Svc") == {"ok": 1}
    assert delays == [3.0]
    assert len(server.requests) == 2


def test_retry_after_http_date_uses_the_clock_and_is_capped() -> None:
    now = 1_700_000_000.0
    in_7s = email.utils.formatdate(now + 7, usegmt=True)
    in_60s = email.utils.formatdate(now + 60, usegmt=True)
    delays: list[float] = []
    with FakeWebServer([Reply(503, "busy", headers={"Retry-After": in_7s}),
                        Reply(429, "busy", headers={"Retry-After": in_60s}),
                        Reply(200, {"ok": 1})]) as server:
        client = fast_client(delays, clock=lambda: now, deadline=300.0)
        assert client.get_json(server.url, service="Svc") == {"ok": 1}
    assert delays == [pytest.approx(7.0), 30.0]  # the minute-long wait is capped at max_delay


def test_retry_after_past_the_deadline_fails_at_once() -> None:
    """Issue 16: an hour-long Retry-After used to be slept as 30 s per try (90 s in all)."""
    now = 1_700_000_000.0
    in_1h = email.utils.formatdate(now + 3600, usegmt=True)
    delays: list[float] = []
    with FakeWebServer([Reply(503, "busy", headers={"Retry-After": "7"}),
                        Reply(429, "busy", headers={"Retry-After": in_1h}), Reply(200, {"ok": 1})]) as server:
        client = fast_client(delays, clock=lambda: now, deadline=60.0)
        with pytest.raises(DeadlineError, match=r"retry in 3600 s, past the request deadline of 60 s"):
            client.get_json(server.url, service="Svc")
    assert delays == [pytest.approx(7.0)] and len(server.requests) == 2


def test_500_then_success_backs_off_with_jitter() -> None:
    delays: list[float] = []
    with FakeWebServer([Reply(500, "oops"), Reply(200, {"ok": 1})]) as server:
        assert fast_client(delays, jitter=0.25).get_json(server.url, service="Svc") == {"ok": 1}
    assert delays == [0.25]  # random() * base_delay * 2**0


def test_repeated_5xx_gives_up_after_max_attempts() -> None:
    delays: list[float] = []
    with FakeWebServer([Reply(502, "a"), Reply(503, "b"), Reply(504, "c"), Reply(500, "d")]) as server:
        with pytest.raises(SearchError, match=r"Svc request failed after 4 attempt\(s\): HTTP 500"):
            fast_client(delays, max_attempts=4).get_json(server.url, service="Svc")
    assert len(server.requests) == 4
    assert delays == [0.5, 1.0, 2.0]  # exponential: jitter 0.5 * 1, 2, 4
    assert server.unexpected == 0


def test_read_timeout_is_retried_then_fails() -> None:
    delays: list[float] = []
    with FakeWebServer([Reply(200, {"late": 1}, delay=3.0), Reply(200, {"late": 2}, delay=3.0)]) as server:
        client = fast_client(delays, read_timeout=0.2, max_attempts=2)
        with pytest.raises(SearchError, match="after 2 attempt.*timed out"):
            client.get_json(server.url, service="Svc")
    assert len(server.requests) == 2 and len(delays) == 1


def test_dropped_connection_is_retried() -> None:
    with FakeWebServer([Reply(drop=True), Reply(200, {"ok": 1})]) as server:
        assert fast_client().get_json(server.url, service="Svc") == {"ok": 1}
    assert len(server.requests) == 2


def test_connection_refused_is_bounded() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    delays: list[float] = []
    with pytest.raises(SearchError, match="after 3 attempt.*connection failed"):
        fast_client(delays).get_json(f"http://127.0.0.1:{port}/x", service="Svc")
    assert len(delays) == 2


def test_connection_errors_keep_the_key_out_of_the_exception_chain() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    client = fast_client(max_attempts=2)
    client.add_secret(KEY)
    with pytest.raises(SearchError) as info:
        client.get_json(f"http://127.0.0.1:{port}/search", service="Svc", params={"api_key": KEY})
    texts = exception_texts(info.value)
    assert any("Max retries exceeded" in t for t in texts)  # requests' text, which names the URL
    assert all(KEY not in t for t in texts)


def test_truncated_body_is_retried_then_fails() -> None:
    cut = Reply(200, b'{"results": [1, 2', content_type="application/json", declared_length=400)
    with FakeWebServer([cut, cut, cut]) as server:
        with pytest.raises(SearchError, match="cut short|truncated"):
            fast_client().get_json(server.url, service="Svc")
    assert len(server.requests) == 3


def test_truncated_body_then_complete_body_succeeds() -> None:
    cut = Reply(200, b'{"results": [1, 2', content_type="application/json", declared_length=400)
    with FakeWebServer([cut, Reply(200, {"results": [1, 2]})]) as server:
        assert fast_client().get_json(server.url, service="Svc") == {"results": [1, 2]}


@pytest.mark.parametrize("body, content_type, needle", [
    (b'{"results": [1, 2', "application/json", "malformed"),
    (b"<html><body>Gateway login</body></html>", "text/html", "text/html"),
    (b"", "application/json", "empty body"),
    (b"\xff\xfe\x00garbage", "application/json", "malformed"),
])
def test_bad_json_fails_without_retry(body: bytes, content_type: str, needle: str) -> None:
    with FakeWebServer([Reply(200, body, content_type=content_type)]) as server:
        with pytest.raises(SearchError, match=needle):
            fast_client().get_json(server.url, service="Svc")
    assert len(server.requests) == 1


def test_oversized_declared_body_fails_fast() -> None:
    with FakeWebServer([Reply(200, b"x" * 5000)]) as server:
        with pytest.raises(SearchError, match="too large"):
            fast_client(max_bytes=1000).get_json(server.url, service="Svc")
    assert len(server.requests) == 1


def test_oversized_streamed_body_stops_at_the_limit() -> None:
    with FakeWebServer([Reply(200, b"[" + b"1," * 200_000 + b"1]", omit_length=True)]) as server:
        with pytest.raises(SearchError, match="too large: more than 1000 bytes"):
            fast_client(max_bytes=1000).get_json(server.url, service="Svc")


def test_per_request_size_limit_overrides_default() -> None:
    with FakeWebServer([Reply(200, b"x" * 50)]) as server:
        with pytest.raises(SearchError, match="too large"):
            fast_client().request("GET", server.url, service="Svc", max_bytes=10)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_fail_at_once(status: int) -> None:
    delays: list[float] = []
    with FakeWebServer([Reply(status, {"error": "Invalid API key."})]) as server:
        with pytest.raises(HttpStatusError) as info:
            fast_client(delays).get_json(server.url, service="Svc")
    assert info.value.status == status and info.value.api_message == "Invalid API key."
    assert f"HTTP {status}" in str(info.value)
    assert len(server.requests) == 1 and delays == []


def test_google_style_error_message_is_extracted() -> None:
    body = {"error": {"code": 400, "message": "API key not valid.", "status": "INVALID_ARGUMENT"}}
    with FakeWebServer([Reply(400, body)]) as server:
        with pytest.raises(HttpStatusError, match="API key not valid."):
            fast_client().get_json(server.url, service="Svc")


def test_secret_never_appears_in_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = fast_client(read_timeout=0.2, max_attempts=2)
    client.add_secret(KEY)
    echo = {"error": f"Invalid API key {KEY} for https://x.test/?api_key={KEY}"}
    errors: list[str] = []
    with FakeWebServer([Reply(401, echo), Reply(500, echo), Reply(500, echo), Reply(200, {}, delay=3),
                        Reply(200, {}, delay=3), Reply(200, b"<p>" + KEY.encode() + b"</p>")]) as server:
        url = f"{server.url}/search?api_key={KEY}"
        for _ in range(4):
            try:
                client.get_json(url, service="Svc", params={"q": "x"})
            except SearchError as exc:
                errors += exception_texts(exc)
    assert len(errors) >= 8
    assert any("***" in e for e in errors)
    for text in errors + [caplog.text, repr(client)]:
        assert KEY not in text
    assert any(r.name.startswith("urllib3") for r in caplog.records)  # urllib3 did log the URL
    assert "api_key=***" in caplog.text


def test_redaction_helpers() -> None:
    assert redact_url_text("GET /s?q=1&api_key=abc123&key=zz HTTP") == "GET /s?q=1&api_key=***&key=*** HTTP"
    assert redact_url_text("https://user:pw@host/x?token=t") == "https://***@host/x?token=***"
    assert public_url("https://user:pw@Search.Example.org:8443/base/?q=1#f") == \
        "https://search.example.org:8443/base"
    client = HttpClient()
    client.add_secret("a/b c")
    assert client.redact("x a/b c y a%2Fb+c z a%2Fb%20c") == "x *** y *** z ***"


def test_secret_wrapper_and_resolution() -> None:
    secret = Secret(KEY)
    assert KEY not in repr(secret) and KEY not in str(secret) and secret.reveal() == KEY
    assert secret_from(None, "MY_KEY", "Svc", environ={"MY_KEY": KEY}) == secret
    assert secret_from("explicit", "MY_KEY", "Svc", environ={"MY_KEY": KEY}).reveal() == "explicit"
    assert secret_from(None, "MY_KEY", "Svc", environ={}, required=False) is None
    with pytest.raises(ConfigError, match="MY_KEY"):
        secret_from(None, "MY_KEY", "Svc", environ={"MY_KEY": "  "})
    with pytest.raises(ConfigError, match="MY_KEY"):
        secret_from("", "MY_KEY", "Svc", environ={})


@pytest.mark.parametrize("kwargs", [{"read_timeout": 0}, {"max_attempts": 0}, {"max_bytes": 0},
                                    {"max_delay": -1}])
def test_bad_client_settings_raise_config_error(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        HttpClient(**kwargs)


@settings(max_examples=60, deadline=None)
@given(attempt=st.integers(1, 30), r=st.floats(0, 1), base=st.floats(0, 10), cap=st.floats(0, 60))
def test_backoff_is_full_jitter_within_cap(attempt: int, r: float, base: float, cap: float) -> None:
    client = HttpClient(base_delay=base, max_delay=cap, random=lambda: r)
    delay = client._delay(attempt, None)
    assert 0 <= delay <= cap + 1e-9
    assert delay == pytest.approx(r * min(cap, base * 2 ** (attempt - 1)))


@settings(max_examples=60, deadline=None)
@given(value=st.one_of(st.floats(0, 1e6, allow_nan=False), st.text(max_size=20)), cap=st.floats(0, 60))
def test_retry_after_never_exceeds_cap_or_goes_negative(value: float | str, cap: float) -> None:
    client = HttpClient(max_delay=cap, clock=lambda: 1_700_000_000.0)
    parsed = client._retry_after(str(value))
    delay = client._delay(1, parsed)
    assert 0 <= delay <= cap


@pytest.mark.parametrize("a, b, same", [
    ("http://api.example/x", "http://api.example/y?q=1", True),
    ("http://api.example/x", "http://api.example:80/y", True),
    ("https://api.example/x", "https://API.example:443/y", True),
    ("http://api.example/x", "https://api.example/x", False),  # stricter than requests: no http->https pass
    ("http://api.example/x", "http://api.example:8080/x", False),
    ("http://api.example/x", "http://evil.example/x", False),
    ("http://127.0.0.1:5000/x", "http://localhost:5000/x", False),
    ("http://api.example/x", "http://api.example:bad/x", False),
])
def test_same_origin_is_scheme_host_and_port(a: str, b: str, same: bool) -> None:
    assert same_origin(a, b) is same
