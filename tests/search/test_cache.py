"""SearchCache: keys, modes, JSON-only storage, secrets, stats, and multi-process safety."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import pickle
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import diskcache
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mmsearch_gym.errors import ConfigError, DataError, MMSearchError
from mmsearch_gym.search.base import Hit, ImageQuery, MemoryBackend, SearchBackend, SearchError
from mmsearch_gym.search.cache import (
    CacheEntry,
    CacheMiss,
    CacheStats,
    JSONDisk,
    SearchCache,
    cache_key,
    default_cache_dir,
    normalize_query,
    summarize_cache,
)

# -- a deterministic backend, shared with the worker processes ---------------------------------


def _thumb(seed: str, size: int) -> bytes:
    block = hashlib.sha256(seed.encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def expected_text(query: str, k: int) -> list[Hit]:
    """What CountingBackend answers: a pure function of the normalised query and k."""
    q = normalize_query(query)
    tag = hashlib.sha256(q.encode()).hexdigest()
    big = int(tag[0], 16) % 2 == 0  # half the entries carry a 40 kB thumbnail (stored as a file)
    return [Hit(title=f"{q} - result {i}", url=f"https://example.org/{tag[:10]}/{i}",
                snippet=f"about {q}: passage {i} ünïcode", score=1.0 / (i + 1), source="counting",
                thumbnail=_thumb(tag, 40_000) if (i == 0 and big) else None)
            for i in range(k)]


def expected_image(digest: str, box: Any, k: int) -> list[Hit]:
    tag = hashlib.sha256(f"{digest}{box}".encode()).hexdigest()
    return [Hit(title=f"image {tag[:6]} {i}", url=f"https://img.example.org/{tag[:10]}/{i}", snippet="",
                score=0.5 - i / 100, source="counting", thumbnail=_thumb(tag + str(i), 300))
            for i in range(k)]


class CountingBackend:
    name = "counting"
    version = "1"

    def __init__(self) -> None:
        self.calls = 0

    def text_search(self, query: str, k: int) -> list[Hit]:
        self.calls += 1
        return expected_text(query, k)

    def image_search(self, image: ImageQuery, k: int) -> list[Hit]:
        self.calls += 1
        return expected_image(image.digest, image.box, k)


def _image(i: int) -> Image.Image:
    return Image.new("RGB", (8, 8), (i * 13 % 256, i * 7 % 256, 40))


HITS = [Hit("Paris", "https://en.example.org/Paris", "Paris is the capital of France.", 2.5, "memory"),
        Hit("France", "https://en.example.org/France", "France is a country.", 1.25, "memory",
            thumbnail=b"\x89PNG fake thumbnail bytes")]


@pytest.fixture
def memory() -> MemoryBackend:
    return MemoryBackend(text={"capital of france": HITS}, default_text_hits=HITS[:1],
                         default_image_hits=HITS[::-1])


# -- basics ------------------------------------------------------------------------------------


def test_default_cache_dir_honours_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MMSEARCH_GYM_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MMSEARCH_GYM_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "mmsearch_gym"


def test_cache_is_a_search_backend(tmp_path: Path, memory: MemoryBackend) -> None:
    with SearchCache(memory, tmp_path) as cache:
        assert isinstance(cache, SearchBackend)
        assert (cache.name, cache.version, cache.mode) == ("memory", "1", "readthrough")


def test_readthrough_asks_backend_once_per_key(tmp_path: Path, memory: MemoryBackend) -> None:
    with SearchCache(memory, tmp_path) as cache:
        first = cache.text_search("Capital of  FRANCE ", 5)
        assert first == HITS
        assert cache.text_search("capital of france", 5) == HITS  # normalised to the same key
        assert len(memory.calls) == 1
        assert cache.text_search("capital of france", 1) == HITS[:1]  # k is part of the key
        assert len(memory.calls) == 2
        assert cache.stats() == CacheStats(hits=1, misses=2, entries=2, bytes=cache.stats().bytes)
        assert cache.stats().bytes > 0


def test_hits_round_trip_exactly_including_thumbnails_and_big_values(tmp_path: Path) -> None:
    backend = CountingBackend()
    with SearchCache(backend, tmp_path) as cache:
        queries = [f"query number {i}" for i in range(6)]
        for q in queries:
            assert cache.text_search(q, 3) == expected_text(q, 3)
        image = ImageQuery(_image(1), box=(1, 1, 5, 6))
        assert cache.image_search(image, 4) == expected_image(image.digest, image.box, 4)
        calls = backend.calls
        for q in queries:
            again = cache.text_search(q, 3)
            assert again == expected_text(q, 3)
            assert [type(h) for h in again] == [Hit] * 3
        assert cache.image_search(ImageQuery(_image(1), box=(1, 1, 5, 6)), 4) == expected_image(image.digest,
                                                                                                image.box, 4)
        assert backend.calls == calls
        assert any(expected_text(q, 3)[0].thumbnail for q in queries)  # the file-backed path ran


def test_image_key_uses_digest_and_box_not_pixels_again(tmp_path: Path, memory: MemoryBackend) -> None:
    with SearchCache(memory, tmp_path) as cache:
        whole = ImageQuery(_image(2))
        crop = ImageQuery(_image(2), box=(0, 0, 4, 4))
        same_digest = ImageQuery(Image.new("RGB", (3, 3)), digest=whole.digest)
        assert cache.key_for_image(whole, 5) != cache.key_for_image(crop, 5)
        assert cache.key_for_image(whole, 5) == cache.key_for_image(same_digest, 5)
        assert cache.key_for_image(whole, 5) != cache.key_for_image(whole, 4)
        cache.image_search(whole, 5)
        cache.image_search(same_digest, 5)
        assert [c[0] for c in memory.calls] == ["image"]


def test_key_depends_on_backend_identity_and_params(tmp_path: Path) -> None:
    class Live(CountingBackend):
        def __init__(self, engine: str) -> None:
            super().__init__()
            self.engine = engine

        def cache_params(self) -> dict[str, Any]:
            return {"engine": self.engine, "hl": "en"}

    keys = set()
    for i, backend in enumerate([CountingBackend(), Live("google"), Live("bing")]):
        with SearchCache(backend, tmp_path / str(i)) as cache:
            keys.add(cache.key_for_text("q", 5))
    other = CountingBackend()
    other.version = "2"
    with SearchCache(other, tmp_path / "v2") as cache:
        keys.add(cache.key_for_text("q", 5))
    assert len(keys) == 4


class _WithParams(CountingBackend):
    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__()
        self.params = params

    def cache_params(self) -> dict[str, Any]:
        return self.params


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


@settings(max_examples=30, deadline=None)
@given(query=st.text(max_size=40), k=st.integers(1, 50),
       params=st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=5)), max_size=3))
def test_instance_keys_equal_the_reference_key_function(shared_dir: Path, query: str, k: int,
                                                         params: dict[str, Any]) -> None:
    with SearchCache(_WithParams(params), shared_dir) as cache:
        assert cache.key_for_text(query, k) == cache_key("counting", "1", params, "text", normalize_query(query), k)
        assert cache.key_for_text(f"  {query.upper()}\t ", k) == cache.key_for_text(query.upper(), k)
        image = ImageQuery(_image(k), box=None if k % 2 else (k, 0, k + 3, 9))
        subject = [image.digest, None if image.box is None else list(image.box)]
        assert cache.key_for_image(image, k) == cache_key("counting", "1", params, "image", subject, k)


def test_normalize_query_unicode_forms() -> None:
    assert normalize_query("Caf\u00e9") == normalize_query("CAFE\u0301") == "caf\u00e9"
    assert normalize_query("  Straße \n Berlin ") == "strasse berlin"
    assert normalize_query("") == ""


@settings(max_examples=60, deadline=None)
@given(hits=st.lists(st.builds(Hit, title=st.text(max_size=20), url=st.text(max_size=20),
                               snippet=st.text(max_size=60),
                               score=st.floats(allow_nan=False, allow_infinity=False),
                               source=st.text(max_size=5), thumbnail=st.one_of(st.none(), st.binary(max_size=64))),
                     max_size=6),
       query=st.text(max_size=20))
def test_entry_encoding_round_trips_and_is_canonical(hits: list[Hit], query: str) -> None:
    entry = CacheEntry(kind="text", k=7, backend="b", backend_version="v", hits=tuple(hits),
                       query=normalize_query(query), params={"x": 1})
    data = entry.encode()
    assert CacheEntry.decode(data) == entry
    assert CacheEntry.decode(data).encode() == data


# -- modes -------------------------------------------------------------------------------------


def test_record_mode_always_asks_and_overwrites(tmp_path: Path) -> None:
    backend = MemoryBackend(default_text_hits=HITS[:1])
    with SearchCache(backend, tmp_path) as cache:
        cache.text_search("q", 5)
    backend._default_text = HITS[1:]  # the world changed
    with SearchCache(backend, tmp_path, mode="record") as cache:
        assert cache.text_search("q", 5) == HITS[1:]
        assert cache.text_search("q", 5) == HITS[1:]
        assert len(backend.calls) == 3
    with SearchCache(None, tmp_path, mode="replay", name="memory", version="1") as cache:
        assert cache.text_search("q", 5) == HITS[1:]


def test_replay_never_asks_the_backend_and_raises_cache_miss(tmp_path: Path, memory: MemoryBackend) -> None:
    with SearchCache(memory, tmp_path) as cache:
        cache.text_search("capital of france", 5)
    memory.calls.clear()
    with SearchCache(memory, tmp_path, mode="replay") as cache:
        assert cache.text_search("CAPITAL of France", 5) == HITS
        with pytest.raises(CacheMiss) as info:
            cache.text_search("largest city of Peru", 5)
        with pytest.raises(CacheMiss):
            cache.image_search(ImageQuery(_image(3)), 5)
        assert memory.calls == []
        assert cache.stats().hits == 1 and cache.stats().misses == 2
    err = info.value
    assert isinstance(err, KeyError) and isinstance(err, MMSearchError)
    assert not isinstance(err, SearchError)  # the env must not swallow it as an observation
    message = str(err)
    assert "'largest city of Peru'" in message and err.key in message and "import" in message
    assert err.key == SearchCache(memory, tmp_path, mode="replay").key_for_text("largest city of Peru", 5)


def test_replay_fallback_answers_misses_without_storing(tmp_path: Path, memory: MemoryBackend) -> None:
    fallback = MemoryBackend(default_text_hits=HITS[1:], default_image_hits=HITS[:1])
    with SearchCache(None, tmp_path, mode="replay", name="memory", version="1", fallback=fallback) as cache:
        assert cache.text_search("anything", 5) == HITS[1:]
        assert cache.image_search(ImageQuery(_image(4)), 5) == HITS[:1]
        assert cache.stats().entries == 0 and cache.stats().misses == 2


def test_replay_without_backend_needs_identity(tmp_path: Path, memory: MemoryBackend) -> None:
    with pytest.raises(ConfigError, match="name= and version="):
        SearchCache(None, tmp_path, mode="replay")
    with pytest.raises(ConfigError, match="needs a backend"):
        SearchCache(None, tmp_path)
    with pytest.raises(ConfigError, match="unknown cache mode"):
        SearchCache(memory, tmp_path, mode="write")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="contradicts"):
        SearchCache(memory, tmp_path, name="other")


def test_backend_errors_propagate_and_are_never_cached(tmp_path: Path) -> None:
    class Flaky(CountingBackend):
        def __init__(self, errors: list[Exception]) -> None:
            super().__init__()
            self.errors = errors

        def text_search(self, query: str, k: int) -> list[Hit]:
            self.calls += 1
            if self.errors:
                raise self.errors.pop(0)
            return expected_text(query, k)

    backend = Flaky([SearchError("quota exceeded"), RuntimeError("socket closed")])
    with SearchCache(backend, tmp_path) as cache:
        with pytest.raises(SearchError, match="quota"):
            cache.text_search("q", 2)
        with pytest.raises(RuntimeError, match="socket"):
            cache.text_search("q", 2)
        assert cache.stats().entries == 0
        assert cache.text_search("q", 2) == expected_text("q", 2)
        assert cache.text_search("q", 2) == expected_text("q", 2)
        assert backend.calls == 3


def test_cache_params_must_be_json(tmp_path: Path) -> None:
    class Odd(CountingBackend):
        def cache_params(self) -> dict[str, Any]:
            return {"when": object()}

    with pytest.raises(ConfigError, match="JSON"):
        SearchCache(Odd(), tmp_path)


# -- no pickle, no secrets ---------------------------------------------------------------------


def test_store_holds_only_raw_keys_and_bytes(tmp_path: Path) -> None:
    with SearchCache(CountingBackend(), tmp_path) as cache:
        for i in range(4):
            cache.text_search(f"q{i}", 3)
            cache.image_search(ImageQuery(_image(i)), 2)
        with pytest.raises(TypeError):
            cache.store.cache.set("x", {"a": 1})
        with pytest.raises(TypeError):
            cache.store.cache.set(("tuple", "key"), b"x")
    con = sqlite3.connect(tmp_path / "cache.db")
    rows = con.execute("SELECT raw, mode FROM Cache").fetchall()
    con.close()
    assert rows and all(raw == 1 for raw, _ in rows)
    assert {mode for _, mode in rows} <= {diskcache.core.MODE_RAW, diskcache.core.MODE_BINARY}


class _Exploit:
    """Unpickling this creates a marker file: proof that a cache executed foreign code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.marker,))


