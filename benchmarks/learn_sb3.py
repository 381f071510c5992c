"""Does a classic RL policy learn when and how to search? PPO against the scripted baselines.

    python benchmarks/learn_sb3.py [--recipe ppo-world] [--seeds 0,1,2] [--set total_timesteps=150000]
                                   [--episodes N] [--out benchmarks/results/learn_sb3.json]

Trains the recipe (default ``policies/ppo-world.json``: PPO on the built-in world's train
split, whose countries never appear in the test split) on this CPU once per seed, then
evaluates every trained policy and the ``direct``, ``rag`` and ``oracle`` baselines on the
world's test split (``MMSearch-v0``: MMSearch-R1 dialect and reward) with
:func:`mmsearch_gym.evaluate.evaluate`. The JSON holds each run's training wall time
(everything from generating the tasks to saving the model), each policy's full evaluation
report (per category: mean reward, accuracy, search ratio, calls per tool), a table with the
learned policy averaged over seeds, and whether *every* seed's mean reward beats both
``direct`` and ``rag``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _table(reports: dict[str, dict]) -> str:
    """Markdown: per category, each policy's mean reward / accuracy / search ratio / calls."""
    categories = sorted({c for r in reports.values() for c in r["per_category"]})
    lines = ["| category | policy | mean reward | accuracy | search ratio | image calls | text calls |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for category in [*categories, "all"]:
        for name, report in reports.items():
            m = report if category == "all" else report["per_category"][category]
            calls = m["calls_per_episode"]
            lines.append(f"| {category} | {name} | {m['mean_reward']:.3f} | {m['accuracy']:.3f} | "
                         f"{m['search_ratio']:.3f} | {calls['image_search']:.2f} | {calls['text_search']:.2f} |")
    return "\n".join(lines)


def _mean_report(reports: list[dict]) -> dict:
    """The average of several reports on the same episodes (the PPO seeds), metric by metric."""
    def avg(blocks: list[dict]) -> dict:
        out = {k: sum(b[k] for b in blocks) / len(blocks)
               for k in ("mean_reward", "accuracy", "search_ratio", "format_rate")}
        out["calls_per_episode"] = {k: sum(b["calls_per_episode"][k] for b in blocks) / len(blocks)
                                    for k in ("image_search", "text_search")}
        out["episodes"] = blocks[0]["episodes"]
        return out

    mean = avg(reports)
    mean["per_category"] = {c: avg([r["per_category"][c] for r in reports]) for c in reports[0]["per_category"]}
    return mean


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="ppo-world", help="a recipe name in policies/ or a path")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe field, as `mmsearch-gym train --set`")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (one model each)")
    parser.add_argument("--episodes", type=int, default=None, help="test episodes (default: the whole split)")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where the models go, one sub-folder per seed (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "learn_sb3.json")
    args = parser.parse_args(argv)

    from mmsearch_gym.commands.train import load_recipe, merge, parse_overrides
    from mmsearch_gym.evaluate import evaluate
    from mmsearch_gym.integrations.sb3 import train_recipe

    recipe = merge(load_recipe(args.recipe), parse_overrides(args.set))
    recipe.pop("eval", None)  # evaluated below, with the reference evaluator
    trainer = recipe["trainer"]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    root = args.output_dir or Path(tempfile.mkdtemp(prefix="learn_sb3-"))

    runs = []
    for seed in seeds:
        output_dir = root / f"seed{seed}"
        started = time.perf_counter()
        summary = train_recipe({**recipe, "seed": seed}, output_dir=output_dir)
        wall = time.perf_counter() - started
        print(f"seed {seed}: {summary['total_timesteps']} steps in {wall:.1f} s (wall, incl. setup)",
              file=sys.stderr)
        report = evaluate("MMSearch-v0", f"sb3:{output_dir}", episodes=args.episodes, cache=None, progress=True)
        runs.append({"seed": seed, "wall_seconds": round(wall, 1), "learn_seconds": summary["train_seconds"],
                     "timesteps": summary["total_timesteps"], "steps_per_second": summary["steps_per_second"],
                     "under_10_minutes": wall < 600, "report": report.to_json()})
        print(f"{trainer} seed {seed}: reward {report.mean_reward:.3f}  accuracy {report.accuracy:.3f}  "
              f"search ratio {report.search_ratio:.3f}", file=sys.stderr)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB

    baselines: dict[str, dict] = {}
    for name in ("direct", "rag", "oracle"):
        report = evaluate("MMSearch-v0", name, episodes=args.episodes, cache=None, progress=True)
        baselines[name] = report.to_json()
        print(f"{name:8s} reward {report.mean_reward:.3f}  accuracy {report.accuracy:.3f}  "
              f"search ratio {report.search_ratio:.3f}", file=sys.stderr)

    learned = [run["report"]["mean_reward"] for run in runs]
    label = f"{trainer} (mean of {len(runs)} seeds)" if len(runs) > 1 else f"{trainer} (seed {seeds[0]})"
    table = {label: _mean_report([run["report"] for run in runs]), **baselines}
    result = {
        "benchmark": "learn_sb3",
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count()},
        "recipe": {k: v for k, v in recipe.items() if k not in ("description", "seed")},
        "seeds": seeds,
        "train": {"train_tasks": recipe.get("env", {}).get("tasks"),
                  "max_wall_seconds": max(run["wall_seconds"] for run in runs),
                  "all_under_10_minutes": all(run["under_10_minutes"] for run in runs),
                  "peak_rss_mib": round(peak_mib)},
        "eval_env": "MMSearch-v0 (world test split, mmsearch-r1 dialect and reward, no disk cache)",
        "runs": runs,
        "baselines": baselines,
        "learned_mean_reward": {"per_seed": learned, "min": min(learned), "max": max(learned),
                                "mean": sum(learned) / len(learned)},
        "beats": {name: all(value > baselines[name]["mean_reward"] for value in learned)
                  for name in ("direct", "rag")},
        "table_markdown": _table(table),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(result["table_markdown"])
    print(f"{trainer} (every seed) beats direct: {result['beats']['direct']}, beats rag: "
          f"{result['beats']['rag']}; wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
