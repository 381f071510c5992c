"""``mmsearch-gym``: the command line.

Each subcommand lives in its own module under ``mmsearch_gym/commands/`` and exposes
``HELP``, ``configure(parser)`` and ``run(args) -> int``. Command modules keep their imports
light at module level so that ``mmsearch-gym --help`` is instant; heavy work is imported in
``run``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from mmsearch_gym.errors import MMSearchError

COMMANDS = ("demo", "eval", "replay", "rescore", "render", "train", "cache", "label-search-need", "make-sft")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmsearch-gym", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"mmsearch_gym.commands.{name.replace('-', '_')}")
        except ModuleNotFoundError as err:
            if err.name != f"mmsearch_gym.commands.{name.replace('-', '_')}":
                raise
            continue
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.configure(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except MMSearchError as err:
        print(f"mmsearch-gym {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
