"""Verify and repair a cache store: damaged entries, orphaned value files, damaged counters.

A value that fails its checksum is already served as a miss, so nothing wrong ever reaches a
run; these tools report and clean up. Orphaned value files are what a writer killed between
writing a large value's file and committing its row leaves behind (diskcache writes the file
first). Run ``repair`` while no process writes to the directory: a file being written right
now is, for a moment, indistinguishable from an orphan.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from mmsearch_gym.search.entry import check_value
from mmsearch_gym.search.store import Store, connect_readonly, is_url, open_store

__all__ = ["RepairResult", "StoreReport", "repair_store", "verify_store"]


@dataclass(frozen=True)
class StoreReport:
    """What ``mmsearch-gym cache verify --dir DIR`` prints."""

    location: str
    entries: int
    """Intact entries."""
    damaged: tuple[str, ...]
    """Keys whose value is damaged (checksum, lengths, foreign bytes) or whose file is gone."""
    orphans: tuple[str, ...]
    """Value files no row refers to (relative paths)."""
    orphan_bytes: int
    problems: tuple[str, ...]
    """Damaged counters, SQLite integrity messages."""

    @property
    def ok(self) -> bool:
        return not (self.damaged or self.orphans or self.problems)

    def to_json(self) -> dict[str, object]:
        return {"location": self.location, "ok": self.ok, "entries": self.entries, "damaged": len(self.damaged),
                "damaged_keys": list(self.damaged), "orphan_files": len(self.orphans),
                "orphan_bytes": self.orphan_bytes, "problems": list(self.problems)}


@dataclass(frozen=True)
class RepairResult:
    """What ``mmsearch-gym cache repair DIR`` did."""

    location: str
    dropped_entries: int
    removed_files: int
    removed_bytes: int
    counters_reset: bool
    kept_entries: int

    def to_json(self) -> dict[str, object]:
        return dict(vars(self))


def _value_files(directory: Path) -> dict[str, int]:
    """Every diskcache value file (``xx/yy/<hex>.val``) under a directory, with its size."""
    files: dict[str, int] = {}
    for path in directory.glob("*/*/*.val"):
        with contextlib.suppress(OSError):
            files[path.relative_to(directory).as_posix()] = path.stat().st_size
    return files


def _referenced_files(directory: Path) -> tuple[set[str], list[str]]:
    """Value files the database refers to, and SQLite's integrity messages (read-only)."""
    con = connect_readonly(directory / "cache.db")
    try:
        check = [row[0] for row in con.execute("PRAGMA quick_check").fetchall()]
        names = {Path(name).as_posix() for (name,) in
                 con.execute("SELECT filename FROM Cache WHERE filename IS NOT NULL").fetchall()}
    finally:
        con.close()
    problems = [] if check == ["ok"] else [f"SQLite quick_check: {message}" for message in check]
    return names, problems


def _scan(store: Store) -> tuple[int, list[str]]:
    intact, damaged = 0, []
    for key in store.keys():
        try:
            data = store.get(key)
        except ValueError:  # DataError: a pickled or text row
            damaged.append(key)
            continue
        if data is None:
            if not is_url(store.location):
                damaged.append(key)  # a row whose value file is gone (Redis: deleted meanwhile)
            continue
        if check_value(data) is None:
            intact += 1
        else:
            damaged.append(key)
    return intact, damaged


def _verify(store: Store) -> StoreReport:
    intact, damaged = _scan(store)
    _, _, problems = store.counts()
    orphans: dict[str, int] = {}
    directory = getattr(store, "directory", None)
    if directory is not None:
        referenced, sqlite_problems = _referenced_files(directory)
        problems = [*sqlite_problems, *problems]
        orphans = {name: size for name, size in _value_files(directory).items() if name not in referenced}
    return StoreReport(location=store.location, entries=intact, damaged=tuple(damaged),
                       orphans=tuple(sorted(orphans)), orphan_bytes=sum(orphans.values()), problems=tuple(problems))


def verify_store(location: str | Path) -> StoreReport:
    """Check every entry's checksum, the counters and (directories) SQLite and value files."""
    store = open_store(location, create=False, readonly="auto")
    try:
        return _verify(store)
    finally:
        store.close()


def repair_store(location: str | Path) -> RepairResult:
    """Drop damaged entries and orphaned value files, and reset damaged counters."""
    store = open_store(location, create=False)
    try:
        report = _verify(store)
        for key in report.damaged:
            store.delete(key)
        removed, removed_bytes = 0, 0
        directory = getattr(store, "directory", None)
        for name in report.orphans if directory is not None else ():
            path = Path(str(directory)) / name
            with contextlib.suppress(OSError):
                size = path.stat().st_size
                path.unlink()
                removed, removed_bytes = removed + 1, removed_bytes + size
                with contextlib.suppress(OSError):
                    os.removedirs(path.parent)
        _, _, counter_problems = store.counts()
        if counter_problems:
            store.reset_counts()
        return RepairResult(location=store.location, dropped_entries=len(report.damaged), removed_files=removed,
                            removed_bytes=removed_bytes, counters_reset=bool(counter_problems),
                            kept_entries=report.entries)
    finally:
        store.close()
