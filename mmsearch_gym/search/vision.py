"""Google Cloud Vision web detection as an image search backend.

Unlike Google Lens through SerpApi, Cloud Vision takes the image *bytes* (base64 in the JSON
body), so crops need no public URL and no uploader. It answers with what the web knows about
the picture: a best-guess label, web entities, and pages that show matching images.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import quote_plus

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.search.base import Hit, ImageQuery, SearchError
from mmsearch_gym.search.deadline import DEFAULT_SEARCH_DEADLINE, check_seconds, search_deadline
from mmsearch_gym.search.http import (
    HttpClient,
    HttpStatusError,
    Secret,
    hit_rank_score,
    public_url,
    require_positive_k,
    secret_from,
)

VISION_KEY_ENV = "GOOGLE_CLOUD_VISION_API_KEY"
DEFAULT_VISION_URL = "https://vision.googleapis.com/v1"
_TAG = re.compile(r"<[^>]*>")
_KEY_HEADER = "x-goog-api-key"


class GoogleVisionBackend:
    """``images:annotate`` with the ``WEB_DETECTION`` feature on the (cropped) query image.

    Hits, in this order, the first ``k`` with distinct URLs, scored 1/rank:

    1. each ``bestGuessLabels`` label (title = label, url = a Google search for it);
    2. ``pagesWithMatchingImages`` (title = page title without markup, url = the page);
    3. ``webEntities`` with a description (url = Google's knowledge-graph search for the entity;
       the API's entity score is in the snippet).

    The key (``api_key`` or ``GOOGLE_CLOUD_VISION_API_KEY``) travels in the ``x-goog-api-key``
    header by default, so it never appears in a URL; ``key_transport="query"`` sends it as
    ``?key=`` instead (still masked in every message and log line).
    """

    name = "google-vision"
    version = "1"

    def __init__(self, api_key: str | Secret | None = None, *, base_url: str = DEFAULT_VISION_URL,
                 include_geo_results: bool = False, key_transport: Literal["header", "query"] = "header",
                 search_timeout: float | None = DEFAULT_SEARCH_DEADLINE, client: HttpClient | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self._key = secret_from(api_key, VISION_KEY_ENV, "Google Cloud Vision", environ=environ)
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"Google Vision base_url must be an http(s) URL, got {public_url(base_url)!r}")
        if key_transport not in ("header", "query"):
            raise ConfigError(f"key_transport must be 'header' or 'query', got {key_transport!r}")
        self.base_url = base_url.rstrip("/")
        self.include_geo_results = bool(include_geo_results)
        self.key_transport = key_transport
        self.search_timeout = check_seconds(search_timeout, "search_timeout")
        self.client = client if client is not None else HttpClient()
        self.client.add_secret(self._key)
        self.client.add_secret_header(_KEY_HEADER)

    def cache_params(self) -> dict[str, str | int | float | bool]:
        """Everything besides the image that changes results; never the key."""
        return {"feature": "WEB_DETECTION", "include_geo_results": self.include_geo_results}

    def text_search(self, query: str, k: int) -> list[Hit]:
        raise SearchError("the Google Cloud Vision backend does not support text search; "
                          "combine it with a text backend (SerpApiBackend or SearxngBackend)")

    def image_search(self, image: ImageQuery, k: int) -> list[Hit]:
        require_positive_k(k)
        request: dict[str, Any] = {
            "image": {"content": base64.b64encode(image.png_bytes()).decode("ascii")},
            "features": [{"type": "WEB_DETECTION", "maxResults": k}],
        }
        if self.include_geo_results:
            request["imageContext"] = {"webDetectionParams": {"includeGeoResults": True}}
        with search_deadline(self.search_timeout, "Google Cloud Vision search"):
            detection = self._annotate(request)
        rows: list[tuple[str, str, str]] = []
        for label in detection.get("bestGuessLabels") or []:
            text = _clean(label.get("label")) if isinstance(label, dict) else ""
            if text:
                rows.append((text, "https://www.google.com/search?q=" + quote_plus(text),
                             f"Best guess for this image: {text}"))
        for page in detection.get("pagesWithMatchingImages") or []:
            if not isinstance(page, dict) or not isinstance(page.get("url"), str):
                continue
            url = page["url"].strip()
            kind = "full" if page.get("fullMatchingImages") else "partial"
            title = _clean(page.get("pageTitle")) or url
            rows.append((title, url, f"{title} (web page showing a {kind} match of the image)"))
        for entity in detection.get("webEntities") or []:
            text = _clean(entity.get("description")) if isinstance(entity, dict) else ""
            if not text:
                continue
            entity_id = str(entity.get("entityId") or "")
            url = ("https://www.google.com/search?kgmid=" + quote_plus(entity_id) if entity_id
                   else "https://www.google.com/search?q=" + quote_plus(text))
            score = entity.get("score")
            detail = f" (relevance {float(score):.3f})" if isinstance(score, (int, float)) else ""
            rows.append((text, url, f"Web entity related to the image: {text}{detail}"))
        hits: list[Hit] = []
        seen: set[str] = set()
        for title, url, snippet in rows:
            if url in seen or not url:
                continue
            seen.add(url)
            hits.append(Hit(title=title, url=url, snippet=snippet, score=hit_rank_score(len(hits) + 1),
                            source=self.name))
            if len(hits) == k:
                break
        return self.client.redact_hits(hits)

    def _annotate(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self._key is not None
        url = self.base_url + "/images:annotate"
        headers = {_KEY_HEADER: self._key.reveal()} if self.key_transport == "header" else None
        params = {"key": self._key.reveal()} if self.key_transport == "query" else None
        try:
            data = self.client.post_json(url, {"requests": [request]}, service="Google Cloud Vision",
                                         params=params, headers=headers)
        except HttpStatusError as exc:
            if exc.status in (401, 403) or "API key" in exc.api_message:
                raise SearchError(
                    f"invalid API key for Google Cloud Vision (HTTP {exc.status}: {exc.api_message}); set "
                    f"{VISION_KEY_ENV} to a key of a project with the Cloud Vision API enabled") from None
            raise
        responses = data.get("responses") if isinstance(data, dict) else None
        if not isinstance(responses, list) or len(responses) != 1 or not isinstance(responses[0], dict):
            raise SearchError("Google Cloud Vision answered with unexpected JSON: expected one item in 'responses'")
        answer = responses[0]
        error = answer.get("error")
        if error:
            message = error.get("message") if isinstance(error, dict) else error
            raise SearchError(f"Google Cloud Vision could not annotate the image: "
                              f"{self.client.redact(str(message))}")
        detection = answer.get("webDetection") or {}
        if not isinstance(detection, dict):
            raise SearchError("Google Cloud Vision answered with unexpected JSON: webDetection is not an object")
        return detection

    def __repr__(self) -> str:
        return (f"GoogleVisionBackend(base_url={public_url(self.base_url)!r}, "
                f"include_geo_results={self.include_geo_results}, key_transport={self.key_transport!r}, "
                f"api_key=***)")


def _clean(value: Any) -> str:
    """Plain text from an API string that may carry HTML markup and entities (page titles do)."""
    if not isinstance(value, str):
        return ""
    return " ".join(html.unescape(_TAG.sub("", value)).split())
