"""Benchmark SearchCache hits against the physical floor: a raw diskcache ``get`` of the same bytes.

    python benchmarks/bench_cache.py [--quick]

Writes JSON to stdout and to benchmarks/results/cache.json:

- text-search hit latency (p50/p99) of ``SearchCache.text_search`` and of a plain
  ``diskcache.Cache.get`` (default Disk) of the very same stored bytes, and their ratio;
- the same for image-search hits (five results with ~6 kB PNG thumbnails each);
- a breakdown of a text hit (key computation, store get, decode);
- hit throughput with 1, 2 and 8 processes reading one shared cache directory.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

try:
    import mmsearch_gym  # noqa: F401
except ModuleNotFoundError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import diskcache
import numpy as np
from PIL import Image
from tqdm import tqdm

from mmsearch_gym.search.base import Hit, ImageQuery
from mmsearch_gym.search.cache import SearchCache
from mmsearch_gym.search.entry import decode_hits as _decode_hits

RESULTS = Path(__file__).resolve().parent / "results" / "cache.json"
K = 5


def _thumbnail(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = (rng.integers(0, 256, size=(48, 64, 3)) // 32 * 32).astype(np.uint8)  # compressible-ish noise
    buf = io.BytesIO()
    Image.fromarray(pixels).resize((96, 72), Image.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


class SyntheticBackend:
    """Deterministic web-like results: 5 hits, ~250-character snippets, image hits with thumbnails."""

    name = "synthetic"
    version = "1"

    def __init__(self) -> None:
        self._thumbs = [_thumbnail(i) for i in range(50)]

    def text_search(self, query: str, k: int) -> list[Hit]:
        return [Hit(title=f"{query.title()} - Encyclopedia page {i}", url=f"https://en.example.org/wiki/{query}/{i}",
                    snippet=(f"{query} is described here in detail; result {i} summarises the page. " * 4)[:250],
                    score=round(10.0 / (i + 1), 6), source="synthetic") for i in range(k)]

    def image_search(self, image: ImageQuery, k: int) -> list[Hit]:
        base = int(image.digest[:6], 16)
        return [Hit(title=f"Visually similar image {i}", url=f"https://img.example.org/{image.digest[:12]}/{i}",
                    snippet="", score=round(1.0 - i / 10, 6), source="synthetic",
                    thumbnail=self._thumbs[(base + i) % len(self._thumbs)]) for i in range(k)]


def _percentiles(samples_ns: list[int]) -> dict[str, float]:
    arr = np.asarray(samples_ns, dtype=np.float64) / 1000.0
    return {"p50_us": round(float(np.percentile(arr, 50)), 2), "p99_us": round(float(np.percentile(arr, 99)), 2),
            "mean_us": round(float(arr.mean()), 2)}


def _time_calls(fn: Any, args: list[Any], repeats: int) -> list[int]:
    samples = []
    clock = time.perf_counter_ns
    for _ in range(repeats):
        for a in args:
            t0 = clock()
            fn(a)
            samples.append(clock() - t0)
    return samples


def _throughput_worker(directory: str, queries: list[str], seconds: float, start: Any, out: Any) -> None:
    cache = SearchCache(None, directory, mode="replay", name=SyntheticBackend.name, version=SyntheticBackend.version)
    for q in queries[:50]:  # warm the connection and page cache
        cache.text_search(q, K)
    start.wait()
    n = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    i = 0
    while True:
        for _ in range(100):
            cache.text_search(queries[i % len(queries)], K)
            i += 1
        n += 100
        if time.perf_counter() >= deadline:
            break
    out.put((n, time.perf_counter() - t0))


def _throughput(directory: str, queries: list[str], procs: int, seconds: float) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(procs + 1)
    out = ctx.Queue()
    workers = [ctx.Process(target=_throughput_worker, args=(directory, queries, seconds, start, out))
               for _ in range(procs)]
    for w in workers:
        w.start()
    start.wait()
    results = [out.get(timeout=120) for _ in workers]
    for w in workers:
        w.join()
    total = sum(n for n, _ in results)
    wall = max(t for _, t in results)
    return {"processes": procs, "hits": total, "seconds": round(wall, 3), "hits_per_s": round(total / wall)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer queries and shorter runs (a smoke test)")
    args = parser.parse_args(argv)
    n_text, n_image, repeats, seconds = (300, 60, 3, 0.5) if args.quick else (3000, 300, 5, 2.0)

    rng = random.Random(0)
    queries = [f"entity {i} {rng.choice(['capital', 'flag', 'population', 'anthem'])}" for i in range(n_text)]
    images = [ImageQuery(Image.new("RGB", (32, 32), (i % 256, i // 256, 7)), box=None if i % 2 else (0, 0, 16, 16))
              for i in range(n_image)]
    digests = [image.digest for image in images]  # the env computes digests once per task, not per search
    assert len(set(digests)) == n_image

    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        cache = SearchCache(SyntheticBackend(), Path(tmp) / "cache")
        raw = diskcache.Cache(str(Path(tmp) / "raw"))  # the default Disk: the physical floor
        for q in tqdm(queries, desc="record text", file=sys.stderr, disable=args.quick):
            cache.text_search(q, K)
        for image in tqdm(images, desc="record image", file=sys.stderr, disable=args.quick):
            cache.image_search(image, K)
        text_keys = [cache.key_for_text(q, K) for q in queries]
        image_keys = [cache.key_for_image(im, K) for im in images]
        for key in text_keys + image_keys:
            raw.set(key, cache.store.get(key))
        text_value_bytes = float(np.mean([len(raw.get(k)) for k in text_keys]))
        image_value_bytes = float(np.mean([len(raw.get(k)) for k in image_keys]))

        order = list(range(n_text))
        rng.shuffle(order)
        shuffled_q = [queries[i] for i in order]
        shuffled_k = [text_keys[i] for i in order]
        # Warm both stores (SQLite page cache, connections) before timing.
        _time_calls(lambda q: cache.text_search(q, K), shuffled_q, 1)
        _time_calls(raw.get, shuffled_k, 1)
        ours, floor = [], []
        for _ in range(repeats):  # interleave rounds so drift hits both equally
            ours += _time_calls(lambda q: cache.text_search(q, K), shuffled_q, 1)
            floor += _time_calls(raw.get, shuffled_k, 1)
        text = {"searchcache": _percentiles(ours), "raw_diskcache_get": _percentiles(floor)}
        text["ratio_p50"] = round(text["searchcache"]["p50_us"] / text["raw_diskcache_get"]["p50_us"], 2)
        text["ratio_p99"] = round(text["searchcache"]["p99_us"] / text["raw_diskcache_get"]["p99_us"], 2)
        text["value_bytes_mean"] = round(text_value_bytes)

        stored = [cache.store.get(k) for k in shuffled_k[:500]]
        breakdown = {
            "key_us": _percentiles(_time_calls(lambda q: cache.key_for_text(q, K), shuffled_q, repeats))["p50_us"],
            "store_get_us": _percentiles(_time_calls(cache.store.get, shuffled_k, repeats))["p50_us"],
            "decode_us": _percentiles(_time_calls(_decode_hits, stored, repeats))["p50_us"],
        }

        _time_calls(lambda im: cache.image_search(im, K), images, 1)
        _time_calls(raw.get, image_keys, 1)
        ours_i, floor_i = [], []
        for _ in range(repeats * 4):
            ours_i += _time_calls(lambda im: cache.image_search(im, K), images, 1)
            floor_i += _time_calls(raw.get, image_keys, 1)
        image = {"searchcache": _percentiles(ours_i), "raw_diskcache_get": _percentiles(floor_i)}
        image["ratio_p50"] = round(image["searchcache"]["p50_us"] / image["raw_diskcache_get"]["p50_us"], 2)
        image["value_bytes_mean"] = round(image_value_bytes)
        stats = cache.stats()
        cache.close()
        raw.close()

        throughput = [_throughput(str(Path(tmp) / "cache"), shuffled_q, p, seconds)
                      for p in tqdm((1, 2, 8), desc="throughput", file=sys.stderr, disable=args.quick)]

    result = {
        "benchmark": "cache",
        "quick": args.quick,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "diskcache": diskcache.__version__, "numpy": np.__version__,
                    "load_average_1min_at_end": round(os.getloadavg()[0], 2)},
        "entries": {"text": n_text, "image": n_image, "k": K},
        "text_hit": text,
        "text_hit_breakdown_p50": breakdown,
        "image_hit": image,
        "throughput_text_hits": throughput,
        "cache_stats": stats.to_json(),
    }
    text_out = json.dumps(result, indent=2)
    print(text_out)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text_out + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
