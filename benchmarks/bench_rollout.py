"""What the env side adds to a TRL rollout turn, without the model forward.

Plays 3-turn episodes (image search, text search, answer) through the rollout route's
``MMSearchRollout.play`` with a scripted ``generate`` that hands back pre-tokenised turns of
64 / 256 / 1,024 tokens (a long reasoning, then the action's closing tag, then a few tokens
after it, as a batch keeps decoding past a finished row). What is timed is everything the
rollout does around generation: cutting each turn at its first stop string, decoding the
action, parsing and stepping the env (in-memory backend), and rendering and tokenising the
tool result. ``cut_ms`` also times the stop cutting alone, with the stop at the end (usual)
and in the middle of the turn (the slow case for a cutter that searches from the end).
Each number is the best of several repeats (the machine is shared; the minimum is the cost).

    python benchmarks/bench_rollout.py [--quick] [--out benchmarks/results/bench_rollout.json]

Target: <= 2 ms per turn at 1,024 tokens, growing linearly with the turn length. Uses the
tiny byte-level BPE tokenizer of ``integrations/tiny_models.py`` and TRL's Qwen2.5 template.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import time
from pathlib import Path
from typing import Any

from PIL import Image

from mmsearch_gym.actions import Answer, ImageSearch, TextSearch, get_dialect
from mmsearch_gym.env import MMSearchEnv
from mmsearch_gym.search.base import Hit, MemoryBackend
from mmsearch_gym.tasks import Task, TaskSet

LENGTHS = (64, 256, 1024)
AFTER_STOP = 3
FILLER = ("the flag shows three vertical bands of blue white and red so I should identify the "
          "country first and then look up the fact that the question asks about ")


def _cutter() -> Any:
    """The rollout's stop cutter, wherever this version of the code keeps it."""
    try:
        from mmsearch_gym.integrations.trl.generation import _cut_at_stop
    except ImportError:  # the single-module integration (before the package split)
        from mmsearch_gym.integrations.trl import _cut_at_stop  # type: ignore[no-redef]
    return _cut_at_stop


def world() -> tuple[TaskSet, MemoryBackend]:
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), (20, 120, 200)).save(buf, format="PNG")
    tasks = TaskSet([Task(f"t{i}", "What is the capital of the country whose flag is shown?", ("Paris",),
                          image_bytes=buf.getvalue()) for i in range(8)], name="bench")
    hits = [Hit(f"Result {i}", f"https://example.org/{i}", "France. Capital: Paris. " * 3, 1.0 / (i + 1))
            for i in range(5)]
    return tasks, MemoryBackend(default_text_hits=hits, default_image_hits=hits)


def turn_ids(tokenizer: Any, action: Any, length: int, stop_at: str) -> list[int]:
    """About ``length`` tokens: the action with a long reasoning, then filler after its closing tag."""
    dialect = get_dialect("mmsearch-r1")
    bare = len(tokenizer(dialect.format(action, "x"), add_special_tokens=False)["input_ids"])
    after = AFTER_STOP if stop_at == "end" else length // 2
    filler = tokenizer(FILLER * (length // 8 + 4), add_special_tokens=False)["input_ids"]
    reason = tokenizer.decode(filler[:max(1, length - bare - after)]).strip()
    ids = tokenizer(dialect.format(action, reason), add_special_tokens=False)["input_ids"]
    return ids + filler[:max(0, length - len(ids))]


def bench(tokenizer: Any, length: int, repeats: int, stop_at: str) -> dict[str, float]:
    from mmsearch_gym.integrations.trl import make_rollout_func, to_dataset

    tasks, backend = world()
    dialect = get_dialect("mmsearch-r1")
    env = MMSearchEnv(tasks, backend, dialect=dialect)
    rollout = make_rollout_func(env, max_turn_tokens=length + 8)
    turns = [turn_ids(tokenizer, action, length, stop_at)
             for action in (ImageSearch(), TextSearch("France capital"), Answer("Paris"))]
    prompts = list(to_dataset(tasks, n=len(tasks))["prompt"])

    def generate(batch: list[Any], max_new: int) -> list[tuple[list[int], None]]:
        return [(list(turns[min(len(ep.turns), 2)]), None) for ep in batch]

    rollout.play(prompts[:2], tokenizer, generate, budget=100_000)  # warm-up
    per_turn = float("inf")  # best of `repeats` batches (the machine is shared: the minimum is the cost)
    for _ in range(repeats):
        started = time.perf_counter()
        done = rollout.play(prompts, tokenizer, generate, budget=100_000)
        per_turn = min(per_turn, (time.perf_counter() - started) / (len(prompts) * len(turns)))
        failed = [ep.turns for ep in done if ep.breakdown is None or ep.breakdown.reward < 0.8]
        if failed:
            raise RuntimeError(f"an episode did not play as scripted: {failed[0]}")

    cut = _cutter()
    stops = dialect.stop_sequences
    cut_s = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for ids in turns:
            cut(tokenizer, ids, None, stops, length + 8)
        cut_s = min(cut_s, (time.perf_counter() - started) / len(turns))
    return {"per_turn_ms": round(per_turn * 1e3, 3), "cut_ms": round(cut_s * 1e3, 3),
            "mean_turn_tokens": round(sum(map(len, turns)) / len(turns), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer episodes (a smoke run)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_rollout.json")
    parser.add_argument("--label", default="", help="a note stored with the numbers (e.g. the commit)")
    args = parser.parse_args()

    from trl.chat_template_utils import qwen2_5_chat_template

    from mmsearch_gym.integrations.tiny_models import build_tokenizer

    tokenizer = build_tokenizer([FILLER, "What is the capital of the country whose flag is shown? Paris France"],
                                chat_template=qwen2_5_chat_template, vocab_size=512)
    repeats = 3 if args.quick else 15
    results: dict[str, Any] = {"stop_at_end": {}, "stop_in_middle": {}}
    for length in LENGTHS:
        results["stop_at_end"][str(length)] = bench(tokenizer, length, repeats, "end")
        results["stop_in_middle"][str(length)] = bench(tokenizer, length, repeats, "middle")
    out = {"benchmark": "rollout env-side cost per turn (no model forward)", "label": args.label,
           "tokens_per_turn": list(LENGTHS), "episodes_per_batch": 8, "repeats": repeats,
           "statistic": "best of repeats", "turns_per_episode": 3,
           "python": platform.python_version(), "machine": platform.machine(), "results": results}
    text = json.dumps(out, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
