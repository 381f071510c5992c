"""WorldSearchEngine: text and image search over the built-in world, deterministic and thread-safe."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.search.base import Hit, ImageQuery, SearchBackend
from mmsearch_gym.world.engine import WorldSearchEngine
from mmsearch_gym.world.knowledge import FACT_LABELS, Knowledge

Box = tuple[int, int, int, int]


@pytest.fixture(scope="module")
def engine() -> WorldSearchEngine:
    return WorldSearchEngine.load()


@pytest.fixture(scope="module")
def knowledge(engine: WorldSearchEngine) -> Knowledge:
    return engine.knowledge


def test_engine_is_a_cached_search_backend(engine: WorldSearchEngine) -> None:
    assert WorldSearchEngine.load() is engine
    assert isinstance(engine, SearchBackend)
    assert engine.name == "world"
    assert engine.version.endswith("+" + engine.knowledge.content_hash[:10])
    assert engine.cache_params() == {}


# -- text search ---------------------------------------------------------------------------


def test_capital_query_returns_the_government_page(engine: WorldSearchEngine) -> None:
    hits = engine.text_search("What is the capital of France?", 5)
    assert hits[0].title == "France - The World Factbook: Government"
    assert "Capital: Paris." in hits[0].snippet
    assert all(isinstance(h, Hit) and h.source == "world" for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_text_search_limits_and_empty_queries(engine: WorldSearchEngine) -> None:
    assert len(engine.text_search("flag red white", 3)) == 3
    assert engine.text_search("flag", 0) == []
    assert engine.text_search("   ", 5) == []
    assert engine.text_search("zzzqqqxxv", 5) == []
    with pytest.raises(ConfigError, match="k"):
        engine.text_search("France", "5")  # type: ignore[arg-type]


def test_country_fact_queries_find_the_fact_passage_in_the_top_five(
        engine: WorldSearchEngine, knowledge: Knowledge) -> None:
    found, first = Counter(), Counter()
    for country in knowledge.countries():
        for key in ["capital", "national_anthem", "national_symbol", "independence", "currency", "region"]:
            if key not in country.facts:
                continue
            urls = [h.url for h in engine.text_search(f"{country.name} {FACT_LABELS[key].lower()}", 5)]
            target = country.fact_passage(key).url
            found[key] += target in urls
            first[key] += bool(urls) and urls[0] == target
    counts = Counter(k for c in knowledge.countries() for k in c.facts)
    for key, hits in found.items():
        assert hits / counts[key] >= 0.97, (key, hits, counts[key])
    assert first["capital"] / counts["capital"] >= 0.85
    assert first["national_anthem"] / counts["national_anthem"] >= 0.95


def test_a_unique_fact_value_leads_back_to_its_country(
        engine: WorldSearchEngine, knowledge: Knowledge) -> None:
    values = Counter(v for c in knowledge.countries() for k, v in c.facts.items() if k == "national_anthem")
    total = correct = 0
    for country in knowledge.countries():
        anthem = country.facts.get("national_anthem")
        if anthem is None or values[anthem] > 1:
            continue
        total += 1
        top = engine.text_search(f'national anthem "{anthem}"', 1)[0]
        correct += engine.entity_for_url(top.url) is country
    assert total > 150 and correct / total >= 0.97


def test_photo_pages_are_searchable(engine: WorldSearchEngine) -> None:
    hits = engine.text_search("Eileen Collins astronaut photo", 3)
    assert hits[0].title == "Astronaut Eileen Collins (NASA portrait)"
    assert engine.entity_for_url(hits[0].url).id == "astronaut"
    assert engine.entity_for_url("https://example.org/") is None


# -- image search --------------------------------------------------------------------------


def test_every_reference_picture_finds_itself_with_a_thumbnail(
        engine: WorldSearchEngine, knowledge: Knowledge) -> None:
    for entity in knowledge.entities.values():
        hits = engine.image_search(ImageQuery(knowledge.image(entity.id)), 3)
        assert hits[0].title == entity.image_title and hits[0].url == entity.image_url
        assert hits[0].snippet == entity.image_snippet
        assert hits[0].thumbnail == knowledge.thumbnail(entity.id)
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert len(hits) == 3 and hits[0].score >= hits[1].score >= hits[2].score


def test_image_search_of_a_boxed_query_searches_the_crop(
        engine: WorldSearchEngine, knowledge: Knowledge) -> None:
    canvas = Image.new("RGB", (400, 300), (128, 128, 128))
    canvas.paste(knowledge.image("jp"), (200, 150))
    query = ImageQuery(canvas, box=(200, 150, 200 + 160, 150 + 112))
    assert engine.image_search(query, 1)[0].title == "Flag of Japan"
    assert engine.image_search(ImageQuery(canvas), 0) == []
    with pytest.raises(ConfigError, match="empty"):
        engine.image_search(ImageQuery(canvas, box=(10, 10, 10, 50)), 3)


def _jpeg(image: Image.Image, quality: int = 85) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def render_scene(knowledge: Knowledge, rng: np.random.Generator) -> tuple[Image.Image, str, list[tuple[Box, str]]]:
    """A background photo with 2-4 flags pasted at random places, each 12-20% of its width."""
    photos = [e.id for e in knowledge.photos()]
    countries = [e.id for e in knowledge.countries()]
    photo = photos[int(rng.integers(len(photos)))]
    background = knowledge.image(photo)
    width = int(rng.integers(480, 800))
    scene = background.resize((width, round(background.height * width / background.width)),
                              Image.Resampling.BILINEAR)
    boxes: list[tuple[Box, str]] = []
    for pick in rng.choice(len(countries), int(rng.integers(2, 5)), replace=False):
        flag = knowledge.image(countries[pick])
        fw = round(width * rng.uniform(0.12, 0.20))
        fh = round(fw * flag.height / flag.width)
        for _ in range(100):
            x, y = int(rng.integers(0, width - fw)), int(rng.integers(0, scene.height - fh))
            if all(x + fw <= b[0] or b[2] <= x or y + fh <= b[1] or b[3] <= y for b, _ in boxes):
                break
        scene.paste(flag.resize((fw, fh), Image.Resampling.LANCZOS), (x, y))
        boxes.append(((x, y, x + fw, y + fh), countries[pick]))
    return _jpeg(scene), photo, boxes


def test_scenes_whole_image_finds_the_photo_and_crops_find_the_flags(
        engine: WorldSearchEngine, knowledge: Knowledge) -> None:
    rng = np.random.default_rng(2024)
    scenes = 40
    photo_first = flag_first = crops = crop_ok = loose_ok = 0
    for _ in range(scenes):
        scene, photo, boxes = render_scene(knowledge, rng)
        top = engine.entity_for_url(engine.image_search(ImageQuery(scene), 1)[0].url)
        photo_first += top.id == photo
        flag_first += top.id in {c for _, c in boxes}
        for (x1, y1, x2, y2), country in boxes:
            crops += 1
            hit = engine.image_search(ImageQuery(scene, box=(x1, y1, x2, y2)), 1)[0]
            crop_ok += engine.entity_for_url(hit.url).id == country
            mx = round((x2 - x1) * rng.uniform(0.03, 0.12))
            my = round((y2 - y1) * rng.uniform(0.03, 0.12))
            loose = (max(0, x1 - mx), max(0, y1 - my), min(scene.width, x2 + mx), min(scene.height, y2 + my))
            hit = engine.image_search(ImageQuery(scene, box=loose), 1)[0]
            loose_ok += engine.entity_for_url(hit.url).id == country
    assert photo_first / scenes >= 0.9
    assert flag_first / scenes <= 0.3
    assert crop_ok / crops >= 0.9
    assert loose_ok / crops >= 0.85


# -- determinism and concurrency -----------------------------------------------------------


def _fingerprint(hits: list[Hit]) -> list[list[object]]:
    return [[h.title, h.url, h.score, None if h.thumbnail is None else len(h.thumbnail)] for h in hits]


def test_results_are_identical_in_a_fresh_process(engine: WorldSearchEngine, knowledge: Knowledge) -> None:
    flag = knowledge.image("br").rotate(5, Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
    buf = io.BytesIO()
    flag.save(buf, format="PNG")
    code = (
        "import io, json, sys; from PIL import Image;"
        "from mmsearch_gym.search.base import ImageQuery;"
        "from mmsearch_gym.world.engine import WorldSearchEngine;"
        "e = WorldSearchEngine.load(); im = Image.open(io.BytesIO(sys.stdin.buffer.read())).convert('RGB');"
        "fp = lambda hs: [[h.title, h.url, h.score, None if h.thumbnail is None else len(h.thumbnail)] for h in hs];"
        "print(json.dumps([e.version, fp(e.text_search('independence from Spain anthem', 10)),"
        " fp(e.image_search(ImageQuery(im), 10))]))"
    )
    out = subprocess.run([sys.executable, "-c", code], input=buf.getvalue(), capture_output=True,
                         check=True).stdout
    here = [engine.version, _fingerprint(engine.text_search("independence from Spain anthem", 10)),
            _fingerprint(engine.image_search(ImageQuery(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")), 10))]
    assert json.loads(out) == json.loads(json.dumps(here))


def test_concurrent_queries_match_serial_ones(engine: WorldSearchEngine, knowledge: Knowledge) -> None:
    ids = list(knowledge.entities)[::9]
    fresh = WorldSearchEngine(knowledge)  # cold thumbnail cache, filled concurrently

    def run(entity_id: str) -> tuple[list[list[object]], list[list[object]]]:
        entity = knowledge.get(entity_id)
        return (_fingerprint(fresh.text_search(entity.name + " capital", 5)),
                _fingerprint(fresh.image_search(ImageQuery(knowledge.image(entity_id)), 5)))

    serial = [(_fingerprint(engine.text_search(knowledge.get(i).name + " capital", 5)),
               _fingerprint(engine.image_search(ImageQuery(knowledge.image(i)), 5))) for i in ids]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(run, ids))
    assert parallel == serial
    assert fresh.version == engine.version
