"""GoogleVisionBackend against a local fake of ``vision.googleapis.com/v1/images:annotate``."""

from __future__ import annotations

import base64
import io
import logging
from typing import Any

import pytest
from PIL import Image

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.search.base import ImageQuery, SearchBackend, SearchError
from mmsearch_gym.search.vision import VISION_KEY_ENV, GoogleVisionBackend

from .webfake import FakeWebServer, Reply, exception_texts, fast_client

KEY = "AIzaSy-vision-SECRET-0123456789"

DETECTION = {"responses": [{"webDetection": {
    "webEntities": [
        {"entityId": "/m/02j81", "score": 0.93, "description": "Eiffel Tower"},
        {"entityId": "/g/11abc", "score": 0.41},  # no description: skipped
        {"entityId": "/m/05qtj", "score": 0.37, "description": "Paris"},
    ],
    "fullMatchingImages": [{"url": "https://img.example/eiffel.jpg"}],
    "pagesWithMatchingImages": [
        {"url": "https://en.wikipedia.org/wiki/Eiffel_Tower", "pageTitle": "<b>Eiffel Tower</b> - Wikipedia",
         "fullMatchingImages": [{"url": "https://upload.example/e.jpg"}]},
        {"url": "https://travel.example/paris", "pageTitle": "Paris &amp; its <b>tower</b>",
         "partialMatchingImages": [{"url": "https://travel.example/p.jpg"}]},
        {"pageTitle": "no url"},
    ],
    "visuallySimilarImages": [{"url": "https://similar.example/1.jpg"}],
    "bestGuessLabels": [{"label": "eiffel tower", "languageCode": "en"}],
}}]}


def make(server: FakeWebServer, delays: list[float] | None = None, *, client_kw: dict[str, Any] | None = None,
         **kwargs: Any) -> GoogleVisionBackend:
    return GoogleVisionBackend(KEY, base_url=server.url + "/v1", client=fast_client(delays, **(client_kw or {})),
                               **kwargs)


def query(box: tuple[int, int, int, int] | None = None) -> ImageQuery:
    image = Image.new("RGB", (40, 30), (200, 180, 20))
    image.putpixel((0, 0), (0, 0, 0))
    return ImageQuery(image, box=box)


def test_web_detection_is_mapped_to_hits() -> None:
    with FakeWebServer([Reply(200, DETECTION)]) as server:
        backend = make(server)
        hits = backend.image_search(query(), 10)
    assert isinstance(backend, SearchBackend)
    assert [(h.title, h.url) for h in hits] == [
        ("eiffel tower", "https://www.google.com/search?q=eiffel+tower"),
        ("Eiffel Tower - Wikipedia", "https://en.wikipedia.org/wiki/Eiffel_Tower"),
        ("Paris & its tower", "https://travel.example/paris"),
        ("Eiffel Tower", "https://www.google.com/search?kgmid=%2Fm%2F02j81"),
        ("Paris", "https://www.google.com/search?kgmid=%2Fm%2F05qtj"),
    ]
    assert "full match" in hits[1].snippet and "partial match" in hits[2].snippet
    assert "0.930" in hits[3].snippet
    assert [h.score for h in hits] == [1.0 / r for r in range(1, 6)]
    assert {h.source for h in hits} == {"google-vision"}


def test_request_carries_the_cropped_png_and_the_key_in_a_header() -> None:
    with FakeWebServer([Reply(200, DETECTION)]) as server:
        hits = make(server, include_geo_results=True).image_search(query(box=(0, 0, 10, 8)), 2)
    assert len(hits) == 2
    (seen,) = server.requests
    assert seen.method == "POST" and seen.path == "/v1/images:annotate"
    assert seen.header("x-goog-api-key") == KEY and seen.param("key") is None
    (request,) = seen.json()["requests"]
    assert request["features"] == [{"type": "WEB_DETECTION", "maxResults": 2}]
    assert request["imageContext"] == {"webDetectionParams": {"includeGeoResults": True}}
    sent = Image.open(io.BytesIO(base64.b64decode(request["image"]["content"])))
    assert sent.format == "PNG" and sent.size == (10, 8) and sent.getpixel((0, 0)) == (0, 0, 0)


def test_key_as_query_parameter_when_asked() -> None:
    with FakeWebServer([Reply(200, DETECTION)]) as server:
        make(server, key_transport="query").image_search(query(), 1)
    assert server.requests[0].param("key") == KEY and server.requests[0].header("x-goog-api-key") is None


def test_no_detection_is_an_empty_list() -> None:
    with FakeWebServer([Reply(200, {"responses": [{}]})]) as server:
        assert make(server).image_search(query(), 5) == []


@pytest.mark.parametrize("body, needle", [
    ({"responses": [{"error": {"code": 3, "message": "Bad image data."}}]}, "could not annotate the image: Bad image"),
    ({"responses": []}, "expected one item"),
    ({"responses": [{"webDetection": ["x"]}]}, "webDetection is not an object"),
])
def test_api_level_errors_raise(body: Any, needle: str) -> None:
    with FakeWebServer([Reply(200, body)]) as server:
        with pytest.raises(SearchError, match=needle):
            make(server).image_search(query(), 5)


