"""The world's splits: the shipped test split (read, regenerated) and ``load_tasks``.

``python -m mmsearch_gym.world.splits --write-test-split`` rewrites ``splits/test.jsonl`` from
the current world (deterministic: same world, same file).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmsearch_gym.errors import ConfigError, DataError
from mmsearch_gym.tasks import TaskSet
from mmsearch_gym.world.generator import (
    CATEGORIES,
    CORE_CATEGORIES,
    MULTI_HOP,
    RECIPE_FORMAT,
    TaskGenerator,
    _check_categories,
    task_from_recipe,
)

__all__ = ["TEST_SPLIT_PATH", "load_tasks", "read_recipes", "write_test_split"]

TEST_SPLIT_PATH = Path(__file__).resolve().parent / "splits" / "test.jsonl"
"""The shipped test split."""
TEST_SPLIT_SIZE = 1000
"""Core tasks in the shipped test split (200 per core category)."""
TEST_SPLIT_MULTI_HOP = 200
"""multi_hop tasks appended after them (so the first 1,000 lines never changed)."""
TEST_SPLIT_SEED = 2025
DEFAULT_TRAIN_SIZE = 2000

# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


_GENERATOR: TaskGenerator | None = None
_GENERATOR_LOCK = threading.Lock()


def _generator() -> TaskGenerator:
    global _GENERATOR
    with _GENERATOR_LOCK:
        if _GENERATOR is None:
            _GENERATOR = TaskGenerator()
        return _GENERATOR


def read_recipes(path: Path) -> list[dict[str, Any]]:
    """The recipes of a split file (one JSON object a line)."""
    if not path.is_file():
        raise DataError(f"the world's test split {path} is missing; regenerate it with "
                        "`python -m mmsearch_gym.world.splits --write-test-split`")
    recipes = []
    with path.open("r", encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                recipe = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} line {lineno}: not valid JSON ({exc.msg})") from None
            if recipe.get("format") != RECIPE_FORMAT:
                raise DataError(f"{path} line {lineno}: recipe format {recipe.get('format')!r}, "
                                f"this version reads {RECIPE_FORMAT}; regenerate the split")
            recipes.append(recipe)
    return recipes


def load_tasks(split: str = "test", n: int | None = None, seed: int = 0,
               categories: Sequence[str] | None = None) -> TaskSet:
    """The built-in world's tasks.

    ``"test"``: the shipped fixed split (1,200 tasks, 200 per category, multi_hop last; the
    first ``n`` if given; ``seed`` is ignored). ``"train"``: ``n`` tasks (default 2,000)
    generated from ``seed`` on entities disjoint from the test split's, of the five core
    categories unless ``categories`` names others (``multi_hop`` is opt-in there). ``categories`` keeps only tasks of
    those categories (``n`` then counts those). Images render lazily on ``task.load_image()``.
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ConfigError(f"n must be a positive int or None, got {n!r}")
    wanted = _check_categories(categories)
    suffix = "" if categories is None else "[" + ",".join(c for c in CATEGORIES if c in wanted) + "]"
    if split == "test":
        recipes = [r for r in read_recipes(TEST_SPLIT_PATH) if r["category"] in wanted]
        if n is not None:
            recipes = recipes[:n]
        return TaskSet([task_from_recipe(r) for r in recipes], name="world-test" + suffix)
    if split == "train":
        count = DEFAULT_TRAIN_SIZE if n is None else n
        recipes = _generator().recipes("train", count, seed, categories=categories)
        return TaskSet([task_from_recipe(r) for r in recipes], name=f"world-train-s{seed}{suffix}")
    raise ConfigError(f"unknown split {split!r}; the world has 'train' (generated) and 'test' (shipped)")




def write_test_split(path: Path = TEST_SPLIT_PATH, n: int = TEST_SPLIT_SIZE, seed: int = TEST_SPLIT_SEED,
                     multi_hop: int = TEST_SPLIT_MULTI_HOP) -> Path:
    """Regenerate the shipped test split (deterministic: same world, same file): ``n`` core
    tasks, then ``multi_hop`` multi_hop tasks."""
    generator = TaskGenerator()
    recipes = generator.recipes("test", n, seed, progress=True, categories=CORE_CATEGORIES)
    recipes += generator.recipes("test", multi_hop, seed, categories=[MULTI_HOP])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for recipe in recipes:
            handle.write(json.dumps(recipe, ensure_ascii=False, separators=(",", ":")) + "\n")
    tmp.replace(path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmsearch_gym.world.splits",
                                     description="Generate the built-in world's tasks.")
    parser.add_argument("--write-test-split", action="store_true",
                        help=f"rewrite the shipped test split ({TEST_SPLIT_PATH.name})")
    parser.add_argument("--n", type=int, default=TEST_SPLIT_SIZE)
    parser.add_argument("--multi-hop", type=int, default=TEST_SPLIT_MULTI_HOP)
    parser.add_argument("--seed", type=int, default=TEST_SPLIT_SEED)
    parser.add_argument("--out", type=Path, default=TEST_SPLIT_PATH)
    args = parser.parse_args(argv)
    if not args.write_test_split:
        parser.print_help()
        return 2
    path = write_test_split(args.out, args.n, args.seed, args.multi_hop)
    counts: dict[str, int] = {}
    for recipe in read_recipes(path):
        counts[recipe["category"]] = counts.get(recipe["category"], 0) + 1
    print(f"wrote {sum(counts.values())} tasks to {path}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
