"""Issue 16's server faults, each through the real backend classes on a loopback fake server.

Hostile JSON, a server that drips bytes, a huge Retry-After, credential headers on redirects,
secrets echoed back in any encoding; and, where a raise would end a training run, through
``env.step``: the fault must become a tool-error observation. Deadlines here are 1-2 s, so
the slowest test finishes in about 2 s.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus

import pytest
from PIL import Image

from mmsearch_gym.actions import TextSearch, get_dialect
from mmsearch_gym.env import MMSearchEnv
from mmsearch_gym.search.base import Hit, ImageQuery, MemoryBackend, SearchError
from mmsearch_gym.search.http import DeadlineError, HttpStatusError
from mmsearch_gym.search.reader import JinaReader, ReadingBackend
from mmsearch_gym.search.searxng import SearxngBackend
from mmsearch_gym.search.serpapi import SerpApiBackend
from mmsearch_gym.search.vision import GoogleVisionBackend

from .webfake import FakeWebServer, Reply, SeenRequest, exception_texts, fast_client

KEY = "AIzaSy/fault+SECRET=0123456789"
USER, PASSWORD = "admin", "hunter2-fault-pass"
R1 = get_dialect("mmsearch-r1")

SEARX_PAGE = {"results": [{"title": "Result 1", "url": "https://one.example/", "content": "first"}]}
SERP_PAGE = {"search_metadata": {"status": "Success"},
             "organic_results": [{"title": "Result 1", "link": "https://one.example/", "snippet": "first"}]}
VISION_PAGE = {"responses": [{"webDetection": {"bestGuessLabels": [{"label": "eiffel tower"}]}}]}


def image_query() -> ImageQuery:
    return ImageQuery(Image.new("RGB", (16, 12), (200, 30, 30)), url="https://img.example/q.png")


@dataclass
class Case:
    """One live backend: how to build it on a base URL, call it, and what a good answer is."""

    name: str
    build: Callable[[str, Any], Any]
    call: Callable[[Any], list[Hit]]
    ok: Callable[[], Reply]
    credential: Callable[[SeenRequest], str | None]
    secret: str


CASES = [
    Case("serpapi", lambda url, c: SerpApiBackend(KEY, base_url=url + "/search.json", client=c),
         lambda b: b.text_search("q", 3), lambda: Reply(200, SERP_PAGE), lambda r: r.param("api_key"), KEY),
    Case("serpapi-lens", lambda url, c: SerpApiBackend(KEY, base_url=url + "/search.json", client=c),
         lambda b: b.image_search(image_query(), 3), lambda: Reply(200, SERP_PAGE), lambda r: r.param("api_key"), KEY),
    Case("searxng", lambda url, c: SearxngBackend(url.replace("http://", f"http://{USER}:{PASSWORD}@"), client=c,
                                                   max_pages=1),
         lambda b: b.text_search("q", 3), lambda: Reply(200, SEARX_PAGE), lambda r: r.header("Authorization"),
         PASSWORD),
    Case("vision", lambda url, c: GoogleVisionBackend(KEY, base_url=url + "/v1", client=c),
         lambda b: b.image_search(image_query(), 3), lambda: Reply(200, VISION_PAGE),
         lambda r: r.header("x-goog-api-key"), KEY),
    Case("jina", lambda url, c: ReadingBackend(MemoryBackend(default_text_hits=[Hit("P", "https://p.example/", "s")]),
                                               JinaReader(KEY, base_url=url, client=c)),
         lambda b: b.text_search("q", 1), lambda: Reply(200, "page text"), lambda r: r.header("Authorization"), KEY),
]
JSON_CASES = [case for case in CASES if case.name != "jina"]  # the reader reads text, not JSON
BY_NAME = {case.name: case for case in CASES}


# -- hostile JSON ---------------------------------------------------------------------------

HOSTILE_JSON = {
    "deep-array": b"[" * 100_000 + b"]" * 100_000,
    "deep-object": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "5000-digits": b'{"results": [' + b"9" * 5000 + b"], \"organic_results\": []}",
    "1e999": b'{"results": [1e999], "organic_results": []}',
    "NaN": b'{"results": [NaN], "organic_results": []}',
}


@pytest.mark.parametrize("body", list(HOSTILE_JSON), ids=list(HOSTILE_JSON))
@pytest.mark.parametrize("case", JSON_CASES, ids=[c.name for c in JSON_CASES])
def test_hostile_json_is_a_search_error(case: Case, body: str) -> None:
    """Before: RecursionError / ValueError escaped; after: a SearchError naming the limit."""
    with FakeWebServer([Reply(200, HOSTILE_JSON[body], content_type="application/json")]) as server:
        backend = case.build(server.url, fast_client())
        with pytest.raises(SearchError, match="JSON beyond the decoder's limits") as info:
            case.call(backend)
    assert len(server.requests) == 1  # not retried: the same server would send the same body
    assert "nested deeper than 64" in str(info.value) or "number" in str(info.value)


@pytest.mark.parametrize("body", ["deep-array", "5000-digits"])
def test_hostile_json_in_an_error_body_keeps_the_status(body: str) -> None:
    with FakeWebServer([Reply(400, HOSTILE_JSON[body], content_type="application/json")]) as server:
        with pytest.raises(HttpStatusError) as info:
            BY_NAME["vision"].call(BY_NAME["vision"].build(server.url, fast_client()))
    assert info.value.status == 400


def test_hostile_json_through_env_step_is_a_tool_error(tiny_tasks) -> None:
    with FakeWebServer([Reply(200, HOSTILE_JSON["deep-array"], content_type="application/json"),
                        Reply(200, HOSTILE_JSON["5000-digits"], content_type="application/json")]) as server:
        env = MMSearchEnv(tiny_tasks, SearxngBackend(server.url, client=fast_client(), max_pages=1))
        env.reset(seed=0)
        for _ in range(2):
            obs, _, term, trunc, info = env.step(R1.format(TextSearch("capital of France")))
            assert "search failed" in obs["text"] and "JSON beyond the decoder's limits" in info["search_error"]
            assert not (term or trunc)


# -- a server that drips ---------------------------------------------------------------------

DRIP_BODY = {"results": [{"title": f"Result {i}", "url": f"https://r{i}.example/", "content": "x" * 20}
                         for i in range(6)]}  # about 450 bytes: 225 s at 0.5 s a byte


@pytest.mark.parametrize("drip_head", [True, False], ids=["headers-drip", "body-drips"])
def test_dripping_server_is_cut_at_the_request_deadline(drip_head: bool) -> None:
    """Before: a 1 s read timeout never fired and the step lasted as long as the server liked."""
    with FakeWebServer([Reply(200, DRIP_BODY, drip=0.5, drip_head=drip_head)] * 3) as server:
        backend = SearxngBackend(server.url, client=fast_client(read_timeout=1.0, deadline=1.5))
        with pytest.raises(DeadlineError, match=r"request deadline of 1.5 s"):
            backend.text_search("q", 1)
    assert len(server.requests) == 1  # no retry once the deadline has passed
    assert server.dripped and server.dripped[0] < 12  # the client left after ~3 bytes of ~450


def test_search_deadline_bounds_all_pages_of_a_search() -> None:
    slow_page = Reply(200, {"results": [{"title": "R", "url": "https://r.example/", "content": "c"}]}, delay=0.6)
    fresh_page = Reply(200, {"results": [{"title": "S", "url": "https://s.example/", "content": "c"}]}, delay=0.6)
    with FakeWebServer([slow_page, fresh_page, fresh_page]) as server:
        backend = SearxngBackend(server.url, client=fast_client(deadline=30.0), max_pages=3, search_timeout=1.0)
        with pytest.raises(DeadlineError, match=r"SearXNG search deadline of 1 s"):
            backend.text_search("q", 10)
    assert len(server.requests) == 2


def test_reading_deadline_follows_the_reads_into_their_threads() -> None:
    """Page reads run in worker threads; the search deadline must reach them there."""
    hits = [Hit(f"P{i}", f"https://p{i}.example/", f"snippet {i}") for i in range(3)]
    with FakeWebServer([Reply(200, "page text " * 40, drip=0.5)] * 3) as server:
        reader = JinaReader(base_url=server.url, client=fast_client(read_timeout=1.0, deadline=30.0), environ={})
        backend = ReadingBackend(MemoryBackend(default_text_hits=hits), reader, top_n=3, search_timeout=1.0)
        out = backend.text_search("q", 3)
    assert [h.snippet for h in out] == ["snippet 0", "snippet 1", "snippet 2"]  # unread pages keep snippets
    assert len(server.dripped) == 3 and max(server.dripped) < 12


def test_dripping_server_through_env_step_is_a_tool_error(tiny_tasks) -> None:
    with FakeWebServer([Reply(200, DRIP_BODY, drip=0.5)]) as server:
        backend = SearxngBackend(server.url, client=fast_client(read_timeout=1.0), search_timeout=1.0)
        env = MMSearchEnv(tiny_tasks, backend)
        env.reset(seed=0)
        obs, _, term, trunc, info = env.step(R1.format(TextSearch("capital of France")))
    assert "search failed" in obs["text"] and "deadline of 1 s" in info["search_error"]
    assert not (term or trunc)


# -- Retry-After ----------------------------------------------------------------------------

IN_A_DAY = email.utils.formatdate(time.time() + 86_400, usegmt=True)


@pytest.mark.parametrize("retry_after", ["100000", IN_A_DAY], ids=["seconds", "http-date"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_retry_after_past_the_deadline_fails_fast(case: Case, retry_after: str) -> None:
    """Before: capped at 30 s a try, 90 s of sleep in all; after: no sleep, a DeadlineError."""
    delays: list[float] = []
    busy = Reply(429, {"error": "slow down"}, headers={"Retry-After": retry_after})
    with FakeWebServer([busy] * 4) as server:
        backend = case.build(server.url, fast_client(delays, max_attempts=4))
        if case.name == "jina":  # a page that cannot be read keeps its snippet: call the reader itself
            with pytest.raises(DeadlineError, match=r"asks to retry in \d+ s, past the request deadline"):
                backend.reader.read("https://p.example/")
        else:
            with pytest.raises(DeadlineError, match=r"asks to retry in \d+ s, past the request deadline"):
                case.call(backend)
    assert delays == [] and len(server.requests) == 1


def test_backoff_that_would_pass_the_deadline_fails_fast() -> None:
    delays: list[float] = []
    with FakeWebServer([Reply(503, "busy")] * 3) as server:
        client = fast_client(delays, deadline=1.0, base_delay=4.0)
        with pytest.raises(DeadlineError, match="no time left to retry"):
            SearxngBackend(server.url, client=client).text_search("q", 1)
    assert delays == [] and len(server.requests) == 1


def test_huge_retry_after_through_env_step_is_a_tool_error(tiny_tasks) -> None:
    with FakeWebServer([Reply(429, "slow down", headers={"Retry-After": "100000"})]) as server:
        env = MMSearchEnv(tiny_tasks, SearxngBackend(server.url, client=fast_client()))
        env.reset(seed=0)
        obs, *_, info = env.step(R1.format(TextSearch("capital of France")))
    assert "search failed" in obs["text"] and "asks to retry in 100000 s" in info["search_error"]


# -- redirects ------------------------------------------------------------------------------

TARGETS = ["relative", "same-origin", "other-host", "other-port"]


def redirect_target(target: str, server: FakeWebServer, other: FakeWebServer, query: str) -> str:
    port = server.url.rsplit(":", 1)[1]
    return {"relative": "/landing", "same-origin": f"{server.url}/landing",
            "other-host": f"http://localhost:{port}/landing", "other-port": f"{other.url}/landing"}[target] + query


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("case", [c for c in CASES if c.name != "serpapi-lens"], ids=lambda c: c.name)
def test_credentials_never_follow_a_redirect_to_another_origin(case: Case, status: int, target: str) -> None:
    """Before: x-goog-api-key went to any host a 302/307 named; after: only to the same origin."""
    with FakeWebServer(lambda req: case.ok(), max_requests=5) as other:
        def route(req: SeenRequest) -> Reply:
            if req.path.startswith("/landing"):
                return case.ok()
            query = "?" + "&".join(f"{k}={quote_plus(v[0])}" for k, v in req.query.items()) if req.query else ""
            return Reply(status, b"", headers={"Location": redirect_target(target, server, other, query)})

        with FakeWebServer(route, max_requests=5) as server:
            backend = case.build(server.url, fast_client())
            if case.name == "serpapi" and target.startswith("other"):
                # SerpApi's key rides in the query: a hop elsewhere that keeps it is refused
                with pytest.raises(SearchError, match="secret in the URL.*not followed"):
                    case.call(backend)
                assert other.requests == [] and len(server.requests) == 1
                return
            hits = case.call(backend)
    assert hits
    first, landing = server.requests[0], (server.requests + other.requests)[-1]
    assert case.credential(first) is not None and landing.path.startswith("/landing")
    if target in ("relative", "same-origin"):
        assert case.credential(landing) == case.credential(first)
    else:
        assert case.credential(landing) is None
        assert all(case.secret not in value and quote(case.secret, safe="") not in value
                   for value in landing.headers.values())
    if first.method == "POST":  # vision: 303 (and 301/302 for POST) become GET, 307/308 keep the body
        assert landing.method == ("POST" if status in (307, 308) else "GET")
        assert (landing.body == first.body) if status in (307, 308) else landing.body == b""


def test_credentials_stay_dropped_after_coming_back() -> None:
    """same host -> other host -> same host: what left once never returns."""
    with FakeWebServer([Reply(302, b"", headers={"Location": "/back"}), Reply(200, VISION_PAGE)]) as home:
        port = home.url.rsplit(":", 1)[1]
        with FakeWebServer([Reply(307, b"", headers={"Location": f"http://localhost:{port}/hop"})]) as first:
            backend = GoogleVisionBackend(KEY, base_url=first.url + "/v1", client=fast_client())
            backend.image_search(image_query(), 3)
    assert first.requests[0].header("x-goog-api-key") == KEY
    assert [r.header("x-goog-api-key") for r in home.requests] == [None, None]


def test_declared_session_and_value_carrying_headers_are_dropped_across_origins() -> None:
    with FakeWebServer(lambda req: Reply(200, {"ok": 1})) as other:
        with FakeWebServer([Reply(302, b"", headers={"Location": other.url + "/x"})]) as server:
            client = fast_client(secret_headers=["X-Signature"])
            client.add_secret(KEY)
            client.session.headers["Cookie"] = "session=abc123"
            client.get_json(server.url, service="Svc", headers={
                "X-Signature": "sig-1", "X-Trace": f"trace {KEY}", "X-My-Token": "t", "X-Plain": "1"})
    sent, landed = server.requests[0], other.requests[0]
    assert sent.header("X-Signature") and sent.header("X-Trace") and sent.header("Cookie")
    for name in ("X-Signature", "X-Trace", "X-My-Token", "Cookie"):
        assert landed.header(name) is None
    assert landed.header("X-Plain") == "1"


def test_redirect_loops_and_non_http_targets_are_errors() -> None:
    with FakeWebServer(lambda req: Reply(302, b"", headers={"Location": "/again"}), max_requests=10) as server:
        with pytest.raises(SearchError, match="more than 5 redirects"):
            fast_client().get_json(server.url, service="Svc")
    assert len(server.requests) == 6
    with FakeWebServer([Reply(302, b"", headers={"Location": "file:///etc/passwd"})]) as server:
        with pytest.raises(SearchError, match="non-http"):
            fast_client().get_json(server.url, service="Svc")


# -- secrets echoed in any encoding ---------------------------------------------------------

def encodings(value: str) -> list[str]:
    """How a hostile or careless server may write back a credential it received."""
    raw = value.encode()
    blob = json.dumps({"headers": {"authorization": value}}).encode()
    out = [value, quote(value, safe=""), quote_plus(value), raw.hex(), raw.hex().upper(),
           json.dumps(value)[1:-1].replace("/", "\\/"), base64.b64encode(blob).decode(),
           base64.urlsafe_b64encode(blob).decode().rstrip("=")]
    for prefix in ("", "u:", "us:", "use:"):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            token = encode(prefix.encode() + raw).decode()
            out += [token, token.rstrip("=")]
    return out


def reveals(text: str, secret: str) -> bool:
    """Whether ``text`` shows ``secret`` in any form a reader could decode."""
    wanted = secret.encode()
    views = [text, unquote(text), unquote_plus(text), text.replace("\\/", "/")]
    if any(secret in view for view in views):
        return True
    for token in re.findall(r"[A-Za-z0-9+/_=-]{8,}", text):
        bare = token.rstrip("=")
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            for start in range(4):
                piece = bare[start:]
                try:
                    if wanted in decode(piece + "=" * (-len(piece) % 4)):
                        return True
                except (binascii.Error, ValueError):
                    pass
        try:
            if len(token) % 2 == 0 and wanted in bytes.fromhex(token):
                return True
        except ValueError:
            pass
    return False


def test_reveals_helper_sees_every_encoding() -> None:
    for form in encodings(KEY):
        assert reveals(f"text {form} more", KEY), form


def echo_reply(case: Case, req: SeenRequest) -> Reply:
    """The case's good answer with every text field full of the credential it received."""
    credential = case.credential(req) or ""
    if credential.startswith(("Basic ", "Bearer ")):
        credential = credential.split(" ", 1)[1]
    text = " ".join(encodings(credential))
    if case.name == "jina":
        return Reply(200, f"Echo: {text}")
    url = "https://echo.example/?v=" + quote(credential, safe="")
    row = {"title": f"Echo {text}", "url": url, "link": url, "content": text, "snippet": text, "source": text}
    if case.name.startswith("serpapi"):
        return Reply(200, {"search_metadata": {"status": "Success"}, "organic_results": [row],
                           "visual_matches": [row]})
    if case.name == "vision":
        return Reply(200, {"responses": [{"webDetection": {"pagesWithMatchingImages": [
            {"url": url, "pageTitle": text}], "webEntities": [{"description": text}]}}]})
    return Reply(200, {"results": [row]})


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_echoed_secrets_are_masked_in_every_encoding(case: Case, caplog: pytest.LogCaptureFixture) -> None:
    """Before: SearXNG's password reached the hits as base64 of user:password."""
    caplog.set_level(logging.DEBUG)
    errors: list[str] = []

    def route(req: SeenRequest) -> Reply:
        good = echo_reply(case, req)
        if len(server.requests) == 1:  # first an error whose message echoes the credential
            return Reply(400, {"error": good.body if isinstance(good.body, str) else json.dumps(good.body)})
        return good

    with FakeWebServer(route) as server:
        backend = case.build(server.url, fast_client())
        if case.name == "jina":  # a page that cannot be read keeps its snippet, with a warning
            assert case.call(backend)[0].snippet == "s"
        else:
            with pytest.raises(SearchError) as info:
                case.call(backend)
            errors = exception_texts(info.value)
        hits = case.call(backend)
    assert hits and any("***" in h.snippet or "***" in h.title for h in hits)
    assert case.credential(server.requests[-1])  # the credential was really sent and echoed
    for text in [*errors, caplog.text, *(f"{h.title} {h.url} {h.snippet}" for h in hits)]:
        assert not reveals(text, case.secret), text[:300]


def test_echoed_basic_auth_never_reaches_an_observation(tiny_tasks) -> None:
    case = BY_NAME["searxng"]
    with FakeWebServer(lambda req: echo_reply(case, req)) as server:
        env = MMSearchEnv(tiny_tasks, case.build(server.url, fast_client()))
        env.reset(seed=0)
        obs, *_, info = env.step(R1.format(TextSearch("capital of France")))
    assert "Echo" in obs["text"] and info["search_error"] is None
    assert server.requests[0].header("Authorization", ).startswith("Basic ")
    assert not reveals(obs["text"], PASSWORD)
