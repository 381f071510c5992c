"""SerpApiBackend against a local fake of serpapi.com (Google web search and Google Lens)."""

from __future__ import annotations

import io
import logging
from typing import Any

import pytest
from PIL import Image

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.search.base import Hit, ImageQuery, SearchBackend, SearchError
from mmsearch_gym.search.serpapi import SERPAPI_KEY_ENV, SerpApiBackend

from .webfake import FakeWebServer, Reply, SeenRequest, exception_texts, fast_client, png_bytes

KEY = "serp-0123456789abcdef-SECRET"

GOOGLE = {
    "search_metadata": {"id": "abc", "status": "Success"},
    "search_parameters": {"engine": "google", "q": "eiffel tower height"},
    "organic_results": [
        {"position": 1, "title": "Eiffel Tower - Wikipedia", "link": "https://en.wikipedia.org/wiki/Eiffel_Tower",
         "snippet": "The Eiffel Tower is 330 metres  tall.", "source": "Wikipedia"},
        {"position": 2, "title": "No link here"},
        {"position": 3, "title": "Eiffel Tower facts", "link": "https://www.toureiffel.paris/en/facts",
         "snippet": "Height: 330 m."},
        {"position": 4, "title": "Duplicate", "link": "https://en.wikipedia.org/wiki/Eiffel_Tower", "snippet": "dup"},
        {"position": 5, "title": "Height of the tower", "link": "https://example.org/height"},
    ],
}

LENS = {
    "search_metadata": {"status": "Success"},
    "knowledge_graph": [
        {"title": "Eiffel Tower", "subtitle": "Tower in Paris, France", "link": "https://www.google.com/search?q=Eiffel+Tower",
         "thumbnails": [{"image": "https://serpapi.example/kg.jpg", "source": "https://x.example"}]},
    ],
    "visual_matches": [
        {"position": 1, "title": "Paris at night", "link": "https://photos.example/paris", "source": "Photos Example",
         "thumbnail": "https://serpapi.example/t1.jpg"},
        {"position": 2, "title": "Tour Eiffel", "link": "https://fr.example/tour", "source": "FR Example",
         "thumbnail": "https://serpapi.example/t2.jpg"},
        {"position": 3, "title": "", "link": "https://skipped.example"},
    ],
}


def make(server: FakeWebServer, delays: list[float] | None = None, *, client_kw: dict[str, Any] | None = None,
         **kwargs: Any) -> SerpApiBackend:
    return SerpApiBackend(KEY, base_url=server.url + "/search.json", client=fast_client(delays, **(client_kw or {})),
                          **kwargs)


def query_image(url: str | None = None, box: tuple[int, int, int, int] | None = None) -> ImageQuery:
    return ImageQuery(Image.new("RGB", (40, 30), (10, 120, 200)), box=box, url=url)


# -- answers --------------------------------------------------------------------------------

def test_text_search_parses_organic_results() -> None:
    with FakeWebServer([Reply(200, GOOGLE)]) as server:
        backend = make(server, gl="fr", hl="fr", safe="active")
        hits = backend.text_search("eiffel tower height", 3)
    assert isinstance(backend, SearchBackend)
    assert [h.url for h in hits] == ["https://en.wikipedia.org/wiki/Eiffel_Tower",
                                     "https://www.toureiffel.paris/en/facts", "https://example.org/height"]
    assert hits[0] == Hit(title="Eiffel Tower - Wikipedia", url="https://en.wikipedia.org/wiki/Eiffel_Tower",
                          snippet="The Eiffel Tower is 330 metres tall.", score=1.0, source="serpapi")
    assert [h.score for h in hits] == [1.0, 0.5, pytest.approx(1 / 3)]
    assert hits[2].snippet == ""
    (seen,) = server.requests
    assert seen.path == "/search.json"
    assert {n: seen.param(n) for n in ("engine", "q", "num", "gl", "hl", "safe", "api_key")} == {
        "engine": "google", "q": "eiffel tower height", "num": "3", "gl": "fr", "hl": "fr", "safe": "active",
        "api_key": KEY}


def test_no_results_is_an_empty_list_and_blank_query_costs_nothing() -> None:
    no_results = {"search_metadata": {"status": "Success"},
                  "error": "Google hasn't returned any results for this query."}
    with FakeWebServer([Reply(200, no_results)]) as server:
        backend = make(server)
        assert backend.text_search("zzqqxx nothing", 5) == []
        assert backend.text_search("   ", 5) == []
    assert len(server.requests) == 1


