"""The damaged-cache matrix: every kind of damage is a miss or a one-line error, never wrong data.

Also ``verify_store`` / ``repair_store`` and many writers SIGKILLed mid-write.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from mmsearch_gym.errors import DataError
from mmsearch_gym.search.cache import CacheMiss, SearchCache, summarize_cache
from mmsearch_gym.search.entry import CacheEntry, DamagedValue, check_value
from mmsearch_gym.search.store import HITS_KEY
from mmsearch_gym.search.store_check import repair_store, verify_store
from tests.search.test_cache import CountingBackend, expected_text
from tests.search.writers import kill_writers_when


def _big_query() -> str:
    for i in range(50):
        query = f"big thumbnail query {i}"
        if expected_text(query, 3)[0].thumbnail is not None:
            return query
    raise AssertionError("no query with a thumbnail")


def _small_query() -> str:
    for i in range(50):
        query = f"small query {i}"
        if expected_text(query, 3)[0].thumbnail is None:
            return query
    raise AssertionError("no query without a thumbnail")


def _record(directory: Path, *queries: str) -> None:
    with SearchCache(CountingBackend(), directory) as cache:
        for query in queries:
            cache.text_search(query, 3)


def _value_file(directory: Path) -> Path:
    (path,) = directory.glob("*/*/*.val")
    return path


def _flip_small_value(directory: Path, key: str) -> None:
    con = sqlite3.connect(directory / "cache.db")
    (value,) = con.execute("SELECT value FROM Cache WHERE key = ?", (key,)).fetchone()
    damaged = bytearray(value)
    damaged[-3] ^= 0x20
    con.execute("UPDATE Cache SET value = ? WHERE key = ?", (bytes(damaged), key))
    con.commit()
    con.close()


@pytest.mark.parametrize("damage", ["cut value file in half", "flipped byte in sqlite", "value file deleted"])
def test_damaged_value_is_a_miss_never_wrong_data(tmp_path: Path, damage: str) -> None:
    big, small = _big_query(), _small_query()
    _record(tmp_path, big, small)
    backend = CountingBackend()
    with SearchCache(backend, tmp_path) as cache:
        key = cache.key_for_text(big if damage != "flipped byte in sqlite" else small, 3)
        query = big if damage != "flipped byte in sqlite" else small
    if damage == "cut value file in half":
        path = _value_file(tmp_path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "value file deleted":
        _value_file(tmp_path).unlink()
    else:
        _flip_small_value(tmp_path, key)

    with SearchCache(None, tmp_path, mode="replay", name="counting", version="1") as replay:
        if damage == "value file deleted":
            with pytest.raises(CacheMiss, match="no cached result"):
                replay.text_search(query, 3)
        else:
            with pytest.raises(CacheMiss, match="damaged .*checksum mismatch"):
                replay.text_search(query, 3)
    report = verify_store(tmp_path)
    assert not report.ok and report.damaged == (key,) and report.entries == 1

    with SearchCache(backend, tmp_path) as cache:  # readthrough fetches again and heals the entry
        assert cache.text_search(query, 3) == expected_text(query, 3)
        assert backend.calls == 1
        assert cache.text_search(query, 3) == expected_text(query, 3)
        assert backend.calls == 1
    assert verify_store(tmp_path).ok


def test_truncated_values_of_every_length_are_refused() -> None:
    hits = tuple(expected_text(_big_query(), 3))
    data = CacheEntry(kind="text", k=3, backend="b", backend_version="1", hits=hits, query="q").encode()
    assert check_value(data) is None
    for cut in (1, 5, 36, 40, len(data) // 2, len(data) - 1):
        assert check_value(data[:cut]) is not None, cut
    legacy = b"MSGC1" + data[37:]  # the pre-checksum format is still length-checked in full
    assert CacheEntry.decode(legacy).hits == hits
    with pytest.raises(DamagedValue, match="value holds"):
        CacheEntry.decode(legacy[:-100])


def test_damaged_counter_row_reads_as_zero_and_repair_resets_it(tmp_path: Path) -> None:
    _record(tmp_path, "a", "b", "a")
    con = sqlite3.connect(tmp_path / "cache.db")
    con.execute("UPDATE Cache SET value = ?, mode = 1 WHERE key = ?", (b"garbage", HITS_KEY))
    con.commit()
    con.close()
    summary = summarize_cache(tmp_path)  # used to raise ValueError
    assert (summary.entries, summary.hits, summary.misses) == (2, 0, 2)
    assert len(summary.problems) == 1 and "hits counter is damaged" in summary.problems[0]
    assert not verify_store(tmp_path).ok
    result = repair_store(tmp_path)
    assert result.counters_reset and result.dropped_entries == 0 and result.kept_entries == 2
    assert verify_store(tmp_path).ok
    with SearchCache(CountingBackend(), tmp_path) as cache:
        cache.text_search("a", 3)
    summary = summarize_cache(tmp_path)
    assert (summary.hits, summary.misses, summary.problems) == (1, 2, ())


def test_a_damaged_counter_is_overwritten_by_the_next_flush(tmp_path: Path) -> None:
    _record(tmp_path, "a", "a")
    con = sqlite3.connect(tmp_path / "cache.db")
    con.execute("UPDATE Cache SET value = ?, mode = 1 WHERE key = ?", (b"garbage", HITS_KEY))
    con.commit()
    con.close()
    with SearchCache(CountingBackend(), tmp_path) as cache:
        cache.text_search("a", 3)
        cache.text_search("a", 3)
    assert summarize_cache(tmp_path).hits == 2


def test_damaged_database_is_a_one_line_error_naming_the_file(tmp_path: Path) -> None:
    _record(tmp_path, "a")
    db = tmp_path / "cache.db"
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    db.write_bytes(b"this is not sqlite" * 100)
    for attempt in (lambda: SearchCache(CountingBackend(), tmp_path),
                    lambda: SearchCache(None, tmp_path, mode="replay", name="counting", version="1"),
                    lambda: summarize_cache(tmp_path), lambda: verify_store(tmp_path)):
        with pytest.raises(DataError) as info:
            attempt()
        message = str(info.value)
        assert str(db) in message and "\n" not in message and "cache import" in message


def test_repair_drops_orphaned_value_files(tmp_path: Path) -> None:
    big = _big_query()
    _record(tmp_path, big, "small one")
    orphan = tmp_path / "ab" / "cd" / "0123456789abcdef0123456789ab.val"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"x" * 5000)
    report = verify_store(tmp_path)
    assert report.orphans == ("ab/cd/0123456789abcdef0123456789ab.val",) and report.orphan_bytes == 5000
    assert not report.damaged and report.entries == 2
    result = repair_store(tmp_path)
    assert (result.removed_files, result.removed_bytes, result.dropped_entries) == (1, 5000, 0)
    assert not orphan.exists() and not orphan.parent.exists()
    assert verify_store(tmp_path).ok
    with SearchCache(None, tmp_path, mode="replay", name="counting", version="1") as cache:
        assert cache.text_search(big, 3) == expected_text(big, 3)


def _big_writer(directory: str, worker: int, ack_path: str) -> None:
    """Record entries with 40 kB thumbnails forever, logging each acknowledged query."""
    with SearchCache(CountingBackend(), directory, mode="record") as cache, open(ack_path, "a") as acks:
        i = 0
        while True:
            query = f"big thumbnail query {i}" if i % 2 else f"w{worker} entry {i}"
            cache.text_search(query, 3)
            acks.write(query + "\n")
            acks.flush()
            i += 1


def test_eight_writers_sigkilled_lose_nothing_and_repair_cleans_up(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    ctx = multiprocessing.get_context("spawn")
    acks = [tmp_path / f"acks{w}.txt" for w in range(8)]
    procs = [ctx.Process(target=_big_writer, args=(str(directory), w, str(acks[w]))) for w in range(8)]
    acked = kill_writers_when(procs, acks, lambda counts: min(counts) >= 10, timeout=90)
    assert len(acked) >= 20

    repair_store(directory)
    report = verify_store(directory)
    assert report.ok, report
    with SearchCache(None, directory, mode="replay", name="counting", version="1") as cache:
        for query in acked:
            assert cache.text_search(query, 3) == expected_text(query, 3), query
