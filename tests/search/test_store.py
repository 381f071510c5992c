"""Stores on hostile media: read-only mounts and full disks (a real tmpfs when root can mount one)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from diskcache.core import Disk

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.search.base import SearchError
from mmsearch_gym.search.cache import CacheMiss, SearchCache, summarize_cache
from mmsearch_gym.search.store import DiskStore, ReadOnlyDiskStore, Store, open_store
from mmsearch_gym.search.store_check import verify_store
from tests.search.test_cache import CountingBackend, expected_text


def _mount(target: Path, options: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    target.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                            capture_output=True, timeout=30, check=False)
    return result.returncode == 0


def _umount(target: Path) -> None:
    subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=30, check=False)


@pytest.fixture
def readonly_cache(tmp_path: Path) -> Iterator[Path]:
    """A recorded cache on a read-only tmpfs (root), or in a directory without write permission."""
    mount = tmp_path / "mnt"
    if _mount(mount, "size=8m"):
        try:
            _record(mount / "cache")
            subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True, capture_output=True, timeout=30)
            yield mount / "cache"
        finally:
            _umount(mount)
        return
    if os.geteuid() == 0:
        pytest.skip("running as root without permission to mount a tmpfs: cannot make read-only media")
    directory = tmp_path / "cache"
    _record(directory)
    for path in [directory, *directory.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        yield directory
    finally:
        for path in [directory, *directory.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)


BIG = [q for q in (f"big thumbnail query {i}" for i in range(200)) if expected_text(q, 3)[0].thumbnail is not None]
SMALL = next(q for q in (f"small query {i}" for i in range(200)) if expected_text(q, 3)[0].thumbnail is None)
QUERIES = (BIG[0], BIG[1], SMALL)


def _record(directory: Path) -> None:
    with SearchCache(CountingBackend(), directory) as cache:
        for query in QUERIES:
            cache.text_search(query, 3)
        cache.text_search(QUERIES[0], 3)


def test_stores_follow_the_protocol(tmp_path: Path) -> None:
    _record(tmp_path)
    for store in (DiskStore(tmp_path), ReadOnlyDiskStore(tmp_path)):
        assert isinstance(store, Store)
        assert store.keys() == sorted(store.keys()) and store.count() == 3 and store.volume() > 0
        store.close()


def test_replay_and_inspection_work_on_read_only_media(readonly_cache: Path) -> None:
    with pytest.raises(ConfigError, match="read-only media"):
        SearchCache(CountingBackend(), readonly_cache)
    with SearchCache(None, readonly_cache, mode="replay", name="counting", version="1") as cache:
        assert cache.store.readonly
        for query in QUERIES:
            assert cache.text_search(query, 3) == expected_text(query, 3)
        with pytest.raises(CacheMiss):
            cache.text_search("never recorded", 3)
        assert cache.stats().entries == 3
    summary = summarize_cache(readonly_cache)
    assert (summary.entries, summary.hits, summary.misses) == (3, 1, 3)
    assert verify_store(readonly_cache).ok
    with pytest.raises(SearchError, match="read-only"):
        open_store(readonly_cache, readonly=True).put("k", b"v")


def _disk_is_full_after(limit: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make value-file writes fail with ENOSPC after ``limit`` bytes (a real partial write)."""
    original = Disk._write

    def write(self: Disk, full_path: str, iterator: object, mode: str, encoding: str | None = None) -> int:
        def chunks() -> Iterator[bytes]:
            written = 0
            for chunk in iterator:  # type: ignore[attr-defined]
                if written + len(chunk) > limit:
                    yield chunk[: limit - written]
                    raise OSError(errno.ENOSPC, "No space left on device")
                written += len(chunk)
                yield chunk
        return original(self, full_path, chunks(), mode, encoding)

    monkeypatch.setattr(Disk, "_write", write)


def test_disk_full_is_a_search_error_and_leaves_nothing_half_written(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with SearchCache(CountingBackend(), tmp_path) as cache:
        cache.text_search(SMALL, 3)
        _disk_is_full_after(1000, monkeypatch)
        with pytest.raises(SearchError, match="could not store an entry .*No space left"):
            cache.text_search(BIG[0], 3)
        assert cache.stats().entries == 1
    assert not list(tmp_path.glob("*/*/*.val"))
    assert verify_store(tmp_path).ok


def test_a_real_full_tmpfs(tmp_path: Path) -> None:
    mount = tmp_path / "tiny"
    if not _mount(mount, "size=512k"):
        pytest.skip("needs root and permission to mount a tmpfs")
    try:
        errors = 0
        with SearchCache(CountingBackend(), mount / "cache") as cache:
            for query in BIG[:40]:
                try:
                    cache.text_search(query, 3)
                except SearchError as err:
                    assert "could not store an entry" in str(err)
                    errors += 1
            assert errors > 0
        report = verify_store(mount / "cache")
        assert not report.damaged and not report.orphans
        with SearchCache(None, mount / "cache", mode="replay", name="counting", version="1") as replay:
            for key, entry in replay.entries():
                assert list(entry.hits) == expected_text(entry.query or "", 3), key
    finally:
        _umount(mount)


def test_no_import_cycle_and_no_redis_in_the_core() -> None:
    import subprocess
    import sys

    code = ("import sys, mmsearch_gym.search.cassette, mmsearch_gym.search.store, mmsearch_gym.search.redis_store\n"
            "assert 'mmsearch_gym.search.cache' not in sys.modules, 'cassette imports cache'\n"
            "import mmsearch_gym.search.cache, mmsearch_gym.search.store_check\n"
            "assert 'redis' not in sys.modules, 'the core imported redis'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert result.returncode == 0, result.stderr
