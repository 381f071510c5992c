"""Scale-out benchmarks: a cache hit through Redis vs diskcache vs a raw redis-py GET, and throughput.

    python benchmarks/bench_scale.py [--quick] [--redis-url redis://HOST:PORT/DB] [--only cache|eval]

Without ``--redis-url`` a private ``redis-server`` (Debian package) is started on a free
loopback port in a temporary directory, with the same persistence as the tests (AOF, fsync
always), and stopped at the end. Measured side by side in one run, interleaved so that drift
hits every contender equally:

- ``cache_hit``: text-search hit latency (p50/p99) of ``SearchCache`` on diskcache, on Redis,
  on Redis with a local LRU tier, and of a raw ``redis-py`` GET of the very same stored bytes;
- ``cache_throughput``: replay hits per second with 1, 2 and 8 client processes on Redis and
  on diskcache;
- ``eval_rate``: episodes per second of the rag policy through ``evaluate()`` serially, with
  the local process pool (2 workers) and on Ray (2 actors, the policy in the driver),
  interleaved: on MMSearch-v0 with a warm search cache (env work of about a millisecond a
  step) and latency-bound (the same world search plus a fixed sleep per search, a stand-in for
  a web search's network wait); Ray's dispatch overhead per episode (Ray with 1 actor minus
  serial) and the round trip of one empty actor call. Ray is started once, before (its
  start-up time is reported, not counted).

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
import statistics
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


class SlowWorld:
    """The built-in world's search plus a fixed sleep per search: a stand-in for a web search's
    network wait (the env work the papers' rollouts spend their time in). Built lazily in each
    process, so only its name and delay travel to workers and actors."""

    name = "world"
    version = "slow"

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self._inner: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"delay_s": self.delay_s, "_inner": None}

    def _world(self) -> Any:
        if self._inner is None:
            from mmsearch_gym.search.registry import build_backend

            self._inner = build_backend("world")
        return self._inner

    def text_search(self, query: str, k: int) -> list[Any]:
        time.sleep(self.delay_s)
        return self._world().text_search(query, k)

    def image_search(self, image: Any, k: int) -> list[Any]:
        time.sleep(self.delay_s)
        return self._world().image_search(image, k)


def _eval_once(env: Any, executor: str, workers: int, episodes: int) -> float:
    """Wall seconds of one rag run through the EpisodeRunner (what ``evaluate()`` drives),
    building the envs in the driver and in the worker processes or Ray actors included."""
    from mmsearch_gym.policies import make_policy
    from mmsearch_gym.ray_runner import RayExecutor
    from mmsearch_gym.runner import EpisodeEnd, EpisodeRunner

    t0 = time.perf_counter()
    with EpisodeRunner(env, workers=workers, executor=RayExecutor() if executor == "ray" else None) as runner:
        policy = make_policy("rag", tasks=runner.env.tasks, dialect=runner.env.dialect, seed=0)
        ended = sum(isinstance(event, EpisodeEnd) for event in runner.run(policy, episodes))
    assert ended == episodes
    return time.perf_counter() - t0


def _ray_round_trip_us(calls: int) -> dict[str, float]:
    """Latency of one empty call to an env actor and back (Ray's floor per batch of steps)."""
    import ray

    from mmsearch_gym.env_factory import EnvFactory
    from mmsearch_gym.ray_runner import RayPool

    pool = RayPool(EnvFactory.create("MMSearch-v0"), 1)
    try:
        actor = pool.actors[0]
        ray.get(actor.execute.remote([]))
        samples = []
        for _ in range(calls):
            t0 = time.perf_counter_ns()
            ray.get(actor.execute.remote([]))
            samples.append(time.perf_counter_ns() - t0)
    finally:
        pool.close()
    return _percentiles(samples)


CONTENDERS = {"serial": ("local", 1), "local_pool_2": ("local", 2), "ray_2": ("ray", 2), "ray_1": ("ray", 1)}


def measure_eval_rates(env: Any, episodes: int, repeats: int) -> dict[str, Any]:
    """Episodes/s of rag on ``env``: serial, 2 local worker processes, 2 and 1 Ray actors (interleaved).

    Each contender plays ``episodes`` and a quarter of them, back to back; the median difference
    of the two wall times gives the steady rate, free of start-up (``marginal_episodes_per_s``).
    """
    small = max(1, episodes // 4)
    _eval_once(env, "local", 1, small)  # warms the search cache and the page cache
    walls: dict[str, dict[int, list[float]]] = {name: {episodes: [], small: []} for name in CONTENDERS}
    order = list(CONTENDERS)
    for r in range(repeats):  # rotate who goes first: load drift hits all alike
        for name in order[r % len(order):] + order[:r % len(order)]:
            for n in (episodes, small):
                walls[name][n].append(_eval_once(env, *CONTENDERS[name], n))
    out: dict[str, Any] = {"episodes": episodes, "small_episodes": small, "repeats": repeats}
    for name in CONTENDERS:
        big, little = walls[name][episodes], walls[name][small]
        # the two runs of one repeat are adjacent in time: their difference is the least drifted
        diff = statistics.median(b - s for b, s in zip(big, little, strict=True))
        noisy = diff <= 0  # load drift swamped the difference: no marginal rate from this run
        out[name] = {"episodes_per_s": round(episodes / min(big), 2),
                     "marginal_episodes_per_s": None if noisy else round((episodes - small) / diff, 2),
                     "start_up_s": None if noisy else round(max(0.0, statistics.median(little)
                                                                 - small * diff / (episodes - small)), 3),
                     "walls_s": [round(w, 3) for w in big], "small_walls_s": [round(w, 3) for w in little]}

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round(a / b, 2)

    for name in ("ray_2", "local_pool_2"):
        for key in ("episodes_per_s", "marginal_episodes_per_s"):
            out[f"{name}_vs_serial_{key}"] = ratio(out[name][key], out["serial"][key])
    ray_1, serial = out["ray_1"]["marginal_episodes_per_s"], out["serial"]["marginal_episodes_per_s"]
    out["ray_dispatch_overhead_ms_per_episode"] = (None if ray_1 is None or serial is None
                                                   else round(1000 * (1 / ray_1 - 1 / serial), 2))
    return out


def eval_measurements(quick: bool, delay_ms: float = 100.0) -> dict[str, Any]:
    """The ``eval_rate`` and ``eval_machine`` keys (a private search cache, a private Ray)."""
    import functools

    import ray

    from mmsearch_gym.registration import make_env

    episodes, slow_episodes, repeats = (40, 32, 1) if quick else (256, 64, 3)
    delay_s = delay_ms / 1000
    slow = functools.partial(make_env, tasks="world:test", backend=SlowWorld(delay_s), cache=None)
    with tempfile.TemporaryDirectory(prefix="bench-scale-eval-") as tmp:
        previous = os.environ.get("MMSEARCH_GYM_CACHE")
        os.environ["MMSEARCH_GYM_CACHE"] = tmp  # the workers and Ray's actors, started below, inherit it
        load_before = round(os.getloadavg()[0], 2)
        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False,
                 log_to_driver=False)
        ray_start_s = time.perf_counter() - t0
        try:
            world = measure_eval_rates("MMSearch-v0", episodes, repeats)
            latency = measure_eval_rates(slow, slow_episodes, repeats)
            round_trip = _ray_round_trip_us(200)
        finally:
            ray.shutdown()
            if previous is None:
                os.environ.pop("MMSEARCH_GYM_CACHE", None)
            else:
                os.environ["MMSEARCH_GYM_CACHE"] = previous
    machine = {**_machine(quick), "ray": ray.__version__, "load_average_1min_at_start": load_before,
               "note": "a 2-core machine shared with other jobs (see the load averages): the numbers are rough; "
                       "compare contenders within one run only"}
    return {"eval_machine": machine, "eval_rate": {
        "policy": "rag", "batch_size": 32,
        "how": "contenders interleaved; episodes_per_s: episodes / best wall time, which includes building "
               "the envs in the driver and in the worker processes or Ray actors, not starting Ray itself "
               "(ray_start_s); marginal_episodes_per_s: (episodes - small_episodes) / the median over the "
               "repeats of their wall-time difference, the steady rate without start-up (start_up_s: the rest); "
               "ray_dispatch_overhead_ms_per_episode: Ray with 1 actor minus serial, marginal, per episode",
        "mmsearch_v0": {"env": "MMSearch-v0 on a warm search cache (env work: about a millisecond a step)",
                        **world},
        "latency_bound": {"env": f"MMSearch-v0's world search + {delay_ms:g} ms sleep per search, "
                                 "no cache (a stand-in for a web search's network wait)", **latency},
        "ray_empty_call_round_trip": round_trip,
        "ray_start_s": round(ray_start_s, 2),
    }}


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
    parser.add_argument("--only", choices=("cache", "eval"), default=None, help="run one group of measurements")
    parser.add_argument("--search-delay-ms", type=float, default=100.0,
                        help="the latency-bound eval's sleep per search (default 100 ms; a web search takes ~1 s)")
    args = parser.parse_args(argv)
    updates: dict[str, Any] = {}
    if args.only != "cache":
        updates.update(eval_measurements(args.quick, args.search_delay_ms))
    if args.only != "eval":
        updates.update(cache_measurements(args))
    write_results(updates)
    print(json.dumps(updates, indent=2))
    return updates


def _machine(quick: bool) -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "load_average_1min_at_end": round(os.getloadavg()[0], 2), "quick": quick}


def cache_measurements(args: argparse.Namespace) -> dict[str, Any]:
    """The ``cache_hit``, ``cache_throughput`` and ``cache_machine`` keys."""
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

    return {
        "cache_machine": {**_machine(args.quick), "redis_py": redis.__version__},
        "cache_hit": {"entries": n_text, "k": K, **hit},
        "cache_throughput": throughput,
    }


if __name__ == "__main__":
    main()
