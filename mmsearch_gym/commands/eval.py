"""``mmsearch-gym eval``: the papers' evaluation table for one policy on one env.

    mmsearch-gym eval --env MMSearch-v0 --policy rag --split test --episodes 200 --workers 2 \\
        --json results.json --markdown results.md --trajectories run.jsonl

Task source: by default the env's own tasks (``MMSearch-v0``: the built-in world's test
split). ``--split train|test`` replaces them with that split of the built-in world (the env's
dialect, reward, backend and cache stay); ``--tasks SOURCE`` takes any source
(``jsonl:PATH``, ``fvqa:PATH``, ``world:SPLIT``). Giving both is an error.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mmsearch_gym.errors import ConfigError

HELP = "evaluate a policy on an env: accuracy, search ratio, calls per tool, format rate, reward"


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``eval`` and ``demo``."""
    parser.add_argument("--workers", type=int, default=1, metavar="W",
                        help="env worker processes (results are identical for any W; default 1)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="B",
                        help="episodes running at once, i.e. per policy.act call (default 32)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="episode i is reset with seed S+i; also seeds the policy (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", default="MMSearch-v0", metavar="ID", help="registered env id (default MMSearch-v0)")
    parser.add_argument("--policy", default="rag", metavar="SPEC",
                        help="direct | rag | oracle | random | transformers:PATH | openai:URL[#model] | sb3:PATH")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--split", choices=("test", "train"), default=None,
                        help="play this split of the built-in world instead of the env's own tasks")
    source.add_argument("--tasks", default=None, metavar="SOURCE",
                        help="task source instead of the env's own: world:SPLIT, jsonl:PATH, fvqa:PATH, "
                        "BENCH:PATH or BENCH:hf:NAME[:CONFIG][:SPLIT] (BENCH: infoseek, mmsearch, simplevqa, "
                        "livevqa, encvqa, dynvqa, okvqa, aokvqa), hf:NAME; options ?image_dir=DIR&limit=N")
    parser.add_argument("--episodes", type=int, default=None, metavar="N",
                        help="play tasks 0..N-1 (default: every task)")
    parser.add_argument("--dialect", default=None, choices=("mmsearch-r1", "deepmmsearch-r1", "tool-json"),
                        help="action grammar (default: the env's); the reward follows it unless --reward is given")
    parser.add_argument("--reward", default=None, choices=("mmsearch-r1", "deepmmsearch-r1"),
                        help="reward preset (default: the env's, or the one matching --dialect)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="env_set",
                        help="another env override, JSON value (e.g. --set max_turns=5 --set top_k=3)")
    parser.add_argument("--policy-set", action="append", default=[], metavar="KEY=VALUE", dest="policy_set",
                        help="a policy option, JSON value (e.g. --policy-set max_new_tokens=64 for transformers:)")
    add_run_options(parser)
    parser.add_argument("--json", metavar="PATH", default=None, help="write the table as JSON")
    parser.add_argument("--markdown", metavar="PATH", default=None, help="write the table as Markdown")
    parser.add_argument("--per-episode", action="store_true", help="include one row per episode in --json")
    parser.add_argument("--trajectories", metavar="PATH", default=None,
                        help="append one JSON line per episode (replay / rescore / render read it)")
    parser.add_argument("--embed-images", action="store_true",
                        help="store task-image and result thumbnails in the trajectories (for render)")


def parse_pairs(pairs: list[str], flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as a dict; a value is read as JSON, else kept as the plain string."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} takes KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def env_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The env kwargs the flags ask for (JSON values only, so workers and replays can rebuild it)."""
    overrides = parse_pairs(getattr(args, "env_set", []) or [], "--set")
    if getattr(args, "split", None):
        overrides["tasks"] = f"world:{args.split}"
    if getattr(args, "tasks", None):
        overrides["tasks"] = args.tasks
    if getattr(args, "dialect", None):
        overrides["dialect"] = args.dialect
        overrides.setdefault("reward", None)  # the preset matching the dialect
    if getattr(args, "reward", None):
        overrides["reward"] = args.reward
    return overrides


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mmsearch_gym.evaluate import evaluate

    if args.trajectories and Path(args.trajectories).is_file() and Path(args.trajectories).stat().st_size:
        print(f"note: appending to {args.trajectories}, which already holds episodes "
              "(replay, rescore and render read every line)", file=sys.stderr)

    report = evaluate(args.env, args.policy, episodes=args.episodes, workers=args.workers, seed=args.seed,
                      trajectories=args.trajectories, progress=not args.no_progress, batch_size=args.batch_size,
                      embed_images=args.embed_images, policy_kwargs=parse_pairs(args.policy_set, "--policy-set"),
                      **env_overrides(args))
    print(report.to_text(), end="")
    print(f"{len(report.results)} episodes in {report.wall_s:.1f} s with {args.workers} worker(s)", file=sys.stderr)
    if args.json:
        report.save_json(args.json, include_episodes=args.per_episode)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.markdown:
        report.save_markdown(args.markdown)
        print(f"wrote {args.markdown}", file=sys.stderr)
    if args.trajectories:
        print(f"appended {len(report.results)} trajectories to {args.trajectories}", file=sys.stderr)
    return 0