def test_a_pickled_value_from_a_stranger_is_never_unpickled(tmp_path: Path, memory: MemoryBackend) -> None:
    marker = tmp_path / "pwned"
    with SearchCache(memory, tmp_path / "c") as cache:
        key = cache.key_for_text("capital of france", 5)
    evil = diskcache.Cache(str(tmp_path / "c"))  # the default Disk pickles
    evil.set(key, _Exploit(str(marker)))
    evil.close()
    assert not marker.exists()
    with SearchCache(memory, tmp_path / "c") as cache:
        with pytest.raises(DataError, match="refusing"):
            cache.text_search("capital of france", 5)
    assert not marker.exists()


def test_api_keys_never_reach_keys_files_or_cassettes(tmp_path: Path) -> None:
    secret = "sk-live-DO-NOT-LEAK-4f9a8b7c6d5e"

    class LiveLike(CountingBackend):
        name = "serpapi"
        version = "2024-06"

        def __init__(self) -> None:
            super().__init__()
            self.api_key = secret
            self.headers = {"Authorization": f"Bearer {secret}"}

        def cache_params(self) -> dict[str, Any]:
            return {"engine": "google_lens", "hl": "en"}

    with SearchCache(LiveLike(), tmp_path / "cache") as cache:
        for i in range(5):
            cache.text_search(f"who designed the flag {i}", 3)
            cache.image_search(ImageQuery(_image(i), box=(0, 0, 4, 4)), 2)
        keys = [cache.key_for_text("who designed the flag 0", 3)]
        assert cache.export_cassette(tmp_path / "out.jsonl") == 10
        assert all(key for key, _ in cache.entries())
    assert secret not in "".join(keys)
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] + [tmp_path / "out.jsonl"]
    assert len(files) >= 2
    for path in files:
        data = path.read_bytes()
        assert secret.encode() not in data, path
        assert b"DO-NOT-LEAK" not in data, path
    assert b"google_lens" in (tmp_path / "out.jsonl").read_bytes()  # params do travel


