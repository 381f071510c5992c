"""``mmsearch-gym``: the command line.

Each subcommand lives in its own module under ``mmsearch_gym/commands/`` and exposes
``HELP``, ``configure(parser)`` and ``run(args) -> int``. Command modules keep their imports
light at module level so that ``mmsearch-gym --help`` is instant; heavy work is imported in
``run``.

Errors: a mistake the user can fix (any :class:`~mmsearch_gym.errors.MMSearchError`, a missing
optional extra, an unreadable or unwritable file) is one line on stderr and exit code 2; a bug
still shows its traceback, and ``mmsearch-gym --debug COMMAND`` shows it for every error.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from collections.abc import Sequence

from mmsearch_gym.errors import MMSearchError

COMMANDS = ("demo", "eval", "replay", "rescore", "render", "train", "cache", "label-search-need", "make-sft")


_OPTIONAL_MODULES = {"torch": "trl", "transformers": "trl", "trl": "trl", "datasets": "trl",
                     "accelerate": "trl", "peft": "trl", "matplotlib": "trl", "stable_baselines3": "sb3",
                     "pyarrow": "parquet"}
"""Optional dependency (top-level module) -> the pip extra that installs it."""

_USER_FILE_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                     errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.EFBIG}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmsearch-gym", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of a one-line message")
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


def _user_error(err: BaseException) -> str | None:
    """The one-line message for an error the user can fix, or None for a bug (shown with traceback).

    MMSearchError is always the user's (bad flag, bad file, strict-replay miss); a missing
    optional dependency says which extra installs it; an OSError is the user's when it names a
    file or is about the filesystem (permissions, disk full, read-only).
    """
    if isinstance(err, MMSearchError):
        return str(err)
    if isinstance(err, ModuleNotFoundError):
        root = (err.name or "").partition(".")[0]
        if root == "torch":
            return ("torch is not installed; install it (pip install torch), then the extra you need: "
                    "pip install 'mmsearch-gym[trl]' (TRL, transformers: policies) or 'mmsearch-gym[sb3]'")
        if root in _OPTIONAL_MODULES:
            return (f"{root} is not installed; it comes with an optional extra: "
                    f"pip install 'mmsearch-gym[{_OPTIONAL_MODULES[root]}]'")
        return None
    if isinstance(err, OSError) and (err.filename is not None or err.errno in _USER_FILE_ERRNOS):
        where = f": {err.filename}" if err.filename is not None else ""
        return f"{err.strerror or err}{where}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; user errors are one line on stderr with exit code 2 (``--debug``: traceback)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        message = _user_error(err)
        if message is None or args.debug:
            raise
        print(f"mmsearch-gym {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
