"""JinaReader against a local fake reader API, and ReadingBackend's search -> read -> summarise."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.search.base import Hit, ImageQuery, MemoryBackend, SearchBackend, SearchError
from mmsearch_gym.search.reader import JINA_KEY_ENV, JinaReader, PageReader, ReadingBackend, truncate_text
from mmsearch_gym.search.serpapi import SerpApiBackend

from .webfake import FakeWebServer, Reply, SeenRequest, exception_texts, fast_client

KEY = "jina_SECRET_0123456789abcdef"
PAGE = "Title: Eiffel Tower\n\nThe Eiffel Tower is a wrought-iron lattice tower in Paris. " * 3


def make_reader(server: FakeWebServer, delays: list[float] | None = None, *, client_kw: dict[str, Any] | None = None,
                **kwargs: Any) -> JinaReader:
    kwargs.setdefault("environ", {})
    return JinaReader(base_url=server.url, client=fast_client(delays, **(client_kw or {})), **kwargs)


# -- JinaReader -----------------------------------------------------------------------------

def test_reader_fetches_page_text_with_bearer_key() -> None:
    with FakeWebServer([Reply(200, PAGE)]) as server:
        reader = make_reader(server, api_key=KEY, return_format="text")
        text = reader.read("https://en.wikipedia.org/wiki/Eiffel_Tower")
    assert isinstance(reader, PageReader)
    assert text == PAGE.strip()
    (seen,) = server.requests
    assert seen.path == "/https://en.wikipedia.org/wiki/Eiffel_Tower"
    assert seen.header("Authorization") == f"Bearer {KEY}" and seen.header("X-Return-Format") == "text"


def test_reader_key_is_optional_and_read_from_the_environment() -> None:
    with FakeWebServer([Reply(200, PAGE), Reply(200, PAGE)]) as server:
        make_reader(server).read("https://a.example/")
        make_reader(server, environ={JINA_KEY_ENV: KEY}).read("https://a.example/")
    assert server.requests[0].header("Authorization") is None
    assert server.requests[1].header("Authorization") == f"Bearer {KEY}"


def test_reader_truncates_and_rejects_empty_or_odd_pages() -> None:
    with FakeWebServer([Reply(200, "word " * 100), Reply(200, "  \n ")]) as server:
        reader = make_reader(server, max_chars=52)
        text = reader.read("https://a.example/")
        assert len(text) <= 52 and text.endswith("…") and text.startswith("word word")
        with pytest.raises(SearchError, match="empty page"):
            reader.read("https://b.example/")
        with pytest.raises(SearchError, match="only read http"):
            reader.read("ftp://c.example/file")
    assert len(server.requests) == 2


def test_reader_transport_failures() -> None:
    delays: list[float] = []
    with FakeWebServer([Reply(429, {"code": 429, "message": "rate"}, headers={"Retry-After": "5"}), Reply(200, PAGE),
                        Reply(500, "x"), Reply(200, PAGE),
                        Reply(502, "x"), Reply(502, "x"),
                        Reply(200, PAGE, delay=3.0), Reply(200, PAGE, delay=3.0),
                        Reply(200, b"half a pa", content_type="text/plain", declared_length=800),
                        Reply(200, b"half a pa", content_type="text/plain", declared_length=800),
                        Reply(200, "x" * 5000)]) as server:
        reader = make_reader(server, delays, client_kw={"read_timeout": 0.2, "max_attempts": 2, "max_bytes": 4096})
        assert reader.read("https://a.example/") == PAGE.strip()  # 429 then success
        assert reader.read("https://a.example/") == PAGE.strip()  # 500 then success
        with pytest.raises(SearchError, match="after 2 attempt.*HTTP 502"):
            reader.read("https://a.example/")
        with pytest.raises(SearchError, match="timed out"):
            reader.read("https://a.example/")
        with pytest.raises(SearchError, match="cut short|truncated"):
            reader.read("https://a.example/")
        with pytest.raises(SearchError, match="too large"):
            reader.read("https://a.example/")
    assert delays == [5.0, 0.5, 0.5, 0.5, 0.5]
    assert len(server.requests) == 11


def test_reader_invalid_key_without_retry_and_no_leak(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    delays: list[float] = []
    with FakeWebServer([Reply(401, {"code": 401, "message": f"Invalid token {KEY}"})]) as server:
        reader = make_reader(server, delays, api_key=KEY)
        with pytest.raises(SearchError, match=f"invalid API key for the Jina reader.*{JINA_KEY_ENV}") as info:
            reader.read("https://a.example/")
    assert len(server.requests) == 1 and delays == []
    for text in (*exception_texts(info.value), repr(reader), str(reader.cache_params()), caplog.text,
                 repr(vars(reader))):
        assert KEY not in text


# -- ReadingBackend -------------------------------------------------------------------------

HITS = [Hit("A", "https://a.example/", "search snippet a", 1.0, "memory"),
        Hit("B", "https://b.example/", "search snippet b", 0.5, "memory"),
        Hit("C", "memory://not-a-web-page", "search snippet c", 0.33, "memory"),
        Hit("D", "https://d.example/", "search snippet d", 0.25, "memory")]


def pages(req: SeenRequest) -> Reply:
    if req.path == "/https://b.example/":
        return Reply(404, {"code": 404, "message": "page not found"})
    return Reply(200, f"Full text of {req.path[1:]}.  It has   many words.")


def test_reading_backend_replaces_top_snippets_with_page_text(caplog: pytest.LogCaptureFixture) -> None:
    inner = MemoryBackend(default_text_hits=HITS)
    caplog.set_level(logging.WARNING)
    with FakeWebServer(pages) as server:
        backend = ReadingBackend(inner, make_reader(server), top_n=3, max_chars=40)
        hits = backend.text_search("eiffel", 4)
    assert isinstance(backend, SearchBackend)
    assert [h.snippet for h in hits] == [
        "Full text of https://a.example/. It has…",  # read, whitespace folded, cut to 40
        "search snippet b",                          # 404: keeps its snippet
        "search snippet c",                          # not a web page: never read
        "search snippet d",                          # beyond top_n: never read
    ]
    assert [(h.title, h.url, h.score, h.source) for h in hits] == [(h.title, h.url, h.score, h.source) for h in HITS]
    assert sorted(r.path for r in server.requests) == ["/https://a.example/", "/https://b.example/"]
    assert "could not read https://b.example/" in caplog.text


def test_reading_backend_summarises_each_page_for_the_query() -> None:
    calls: list[tuple[str, str]] = []
    lock = threading.Lock()

    def summarize(query: str, page: str) -> str:
        with lock:
            calls.append((query, page))
        return f"  Summary for {query!r}: {page.split()[3]} " + "etc " * 50

    with FakeWebServer(pages) as server:
        backend = ReadingBackend(MemoryBackend(default_text_hits=HITS), make_reader(server), summarize,
                                 summarizer_id="test-llm/v1", top_n=5, max_chars=60)
        hits = backend.text_search("who built it", 4)
    assert sorted(calls) == [("who built it", "Full text of https://a.example/.  It has   many words."),
                             ("who built it", "Full text of https://d.example/.  It has   many words.")]
    assert hits[0].snippet.startswith("Summary for 'who built it': https://a.example/.")
    assert len(hits[0].snippet) <= 60 and hits[0].snippet.endswith("…")
    assert hits[1].snippet == "search snippet b" and hits[3].snippet.startswith("Summary for")


def test_empty_summary_falls_back_to_page_text_and_bad_summarizers_fail_the_search() -> None:
    inner = MemoryBackend(default_text_hits=HITS[:1])
    with FakeWebServer(pages) as server:
        reader = make_reader(server)
        blank = ReadingBackend(inner, reader, lambda q, p: "   ", summarizer_id="blank")
        assert blank.text_search("q", 1)[0].snippet == "Full text of https://a.example/. It has many words."

        def broken(query: str, page: str) -> str:
            raise TimeoutError("llm did not answer")

        with pytest.raises(SearchError, match="summarizer 'broken-llm' failed.*TimeoutError: llm did not answer"):
            ReadingBackend(inner, reader, broken, summarizer_id="broken-llm").text_search("q", 1)
        with pytest.raises(SearchError, match="returned int"):
            ReadingBackend(inner, reader, lambda q, p: 3, summarizer_id="int").text_search("q", 1)  # type: ignore


def test_reading_backend_identity_and_config_errors() -> None:
    inner = MemoryBackend()
    reader = JinaReader(api_key=KEY, environ={})
    plain = ReadingBackend(inner, reader)
    summarised = ReadingBackend(inner, reader, lambda q, p: p, summarizer_id="qwen/v2")
    assert plain.name == "memory+jina-reader" and plain.version == "1+1+read1"
    assert plain.cache_params() == {"reader.max_chars": 20000, "reader.return_format": "markdown",
                                    "read.top_n": 5, "read.max_chars": 2000, "read.summarizer": ""}
    assert summarised.cache_params()["read.summarizer"] == "qwen/v2"
    assert ReadingBackend(inner, reader, top_n=3).cache_params() != plain.cache_params()
    assert KEY not in repr(plain) and KEY not in str(plain.cache_params())
    with pytest.raises(ConfigError, match="summarizer_id"):
        ReadingBackend(inner, reader, lambda q, p: p)
    with pytest.raises(ConfigError, match="without a summarizer"):
        ReadingBackend(inner, reader, summarizer_id="x")
    with pytest.raises(ConfigError):
        ReadingBackend(inner, reader, top_n=0)


def test_image_search_passes_through() -> None:
    image_hits = [Hit("img", "https://img.example/", "s")]
    inner = MemoryBackend(default_image_hits=image_hits)
    backend = ReadingBackend(inner, JinaReader(environ={}))
    assert backend.image_search(ImageQuery(Image.new("RGB", (4, 4))), 3) == image_hits
    assert inner.calls[0][0] == "image"


def test_serpapi_then_read_end_to_end() -> None:
    serp_key = "serp-SECRET-for-reading"

    def route(req: SeenRequest) -> Reply:
        if req.path == "/search.json":
            return Reply(200, {"organic_results": [
                {"title": "Eiffel Tower", "link": "https://en.wikipedia.org/wiki/Eiffel_Tower", "snippet": "short"},
                {"title": "Tower facts", "link": "https://facts.example/tower", "snippet": "short too"}]})
        return Reply(200, f"Page {req.path}: built by Gustave Eiffel's company in 1889.")

    with FakeWebServer(route) as server:
        serp = SerpApiBackend(serp_key, base_url=server.url + "/search.json", client=fast_client(), hl="en")
        backend = ReadingBackend(serp, make_reader(server), top_n=5)
        hits = backend.text_search("who built the eiffel tower", 5)
    assert [h.snippet for h in hits] == [
        "Page /https://en.wikipedia.org/wiki/Eiffel_Tower: built by Gustave Eiffel's company in 1889.",
        "Page /https://facts.example/tower: built by Gustave Eiffel's company in 1889."]
    params = backend.cache_params()
    assert params["text_engine"] == "google" and params["hl"] == "en" and params["read.top_n"] == 5
    assert backend.name == "serpapi+jina-reader"
    assert serp_key not in repr(backend) and serp_key not in str(params)


@settings(max_examples=80, deadline=None)
@given(text=st.text(max_size=200), max_chars=st.integers(1, 120))
def test_truncate_text_is_bounded_and_a_prefix(text: str, max_chars: int) -> None:
    out = truncate_text(text, max_chars)
    assert len(out) <= max_chars
    if len(text) <= max_chars:
        assert out == text
    else:
        assert text.startswith(out.removesuffix("…").rstrip()) or max_chars == 1
