"""``mmsearch-gym rescore``: the recorded turns under another reward, with no env and no search.

    mmsearch-gym rescore run.jsonl --reward deepmmsearch-r1 --json rescored.json

The turns were written in the recorded dialect, so by default the new spec keeps that dialect's
format rule and search counting and changes only the scorer, format weight and search penalty;
``--spec-dialect`` applies the preset's own dialect instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mmsearch_gym.commands.components import add_component_flags, parse_component
from mmsearch_gym.errors import ConfigError
from mmsearch_gym.reward import SCORERS

HELP = "recompute rewards of recorded trajectories under another reward spec (no env, no search)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trajectories", metavar="FILE", help="trajectories JSONL written by eval --trajectories")
    parser.add_argument("--reward", required=True, choices=("mmsearch-r1", "deepmmsearch-r1"),
                        help="reward preset to score with")
    parser.add_argument("--scorer", choices=sorted(SCORERS), default=None, help="override the scorer")
    parser.add_argument("--format-weight", type=float, default=None, metavar="F", help="override f")
    parser.add_argument("--search-penalty", type=float, default=None, metavar="P", help="override p")
    parser.add_argument("--penalty-per-search", action="store_true", help="apply the penalty once per search")
    parser.add_argument("--spec-dialect", action="store_true",
                        help="use the preset's dialect for the format rule (default: the recorded dialect)")
    add_component_flags(parser, ("judge",))
    parser.add_argument("--judge-cache", default=None, metavar="DIR",
                        help="cache dir whose services/ holds the judge's verdicts (default: the recorded run's)")
    parser.add_argument("--offline", action="store_true",
                        help="never call the judge: a verdict not recorded is an error (strict replay)")
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="write {\"recorded\": {policy: table}, \"rescored\": {policy: table}} as JSON")


def build_spec(args: argparse.Namespace, dialect: str | None, cache: dict[str, Any] | None = None) -> Any:
    from mmsearch_gym.reward import RewardSpec

    overrides: dict[str, Any] = {}
    if args.scorer:
        overrides["scorer"] = args.scorer
    if getattr(args, "component_judge", None):
        overrides["scorer"] = judge_from_args(args, cache)
    if args.format_weight is not None:
        overrides["format_weight"] = args.format_weight
    if args.search_penalty is not None:
        overrides["search_penalty"] = args.search_penalty
    if args.penalty_per_search:
        overrides["penalty_per_search"] = True
    if dialect is not None and not args.spec_dialect:
        overrides["dialect"] = dialect
    return RewardSpec.from_name(args.reward, **overrides)


def run(args: argparse.Namespace) -> int:
    from mmsearch_gym.evaluate import EvalReport, format_reports
    from mmsearch_gym.fileio import write_text_atomic
    from mmsearch_gym.trajectories import read_trajectories, rescore

    trajectories = read_trajectories(args.trajectories)
    if not trajectories:
        raise ConfigError(f"{args.trajectories} holds no trajectories")
    groups: dict[tuple[str, str], list[Any]] = {}
    for traj in trajectories:
        groups.setdefault((traj.policy, str(traj.env.get("dialect"))), []).append(traj)
    recorded: dict[str, EvalReport] = {}
    rescored: dict[str, EvalReport] = {}
    for (policy, dialect), items in groups.items():
        label = policy if sum(1 for p, _ in groups if p == policy) == 1 else f"{policy} ({dialect})"
        spec = build_spec(args, dialect, items[0].env.get("cache"))
        recorded[label] = EvalReport.from_trajectories(items)
        rescored[label] = EvalReport.from_trajectories(items, rewards=rescore(items, spec),
                                                       reward_spec=spec.describe())
    first_spec = next(iter(recorded.values())).reward_spec or {}
    new_spec = next(iter(rescored.values())).reward_spec or {}
    print(format_reports(recorded, "text", title=f"recorded reward: {_spec_label(first_spec)}"))
    print(format_reports(rescored, "text", title=f"rescored reward: {_spec_label(new_spec)}"), end="")
    if args.json:
        data = {"recorded": {k: r.to_json() for k, r in recorded.items()},
                "rescored": {k: r.to_json() for k, r in rescored.items()}}
        write_text_atomic(args.json, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def judge_from_args(args: argparse.Namespace, recorded_cache: Any) -> Any:
    """The ``--judge`` over the recorded run's service cache (or ``--judge-cache``), strict with ``--offline``."""
    from mmsearch_gym.search.registry import build_judge

    directory = args.judge_cache or (recorded_cache.get("dir") if isinstance(recorded_cache, dict) else None)
    cache = {"mode": "replay" if args.offline else "readthrough"}
    if directory:
        cache["dir"] = directory
    return build_judge(parse_component(args.component_judge), cache)


def _spec_label(spec: dict[str, Any]) -> str:
    if not spec:
        return "?"
    extra = " per search" if spec.get("penalty_per_search") else ""
    return (f"{spec.get('name')} (scorer {spec.get('scorer')}, format weight {spec.get('format_weight')}, "
            f"search penalty {spec.get('search_penalty')}{extra}, format rule {spec.get('dialect')})")
