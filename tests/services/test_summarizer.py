"""LLMSummarizer and SummarizingBackend: summaries replace snippets, are recorded, and key the search cache."""

from __future__ import annotations

from pathlib import Path

from search.webfake import FakeWebServer, Reply, SeenRequest

from mmsearch_gym.search.base import Hit, ImageQuery, MemoryBackend
from mmsearch_gym.services.summarizer import LLMSummarizer, SummarizingBackend

from .fakes import completion


def _echo(seen: SeenRequest) -> Reply:
    content = seen.json()["messages"][1]["content"].split("CONTENT:\n", 1)[1]
    return Reply(200, completion(f"S({content.splitlines()[0]})"))


def test_text_hits_get_summaries_and_images_only_when_asked(tmp_path: Path) -> None:
    from PIL import Image

    hits = [Hit("Eiffel Tower", "https://a.example", "a tower", 1.0, "m"),
            Hit("Paris", "https://b.example", "a city", 0.5, "m")]
    inner = MemoryBackend(text={"tower": hits}, default_image_hits=hits)
    with FakeWebServer(_echo) as server:
        summarizer = LLMSummarizer({"url": server.url + "/v1#sum", "trust_env": False}, cache_dir=tmp_path)
        backend = SummarizingBackend(inner, summarizer, top_n=1)
        out = backend.text_search("tower", 2)
        assert [h.snippet for h in out] == ["S(Eiffel Tower)", "a city"]
        image = ImageQuery(Image.new("RGB", (4, 4)))
        assert backend.image_search(image, 2)[0].snippet == "a tower"
        with_images = SummarizingBackend(inner, summarizer, images=True, top_n=1)
        assert with_images.image_search(image, 2)[0].snippet == "S(Eiffel Tower)"
        backend.text_search("tower", 2)
        calls = len(server.requests)
    assert calls == 2  # one text and one image summary; the repeated text search is read from the recording
    assert backend.cache_params()["summary.model"] == "sum/summary-v1/120w"
    assert with_images.cache_params() != backend.cache_params()