# -- stats, pickling the configuration ---------------------------------------------------------


def test_stats_and_lifetime_counters(tmp_path: Path, memory: MemoryBackend) -> None:
    with SearchCache(memory, tmp_path) as cache:
        cache.text_search("a", 5)
        cache.text_search("a", 5)
        cache.text_search("b", 5)
        stats = cache.stats()
        assert (stats.hits, stats.misses, stats.entries) == (1, 2, 2)
        assert stats.to_json() == {"hits": 1, "misses": 2, "entries": 2, "bytes": stats.bytes}
        assert len(cache) == 2
    with SearchCache(memory, tmp_path) as cache:
        cache.text_search("a", 5)
        assert cache.stats().hits == 1  # per instance
    summary = summarize_cache(tmp_path)
    assert (summary.entries, summary.hits, summary.misses) == (2, 2, 2)
    assert summary.backends == {"memory@1": 2} and summary.kinds == {"text": 2}


def test_summarize_refuses_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no search cache"):
        summarize_cache(tmp_path / "nope")


def test_pickling_a_cache_ships_configuration_and_reopens_the_directory(tmp_path: Path) -> None:
    with SearchCache(CountingBackend(), tmp_path, mode="readthrough") as cache:
        cache.text_search("shared", 2)
        clone = pickle.loads(pickle.dumps(cache))
    assert (clone.name, clone.mode, clone.directory) == ("counting", "readthrough", tmp_path)
    assert clone.text_search("shared", 2) == expected_text("shared", 2)
    assert clone.stats().hits == 1
    clone.close()


