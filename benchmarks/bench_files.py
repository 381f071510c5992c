"""What the validation layer costs when reading shared files, and how fast hostile lines are refused.

    python benchmarks/bench_files.py [--quick]

Writes JSON to stdout and to benchmarks/results/files.json:

- reading a trajectories file (``read_trajectories``: bounded parse, tree check, typed fields)
  against the floor of a bare ``json.loads`` per line, with and without embedded images;
- reading the shipped cassette ``offline_cache/world-test.jsonl`` (``read_cassette``) against
  a bare ``json.loads`` per line;
- the time to refuse each hostile line (100,000-deep nesting, 5,000-digit integers, ``1e999``,
  a 10 MB line of nesting) with a DataError.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

try:
    import mmsearch_gym  # noqa: F401
except ModuleNotFoundError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmsearch_gym.errors import DataError
from mmsearch_gym.evaluate import evaluate
from mmsearch_gym.search.cassette import read_cassette
from mmsearch_gym.trajectories import read_trajectories
from mmsearch_gym.validation import loads

ROOT = Path(__file__).resolve().parents[1]


def _best(fn: Any, repeat: int) -> float:
    """Best wall time of ``repeat`` calls (seconds): the least disturbed by other processes."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _plain(path: Path) -> None:
    with path.open("rb") as handle:
        for line in handle:
            json.loads(line)


def bench_trajectories(directory: Path, episodes: int, embed: bool, repeat: int) -> dict[str, Any]:
    path = directory / f"run-{'images' if embed else 'plain'}.jsonl"
    evaluate("MMSearch-v0", "rag", episodes=episodes, trajectories=path, progress=False, embed_images=embed,
             cache={"mode": "readthrough", "dir": str(directory / "cache")})
    size = path.stat().st_size
    floor = _best(lambda: _plain(path), repeat)
    full = _best(lambda: read_trajectories(path), repeat)
    return {"episodes": episodes, "embed_images": embed, "bytes": size,
            "json_loads_s": round(floor, 4), "read_trajectories_s": round(full, 4),
            "read_trajectories_lines_per_s": round(episodes / full),
            "read_trajectories_mb_per_s": round(size / full / 1e6, 1),
            "overhead_vs_json_loads": round(full / floor, 2)}


def bench_cassette(repeat: int) -> dict[str, Any]:
    path = ROOT / "offline_cache" / "world-test.jsonl"
    floor = _best(lambda: _plain(path), repeat)
    full = _best(lambda: read_cassette(path), repeat)
    info = read_cassette(path)
    return {"file": str(path.relative_to(ROOT)), "bytes": path.stat().st_size, "entries": info.entries,
            "blobs": info.blobs, "json_loads_s": round(floor, 4), "read_cassette_s": round(full, 4),
            "overhead_vs_json_loads": round(full / floor, 2)}


def bench_hostile(repeat: int) -> dict[str, Any]:
    lines = {"100,000-deep nesting": "[" * 100_000 + "]" * 100_000,
             "10 MB of nesting": "[" * 5_000_000 + "]" * 5_000_000,
             "5,000-digit integer": '{"episode":' + "9" * 5000 + "}",
             "1e999 in an integer field": '{"episode":1e999}'}
    out = {}
    for name, line in lines.items():
        def refuse(line: str = line, name: str = name) -> None:
            try:
                loads(line)
            except DataError:
                return
            raise AssertionError(f"{name} was accepted")
        out[name] = {"chars": len(line), "refused_in_ms": round(_best(refuse, repeat) * 1e3, 3)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer episodes and repeats")
    args = parser.parse_args()
    episodes, repeat = (50, 2) if args.quick else (300, 5)
    with tempfile.TemporaryDirectory() as tmp:
        results = {
            "machine": {"python": platform.python_version(), "platform": platform.platform()},
            "trajectories": [bench_trajectories(Path(tmp), episodes, embed, repeat) for embed in (False, True)],
            "cassette": bench_cassette(repeat),
            "hostile_lines": bench_hostile(repeat),
        }
    text = json.dumps(results, indent=2)
    print(text)
    if not args.quick:
        out = ROOT / "benchmarks" / "results" / "files.json"
        out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
