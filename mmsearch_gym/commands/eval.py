"""``mmsearch-gym eval``: the papers' evaluation table for one policy on one env.

    mmsearch-gym eval --env MMSearch-v0 --policy rag --split test --episodes 200 --workers 2 \\
        --json results.json --markdown results.md --trajectories run.jsonl
    mmsearch-gym eval --policy rag --workers 8 --ray auto --cache-store redis://HEAD:6379/0   # on a cluster

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

from mmsearch_gym.commands.components import add_component_flags, component_overrides
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
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help="step the envs on --workers Ray actors (the policy stays here; results are identical): "
                             "the cluster at ADDRESS (auto, HOST:6379, ray://HOST:10001), else one started on this "
                             "machine with `ray start`, else a private local one (needs the extra: "
                             "pip install 'mmsearch-gym[ray]')")
    add_component_flags(parser)
    parser.add_argument("--prices", default=None, metavar="JSON|FILE",
                        help="US dollars per live call by backend/service, over the defaults "
                             "(e.g. '{\"serpapi\": 0.01, \"judge\": 0.0002}'); used for --json's accounting")
    parser.add_argument("--json", metavar="PATH", default=None, help="write the table as JSON")
    parser.add_argument("--markdown", metavar="PATH", default=None, help="write the table as Markdown")
    parser.add_argument("--markdown-behaviour", action="store_true", dest="markdown_behaviour",
                        help="add the search-behaviour block (crop/whole-image searches, refinements, answer "
                             "behaviour; always printed) to --markdown")
    parser.add_argument("--per-episode", action="store_true", help="include one row per episode in --json")
    parser.add_argument("--trajectories", metavar="PATH", default=None,
                        help="write one JSON line per episode (replay / rescore / render read it); an existing "
                             "non-empty file needs --append or --overwrite")
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--append", action="store_true", help="add the episodes to an existing --trajectories file")
    existing.add_argument("--overwrite", action="store_true",
                          help="replace an existing --trajectories file (the old one stays until the run succeeds)")
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
    overrides.update(component_overrides(args))
    return overrides


def trajectories_target(path: str | None, *, append: bool, overwrite: bool) -> str:
    """How ``--trajectories`` is written: "new", "append" or "overwrite"; ConfigError for a
    non-empty existing file without ``--append`` or ``--overwrite`` (checked before any episode)."""
    from pathlib import Path

    if (append or overwrite) and not path:
        raise ConfigError("--append and --overwrite apply to --trajectories FILE, which is not given")
    target = Path(path) if path else None
    if target is not None and target.exists() and not target.is_file():
        raise ConfigError(f"--trajectories {path} exists and is not a file")
    holds = target is not None and target.is_file() and target.stat().st_size > 0
    if holds and not (append or overwrite):
        raise ConfigError(f"--trajectories {path} already holds episodes; pass --append to add to it or "
                          "--overwrite to replace it")
    return "append" if (holds and append) else "overwrite" if (holds and overwrite) else "new"


def run(args: argparse.Namespace) -> int:
    import contextlib
    from pathlib import Path

    from mmsearch_gym.commands.options import check_env_overrides, check_policy_spec
    from mmsearch_gym.evaluate import evaluate
    from mmsearch_gym.fileio import atomic_path
    from mmsearch_gym.services.accounting import AccountedRun, load_prices

    # Every argument is checked before any file is touched.
    overrides = env_overrides(args)
    check_env_overrides(overrides)
    policy_kwargs = parse_pairs(args.policy_set, "--policy-set")
    check_policy_spec(args.policy)
    how = trajectories_target(args.trajectories, append=args.append, overwrite=args.overwrite)
    prices = load_prices(args.prices)
    with contextlib.ExitStack() as outputs:
        trajectories: Path | None = None
        if args.trajectories:
            # --overwrite writes a temporary file that replaces the old one only when the run succeeds;
            # a new file or --append is written episode by episode (a crash keeps finished episodes).
            trajectories = (outputs.enter_context(atomic_path(args.trajectories)) if how == "overwrite"
                            else Path(args.trajectories))
        try:
            with AccountedRun() as accounted:  # live calls and cache hits of every backend and service
                report = evaluate(args.env, args.policy, episodes=args.episodes, workers=args.workers,
                                  seed=args.seed, trajectories=trajectories, progress=not args.no_progress,
                                  batch_size=args.batch_size, embed_images=args.embed_images,
                                  policy_kwargs=policy_kwargs, executor="local" if args.ray is None else "ray",
                                  ray_address=args.ray or None, **overrides)
        except BaseException:
            if how == "new" and trajectories is not None and trajectories.is_file() \
                    and trajectories.stat().st_size == 0:
                trajectories.unlink()  # no episode finished: leave no empty file behind
            raise
    report.extra["accounting"] = accounted.report(prices, {
        "text": sum(r.text_searches for r in report.results), "image": sum(r.image_searches for r in report.results)})
    print(report.to_text(), end="")
    where = "Ray actor(s)" if args.ray is not None else "worker(s)"
    print(f"{len(report.results)} episodes in {report.wall_s:.1f} s with {args.workers} {where}", file=sys.stderr)
    calls = report.extra["accounting"]
    if calls["calls"]:
        live = ", ".join(f"{name} {c['live_calls']}" for name, c in calls["calls"].items())
        print(f"live calls: {live}; estimated cost ${calls['total_cost_usd']:.4f}", file=sys.stderr)
    if args.json:
        with atomic_path(args.json) as tmp:
            report.save_json(tmp, include_episodes=args.per_episode)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.markdown:
        with atomic_path(args.markdown) as tmp:
            report.save_markdown(tmp, behaviour=args.markdown_behaviour)
        print(f"wrote {args.markdown}", file=sys.stderr)
    if args.trajectories:
        n = len(report.results)
        print({"append": f"appended {n} trajectories to {args.trajectories}",
               "overwrite": f"replaced {args.trajectories} with {n} trajectories",
               "new": f"wrote {n} trajectories to {args.trajectories}"}[how], file=sys.stderr)
    return 0
