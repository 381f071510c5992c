"""CassetteFallback: BM25 over recorded documents, image features over recorded thumbnails."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from mmsearch_gym.search.base import Hit, ImageQuery, MemoryBackend
from mmsearch_gym.search.cache import CacheMiss, SearchCache
from mmsearch_gym.search.fallback import CassetteFallback


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def tricolour(colours: tuple[str, str, str], vertical: bool = True, size: tuple[int, int] = (96, 64)) -> Image.Image:
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    w, h = size
    for i, colour in enumerate(colours):
        if vertical:
            draw.rectangle([i * w // 3, 0, (i + 1) * w // 3, h], fill=colour)
        else:
            draw.rectangle([0, i * h // 3, w, (i + 1) * h // 3], fill=colour)
    return image


def disc(background: str, colour: str, size: tuple[int, int] = (96, 64)) -> Image.Image:
    image = Image.new("RGB", size, background)
    w, h = size
    ImageDraw.Draw(image).ellipse([w // 2 - h // 4, h // 4, w // 2 + h // 4, 3 * h // 4], fill=colour)
    return image


FRANCE = tricolour(("#0055a4", "#ffffff", "#ef4135"))
GERMANY = tricolour(("#000000", "#dd0000", "#ffce00"), vertical=False)
JAPAN = disc("#ffffff", "#bc002d")
BANGLADESH = disc("#006a4e", "#f42a41")

TEXT = {
    "capital of france": [Hit("Paris", "https://w.org/Paris", "Paris is the capital and largest city of France.", 3.1,
                              "mem")],
    "largest city of germany": [Hit("Berlin", "https://w.org/Berlin", "Berlin is the capital of Germany.", 2.7, "mem"),
                                Hit("Hamburg", "https://w.org/Hamburg", "Hamburg is a port city in Germany.", 1.2,
                                    "mem")],
    "mount fuji height": [Hit("Mount Fuji", "https://w.org/Fuji", "Mount Fuji is 3,776 m tall, the highest in Japan.",
                              2.0, "mem")],
}
IMAGE_HITS = {
    "france": [Hit("Flag of France", "https://w.org/Flag_of_France", "Blue, white and red.", 0.9, "mem",
                   _png(FRANCE)),
               Hit("France", "https://w.org/France", "A country in Europe.", 0.8, "mem", _png(FRANCE))],
    "japan": [Hit("Flag of Japan", "https://w.org/Flag_of_Japan", "A red disc on white.", 0.9, "mem", _png(JAPAN))],
    "germany": [Hit("Flag of Germany", "https://w.org/Flag_of_Germany", "Black, red and gold.", 0.9, "mem",
                    _png(GERMANY)),
                Hit("Flag of France", "https://w.org/Flag_of_France", "Blue, white and red.", 0.3, "mem",
                    _png(FRANCE))],
    "bangladesh": [Hit("Flag of Bangladesh", "https://w.org/Flag_of_Bangladesh", "A red disc on green.", 0.9,
                       "mem", _png(BANGLADESH))],
}
SOURCES = {"france": FRANCE, "japan": JAPAN, "germany": GERMANY, "bangladesh": BANGLADESH}


@pytest.fixture
def recorded(tmp_path: Path) -> tuple[Path, Path]:
    """A recorded cache directory and its cassette."""
    image_map = {(ImageQuery(img).digest, None): IMAGE_HITS[name] for name, img in SOURCES.items()}
    backend = MemoryBackend(text=TEXT, image=image_map)
    with SearchCache(backend, tmp_path / "rec") as cache:
        for query in TEXT:
            cache.text_search(query, 5)
        for image in SOURCES.values():
            cache.image_search(ImageQuery(image), 5)
        cache.export_cassette(tmp_path / "rec.jsonl")
    return tmp_path / "rec", tmp_path / "rec.jsonl"


def test_text_fallback_ranks_recorded_documents(recorded: tuple[Path, Path]) -> None:
    fallback = CassetteFallback.from_cassette(recorded[1])
    assert fallback.documents == 9 and fallback.thumbnails == 5
    hits = fallback.text_search("How tall is Fuji?", 3)
    assert hits[0].url == "https://w.org/Fuji"
    assert all(h.source == "fallback" and h.thumbnail is None for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert fallback.text_search("which city is the capital of Germany", 2)[0].url == "https://w.org/Berlin"
    assert fallback.text_search("quantum chromodynamics", 5) == []
    assert fallback.text_search("capital", 0) == []


def test_image_fallback_finds_the_nearest_thumbnail_once_per_url(recorded: tuple[Path, Path]) -> None:
    fallback = CassetteFallback.from_cassette(recorded[1])
    for name, url in [("japan", "https://w.org/Flag_of_Japan"), ("germany", "https://w.org/Flag_of_Germany"),
                      ("bangladesh", "https://w.org/Flag_of_Bangladesh")]:
        # a new photo of the same flag: rescaled, inside a frame the cache never saw
        framed = Image.new("RGB", (200, 150), "#808080")
        framed.paste(SOURCES[name].resize((160, 110)), (20, 20))
        hits = fallback.image_search(ImageQuery(framed, box=(20, 20, 180, 130)), 3)
        assert hits[0].url == url, name
        assert hits[0].thumbnail is not None and hits[0].source == "fallback"
    hits = fallback.image_search(ImageQuery(FRANCE.resize((60, 40))), 10)
    urls = [h.url for h in hits]
    assert len(urls) == len(set(urls)) == 5  # every recorded URL once, France first
    assert urls[0] in ("https://w.org/Flag_of_France", "https://w.org/France")
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_fallback_is_deterministic_and_source_independent(recorded: tuple[Path, Path]) -> None:
    directory, cassette = recorded
    a = CassetteFallback.from_cassette(cassette)
    b = CassetteFallback.from_cache(directory)
    with SearchCache(None, directory, mode="replay", name="memory", version="1") as cache:
        c = CassetteFallback.from_cache(cache)
    query = ImageQuery(disc("#fefefe", "#c00030"))
    for fb in (b, c):
        assert fb.version == a.version
        assert fb.text_search("capital city", 5) == a.text_search("capital city", 5)
        assert fb.image_search(query, 4) == a.image_search(query, 4)


def test_replay_with_fallback_end_to_end(tmp_path: Path, recorded: tuple[Path, Path]) -> None:
    _, cassette = recorded
    fallback = CassetteFallback.from_cassette(cassette)
    with SearchCache(None, tmp_path / "replay", mode="replay", name="memory", version="1") as strict:
        strict.import_cassette(cassette)
        with pytest.raises(CacheMiss):
            strict.text_search("how tall is mount fuji", 5)
    with SearchCache(None, tmp_path / "replay", mode="replay", name="memory", version="1",
                     fallback=fallback) as cache:
        assert cache.text_search("Capital of France", 5) == TEXT["capital of france"]  # recorded: exact
        approx = cache.text_search("how tall is mount fuji", 5)  # novel: approximate
        assert approx[0].url == "https://w.org/Fuji" and approx[0].source == "fallback"
        assert cache.image_search(ImageQuery(JAPAN), 5) == IMAGE_HITS["japan"]
        crop = cache.image_search(ImageQuery(JAPAN, box=(20, 10, 76, 54)), 2)
        assert crop[0].url == "https://w.org/Flag_of_Japan"
        stats = cache.stats()
        assert (stats.hits, stats.misses, stats.entries) == (2, 2, 7)  # fallback answers are not stored


def test_empty_fallback_answers_nothing() -> None:
    fallback = CassetteFallback([])
    assert fallback.text_search("anything", 5) == []
    assert fallback.image_search(ImageQuery(JAPAN), 5) == []
