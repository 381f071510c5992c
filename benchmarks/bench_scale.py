"""Scale-out benchmarks: a cache hit through Redis vs diskcache vs a raw redis-py GET, and throughput.

    python benchmarks/bench_scale.py [--quick] [--redis-url redis://HOST:PORT/DB]

Without ``--redis-url`` a private ``redis-server`` (Debian package) is started on a free
loopback port in a temporary directory, with the same persistence as the tests (AOF, fsync
always), and stopped at the end. Measured side by side in one run, interleaved so that drift
hits every contender equally:

- ``cache_hit``: text-search hit latency (p50/p99) of ``SearchCache`` on diskcache, on Redis,
  on Redis with a local LRU tier, and of a raw ``redis-py`` GET of the very same stored bytes;
- ``cache_throughput``: replay hits per second with 1, 2 and 8 client processes on Redis and
  on diskcache.

Results are merged into benchmarks/results/bench_scale.json under these keys (other
measurements, e.g. Ray eval rates, live beside them in the same file). One function per
measurement, so more can be added without touching these.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import mmsearch_gym  # noqa: F401
except ModuleNotFoundError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cache import K, SyntheticBackend, _percentiles, _time_calls

from mmsearch_gym.search.cache import SearchCache
from mmsearch_gym.search.redis_store import ROOT, namespace_for

RESULTS = Path(__file__).resolve().parent / "results" / "bench_scale.json"


# -- a private redis-server ----------------------------------------------------------------------


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    """A redis-server on a free loopback port with AOF (fsync always); yields its URL."""
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install -y redis-server), or pass --redis-url")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(directory),
                             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    try:
        for _ in range(400):
            with contextlib.suppress(redis.exceptions.RedisError):
                if client.ping():
                    break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=30)


# -- measurements ----------------------------------------------------------------------------------


def record(queries: list[str], directory: Path, url: str) -> None:
    """Record the same entries into a cache directory and into Redis."""
    for where in ({"directory": directory}, {"store": url}):
        with SearchCache(SyntheticBackend(), **where) as cache:  # type: ignore[arg-type]
            for q in queries:
                cache.text_search(q, K)


def measure_cache_hit(queries: list[str], directory: Path, url: str, repeats: int) -> dict[str, Any]:
    """Hit latency of SearchCache on diskcache, Redis and Redis+LRU, and of a raw redis-py GET."""
    import redis

    ident = {"name": SyntheticBackend.name, "version": SyntheticBackend.version, "mode": "replay"}
    disk = SearchCache(None, directory, **ident)  # type: ignore[arg-type]
    remote = SearchCache(None, store=url, **ident)  # type: ignore[arg-type]
    tiered = SearchCache(None, store=url, local_cache=len(queries), **ident)  # type: ignore[arg-type]
    client = redis.Redis.from_url(url)
    prefix = f"{ROOT}{namespace_for(SyntheticBackend.name, SyntheticBackend.version)}:e:"
    full_keys = [prefix + remote.key_for_text(q, K) for q in queries]
    assert all(client.get(k) == disk.store.get(k[len(prefix):]) for k in full_keys[:50])
    contenders = {
        "searchcache_diskcache": lambda q: disk.text_search(q, K),
        "searchcache_redis": lambda q: remote.text_search(q, K),
        "searchcache_redis_local_lru": lambda q: tiered.text_search(q, K),
    }
    contenders["raw_redis_get"] = client.get
    args = {name: (full_keys if name == "raw_redis_get" else queries) for name in contenders}
    for name, fn in contenders.items():  # warm connections, page cache, the LRU
        _time_calls(fn, args[name], 1)
    samples: dict[str, list[int]] = {name: [] for name in contenders}
    clock = time.perf_counter_ns
    order = list(contenders)
    for r in range(repeats):  # round robin per query, rotating who goes first: load drift hits all alike
        for i in range(len(queries)):
            for name in order[(i + r) % len(order):] + order[:(i + r) % len(order)]:
                fn, arg = contenders[name], args[name][i]
                t0 = clock()
                fn(arg)
                samples[name].append(clock() - t0)
    result: dict[str, Any] = {name: _percentiles(s) for name, s in samples.items()}
    floor = result["raw_redis_get"]
    result["redis_vs_raw_get_p50"] = round(result["searchcache_redis"]["p50_us"] / floor["p50_us"], 2)
    result["redis_vs_raw_get_p99"] = round(result["searchcache_redis"]["p99_us"] / floor["p99_us"], 2)
    result["value_bytes_mean"] = round(sum(len(client.get(k)) for k in full_keys) / len(full_keys))
    for cache in (disk, remote, tiered):
        cache.store.close()  # not close(): keep the benchmark's hits out of the lifetime counters
    client.close()
    return result


def _hits_worker(where: dict[str, Any], queries: list[str], seconds: float, start: Any, out: Any) -> None:
    cache = SearchCache(None, mode="replay", name=SyntheticBackend.name, version=SyntheticBackend.version, **where)
    for q in queries[:50]:
        cache.text_search(q, K)
    start.wait()
    n, i = 0, 0
    t0 = time.perf_counter()
    while time.perf_counter() < t0 + seconds:
        for _ in range(50):
            cache.text_search(queries[i % len(queries)], K)
            i += 1
        n += 50
    out.put((n, time.perf_counter() - t0))
    cache.store.close()


def measure_throughput(where: dict[str, Any], queries: list[str], procs: int, seconds: float) -> dict[str, Any]:
    """Replay hits per second summed over ``procs`` client processes."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(procs + 1)
    out = ctx.Queue()
    workers = [ctx.Process(target=_hits_worker, args=(where, queries, seconds, start, out)) for _ in range(procs)]
    for w in workers:
        w.start()
    start.wait()
    results = [out.get(timeout=300) for _ in workers]
    for w in workers:
        w.join()
    total, wall = sum(n for n, _ in results), max(t for _, t in results)
    return {"processes": procs, "hits": total, "seconds": round(wall, 3), "hits_per_s": round(total / wall)}


