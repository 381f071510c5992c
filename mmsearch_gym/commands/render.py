"""``mmsearch-gym render``: one self-contained HTML report of recorded trajectories.

    mmsearch-gym render run.jsonl -o report.html

Images embedded at record time (``eval --embed-images``) are used as is; otherwise the task
image is rebuilt from the env's task source and result thumbnails are read from the run's
search cache (read-only), each checked against its recorded content hash.
"""

from __future__ import annotations

import argparse
import sys

HELP = "write a self-contained HTML report (metrics, images with crop boxes, every turn) of trajectories"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trajectories", metavar="FILE", help="trajectories JSONL written by eval --trajectories")
    parser.add_argument("-o", "--output", metavar="HTML", default="report.html",
                        help="output file (default report.html)")
    parser.add_argument("--title", default="mmsearch_gym report", help="report title")
    parser.add_argument("--max-episodes", type=int, default=100, metavar="N",
                        help="episodes per policy shown in full (the tables cover all; default 100)")
    parser.add_argument("--no-resolve", action="store_true",
                        help="use only images embedded in the trajectories (never read task sources or caches)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mmsearch_gym.fileio import atomic_path
    from mmsearch_gym.render import write_report

    with atomic_path(args.output) as tmp:  # a bad trajectories file leaves an earlier report as it was
        write_report(args.trajectories, tmp, title=args.title, max_episodes=args.max_episodes,
                     resolve_images=not args.no_resolve)
    path = Path(args.output)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
    print(str(path))
    return 0