def test_jsondisk_is_the_disk(tmp_path: Path) -> None:
    with SearchCache(CountingBackend(), tmp_path) as cache:
        assert isinstance(cache.store.disk, JSONDisk)


# -- many processes ----------------------------------------------------------------------------


def _mixed_worker(directory: str, worker: int, ops: int, out: Any) -> None:
    """Readthrough searches over keys that overlap with other workers'; report acknowledged keys."""
    acked: list[tuple[str, str, Any, int]] = []
    bad = 0
    with SearchCache(CountingBackend(), directory) as cache:
        for i in range(ops):
            n = (worker * 5 + i) % 37
            if i % 4 == 3:
                query = ImageQuery(_image(n), box=None if n % 2 else (0, 0, 5, 5))
                hits = cache.image_search(query, 3)
                bad += hits != expected_image(query.digest, query.box, 3)
                acked.append(("image", cache.key_for_image(query, 3), [query.digest, query.box], 3))
            else:
                query_text = f"Shared Query {n}" if i % 2 else f"shared   query {n}"
                hits = cache.text_search(query_text, 4)
                bad += hits != expected_text(query_text, 4)
                acked.append(("text", cache.key_for_text(query_text, 4), query_text, 4))
    out.put((worker, bad, acked))


def test_eight_processes_share_one_directory(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_mixed_worker, args=(str(tmp_path), w, 40, queue)) for w in range(8)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sum(bad for _, bad, _ in results) == 0
    acked = {key: (kind, subject, k) for _, _, items in results for kind, key, subject, k in items}
    with SearchCache(None, tmp_path, mode="replay", name="counting", version="1") as cache:
        assert cache.stats().entries == len(acked) > 20
        for key, (kind, subject, k) in acked.items():
            entry = cache.get_entry(key)
            assert entry is not None and entry.key == key
            if kind == "text":
                assert entry.query == normalize_query(subject)
                assert list(entry.hits) == expected_text(subject, k)
                assert cache.text_search(subject, k) == expected_text(subject, k)
            else:
                digest, box = subject
                assert list(entry.hits) == expected_image(digest, box, k)
        assert cache.stats().misses == 0


