"""``mmsearch-gym cache stats|export|import|verify``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmsearch_gym.cli import main
from mmsearch_gym.search.base import Hit, ImageQuery, MemoryBackend
from mmsearch_gym.search.cache import SearchCache

HITS = [Hit("Paris", "https://w.org/Paris", "Paris is the capital of France.", 2.0, "mem"),
        Hit("Lyon", "https://w.org/Lyon", "Lyon is a city in France.", 1.0, "mem", b"\x89PNG thumb")]


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    from PIL import Image

    directory = tmp_path / "cache"
    with SearchCache(MemoryBackend(default_text_hits=HITS, default_image_hits=HITS[1:]), directory) as cache:
        cache.text_search("capital of france", 5)
        cache.text_search("capital of france", 5)
        cache.text_search("cities of france", 5)
        cache.image_search(ImageQuery(Image.new("RGB", (4, 4), "red")), 3)
    return directory


def test_stats_text_and_json(cache_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "stats", str(cache_dir)]) == 0
    out = capsys.readouterr().out
    assert "entries   3 (1 image, 2 text)" in out and "backend   memory@1: 3 entries" in out
    assert "hits      1" in out
    assert main(["cache", "stats", str(cache_dir), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["entries"] == 3 and data["hits"] == 1 and data["misses"] == 3 and data["bytes"] > 0
    assert data["backends"] == {"memory@1": 3} and data["kinds"] == {"image": 1, "text": 2}


def test_export_import_verify_round_trip(cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "c.jsonl"
    assert main(["cache", "export", str(cache_dir), "-o", str(out_file)]) == 0
    assert "exported 3 entries" in capsys.readouterr().out
    assert main(["cache", "verify", str(out_file)]) == 0
    assert "ok:" in capsys.readouterr().out
    assert main(["cache", "verify", str(out_file), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["entries"], info["text_entries"], info["image_entries"], info["blobs"]) == (3, 2, 1, 1)
    assert main(["cache", "import", str(out_file), "--dir", str(tmp_path / "new")]) == 0
    assert "imported 3 entries" in capsys.readouterr().out
    with SearchCache(None, tmp_path / "new", mode="replay", name="memory", version="1") as cache:
        assert cache.text_search("Capital of France", 5) == HITS


def test_verify_bad_file_exits_1_with_the_line(tmp_path: Path, cache_dir: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.jsonl"
    main(["cache", "export", str(cache_dir), "-o", str(good)])
    lines = good.read_text().splitlines()
    lines[2] = lines[2][:-5]  # cut a line short
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["cache", "verify", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "is not a valid cassette" in err and "line 3:" in err and "Traceback" not in err
    assert main(["cache", "import", str(bad), "--dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmsearch-gym cache: error:") and "line 3:" in err
    assert not (tmp_path / "x" / "cache.db").exists()  # validated before the cache was even opened


def test_user_errors_are_messages_not_tracebacks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "stats", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "no search cache at" in err and "Traceback" not in err
    assert main(["cache", "verify", str(tmp_path / "missing.jsonl")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["cache", "export", str(tmp_path / "nowhere"), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert "no search cache" in capsys.readouterr().err


def test_export_needs_a_backend_choice_when_mixed(tmp_path: Path, cache_dir: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    other = MemoryBackend(default_text_hits=HITS)
    other.version = "2"  # type: ignore[misc]
    with SearchCache(other, cache_dir) as cache:
        cache.text_search("q", 2)
    assert main(["cache", "export", str(cache_dir), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert "--backend" in capsys.readouterr().err
    assert main(["cache", "export", str(cache_dir), "-o", str(tmp_path / "o.jsonl"), "--backend", "memory@2"]) == 0
    assert "exported 1 entries" in capsys.readouterr().out


def test_cache_command_requires_an_action(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["cache"])
    assert info.value.code == 2


def test_verify_dir_and_repair_print_counts(cache_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "verify", "--dir", str(cache_dir)]) == 0
    assert "ok: " in capsys.readouterr().out
    import sqlite3

    con = sqlite3.connect(cache_dir / "cache.db")
    key, value = con.execute("SELECT key, value FROM Cache WHERE key NOT LIKE '~%' LIMIT 1").fetchone()
    con.execute("UPDATE Cache SET value = ? WHERE key = ?", (value[:-4] + b"XXXX", key))
    con.commit()
    con.close()
    orphan = cache_dir / "aa" / "bb" / ("c" * 28 + ".val")
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"left by a killed writer")
    assert main(["cache", "verify", "--dir", str(cache_dir), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["ok"], report["entries"], report["damaged"], report["orphan_files"]) == (False, 2, 1, 1)
    assert report["damaged_keys"] == [key]
    assert main(["cache", "verify", "--dir", str(cache_dir)]) == 1
    assert "cache repair" in capsys.readouterr().out
    assert main(["cache", "stats", str(cache_dir)]) == 0
    assert "damaged   1 entries" in capsys.readouterr().out
    assert main(["cache", "repair", str(cache_dir)]) == 0
    out = capsys.readouterr().out
    assert "dropped 1 damaged entries, removed 1 orphaned value files (23 bytes)" in out and "2 entries kept" in out
    assert main(["cache", "verify", "--dir", str(cache_dir)]) == 0


def test_damaged_database_is_one_line(cache_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for suffix in ("-wal", "-shm"):
        (cache_dir / f"cache.db{suffix}").unlink(missing_ok=True)
    (cache_dir / "cache.db").write_bytes(b"\x00garbage" * 512)
    for argv in (["stats", str(cache_dir)], ["verify", "--dir", str(cache_dir)], ["repair", str(cache_dir)],
                 ["export", str(cache_dir), "-o", str(cache_dir / "o.jsonl")]):
        assert main(["cache", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(cache_dir / "cache.db") in err and "Traceback" not in err


def test_verify_needs_exactly_one_target(cache_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "verify"]) == 2
    assert "give exactly one of" in capsys.readouterr().err
    assert main(["cache", "stats", str(cache_dir), "--cache-store", "redis://127.0.0.1:1/0"]) == 2
    assert "give exactly one of" in capsys.readouterr().err
