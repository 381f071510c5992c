"""``mmsearch-gym replay``: re-execute recorded episodes and prove they reproduce bit for bit.

    mmsearch-gym replay run.jsonl                      # the run's own cache dir, strict replay
    mmsearch-gym replay run.jsonl --cassette world-test.jsonl
    mmsearch-gym replay run.jsonl --cache-dir ~/.cache/mmsearch_gym/world-...
    mmsearch-gym replay run.jsonl --tasks fvqa:fvqa_test.parquet --cache-dir runs/fvqa-cache

Exit 0 when every observation, hit list and reward matches; exit 1 with a unified diff of the
first mismatching turn (or the CacheMiss of a search that was never recorded) otherwise.
"""

from __future__ import annotations

import argparse
import sys

from mmsearch_gym.commands.components import add_component_flags

HELP = "re-run recorded trajectories in strict cache replay and check every turn is identical"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trajectories", metavar="FILE", help="trajectories JSONL written by eval --trajectories")
    parser.add_argument("--env", default=None, metavar="ID",
                        help="env id to replay on (default: the id recorded in each trajectory)")
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument("--cassette", default=None, metavar="FILE",
                       help="answer searches only from this cassette (strict replay in a fresh directory)")
    cache.add_argument("--cache-dir", default=None, metavar="DIR",
                       help="strict replay over this cache directory instead of the recorded one")
    parser.add_argument("--tasks", default=None, metavar="SOURCE",
                        help="the task source the run was recorded on, when it is a file (replay takes no path "
                             "from the trajectory file)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="env_set",
                        help="override an env keyword argument (JSON value), as in eval")
    add_component_flags(parser)
    parser.add_argument("--all", action="store_true",
                        help="check every episode instead of stopping at the first mismatch")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run(args: argparse.Namespace) -> int:
    from mmsearch_gym.commands.eval import env_overrides
    from mmsearch_gym.commands.options import check_env_overrides
    from mmsearch_gym.replay import replay

    overrides = env_overrides(args)
    check_env_overrides(overrides)
    report = replay(args.trajectories, env=args.env, cassette=args.cassette, cache_dir=args.cache_dir,
                    overrides=overrides, stop_at_first=not args.all, progress=not args.no_progress)
    if report.ok:
        print(report.summary())
        return 0
    first = report.mismatches[0]
    print(f"replay mismatch in {first.describe()}:", file=sys.stderr)
    print(first.diff, end="" if first.diff.endswith("\n") else "\n", file=sys.stderr)
    if len(report.mismatches) > 1:
        others = ", ".join(str(m.episode) for m in report.mismatches[1:20])
        print(f"other mismatching episodes: {others}{' ...' if len(report.mismatches) > 20 else ''}",
              file=sys.stderr)
    print(report.summary())
    return 1
