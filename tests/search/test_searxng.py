"""SearxngBackend against a local fake SearXNG instance (``/search?format=json``)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.search.base import Hit, ImageQuery, SearchBackend, SearchError
from mmsearch_gym.search.searxng import SEARXNG_URL_ENV, SearxngBackend

from .webfake import FakeWebServer, Reply, SeenRequest, exception_texts, fast_client

PASSWORD = "hunter2-SECRET-pw"


def result(i: int, **extra: Any) -> dict[str, Any]:
    return {"url": f"https://site{i}.example/page", "title": f"Result {i}", "content": f"About  result {i}.",
            "engine": "duckduckgo", "engines": ["duckduckgo", "brave"], "score": 3.0 / i, "category": "general",
            **extra}


def page(*results: dict[str, Any]) -> dict[str, Any]:
    return {"query": "q", "number_of_results": 0, "results": list(results), "answers": [], "corrections": [],
            "infoboxes": [], "suggestions": [], "unresponsive_engines": []}


def make(server: FakeWebServer, delays: list[float] | None = None, *, client_kw: dict[str, Any] | None = None,
         **kwargs: Any) -> SearxngBackend:
    return SearxngBackend(server.url, client=fast_client(delays, **(client_kw or {})), **kwargs)


def test_text_search_parses_results_and_sends_filters() -> None:
    with FakeWebServer([Reply(200, page(result(1), {"title": "no url"}, result(2), result(1), result(3)))]) as server:
        backend = make(server, language="en-US", categories=["general", " science"], engines="brave,duckduckgo",
                       safesearch=1, time_range="year")
        hits = backend.text_search("eiffel tower", 3)
    assert isinstance(backend, SearchBackend)
    assert hits == [Hit(title=f"Result {i}", url=f"https://site{i}.example/page", snippet=f"About result {i}.",
                        score=1.0 / i, source="searxng") for i in (1, 2, 3)]
    (seen,) = server.requests
    assert seen.path == "/search"
    assert {n: seen.param(n) for n in ("q", "format", "pageno", "language", "categories", "engines", "safesearch",
                                       "time_range")} == {
        "q": "eiffel tower", "format": "json", "pageno": "1", "language": "en-US", "categories": "general,science",
        "engines": "brave,duckduckgo", "safesearch": "1", "time_range": "year"}


def test_reads_more_pages_until_k_or_nothing_new() -> None:
    with FakeWebServer([Reply(200, page(result(1), result(2))), Reply(200, page(result(2), result(3))),
                        Reply(200, page(result(3)))]) as server:
        hits = make(server, max_pages=5).text_search("q", 10)
    assert [h.title for h in hits] == ["Result 1", "Result 2", "Result 3"]
    assert [r.param("pageno") for r in server.requests] == ["1", "2", "3"]  # page 3 had nothing new: stop


def test_max_pages_bounds_the_requests() -> None:
    with FakeWebServer([Reply(200, page(result(1))), Reply(200, page(result(2)))]) as server:
        hits = make(server, max_pages=2).text_search("q", 10)
    assert len(hits) == 2 and len(server.requests) == 2


def test_empty_query_and_no_results() -> None:
    with FakeWebServer([Reply(200, page())]) as server:
        backend = make(server)
        assert backend.text_search(" ", 5) == []
        assert backend.text_search("nothing", 5) == []
    assert len(server.requests) == 1


def test_image_search_is_unsupported() -> None:
    from PIL import Image

    with FakeWebServer([]) as server:
        with pytest.raises(SearchError, match="does not support image search"):
            make(server).image_search(ImageQuery(Image.new("RGB", (4, 4))), 3)


def test_json_format_disabled_is_explained() -> None:
    with FakeWebServer([Reply(403, "<html>Forbidden</html>", content_type="text/html")]) as server:
        with pytest.raises(SearchError, match="search.formats"):
            make(server).text_search("q", 3)
    assert len(server.requests) == 1


def test_unexpected_shape() -> None:
    with FakeWebServer([Reply(200, {"no": "results"})]) as server:
        with pytest.raises(SearchError, match="no 'results' list"):
            make(server).text_search("q", 3)


def test_url_comes_from_the_environment_and_is_validated() -> None:
    with pytest.raises(ConfigError, match=SEARXNG_URL_ENV):
        SearxngBackend(environ={})
    with pytest.raises(ConfigError, match="http"):
        SearxngBackend("localhost:8888")
    with pytest.raises(ConfigError, match="safesearch"):
        SearxngBackend("http://localhost:8888", safesearch=3)
    with FakeWebServer([Reply(200, page(result(1)))]) as server:
        backend = SearxngBackend(client=fast_client(), environ={SEARXNG_URL_ENV: server.url + "/"})
        assert backend.text_search("q", 1)[0].title == "Result 1"


def test_cache_params_name_the_instance_and_filters() -> None:
    a = SearxngBackend("https://search.example.org/", language="en")
    assert a.cache_params() == {"instance": "https://search.example.org", "language": "en", "categories": "",
                                "engines": "", "safesearch": 0, "time_range": ""}
    assert SearxngBackend("https://other.example.org", language="en").cache_params() != a.cache_params()
    assert SearxngBackend("https://search.example.org", language="de").cache_params() != a.cache_params()
    assert SearxngBackend("https://search.example.org", language="en", engines=["brave"]).cache_params() \
        != a.cache_params()


# -- transport failures ---------------------------------------------------------------------

def test_429_with_retry_after_then_success() -> None:
    delays: list[float] = []
    with FakeWebServer([Reply(429, "Too Many Requests", headers={"Retry-After": "4"}),
                        Reply(200, page(result(1)))]) as server:
        assert len(make(server, delays).text_search("q", 1)) == 1
    assert delays == [4.0]


def test_500_then_success() -> None:
    delays: list[float] = []
    with FakeWebServer([Reply(502, "bad gateway"), Reply(200, page(result(1)))]) as server:
        assert len(make(server, delays).text_search("q", 1)) == 1
    assert delays == [0.5]


def test_repeated_5xx_gives_up_after_max_attempts() -> None:
    with FakeWebServer([Reply(500, "x")] * 3) as server:
        with pytest.raises(SearchError, match=r"SearXNG request failed after 3 attempt\(s\): HTTP 500"):
            make(server).text_search("q", 1)
    assert len(server.requests) == 3


def test_read_timeout_is_retried_then_fails() -> None:
    delays: list[float] = []
    with FakeWebServer([Reply(200, page(result(1)), delay=3.0)] * 2) as server:
        with pytest.raises(SearchError, match="timed out"):
            make(server, delays, client_kw={"read_timeout": 0.2, "max_attempts": 2}).text_search("q", 1)
    assert len(server.requests) == 2 and len(delays) == 1


@pytest.mark.parametrize("replies, needle", [
    ([Reply(200, b'{"results": [{"url": "https://a', content_type="application/json", declared_length=900)] * 3,
      "cut short|truncated"),
    ([Reply(200, b'{"results": [{"url": "https://a', content_type="application/json")], "malformed"),
])
def test_truncated_or_malformed_json(replies: list[Reply], needle: str) -> None:
    with FakeWebServer(replies) as server:
        with pytest.raises(SearchError, match=needle):
            make(server).text_search("q", 1)
    assert len(server.requests) == len(replies)


def test_oversized_body() -> None:
    with FakeWebServer([Reply(200, page(*[result(i) for i in range(1, 200)]), omit_length=True)]) as server:
        with pytest.raises(SearchError, match="too large"):
            make(server, client_kw={"max_bytes": 4096}).text_search("q", 1)


def test_401_asks_for_credentials_without_retry() -> None:
    delays: list[float] = []
    with FakeWebServer([Reply(401, "auth required", headers={"WWW-Authenticate": "Basic"})]) as server:
        with pytest.raises(SearchError, match="credentials"):
            make(server, delays).text_search("q", 1)
    assert len(server.requests) == 1 and delays == []


def test_basic_auth_password_never_leaks(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    seen_auth: list[str | None] = []

    def route(req: SeenRequest) -> Reply:
        seen_auth.append(req.header("Authorization"))
        return Reply(500, f"boom {PASSWORD}") if len(seen_auth) <= 3 else Reply(200, page(result(1)))

    with FakeWebServer(route) as server:
        url = server.url.replace("http://", f"http://admin:{PASSWORD}@")
        backend = SearxngBackend(url, client=fast_client())
        with pytest.raises(SearchError) as info:
            backend.text_search("q", 1)
        hits = backend.text_search("q", 1)
    assert seen_auth[0] is not None and seen_auth[0].startswith("Basic ")  # credentials were used
    for text in (*exception_texts(info.value), repr(backend), str(backend.cache_params()), caplog.text,
                 backend.name, backend.version, str(hits[0].to_json())):
        assert PASSWORD not in text