def write_results(updates: dict[str, Any]) -> dict[str, Any]:
    """Merge ``updates`` into bench_scale.json, keeping other measurements already there."""
    data: dict[str, Any] = {}
    if RESULTS.is_file():
        with contextlib.suppress(ValueError):
            data = json.loads(RESULTS.read_text(encoding="utf-8"))
    data.update(updates)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, RESULTS)
    return data


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer queries and shorter runs (a smoke test)")
    parser.add_argument("--redis-url", default=None, help="use this server instead of starting one")
    args = parser.parse_args(argv)
    n_text, repeats, seconds = (300, 3, 0.5) if args.quick else (2000, 5, 2.0)
    rng = random.Random(0)
    queries = [f"entity {i} {rng.choice(['capital', 'flag', 'population', 'anthem'])}" for i in range(n_text)]
    rng.shuffle(queries)

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        server = (contextlib.nullcontext(args.redis_url) if args.redis_url
                  else redis_server(Path(tmp)))
        with server as url:
            import redis

            redis.Redis.from_url(url).flushdb()
            directory = Path(tmp) / "cache"
            record(queries, directory, url)
            hit = measure_cache_hit(queries, directory, url, repeats)
            throughput = {
                "redis": [measure_throughput({"store": url}, queries, p, seconds) for p in (1, 2, 8)],
                "diskcache": [measure_throughput({"directory": str(directory)}, queries, p, seconds)
                              for p in (1, 2, 8)],
            }
    import redis

    updates = {
        "cache_machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "platform": platform.platform(), "redis_py": redis.__version__,
                          "load_average_1min_at_end": round(os.getloadavg()[0], 2), "quick": args.quick},
        "cache_hit": {"entries": n_text, "k": K, **hit},
        "cache_throughput": throughput,
    }
    write_results(updates)
    print(json.dumps(updates, indent=2))
    return updates


if __name__ == "__main__":
    main()
