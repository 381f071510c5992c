"""Parse, episode scoring and env.step throughput, and MMSearch-v0 start-up time.

Targets: >= 200k turns/s parsing, >= 20k steps/s, gym.make + first reset < 1 s. Scoring (episodes
per second through ``episode_reward``, 3-turn episodes of about 200 characters a turn) is
reported per reward preset so that its cost stays visible as the reward grows.

    python benchmarks/bench_env.py [--quick]

Writes JSON to stdout and to benchmarks/results/env.json. The step benchmark uses an
in-memory backend (no disk, no network), so it measures the env itself: parsing, budgets,
result formatting, chat bookkeeping and the observation copy Gymnasium requires.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import time
from pathlib import Path

from PIL import Image

from mmsearch_gym.actions import DIALECTS, Answer, ImageSearch, Region, TextSearch
from mmsearch_gym.env import MMSearchEnv
from mmsearch_gym.reward import RewardSpec, episode_reward
from mmsearch_gym.search.base import Hit, MemoryBackend
from mmsearch_gym.tasks import Task, TaskSet

REASON = ("The picture shows a flag with three vertical bands of blue, white and red; I should "
          "identify the country first, then look up the fact the question asks about.")


def typical_turns(dialect) -> list[str]:
    actions = [TextSearch("capital city of France"), ImageSearch(), Answer("Paris"),
               ImageSearch(Region.from_box(120, 40, 260, 150))]
    return [dialect.format(a, REASON) for a in actions]


def bench_parse(seconds: float) -> dict:
    out = {}
    for name, dialect in DIALECTS.items():
        turns = typical_turns(dialect)
        n = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in range(2000):
                for t in turns:
                    dialect.parse(t)
            n += 2000 * len(turns)
        elapsed = time.perf_counter() - start
        out[name] = {"turns_per_s": round(n / elapsed), "mean_turn_chars": round(sum(map(len, turns)) / len(turns))}
    return out


def bench_score(seconds: float) -> dict:
    """Episodes scored per second by ``episode_reward`` (the reward of one whole episode)."""
    out = {}
    for spec in (RewardSpec.mmsearch_r1(), RewardSpec.mmsearch_r1(penalty_per_search=True),
                 RewardSpec.deepmmsearch_r1()):
        dialect = DIALECTS[spec.dialect]
        episodes = [[dialect.format(ImageSearch(), REASON), dialect.format(TextSearch("capital of France"), REASON),
                     dialect.format(Answer(answer), REASON)] for answer in ("Paris", "Lyon", "the city of Paris")]
        answers = ("Paris", "Paris, France")
        n = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in range(500):
                for turns in episodes:
                    episode_reward(turns, answers, spec, "What is the capital?")
            n += 500 * len(episodes)
        elapsed = time.perf_counter() - start
        label = spec.name + ("+per-search" if spec.penalty_per_search else "")
        out[label] = {"episodes_per_s": round(n / elapsed), "turns": 3,
                      "mean_turn_chars": round(sum(len(t) for e in episodes for t in e) / (3 * len(episodes)))}
    return out


def bench_step(seconds: float) -> dict:
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), (20, 120, 200)).save(buf, format="PNG")
    tasks = TaskSet([Task(f"t{i}", "What is the capital of the country whose flag is shown?", ("Paris",),
                          image_bytes=buf.getvalue()) for i in range(8)])
    hits = [Hit(f"Result {i}", f"https://example.org/{i}", "France. Capital: Paris. " * 3, 1.0 / (i + 1))
            for i in range(5)]
    backend = MemoryBackend(default_text_hits=hits, default_image_hits=hits)
    env = MMSearchEnv(tasks, backend)
    dialect = env.dialect
    episode = [dialect.format(ImageSearch(), REASON), dialect.format(TextSearch("France capital"), REASON),
               dialect.format(Answer("Paris"), REASON)]
    steps = resets = 0
    env.reset(seed=0)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(200):
            env.reset()
            resets += 1
            for text in episode:
                env.step(text)
                steps += 1
        backend.calls.clear()
    elapsed = time.perf_counter() - start
    return {"steps_per_s": round(steps / elapsed), "episodes_per_s": round(resets / elapsed),
            "note": ("3-turn episodes (image search, text search, answer), reset included, "
                     "in-memory backend, 224x224 obs")}


_MAKE_SCRIPT = """
import time
t0 = time.perf_counter()
import gymnasium as gym, mmsearch_gym
t1 = time.perf_counter()
env = gym.make("MMSearch-v0")
env.reset(seed=0)
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def bench_make() -> dict:
    """``gym.make("MMSearch-v0")`` + first reset in a fresh process (target < 1 s once built)."""
    import os
    import subprocess
    import sys
    import tempfile

    runs = []
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, MMSEARCH_GYM_CACHE=cache)
        for _ in range(3):
            out = subprocess.run([sys.executable, "-c", _MAKE_SCRIPT], env=env, check=True,
                                 capture_output=True, text=True).stdout.split()
            runs.append((float(out[0]), float(out[1])))
    best = min(runs, key=lambda r: r[1])
    return {"import_s": round(best[0], 3), "make_plus_first_reset_s": round(best[1], 3),
            "note": "best of 3 fresh processes; the first run also creates the disk cache"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="0.3 s per measurement instead of 2 s")
    args = parser.parse_args()
    seconds = 0.3 if args.quick else 2.0
    result = {"benchmark": "env", "python": platform.python_version(), "machine": platform.machine(),
              "cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2),
              "parse": bench_parse(seconds), "score": bench_score(seconds), "step": bench_step(seconds),
              "make": bench_make(),
              "targets": {"parse_turns_per_s": 200_000, "steps_per_s": 20_000, "make_plus_first_reset_s": 1.0}}
    text = json.dumps(result, indent=2)
    print(text)
    out = Path(__file__).resolve().parent / "results" / "env.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