@pytest.mark.parametrize("body, needle", [
    ({"error": "Your account has run out of searches."}, "run out of searches"),
    ({"search_metadata": {"status": "Error"}}, "status is 'Error'"),
    ([1, 2, 3], "unexpected JSON"),
    ({"organic_results": {"not": "a list"}}, "not a list"),
])
def test_api_level_errors_raise(body: Any, needle: str) -> None:
    with FakeWebServer([Reply(200, body)]) as server:
        with pytest.raises(SearchError, match=needle):
            make(server).text_search("q", 5)


def test_k_must_be_positive() -> None:
    with FakeWebServer([]) as server:
        with pytest.raises(ConfigError, match="positive integer"):
            make(server).text_search("q", 0)
    assert server.requests == []


def test_lens_uses_the_known_url_for_whole_images() -> None:
    with FakeWebServer([Reply(200, LENS)]) as server:
        hits = make(server, gl="de", hl="de").image_search(query_image("https://img.example/eiffel.jpg"), 5)
    (seen,) = server.requests
    assert (seen.param("engine"), seen.param("url"), seen.param("country"), seen.param("hl")) == (
        "google_lens", "https://img.example/eiffel.jpg", "de", "de")
    assert [(h.title, h.url, h.snippet) for h in hits] == [
        ("Eiffel Tower", "https://www.google.com/search?q=Eiffel+Tower", "Tower in Paris, France"),
        ("Paris at night", "https://photos.example/paris", "Photos Example"),
        ("Tour Eiffel", "https://fr.example/tour", "FR Example"),
    ]
    assert [h.score for h in hits] == [1.0, 0.5, pytest.approx(1 / 3)]
    assert all(h.thumbnail is None and h.source == "serpapi" for h in hits)


def test_lens_on_a_crop_uploads_the_cropped_png() -> None:
    uploads: list[bytes] = []

    def uploader(data: bytes) -> str:
        uploads.append(data)
        return "https://uploads.example/crop-1.png"

    with FakeWebServer([Reply(200, LENS)]) as server:
        hits = make(server, uploader=uploader).image_search(
            query_image("https://img.example/eiffel.jpg", box=(5, 5, 25, 15)), 1)
    assert len(hits) == 1
    (png,) = uploads
    assert Image.open(io.BytesIO(png)).size == (20, 10)
    assert server.requests[0].param("url") == "https://uploads.example/crop-1.png"


def test_lens_without_url_or_uploader_explains_what_to_do() -> None:
    with FakeWebServer([]) as server:
        backend = make(server)
        with pytest.raises(SearchError, match="pass uploader="):
            backend.image_search(query_image(None), 5)
        with pytest.raises(SearchError, match="cropped image"):
            backend.image_search(query_image("https://img.example/a.jpg", box=(0, 0, 4, 4)), 5)
    assert server.requests == []


@pytest.mark.parametrize("uploader, needle", [
    (lambda data: (_ for _ in ()).throw(RuntimeError("bucket full")), "uploader failed: RuntimeError: bucket full"),
    (lambda data: "file:///tmp/x.png", "must return an http"),
])
def test_uploader_failures_are_search_errors(uploader: Any, needle: str) -> None:
    with FakeWebServer([]) as server:
        with pytest.raises(SearchError, match=needle):
            make(server, uploader=uploader).image_search(query_image(None), 5)


def test_thumbnails_are_fetched_when_asked(caplog: pytest.LogCaptureFixture) -> None:
    thumb = png_bytes()

    def route(req: SeenRequest) -> Reply:
        if req.path == "/search.json":
            base = f"http://{req.header('Host')}"
            return Reply(200, {"visual_matches": [
                {"title": "good", "link": "https://a.example", "source": "A", "thumbnail": base + "/t/ok.png"},
                {"title": "html", "link": "https://b.example", "source": "B", "thumbnail": base + "/t/page"},
                {"title": "gone", "link": "https://c.example", "source": "C", "thumbnail": base + "/t/404"},
                {"title": "none", "link": "https://d.example", "source": "D"}]})
        if req.path == "/t/ok.png":
            return Reply(200, thumb, content_type="image/png")
        if req.path == "/t/page":
            return Reply(200, "<html>not an image</html>", content_type="text/html")
        return Reply(404, "missing")

    caplog.set_level(logging.WARNING)
    with FakeWebServer(route) as server:
        hits = make(server, fetch_thumbnails=True).image_search(query_image("https://img.example/a.jpg"), 4)
    assert hits[0].thumbnail == thumb and hits[0].thumbnail_image() is not None
    assert [h.thumbnail for h in hits[1:]] == [None, None, None]
    assert caplog.text.count("thumbnail") >= 2
    assert len(server.requests) == 4


def test_cache_params_cover_what_changes_results() -> None:
    with FakeWebServer([]) as server:
        base = make(server).cache_params()
        assert base["text_engine"] == "google" and base["image_engine"] == "google_lens"
        assert make(server, gl="fr").cache_params() != base
        assert make(server, safe="active").cache_params() != base
        assert make(server, fetch_thumbnails=True).cache_params() != base
        assert make(server, uploader=lambda b: "https://x").cache_params() == base


