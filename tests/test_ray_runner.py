"""Episodes on Ray actors (a real local Ray instance, never a mock) give exactly the serial results.

One Ray instance serves the whole module (starting Ray takes tens of seconds on a loaded machine)
and is shut down after it. Ray is in the ``all`` extra that CI installs, so nothing here skips there.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fixture_world import CapitalReader, planned, strip_timing

from mmsearch_gym.cli import main
from mmsearch_gym.errors import ConfigError, MMSearchError
from mmsearch_gym.evaluate import evaluate
from mmsearch_gym.policies import make_policy
from mmsearch_gym.ray_runner import RayExecutor
from mmsearch_gym.registration import make_env
from mmsearch_gym.runner import EpisodeRunner, StepEvent
from mmsearch_gym.search.base import MemoryBackend
from mmsearch_gym.search.cache import CacheMiss
from mmsearch_gym.tasks import TaskSet

ray = pytest.importorskip("ray", reason="the Ray executor needs the extra: pip install 'mmsearch-gym[ray]'")
ROOT = Path(__file__).resolve().parent.parent




def test_ray_eval_equals_serial_on_mmsearch_v0(ray_cluster: str, tmp_path: Path) -> None:
    """rag on 10 episodes of MMSearch-v0: the same report JSON (per episode too) and trajectories."""
    outputs = []
    for executor in ("local", "ray"):
        traj = tmp_path / f"{executor}.jsonl"
        report = evaluate("MMSearch-v0", "rag", episodes=10, workers=1 if executor == "local" else 2, seed=7,
                          batch_size=4, trajectories=traj, progress=False, executor=executor)
        outputs.append((json.dumps(report.to_json(include_episodes=True), sort_keys=True), strip_timing(traj)))
    assert outputs[0] == outputs[1]
    data = json.loads(outputs[0][0])
    assert data["episodes"] == 10 and data["policy"] == "rag" and len(outputs[0][1]) == 10
    assert sorted(row["seed"] for row in outputs[0][1]) == list(range(7, 17))


def test_runner_events_on_ray_equal_local_ones(ray_cluster: str, tiny_tasks: TaskSet,
                                              memory_backend: MemoryBackend) -> None:
    """One actor or two, the runner yields the very events (texts, observations, chats) of a serial run."""
    tasks = planned(tiny_tasks, copies=2)
    make = functools.partial(make_env, tasks=tasks, backend=memory_backend)
    runs = []
    for executor, workers in ((None, 1), (RayExecutor(), 1), (RayExecutor(), 2)):
        policy = make_policy("oracle", tasks=tasks, reader=CapitalReader())
        with EpisodeRunner(make, workers=workers, batch_size=3, executor=executor) as runner:
            events = list(runner.run(policy, seed=2))
        # observations arrive as writable arrays, as from a local env (not read-only object-store views)
        assert all(e.observation["image"].flags.writeable for e in events if isinstance(e, StepEvent))
        runs.append([(e.episode, e.turn, e.text, e.observation["text"], e.reward, e.terminated, e.truncated,
                      e.info["search_log"], e.info["messages"][-1]) if isinstance(e, StepEvent)
                     else (e.episode, e.seed, e.result, len(e.view.steps)) for e in events])
    assert runs[0] == runs[1] == runs[2]
    assert sum(isinstance(e[-1], int) for e in runs[0]) == len(tasks)  # one end per episode


class _Exploding(MemoryBackend):
    """A backend whose searches raise a plain Python error (not a SearchError) inside the actor."""

    def text_search(self, query: str, k: int) -> list:
        raise ZeroDivisionError("the backend divided by zero")

    image_search = text_search  # type: ignore[assignment]


class _BuildsOnlyHere:
    """An env factory that works in the process that made it and raises anywhere else (an actor)."""

    def __init__(self, make: Any) -> None:
        self.make, self.pid = make, os.getpid()

    def __call__(self) -> Any:
        if os.getpid() != self.pid:
            raise ZeroDivisionError("the env could not be built")
        return self.make()


class _Dying(MemoryBackend):
    """A backend whose first search ends the actor's process."""

    def image_search(self, image: Any, k: int) -> list:
        os._exit(3)

    text_search = image_search  # type: ignore[assignment]


def test_errors_in_actors_come_back_clear(ray_cluster: str, tiny_tasks: TaskSet, tmp_path: Path) -> None:
    tasks = planned(tiny_tasks)
    policy = make_policy("rag", tasks=tasks, reader=CapitalReader())
    # a typed library error stays typed: a strict-replay miss is a CacheMiss in the driver
    empty = functools.partial(make_env, tasks=tasks, backend=MemoryBackend(),
                              cache={"mode": "replay", "dir": str(tmp_path / "empty")})
    with pytest.raises(CacheMiss, match="strict replay"):
        evaluate(empty, policy, workers=2, executor="ray", progress=False)
    # a failing backend inside env.step is a tool-error observation (the step contract), on Ray too
    failing = evaluate(functools.partial(make_env, tasks=tasks, backend=_Exploding()), policy, workers=2,
                       executor="ray", progress=False)
    serial = evaluate(functools.partial(make_env, tasks=tasks, backend=_Exploding()), policy, progress=False)
    assert failing.to_json(include_episodes=True) == serial.to_json(include_episodes=True)
    # any other exception in an actor: an MMSearchError carrying the actor's traceback
    with pytest.raises(MMSearchError, match="ZeroDivisionError: the env could not be built"):
        evaluate(_BuildsOnlyHere(functools.partial(make_env, tasks=tasks, backend=MemoryBackend())), policy,
                 workers=2, executor="ray", progress=False)
    # an actor that dies mid-episode: a one-line error naming it, not Ray's internals
    with pytest.raises(MMSearchError, match=r"Ray env actor \d died") as died:
        evaluate(functools.partial(make_env, tasks=tasks, backend=_Dying()), policy, workers=2,
                 executor="ray", progress=False)
    assert "\n" not in str(died.value)
    # the cluster still serves runs after the failures
    report = evaluate(functools.partial(make_env, tasks=tasks, backend=MemoryBackend()), policy, workers=2,
                      executor="ray", progress=False)
    assert report.overall.episodes == 3


