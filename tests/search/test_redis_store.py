"""The Redis store against a real redis-server (tests/search/conftest.py): same API as a directory."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from mmsearch_gym.cli import main
from mmsearch_gym.errors import ConfigError, DataError
from mmsearch_gym.search.base import Hit, ImageQuery, SearchError
from mmsearch_gym.search.cache import CacheMiss, SearchCache, summarize_cache
from mmsearch_gym.search.cassette import export_cassette
from mmsearch_gym.search.redis_store import ROOT, RedisStore, namespace_for
from mmsearch_gym.search.store import Store
from mmsearch_gym.search.store_check import repair_store, verify_store
from tests.search.conftest import RedisServer
from tests.search.test_cache import (
    CountingBackend,
    _mixed_worker,
    _writer_until_killed,
    expected_image,
    expected_text,
)
from tests.search.writers import kill_writers_when


def _image(i: int) -> ImageQuery:
    return ImageQuery(Image.new("RGB", (8, 8), (i * 40 % 256, 10, 200)), box=None if i % 2 else (0, 0, 4, 4))


def _fill(cache: SearchCache) -> None:
    for i in range(12):
        cache.text_search(f"Query  number {i}", 3)
        if i % 3 == 0:
            cache.image_search(_image(i), 2)


def test_modes_keys_and_stats_match_a_directory(redis_server: RedisServer, tmp_path: Path) -> None:
    backend = CountingBackend()
    with SearchCache(backend, store=redis_server.url) as cache:
        assert isinstance(cache.store, Store) and cache.location == redis_server.url
        _fill(cache)
        calls = backend.calls
        _fill(cache)
        assert backend.calls == calls == 16
        assert cache.stats().entries == 16 and cache.stats().hits == 16
        with SearchCache(CountingBackend(), tmp_path) as disk:
            assert disk.key_for_text("q", 3) == cache.key_for_text("q", 3)
    with SearchCache(None, store=redis_server.url, mode="replay", name="counting", version="1") as replay:
        assert replay.text_search("query number 3", 3) == expected_text("query number 3", 3)
        with pytest.raises(CacheMiss, match="no cached result"):
            replay.text_search("never asked", 3)
    summary = summarize_cache(redis_server.url)
    assert (summary.entries, summary.hits, summary.misses) == (16, 17, 17)
    assert summary.backends == {"counting@1": 16} and summary.kinds == {"image": 4, "text": 12}
    record = CountingBackend()
    with SearchCache(record, store=redis_server.url, mode="record") as cache:
        cache.text_search("query number 3", 3)
        assert record.calls == 1


def test_namespaces_are_per_backend_and_version(redis_server: RedisServer) -> None:
    other = CountingBackend()
    other.version = "2"  # type: ignore[misc]
    with SearchCache(CountingBackend(), store=redis_server.url) as v1, SearchCache(other, store=redis_server.url) as v2:
        v1.text_search("shared", 2)
        v2.text_search("shared", 2)
        v2.text_search("only two", 2)
        assert (v1.stats().entries, v2.stats().entries) == (1, 2)
    keys = sorted(k.decode() for k in RedisStore(redis_server.url).client.keys("*"))
    assert next(k for k in keys if ":e:" in k).startswith(f"{ROOT}{namespace_for('counting', '1')}:e:")
    assert sum(k.startswith(f"{ROOT}counting@2:e:") for k in keys) == 2
    assert summarize_cache(redis_server.url).backends == {"counting@1": 1, "counting@2": 2}


def test_put_if_absent_two_workers_missing_one_key_serve_one_value(redis_server: RedisServer) -> None:
    """B misses, then A stores the key before B does: B serves A's stored answer, not its own."""
    first = [Hit("stored first", "https://a.example", "A", 1.0, "a")]

    class Racing(CountingBackend):
        def text_search(self, query: str, k: int) -> list[Hit]:
            with SearchCache(Winner(), store=redis_server.url) as other:
                assert other.text_search(query, k) == first
            return [Hit("stored second", "https://b.example", "B", 1.0, "b")]

    class Winner(CountingBackend):
        def text_search(self, query: str, k: int) -> list[Hit]:
            return first

    with SearchCache(Racing(), store=redis_server.url) as cache:
        assert cache.text_search("raced", 1) == first
        assert cache.text_search("raced", 1) == first
        assert cache.stats().entries == 1


def test_cassettes_from_redis_and_from_a_directory_are_byte_identical(redis_server: RedisServer,
                                                                      tmp_path: Path) -> None:
    with SearchCache(CountingBackend(), store=redis_server.url) as cache:
        _fill(cache)
    with SearchCache(CountingBackend(), tmp_path / "disk") as cache:
        for i in reversed(range(12)):  # another order: the cassette must not care
            if i % 3 == 0:
                cache.image_search(_image(i), 2)
            cache.text_search(f"query number {i}", 3)
    assert export_cassette(redis_server.url, tmp_path / "redis.jsonl") == 16
    assert export_cassette(tmp_path / "disk", tmp_path / "disk.jsonl") == 16
    assert (tmp_path / "redis.jsonl").read_bytes() == (tmp_path / "disk.jsonl").read_bytes()