# -- transport failures ---------------------------------------------------------------------

def test_429_with_retry_after_then_success() -> None:
    delays: list[float] = []
    with FakeWebServer([Reply(429, {"error": "Too many requests"}, headers={"Retry-After": "2"}),
                        Reply(200, GOOGLE)]) as server:
        assert len(make(server, delays).text_search("q", 2)) == 2
    assert delays == [2.0]


def test_500_then_success_on_lens() -> None:
    delays: list[float] = []
    with FakeWebServer([Reply(500, "internal"), Reply(200, LENS)]) as server:
        assert len(make(server, delays).image_search(query_image("https://img.example/a.jpg"), 2)) == 2
    assert delays == [0.5]


def test_repeated_5xx_gives_up_after_max_attempts() -> None:
    with FakeWebServer([Reply(503, "busy")] * 3) as server:
        with pytest.raises(SearchError, match=r"SerpApi request failed after 3 attempt\(s\): HTTP 503"):
            make(server).text_search("q", 2)
    assert len(server.requests) == 3


def test_read_timeout_is_retried_then_fails() -> None:
    delays: list[float] = []
    with FakeWebServer([Reply(200, GOOGLE, delay=3.0)] * 2) as server:
        backend = make(server, delays, client_kw={"read_timeout": 0.2, "max_attempts": 2})
        with pytest.raises(SearchError, match="timed out"):
            backend.text_search("q", 2)
    assert len(server.requests) == 2 and len(delays) == 1


@pytest.mark.parametrize("replies, needle", [
    ([Reply(200, b'{"organic_results": [{"title": "Eiff', content_type="application/json",
            declared_length=5000)] * 3, "cut short|truncated"),
    ([Reply(200, b'{"organic_results": [{"title": "Eiff', content_type="application/json")], "malformed"),
    ([Reply(200, "<html>captcha</html>", content_type="text/html")], "text/html"),
])
def test_truncated_or_malformed_json(replies: list[Reply], needle: str) -> None:
    with FakeWebServer(replies) as server:
        with pytest.raises(SearchError, match=needle):
            make(server).text_search("q", 2)
    assert len(server.requests) == len(replies)


def test_oversized_body() -> None:
    with FakeWebServer([Reply(200, {"organic_results": [{"title": "x" * 5000, "link": "https://x"}]})]) as server:
        with pytest.raises(SearchError, match="too large"):
            make(server, client_kw={"max_bytes": 2000}).text_search("q", 2)


def test_401_is_reported_as_invalid_key_without_retry() -> None:
    delays: list[float] = []
    body = {"error": "Invalid API key. Your API key should be here: https://serpapi.com/manage-api-key"}
    with FakeWebServer([Reply(401, body)]) as server:
        with pytest.raises(SearchError, match=f"invalid API key for SerpApi.*{SERPAPI_KEY_ENV}"):
            make(server, delays).text_search("q", 2)
    assert len(server.requests) == 1 and delays == []


def test_missing_key_is_a_config_error_and_env_key_is_used() -> None:
    with pytest.raises(ConfigError, match=SERPAPI_KEY_ENV):
        SerpApiBackend(environ={})
    with FakeWebServer([Reply(200, GOOGLE)]) as server:
        backend = SerpApiBackend(base_url=server.url + "/search.json", client=fast_client(),
                                 environ={SERPAPI_KEY_ENV: KEY})
        backend.text_search("q", 1)
    assert server.requests[0].param("api_key") == KEY


def test_secret_never_leaks(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    echo = {"error": f"bad key {KEY}"}
    texts: list[str] = []
    with FakeWebServer([Reply(401, echo), Reply(500, echo), Reply(500, echo), Reply(500, echo),
                        Reply(200, GOOGLE, delay=3), Reply(200, GOOGLE, delay=3), Reply(200, GOOGLE)]) as server:
        backend = make(server, client_kw={"read_timeout": 0.2, "max_attempts": 3})
        for _ in range(2):
            with pytest.raises(SearchError) as info:
                backend.text_search("q", 2)
            texts += exception_texts(info.value)
        backend.client.max_attempts = 2
        with pytest.raises(SearchError) as info:
            backend.text_search("q", 2)
        texts += exception_texts(info.value)
        hits = backend.text_search("q", 5)
    texts += [repr(backend), str(backend.cache_params()), backend.name, backend.version, caplog.text,
              repr(vars(backend)), *(str(h.to_json()) for h in hits)]
    assert "api_key=***" in caplog.text  # the key was in URLs and was masked
    for text in texts:
        assert KEY not in text