def test_text_search_is_unsupported() -> None:
    with FakeWebServer([]) as server:
        with pytest.raises(SearchError, match="does not support text search"):
            make(server).text_search("eiffel", 3)
    assert server.requests == []


def test_cache_params() -> None:
    a = GoogleVisionBackend(KEY, environ={})
    assert a.cache_params() == {"feature": "WEB_DETECTION", "include_geo_results": False}
    assert GoogleVisionBackend(KEY, include_geo_results=True).cache_params() != a.cache_params()


# -- transport failures ---------------------------------------------------------------------

def test_429_with_retry_after_then_success() -> None:
    delays: list[float] = []
    quota = {"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}}
    with FakeWebServer([Reply(429, quota, headers={"Retry-After": "1.5"}), Reply(200, DETECTION)]) as server:
        assert len(make(server, delays).image_search(query(), 3)) == 3
    assert delays == [1.5]


def test_500_then_success() -> None:
    delays: list[float] = []
    with FakeWebServer([Reply(500, {"error": {"code": 500, "message": "internal"}}), Reply(200, DETECTION)]) as server:
        assert len(make(server, delays).image_search(query(), 3)) == 3
    assert delays == [0.5]


def test_repeated_5xx_gives_up_after_max_attempts() -> None:
    with FakeWebServer([Reply(503, {"error": {"message": "unavailable"}})] * 3) as server:
        with pytest.raises(SearchError, match=r"Google Cloud Vision request failed after 3 attempt\(s\): HTTP 503"):
            make(server).image_search(query(), 3)
    assert len(server.requests) == 3


def test_read_timeout_is_retried_then_fails() -> None:
    delays: list[float] = []
    with FakeWebServer([Reply(200, DETECTION, delay=3.0)] * 2) as server:
        with pytest.raises(SearchError, match="timed out"):
            make(server, delays, client_kw={"read_timeout": 0.2, "max_attempts": 2}).image_search(query(), 3)
    assert len(server.requests) == 2 and len(delays) == 1


@pytest.mark.parametrize("replies, needle", [
    ([Reply(200, b'{"responses": [{"webDetection": {', content_type="application/json", declared_length=700)] * 3,
      "cut short|truncated"),
    ([Reply(200, b'{"responses": [{"webDetection": {', content_type="application/json")], "malformed"),
])
def test_truncated_or_malformed_json(replies: list[Reply], needle: str) -> None:
    with FakeWebServer(replies) as server:
        with pytest.raises(SearchError, match=needle):
            make(server).image_search(query(), 3)
    assert len(server.requests) == len(replies)


def test_oversized_body() -> None:
    big = {"responses": [{"webDetection": {"webEntities": [{"description": "x" * 100}] * 100}}]}
    with FakeWebServer([Reply(200, big)]) as server:
        with pytest.raises(SearchError, match="too large"):
            make(server, client_kw={"max_bytes": 1000}).image_search(query(), 3)


@pytest.mark.parametrize("status, body", [
    (400, {"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
                     "status": "INVALID_ARGUMENT"}}),
    (401, {"error": {"code": 401, "message": "Request is missing required authentication credential."}}),
    (403, {"error": {"code": 403, "message": "Cloud Vision API has not been used in project 1 before."}}),
])
def test_bad_key_is_reported_without_retry(status: int, body: Any) -> None:
    delays: list[float] = []
    with FakeWebServer([Reply(status, body)]) as server:
        with pytest.raises(SearchError, match=f"invalid API key for Google Cloud Vision.*{VISION_KEY_ENV}"):
            make(server, delays).image_search(query(), 3)
    assert len(server.requests) == 1 and delays == []


def test_other_400_is_not_blamed_on_the_key() -> None:
    with FakeWebServer([Reply(400, {"error": {"code": 400, "message": "Request payload size exceeds the limit"}})]) \
            as server:
        with pytest.raises(SearchError, match="HTTP 400.*payload size") as info:
            make(server).image_search(query(), 3)
    assert "invalid API key" not in str(info.value)


def test_missing_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=VISION_KEY_ENV):
        GoogleVisionBackend(environ={})
    assert repr(GoogleVisionBackend(environ={VISION_KEY_ENV: KEY})).endswith("api_key=***)")
    with pytest.raises(ConfigError, match="key_transport"):
        GoogleVisionBackend(KEY, key_transport="cookie")  # type: ignore[arg-type]


@pytest.mark.parametrize("transport", ["header", "query"])
def test_secret_never_leaks(transport: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    echo = {"error": {"code": 400, "message": f"API key not valid: {KEY}"}}
    texts: list[str] = []
    with FakeWebServer([Reply(400, echo), Reply(500, f"oops {KEY}"), Reply(200, DETECTION, delay=3),
                        Reply(200, f"<html>{KEY}</html>", content_type="text/html"), Reply(200, DETECTION)]) as server:
        backend = make(server, key_transport=transport, client_kw={"read_timeout": 0.2, "max_attempts": 2})
        for _ in range(3):
            with pytest.raises(SearchError) as info:
                backend.image_search(query(), 3)
            texts += exception_texts(info.value)
        hits = backend.image_search(query(), 5)
    texts += [repr(backend), str(backend.cache_params()), backend.name, backend.version, caplog.text,
              repr(vars(backend)), *(str(h.to_json()) for h in hits)]
    for text in texts:
        assert KEY not in text
