"""Cassettes: canonical export, validated all-or-nothing import, verification."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mmsearch_gym.errors import ConfigError, DataError
from mmsearch_gym.search.base import Hit, ImageQuery, MemoryBackend
from mmsearch_gym.search.cache import CacheEntry, SearchCache, normalize_query, summarize_cache
from mmsearch_gym.search.cassette import (
    FORMAT,
    export_cassette,
    import_cassette,
    read_cassette,
    verify_cassette,
    write_cassette,
)

THUMB = b"\x89PNG shared thumbnail"
TEXT = {
    "capital of france": [Hit("Paris", "https://x.org/paris", "Paris is the capital of France.", 3.0, "mem")],
    "flag of japan": [Hit("Japan", "https://x.org/japan", "A red disc on white.", 2.0, "mem", THUMB),
                      Hit("Hinomaru", "https://x.org/hinomaru", "The sun flag.", 1.5, "mem", THUMB)],
    "tallest mountain": [Hit("Everest", "https://x.org/everest", "8,849 m.", 1.0, "mem")],
}


def _image(i: int) -> Image.Image:
    return Image.new("RGB", (6, 6), (i * 40 % 256, 10, 200))


def _fill(cache: SearchCache, order: list[str]) -> None:
    for q in order:
        cache.text_search(q, 5)
    cache.image_search(ImageQuery(_image(1), box=(0, 0, 3, 3)), 2)


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend(text=TEXT, default_image_hits=[
        Hit("Japan", "https://x.org/japan", "", 0.9, "mem", THUMB),
        Hit("Bangladesh", "https://x.org/bd", "", 0.7, "mem", b"another thumbnail")])


@pytest.fixture
def cassette(tmp_path: Path, backend: MemoryBackend) -> Path:
    with SearchCache(backend, tmp_path / "src") as cache:
        _fill(cache, list(TEXT))
        assert cache.export_cassette(tmp_path / "c.jsonl") == 4
    return tmp_path / "c.jsonl"


def test_format_header_blobs_then_sorted_entries(cassette: Path) -> None:
    lines = cassette.read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0])
    assert header == {"format": FORMAT, "version": 1, "backend": "memory", "backend_version": "1",
                      "cache_params": {}, "entries": 4, "blobs": 2}
    blobs = [json.loads(line) for line in lines[1:3]]
    assert [b["blob"] for b in blobs] == sorted(b["blob"] for b in blobs)
    assert hashlib.sha256(THUMB).hexdigest() in {b["blob"] for b in blobs}  # stored once, used 3 times
    entries = [json.loads(line) for line in lines[3:]]
    assert [e["key"] for e in entries] == sorted(e["key"] for e in entries)
    assert {e["kind"] for e in entries} == {"text", "image"}
    for line in lines:
        assert line == json.dumps(json.loads(line), sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def test_export_is_byte_identical_whatever_the_insertion_order(tmp_path: Path, backend: MemoryBackend,
                                                                cassette: Path) -> None:
    with SearchCache(backend, tmp_path / "other") as cache:
        _fill(cache, list(reversed(TEXT)))
        cache.export_cassette(tmp_path / "d.jsonl")
    assert (tmp_path / "d.jsonl").read_bytes() == cassette.read_bytes()
    export_cassette(tmp_path / "other", tmp_path / "e.jsonl")  # from a directory
    assert (tmp_path / "e.jsonl").read_bytes() == cassette.read_bytes()


def test_import_round_trip_replays_exactly_and_is_idempotent(tmp_path: Path, cassette: Path) -> None:
    target = tmp_path / "replay"
    with SearchCache(None, target, mode="replay", name="memory", version="1") as cache:
        assert cache.import_cassette(cassette) == 4
        assert cache.import_cassette(cassette) == 4
        assert cache.stats().entries == 4
        for query, hits in TEXT.items():
            assert cache.text_search(query.upper(), 5) == hits
        assert cache.image_search(ImageQuery(_image(1), box=(0, 0, 3, 3)), 2)[0].thumbnail == THUMB
        cache.export_cassette(tmp_path / "again.jsonl")
    assert (tmp_path / "again.jsonl").read_bytes() == cassette.read_bytes()


def test_verify_reports_counts(cassette: Path) -> None:
    info = verify_cassette(cassette)
    assert (info.entries, info.text_entries, info.image_entries, info.blobs) == (4, 3, 1, 2)
    assert (info.backend, info.backend_version, info.format_version) == ("memory", "1", 1)
    assert info.bytes == cassette.stat().st_size
    assert info.to_json()["entries"] == 4


def test_import_into_a_cache_of_another_backend_is_refused(tmp_path: Path, cassette: Path) -> None:
    other = MemoryBackend()
    other.name = "serpapi"  # type: ignore[misc]
    with SearchCache(other, tmp_path / "x") as cache:
        with pytest.raises(ConfigError, match=r"memory@1.*serpapi@1.*name='memory'"):
            cache.import_cassette(cassette)
        assert cache.stats().entries == 0
    with SearchCache(None, tmp_path / "x", mode="replay", name="memory", version="2") as cache:
        with pytest.raises(ConfigError):
            import_cassette(cache, cassette)
    assert import_cassette(tmp_path / "x", cassette) == 4  # a bare directory takes any backend
    assert summarize_cache(tmp_path / "x").backends == {"memory@1": 4}


def test_directory_with_several_backends_needs_a_choice(tmp_path: Path, backend: MemoryBackend) -> None:
    class Other(MemoryBackend):
        name = "other"
        version = "7"

    with SearchCache(backend, tmp_path / "mix") as cache:
        cache.text_search("capital of france", 5)
    with SearchCache(Other(default_text_hits=TEXT["tallest mountain"]), tmp_path / "mix") as cache:
        cache.text_search("q", 5)
        cache.text_search("r", 5)
        assert cache.export_cassette(tmp_path / "own.jsonl") == 2  # a SearchCache exports its own backend
    with pytest.raises(ConfigError, match="several backends.*memory@1.*other@7"):
        export_cassette(tmp_path / "mix", tmp_path / "all.jsonl")
    assert export_cassette(tmp_path / "mix", tmp_path / "m.jsonl", backend="memory") == 1
    assert export_cassette(tmp_path / "mix", tmp_path / "o.jsonl", backend="other@7") == 2
    assert (tmp_path / "o.jsonl").read_bytes() == (tmp_path / "own.jsonl").read_bytes()
    with pytest.raises(ConfigError, match="no entries of backend 'nobody'"):
        export_cassette(tmp_path / "mix", tmp_path / "n.jsonl", backend="nobody")
    with pytest.raises(ConfigError, match="no search cache"):
        export_cassette(tmp_path / "missing", tmp_path / "n.jsonl")


def test_empty_cache_exports_a_valid_header_only_cassette(tmp_path: Path, backend: MemoryBackend) -> None:
    with SearchCache(backend, tmp_path / "empty") as cache:
        assert cache.export_cassette(tmp_path / "empty.jsonl") == 0
    assert verify_cassette(tmp_path / "empty.jsonl").entries == 0
    assert len((tmp_path / "empty.jsonl").read_text().splitlines()) == 1


def test_cache_params_travel_in_the_header(tmp_path: Path) -> None:
    class Live(MemoryBackend):
        name = "lens"

        def cache_params(self) -> dict[str, Any]:
            return {"engine": "google_lens", "hl": "en"}

    with SearchCache(Live(default_text_hits=TEXT["tallest mountain"]), tmp_path / "a") as cache:
        cache.text_search("everest", 3)
        cache.export_cassette(tmp_path / "lens.jsonl")
    assert read_cassette(tmp_path / "lens.jsonl").cache_params == {"engine": "google_lens", "hl": "en"}
    with SearchCache(None, tmp_path / "b", mode="replay", name="lens", version="1") as cache:
        with pytest.raises(ConfigError, match="params="):
            cache.import_cassette(tmp_path / "lens.jsonl")
    with SearchCache(None, tmp_path / "b", mode="replay", name="lens", version="1",
                     params={"hl": "en", "engine": "google_lens"}) as cache:
        assert cache.import_cassette(tmp_path / "lens.jsonl") == 1
        assert cache.text_search("Everest", 3) == TEXT["tallest mountain"]


# -- validation: every bad line is reported by number, and nothing is written ------------------


def _edit(cassette: Path, out: Path, lineno: int, change: Any) -> Path:
    lines = cassette.read_text(encoding="utf-8").split("\n")
    if callable(change):
        obj = json.loads(lines[lineno - 1])
        change(obj)
        lines[lineno - 1] = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    else:
        lines[lineno - 1] = change
    out.write_text("\n".join(lines), encoding="utf-8")
    return out


def _set(field: str, value: Any) -> Any:
    def change(obj: dict[str, Any]) -> None:
        obj[field] = value
    return change


def _hit(field: str, value: Any) -> Any:
    def change(obj: dict[str, Any]) -> None:
        obj["hits"][0][field] = value
    return change


def _unnormalise(obj: dict[str, Any]) -> None:
    obj["query"] = obj["query"].upper()


BAD_LINES: list[tuple[int, Any, str]] = [
    (1, "not json", "not valid JSON"),
    (1, _set("format", "something-else"), "not a cassette"),
    (1, _set("version", 99), "version 99 is not supported"),
    (1, _set("extra", 1), "unknown fields"),
    (2, _set("data", "!!!not base64"), "base64"),
    (2, _set("data", base64.b64encode(b"tampered").decode()), "does not match its sha256"),
    (2, _set("blob", "XYZ"), "sha256"),
    (4, "", "empty line"),
    (4, "[1, 2]", "JSON object"),
    (4, '{"kind": "text", "score": NaN}', "finite"),
    (4, _set("kind", "video"), "'kind'"),
    (4, _set("k", 0), "positive integer"),
    (4, _set("k", True), "positive integer"),
    (4, _set("surprise", 1), "unknown fields"),
    (5, _hit("score", "high"), "'score' must be a number"),
    (5, _hit("title", None), "'title' must be a string"),
    (5, _hit("thumbnail", "0" * 64), "has no blob line"),
    (5, _set("key", "0" * 64), "does not match the entry"),
    (5, _set("k", 3), "does not match the entry"),  # the key covers k: an edited k is caught
]


@pytest.mark.parametrize(("lineno", "change", "message"), BAD_LINES)
def test_a_bad_line_is_named_and_nothing_is_imported(tmp_path: Path, cassette: Path, lineno: int, change: Any,
                                                     message: str) -> None:
    bad = _edit(cassette, tmp_path / "bad.jsonl", lineno, change)
    with pytest.raises(DataError) as info:
        verify_cassette(bad)
    assert f"line {lineno}:" in str(info.value) and message in str(info.value)
    with SearchCache(None, tmp_path / "target", mode="replay", name="memory", version="1") as target:
        with pytest.raises(DataError):
            import_cassette(target, bad)
        assert target.stats().entries == 0


def test_specific_entry_problems(tmp_path: Path, cassette: Path) -> None:
    lines = cassette.read_text(encoding="utf-8").splitlines()
    text_line = next(i for i, line in enumerate(lines, 1) if '"kind":"text"' in line)
    bad = _edit(cassette, tmp_path / "q.jsonl", text_line, _unnormalise)
    with pytest.raises(DataError, match=f"line {text_line}: 'query' .* is not normalised"):
        verify_cassette(bad)
    image_line = next(i for i, line in enumerate(lines, 1) if '"kind":"image"' in line)
    bad = _edit(cassette, tmp_path / "b.jsonl", image_line, _set("box", [1, 2, 3]))
    with pytest.raises(DataError, match=f"line {image_line}: 'box'"):
        verify_cassette(bad)


def test_truncation_duplicates_and_encoding(tmp_path: Path, cassette: Path) -> None:
    lines = cassette.read_bytes().split(b"\n")
    (tmp_path / "trunc.jsonl").write_bytes(b"\n".join(lines[:-2]) + b"\n")
    with pytest.raises(DataError, match="line 1: the header says 4 entries but the file has 3"):
        verify_cassette(tmp_path / "trunc.jsonl")
    (tmp_path / "dup.jsonl").write_bytes(b"\n".join(lines[:-1] + [lines[-2], b""]))
    with pytest.raises(DataError, match="line 8: key .* already appeared on line 7"):
        verify_cassette(tmp_path / "dup.jsonl")
    (tmp_path / "dupblob.jsonl").write_bytes(b"\n".join([lines[0], lines[1], lines[1]] + lines[2:]))
    with pytest.raises(DataError, match="line 3: blob .* appears twice"):
        verify_cassette(tmp_path / "dupblob.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes(b"\n".join(lines[:4] + [b'{"kind": "caf\xe9"}'] + lines[5:]))
    with pytest.raises(DataError, match="line 5: not UTF-8"):
        verify_cassette(tmp_path / "latin1.jsonl")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(DataError, match="line 1: empty file"):
        verify_cassette(tmp_path / "empty.jsonl")
    with pytest.raises(ConfigError, match="does not exist"):
        verify_cassette(tmp_path / "nope.jsonl")


def test_nan_scores_cannot_be_exported(tmp_path: Path) -> None:
    entry = CacheEntry(kind="text", k=1, backend="b", backend_version="1", query="q",
                       hits=(Hit("t", "u", "s", float("nan"), "src"),))
    with pytest.raises(DataError, match="NaN"):
        write_cassette([entry], tmp_path / "nan.jsonl", backend="b", backend_version="1")
    assert not (tmp_path / "nan.jsonl").exists()


hit_strategy = st.builds(Hit, title=st.text(max_size=15), url=st.text(max_size=15), snippet=st.text(max_size=40),
                         score=st.floats(allow_nan=False, allow_infinity=False), source=st.text(max_size=4),
                         thumbnail=st.one_of(st.none(), st.sampled_from([b"a", b"bb", THUMB]), st.binary(max_size=16)))
entry_strategy = st.one_of(
    st.builds(lambda q, k, hits: CacheEntry(kind="text", k=k, backend="p", backend_version="0",
                                            query=normalize_query(q), hits=tuple(hits)),
              st.text(max_size=20), st.integers(1, 9), st.lists(hit_strategy, max_size=4)),
    st.builds(lambda d, box, k, hits: CacheEntry(kind="image", k=k, backend="p", backend_version="0", digest=d,
                                                 box=box, hits=tuple(hits)),
              st.text(min_size=1, max_size=8), st.one_of(st.none(), st.tuples(*[st.integers(0, 99)] * 4)),
              st.integers(1, 9), st.lists(hit_strategy, max_size=4)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.lists(entry_strategy, max_size=6), seed=st.randoms(use_true_random=False))
def test_property_round_trip_and_canonical_bytes(tmp_path: Path, entries: list[CacheEntry], seed: Any) -> None:
    unique = {e.key: e for e in entries}
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_cassette(unique.values(), a, backend="p", backend_version="0")
    shuffled = list(unique.values())
    seed.shuffle(shuffled)
    write_cassette(shuffled, b, backend="p", backend_version="0")
    assert a.read_bytes() == b.read_bytes()
    info = read_cassette(a)
    assert {e.key: e for e in info.entry_list} == unique


def test_from_cassette_opens_a_replay_cache_from_the_header(tmp_path: Path, cassette: Path) -> None:
    with SearchCache.from_cassette(cassette, tmp_path / "r") as cache:
        assert (cache.name, cache.version, cache.mode) == ("memory", "1", "replay")
        assert cache.stats().entries == 4
        assert cache.text_search("Flag of Japan", 5) == TEXT["flag of japan"]
    with SearchCache.from_cassette(cassette, tmp_path / "r", backend=MemoryBackend(), mode="readthrough") as cache:
        assert cache.text_search("tallest mountain", 5) == TEXT["tallest mountain"]  # served, not asked
    other = MemoryBackend()
    other.version = "9"  # type: ignore[misc]
    with pytest.raises(ConfigError, match="memory@1"):
        SearchCache.from_cassette(cassette, tmp_path / "s", backend=other)