def test_bad_executor_options(ray_cluster: str, tiny_tasks: TaskSet, memory_backend: MemoryBackend,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    make = functools.partial(make_env, tasks=planned(tiny_tasks), backend=memory_backend)
    policy = make_policy("direct", tasks=tiny_tasks)
    with pytest.raises(ConfigError, match="executor must be 'local' or 'ray'"):
        evaluate(make, policy, executor="dask", progress=False)
    with pytest.raises(ConfigError, match="ray_address goes with executor='ray'"):
        evaluate(make, policy, ray_address="auto", progress=False)
    with pytest.raises(ConfigError, match="CPU"):  # more actors than the 2 CPUs could ever place
        evaluate(make, policy, workers=3, batch_size=3, executor="ray", progress=False)
    with pytest.raises(ConfigError, match="ray address"):
        RayExecutor("")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ConfigError, match=r"pip install 'mmsearch-gym\[ray\]'"):
        evaluate(make, policy, executor="ray", progress=False)


def test_cli_ray_flag_equals_serial(ray_cluster: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``eval --ray`` in this process (the Ray it joined) and ``--ray ADDRESS`` from another process."""
    common = ["eval", "--env", "MMSearch-v0", "--policy", "rag", "--episodes", "6", "--seed", "1", "--no-progress",
              "--per-episode"]
    assert main([*common, "--json", str(tmp_path / "serial.json"),
                 "--trajectories", str(tmp_path / "serial.jsonl")]) == 0
    assert main([*common, "--workers", "2", "--ray", "--json", str(tmp_path / "ray.json"),
                 "--trajectories", str(tmp_path / "ray.jsonl")]) == 0
    assert "6 episodes in" in capsys.readouterr().err
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-m", "mmsearch_gym.cli", *common, "--workers", "2", "--ray", ray_cluster,
                          "--json", str(tmp_path / "remote.json"), "--trajectories", str(tmp_path / "remote.jsonl")],
                         check=False, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "with 2 Ray actor(s)" in out.stderr
    serial = (tmp_path / "serial.json").read_text()
    assert (tmp_path / "ray.json").read_text() == serial == (tmp_path / "remote.json").read_text()
    assert strip_timing(tmp_path / "ray.jsonl") == strip_timing(tmp_path / "serial.jsonl") \
        == strip_timing(tmp_path / "remote.jsonl")
    assert main(["eval", "--ray", "--workers", "2", "--episodes", "1", "--no-progress", "--env", "Nope-v0"]) == 2


def test_accounting_counts_the_actors_calls(ray_cluster: str, tiny_tasks: TaskSet,
                                            memory_backend: MemoryBackend) -> None:
    """Live calls made inside the actors reach the driver's ledger (what ``eval --json`` reports)."""
    from mmsearch_gym.services.accounting import AccountedRun, CountingBackend

    tasks = planned(tiny_tasks, copies=2)
    counts = []
    for executor in ("local", "ray"):
        make = functools.partial(make_env, tasks=tasks, backend=CountingBackend(memory_backend))
        with AccountedRun() as run:
            evaluate(make, make_policy("rag", tasks=tasks, reader=CapitalReader()), workers=2, executor=executor,
                     progress=False)
        counts.append(run.counts)
    assert counts[0] == counts[1] and counts[0]["memory"]["live_calls"] > 0


def test_cluster_run_through_redis_exports_and_replays(ray_cluster: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The README's cluster recipe on one machine: Ray actors searching through a shared Redis cache
    give the serial diskcache results; the Redis cache exported to a cassette replays the run."""
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install -y redis-server; .ci/run does it)")
    pytest.importorskip("redis", reason="the redis client is not installed (pip install 'mmsearch-gym[redis]')")
    from search.conftest import RedisServer

    (tmp_path / "redis-data").mkdir()
    server = RedisServer(shutil.which("redis-server"), tmp_path / "redis-data")
    server.start()
    try:
        runs = []
        for executor, cache in (("local", {"mode": "readthrough", "dir": str(tmp_path / "disk")}),
                                ("ray", {"mode": "readthrough", "store": server.url})):
            traj = tmp_path / f"{executor}.jsonl"
            report = evaluate("MMSearch-v0", "rag", episodes=6, workers=1 if executor == "local" else 2,
                              executor=executor, trajectories=traj, progress=False, cache=cache, seed=2)
            rows = strip_timing(traj)
            for row in rows:
                assert row["env"].pop("kwargs")["cache"] == cache and row["env"].pop("cache")["mode"] == "readthrough"
            runs.append((json.dumps(report.to_json(include_episodes=True), sort_keys=True), rows))
        assert runs[0] == runs[1]
        cassette = tmp_path / "cluster-run.jsonl"
        assert main(["cache", "export", "--cache-store", server.url, "-o", str(cassette)]) == 0
        assert main(["cache", "export", str(tmp_path / "disk"), "-o", str(tmp_path / "disk.jsonl")]) == 0
        assert cassette.read_bytes() == (tmp_path / "disk.jsonl").read_bytes()
    finally:
        server.stop()
    capsys.readouterr()
    assert main(["replay", str(tmp_path / "ray.jsonl"), "--cassette", str(cassette), "--no-progress"]) == 0
    assert "replay OK: 6 episodes" in capsys.readouterr().out