def _writer_until_killed(directory: str, ack_path: str) -> None:
    """Write distinct entries forever, appending each acknowledged query to a file."""
    with SearchCache(CountingBackend(), directory, mode="record") as cache, open(ack_path, "a") as acks:
        i = 0
        while True:
            query = f"long series entry {i}"
            cache.text_search(query, 3)
            acks.write(query + "\n")
            acks.flush()
            i += 1


def test_sigkill_mid_write_loses_nothing_acknowledged(tmp_path: Path) -> None:
    directory, ack_path = tmp_path / "cache", tmp_path / "acks.txt"
    ack_path.touch()
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_writer_until_killed, args=(str(directory), str(ack_path)))
    proc.start()
    deadline = time.monotonic() + 60
    while ack_path.read_text().count("\n") < 150 and time.monotonic() < deadline and proc.is_alive():
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(timeout=30)
    assert proc.exitcode == -signal.SIGKILL
    acked = [line for line in ack_path.read_text().split("\n")[:-1]]  # complete lines only
    assert len(acked) >= 150

    con = sqlite3.connect(directory / "cache.db")
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    con.close()
    with SearchCache(CountingBackend(), directory, mode="readthrough") as cache:
        for query in acked:
            entry = cache.get_entry(cache.key_for_text(query, 3))
            assert entry is not None, query
            assert list(entry.hits) == expected_text(query, 3)
        assert cache.stats().entries >= len(acked)
        assert cache.text_search("after the crash", 3) == expected_text("after the crash", 3)
        assert cache.text_search("after the crash", 3) == expected_text("after the crash", 3)
        assert cache.stats().hits == 1


def test_malformed_backend_hits_are_refused_before_storing(tmp_path: Path) -> None:
    for bad in ([Hit("t", "u", None, 1.0)], [Hit("t", "u", "s", "high")], [("t", "u")],  # type: ignore[arg-type]
                [Hit("t", "u", "s", 1.0, thumbnail="not bytes")]):  # type: ignore[arg-type]
        with SearchCache(MemoryBackend(default_text_hits=bad), tmp_path) as cache:
            with pytest.raises(TypeError, match="backend memory returned"):
                cache.text_search("q", 3)
            assert cache.stats().entries == 0


def test_foreign_rows_in_the_directory_are_data_errors(tmp_path: Path, memory: MemoryBackend) -> None:
    with SearchCache(memory, tmp_path) as cache:
        cache.text_search("capital of france", 5)
        cache.store.cache.set("0" * 64, b"not an entry")
        with pytest.raises(DataError, match="not an mmsearch_gym entry"):
            list(cache.entries())
        cache.store.cache.set("0" * 64, 7)
        with pytest.raises(DataError, match="not an mmsearch_gym entry"):
            list(cache.entries())


@pytest.mark.parametrize("fast", [True, False])
def test_decoded_hits_are_ordinary_hits_on_both_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      fast: bool) -> None:
    import mmsearch_gym.search.entry as cache_module

    monkeypatch.setattr(cache_module, "_FAST_HIT", fast and cache_module._FAST_HIT)
    with SearchCache(CountingBackend(), tmp_path) as cache:
        cache.text_search("round trip", 3)
        again = cache.text_search("round trip", 3)
    original = expected_text("round trip", 3)
    assert again == original and [hash(h) for h in again] == [hash(h) for h in original]
    assert [repr(h) for h in again] == [repr(h) for h in original]
    with pytest.raises(AttributeError):
        again[0].title = "mutated"  # type: ignore[misc]