def test_cli_export_import_stats_verify_repair_on_redis(redis_server: RedisServer, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    with SearchCache(CountingBackend(), tmp_path / "disk") as cache:
        _fill(cache)
    assert main(["cache", "export", str(tmp_path / "disk"), "-o", str(tmp_path / "c.jsonl")]) == 0
    url = redis_server.url
    assert main(["cache", "import", str(tmp_path / "c.jsonl"), "--cache-store", url]) == 0
    assert main(["cache", "export", "--cache-store", url, "-o", str(tmp_path / "back.jsonl")]) == 0
    assert (tmp_path / "back.jsonl").read_bytes() == (tmp_path / "c.jsonl").read_bytes()
    capsys.readouterr()
    assert main(["cache", "stats", "--cache-store", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == 16
    assert main(["cache", "verify", "--cache-store", url]) == 0
    assert "ok: " in capsys.readouterr().out
    store = RedisStore(url)
    (victim,) = [k for k in store.client.keys(f"{ROOT}*:e:*")][:1]
    value = store.client.get(victim)
    store.client.set(victim, value[: len(value) // 2])
    store.client.set(f"{ROOT}counting@1:c:hits", b"not a number")
    with SearchCache(None, store=url, mode="replay", name="counting", version="1") as replay:
        with pytest.raises(DataError, match="damaged"):
            replay.get_entry(victim.decode().rsplit(":", 1)[1])
    assert main(["cache", "verify", "--cache-store", url, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["damaged"], report["entries"], len(report["problems"])) == (1, 15, 1)
    assert main(["cache", "repair", "--cache-store", url]) == 0
    assert "dropped 1 damaged entries" in capsys.readouterr().out
    assert verify_store(url).ok and summarize_cache(url).entries == 15


def test_a_damaged_redis_value_is_a_miss(redis_server: RedisServer) -> None:
    backend = CountingBackend()
    with SearchCache(backend, store=redis_server.url) as cache:
        cache.text_search("fragile", 3)
        full = f"{ROOT}counting@1:e:{cache.key_for_text('fragile', 3)}"
        client = cache.store.client  # type: ignore[attr-defined]
        client.set(full, client.get(full)[:-1] + b"!")
    with SearchCache(None, store=redis_server.url, mode="replay", name="counting", version="1") as replay:
        with pytest.raises(CacheMiss, match="damaged"):
            replay.text_search("fragile", 3)
    with SearchCache(backend, store=redis_server.url) as cache:
        assert cache.text_search("fragile", 3) == expected_text("fragile", 3) and backend.calls == 2
    assert repair_store(redis_server.url).dropped_entries == 0


def test_local_tier_answers_hot_keys_without_the_server(redis_server: RedisServer) -> None:
    with SearchCache(CountingBackend(), store=redis_server.url, local_cache=4) as cache:
        cache.text_search("hot", 3)
        cache.text_search("hot", 3)
        redis_server.stop()
        assert cache.text_search("hot", 3) == expected_text("hot", 3)  # from the local LRU
        with pytest.raises(SearchError, match="could not use the Redis store"):
            cache.text_search("cold", 3)
        redis_server.start()
        assert cache.text_search("cold", 3) == expected_text("cold", 3)


def test_unreachable_or_bad_urls_are_clear_errors(tmp_path: Path) -> None:
    pytest.importorskip("redis")
    from tests.search.conftest import _free_port

    with pytest.raises(SearchError, match="could not connect to the Redis store redis://127.0.0.1"):
        SearchCache(CountingBackend(), store=f"redis://127.0.0.1:{_free_port()}/0")
    with pytest.raises(ConfigError, match="not a redis:// URL"):
        SearchCache(CountingBackend(), store=str(tmp_path))
    with pytest.raises(SearchError) as info:
        SearchCache(CountingBackend(), store=f"redis://user:hunter2@127.0.0.1:{_free_port()}/0")
    assert "hunter2" not in str(info.value) and "***" in str(info.value)


def test_wrap_cache_spec_chooses_the_redis_store(redis_server: RedisServer) -> None:
    from mmsearch_gym.registration import wrap_cache

    cache = wrap_cache(CountingBackend(), {"store": redis_server.url, "mode": "readthrough"})
    assert isinstance(cache, SearchCache) and cache.location == redis_server.url
    cache.text_search("via spec", 2)
    cache.close()
    assert summarize_cache(redis_server.url).entries == 1


# -- many processes, kills, restarts, dropped connections --------------------------------------


def test_eight_processes_share_one_redis(redis_server: RedisServer) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_mixed_worker, args=(redis_server.url, w, 40, queue)) for w in range(8)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sum(bad for _, bad, _ in results) == 0
    acked = {key: (kind, subject, k) for _, _, items in results for kind, key, subject, k in items}
    with SearchCache(None, store=redis_server.url, mode="replay", name="counting", version="1") as cache:
        assert cache.stats().entries == len(acked) > 20
        for key, (kind, subject, k) in acked.items():
            entry = cache.get_entry(key)
            assert entry is not None and entry.key == key
            expected = (expected_text(subject, k) if kind == "text" else expected_image(*subject, k))
            assert list(entry.hits) == expected
    assert summarize_cache(redis_server.url).misses + summarize_cache(redis_server.url).hits == 8 * 40


def test_writers_sigkilled_mid_write_lose_nothing_acknowledged(redis_server: RedisServer, tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    acks = [tmp_path / f"acks{w}.txt" for w in range(4)]
    procs = [ctx.Process(target=_writer_until_killed, args=(redis_server.url, str(path))) for path in acks]
    acked = kill_writers_when(procs, acks, lambda counts: sum(counts) >= 200, timeout=60)
    assert len(acked) >= 50
    with SearchCache(None, store=redis_server.url, mode="replay", name="counting", version="1") as cache:
        for query in acked:
            assert cache.text_search(query, 3) == expected_text(query, 3), query
    assert verify_store(redis_server.url).ok


def _patient_writer(url: str, worker: int, n: int, ack_path: str, out: Any) -> None:
    """Write n entries through outages: a SearchError is retried (bounded), each success logged."""
    errors = 0
    for _ in range(2000):  # a writer that starts late may meet the outage when it connects
        try:
            cache = SearchCache(CountingBackend(), store=url)
            break
        except SearchError:
            errors += 1
            time.sleep(0.01)
    else:
        raise RuntimeError("the server never came up")
    with cache, open(ack_path, "a") as acks:
        for i in range(n):
            query = f"restart w{worker} {i}" if i % 3 else f"restart shared {i}"
            for _ in range(2000):
                try:
                    hits = cache.text_search(query, 3)
                    break
                except SearchError:
                    errors += 1
                    time.sleep(0.01)
            else:
                raise RuntimeError("the server never came back")
            assert hits == expected_text(query, 3)
            acks.write(query + "\n")
            acks.flush()
    out.put((worker, errors))


def test_server_restarted_mid_run_loses_no_acknowledged_entry(redis_server: RedisServer, tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    acks = [tmp_path / f"acks{w}.txt" for w in range(4)]
    procs = [ctx.Process(target=_patient_writer, args=(redis_server.url, w, 300, str(acks[w]), queue))
             for w in range(4)]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + 60
    while (sum(p.read_text().count("\n") for p in acks if p.exists()) < 100 and time.monotonic() < deadline):
        time.sleep(0.02)
    redis_server.restart(kill=True)  # SIGKILL: only the AOF (fsync always) keeps what was acknowledged
    results = [queue.get(timeout=180) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    assert sum(errors for _, errors in results) > 0  # the outage was seen, as SearchErrors
    acked = {line for path in acks for line in path.read_text().split("\n")[:-1]}
    assert len(acked) == 4 * 200 + 100
    with SearchCache(None, store=redis_server.url, mode="replay", name="counting", version="1") as cache:
        assert cache.stats().entries == len(acked)
        for query in acked:
            assert cache.text_search(query, 3) == expected_text(query, 3), query


def test_connection_dropped_mid_episode_is_an_observation(redis_server: RedisServer, tiny_tasks: Any) -> None:
    from mmsearch_gym.actions import TextSearch
    from mmsearch_gym.env import MMSearchEnv

    cache = SearchCache(CountingBackend(), store=redis_server.url)
    env = MMSearchEnv(tiny_tasks, cache, max_turns=6, text_search_budget=5)
    fmt = env.dialect.format
    env.reset(seed=0)
    obs, *_ = env.step(fmt(TextSearch("before the drop")))
    assert "before the drop" in obs["text"]
    redis_server.stop()
    obs, _, terminated, truncated, info = env.step(fmt(TextSearch("during the drop")))
    assert "search failed" in obs["text"] and "Redis store" in info["search_error"]
    assert not (terminated or truncated)
    redis_server.start()
    obs, *_ = env.step(fmt(TextSearch("after the drop")))
    assert "after the drop" in obs["text"]
    from mmsearch_gym.trajectories import describe_env

    assert redis_server.url in json.dumps(describe_env(env))
    env.close()
    cache.close()
    with SearchCache(None, store=redis_server.url, mode="replay", name="counting", version="1") as replay:
        assert replay.text_search("before the drop", 5) == expected_text("before the drop", 5)
        assert replay.text_search("after the drop", 5) == expected_text("after the drop", 5)
