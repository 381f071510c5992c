"""Record the shipped cassette: every search the oracle and RAG baselines make on the test split.

``python -m mmsearch_gym.world.record [--out offline_cache/world-test.jsonl]`` plays the
test split with the scripted ``oracle`` (its planned image searches, crops and text queries)
and ``rag`` (whole-image search, a text search built by EvidenceReader, answer) policies, in
the ``mmsearch-r1`` and ``deepmmsearch-r1`` dialects, through a recording
:class:`~mmsearch_gym.search.cache.SearchCache` around the world's search engine, and exports
the cache as a cassette. It then replays both policies against the cassette alone, in strict
replay mode, to prove the file is complete (``MMSearch-Replay-v0`` needs nothing else).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmsearch_gym.env import MMSearchEnv
from mmsearch_gym.grounding import AnnotationGrounder
from mmsearch_gym.search.base import SearchBackend
from mmsearch_gym.tasks import TaskSet

__all__ = ["DIALECTS", "POLICIES", "default_cassette_path", "play", "record_cassette"]

DIALECTS: tuple[str, ...] = ("mmsearch-r1", "deepmmsearch-r1")
POLICIES: tuple[str, ...] = ("oracle", "rag")
CASSETTE_NAME = "world-test.jsonl"


def default_cassette_path() -> Path:
    """Where the shipped cassette lives (``offline_cache/world-test.jsonl``)."""
    from mmsearch_gym.resources import resource_dir

    return resource_dir("offline_cache") / CASSETTE_NAME


def play(tasks: TaskSet, backend: SearchBackend, policy_name: str, dialect: str, *,
         progress: bool = True) -> dict[str, float]:
    """Play every task once with a scripted policy; returns accuracy and search counts."""
    from tqdm import tqdm

    from mmsearch_gym.policies import EpisodeView, OraclePolicy, RAGPolicy

    policy = {"oracle": OraclePolicy, "rag": RAGPolicy}[policy_name](tasks)
    env = MMSearchEnv(tasks, backend, dialect=dialect, grounder=AnnotationGrounder())
    correct = searches = 0
    for task in tqdm(tasks, desc=f"{policy_name}/{dialect}", unit="ep", disable=not progress):
        obs, info = env.reset(options={"task_id": task.id})
        view = EpisodeView.start(obs, info, dialect=env.dialect, image=env.task.load_image())
        done = False
        while not done:
            text = policy.act([view])[0]
            obs, _, terminated, truncated, info = env.step(text)
            view.record(text, obs, info)
            done = terminated or truncated
        breakdown = info["reward_breakdown"]
        correct += breakdown.raw_score > 0
        searches += breakdown.searches
    env.close()
    return {"accuracy": correct / len(tasks), "searches": searches}


def record_cassette(out: Path, tasks: TaskSet | None = None, *, progress: bool = True,
                    verify: bool = True) -> dict[str, Any]:
    """Record the oracle's and RAG's searches on ``tasks`` (default: the shipped test split)
    into a cassette at ``out``; with ``verify``, replay both from the cassette alone."""
    from mmsearch_gym.search.cache import SearchCache
    from mmsearch_gym.world.engine import WorldSearchEngine
    from mmsearch_gym.world.splits import load_tasks

    tasks = tasks if tasks is not None else load_tasks("test")
    engine = WorldSearchEngine.load()
    report: dict[str, Any] = {"tasks": len(tasks), "engine_version": engine.version, "recorded": {}}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mmsearch-record-") as tmp:
        cache = SearchCache(engine, Path(tmp) / "record", mode="record")
        for dialect in DIALECTS:
            for name in POLICIES:
                report["recorded"][f"{name}/{dialect}"] = play(tasks, cache, name, dialect, progress=progress)
        report["entries"] = cache.export_cassette(out)
        cache.close()
        report["bytes"] = out.stat().st_size
        if verify:
            replay = SearchCache.from_cassette(out, Path(tmp) / "replay", mode="replay")
            report["replayed"] = {f"{name}/{dialect}": play(tasks, replay, name, dialect, progress=progress)
                                  for dialect in DIALECTS for name in POLICIES}
            replay.close()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmsearch_gym.world.record", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help=f"cassette path (default: offline_cache/{CASSETTE_NAME})")
    parser.add_argument("--limit", type=int, default=None, help="record only the first N test tasks")
    parser.add_argument("--no-verify", action="store_true", help="skip the strict replay check")
    args = parser.parse_args(argv)
    from mmsearch_gym.world.splits import load_tasks

    out = args.out if args.out is not None else default_cassette_path()
    report = record_cassette(out, load_tasks("test", n=args.limit), verify=not args.no_verify)
    for name, numbers in report["recorded"].items():
        replayed = report.get("replayed", {}).get(name)
        tail = f", replayed accuracy {replayed['accuracy']:.3f}" if replayed else ""
        print(f"{name}: accuracy {numbers['accuracy']:.3f}, {numbers['searches']} searches{tail}")
    print(f"wrote {report['entries']} entries ({report['bytes'] / 1e6:.2f} MB) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
