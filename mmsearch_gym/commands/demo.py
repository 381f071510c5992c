"""``mmsearch-gym demo``: the scripted baselines on MMSearch-v0, one table, a JSON, a Markdown and
an HTML report, in about a minute on a laptop, with no network and no model.

    mmsearch-gym demo                 # DEFAULT_EPISODES tasks of the test split, into demo_out/
    mmsearch-gym demo --episodes 300 --out runs/demo --workers 2

``direct`` never searches, ``rag`` always searches (image, then text), ``oracle`` makes the
minimal correct tool calls of each task; the gap between them is what a learned search policy
can win.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mmsearch_gym.commands.components import add_component_flags, component_overrides
from mmsearch_gym.commands.eval import add_run_options

HELP = "evaluate the scripted baselines (direct, rag, oracle) on MMSearch-v0 and write a report"

DEFAULT_EPISODES = 500
"""Tasks per policy by default (100 per category): the demo then takes 30 to 40 s on 2 busy CPU
cores with a cold search cache; `--episodes 1000` plays the whole test split (about a minute)."""
POLICIES = ("direct", "rag", "oracle")
REPORT_EPISODES = 40
"""Episodes per policy shown in full in the HTML report (the tables cover all of them)."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--episodes", type=int, default=DEFAULT_EPISODES, metavar="N",
                        help=f"tasks per policy (default {DEFAULT_EPISODES}; the test split has about 1,000)")
    parser.add_argument("--out", default="demo_out", metavar="DIR", help="output folder (default demo_out/)")
    parser.add_argument("--env", default="MMSearch-v0", metavar="ID", help="env id (default MMSearch-v0)")
    parser.add_argument("--policies", default=",".join(POLICIES), metavar="LIST",
                        help="comma-separated policy specs (default direct,rag,oracle)")
    parser.add_argument("--report-episodes", type=int, default=REPORT_EPISODES, metavar="K",
                        help=f"episodes per policy shown in full in report.html (default {REPORT_EPISODES})")
    add_run_options(parser)
    add_component_flags(parser)


def run(args: argparse.Namespace) -> int:
    import contextlib

    from mmsearch_gym.commands.options import check_policy_spec
    from mmsearch_gym.errors import ConfigError
    from mmsearch_gym.evaluate import EvalReport, evaluate, format_reports
    from mmsearch_gym.fileio import atomic_path
    from mmsearch_gym.render import write_report
    from mmsearch_gym.trajectories import TrajectoryWriter

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if not policies:
        raise ConfigError("--policies needs at least one policy spec")
    for policy in policies:
        check_policy_spec(policy)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    names = ("trajectories.jsonl", "results.json", "results.md", "report.html")
    started = time.perf_counter()
    reports: dict[str, EvalReport] = {}
    # Every output is written to a temporary file and replaces the old one only when all are done:
    # a failed or interrupted demo leaves an earlier demo's files as they were.
    with contextlib.ExitStack() as outputs:
        tmp = {name: outputs.enter_context(atomic_path(out / name)) for name in names}
        with TrajectoryWriter(tmp["trajectories.jsonl"], mode="w") as writer:
            for policy in policies:
                reports[policy] = evaluate(args.env, policy, episodes=args.episodes, workers=args.workers,
                                           seed=args.seed, trajectories=writer, progress=not args.no_progress,
                                           batch_size=args.batch_size, **component_overrides(args))
        title = f"{args.env} · {args.episodes} episodes per policy · seed {args.seed}"
        table = format_reports(reports, "text", title=title)
        print(table, end="")
        tmp["results.json"].write_text(json.dumps({p: r.to_json() for p, r in reports.items()}, indent=2,
                                                  sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp["results.md"].write_text(format_reports(reports, "markdown", title=title), encoding="utf-8")
        # Pixels are not embedded in the trajectories (they stay small); the report rebuilds the task
        # images from the world and reads result thumbnails from the run's cache, hash-checked.
        write_report(tmp["trajectories.jsonl"], tmp["report.html"], title=f"mmsearch_gym demo: {title}",
                     max_episodes=args.report_episodes)
    elapsed = time.perf_counter() - started
    print(f"\ndemo finished in {elapsed:.1f} s; wrote {out / 'results.json'}, {out / 'results.md'}, "
          f"{out / 'report.html'} and {out / 'trajectories.jsonl'}", file=sys.stderr)
    return 0
