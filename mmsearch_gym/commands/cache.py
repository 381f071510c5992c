"""``mmsearch-gym cache``: inspect, export, import, verify and repair search caches and cassettes.

    mmsearch-gym cache stats DIR|--cache-store URL [--json]
    mmsearch-gym cache export DIR|--cache-store URL -o FILE [--backend NAME[@VERSION]]
    mmsearch-gym cache import FILE --dir DIR|--cache-store URL
    mmsearch-gym cache verify FILE|--dir DIR|--cache-store URL [--json]
    mmsearch-gym cache repair DIR|--cache-store URL [--json]

A store is a cache directory or a ``redis://HOST:PORT/DB`` URL.
"""

from __future__ import annotations

import argparse
import json
import sys

from mmsearch_gym.errors import ConfigError, MMSearchError

HELP = "inspect, export, import, verify and repair search caches and cassettes"
_STORE_HELP = "a Redis store (redis://HOST:PORT/DB) instead of a cache directory"


def _store_args(parser: argparse.ArgumentParser, *, positional: bool) -> None:
    if positional:
        parser.add_argument("directory", metavar="DIR", nargs="?", default=None, help="cache directory")
    else:
        parser.add_argument("--dir", dest="directory", metavar="DIR", default=None, help="cache directory")
    parser.add_argument("--cache-store", metavar="URL", default=None, help=_STORE_HELP)


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cache_command", metavar="ACTION", required=True)

    stats = sub.add_parser("stats", help="entries, size, lifetime hits/misses and backends of a cache")
    _store_args(stats, positional=True)
    stats.add_argument("--json", action="store_true", help="print one JSON object")

    export = sub.add_parser("export", help="write a cache to a cassette (JSONL)")
    _store_args(export, positional=True)
    export.add_argument("-o", "--output", metavar="FILE", required=True, help="cassette file to write")
    export.add_argument("--backend", metavar="NAME[@VERSION]", default=None,
                        help="which backend's entries to export when the cache holds several")

    imp = sub.add_parser("import", help="validate a cassette and load it into a cache")
    imp.add_argument("cassette", metavar="FILE", help="cassette file")
    _store_args(imp, positional=False)

    verify = sub.add_parser("verify", help="check a cassette line by line, or a cache's entries (exit 1 if bad)")
    verify.add_argument("cassette", metavar="FILE", nargs="?", default=None, help="cassette file")
    _store_args(verify, positional=False)
    verify.add_argument("--json", action="store_true", help="print one JSON object")

    repair = sub.add_parser("repair", help="drop damaged entries and orphaned value files of a cache")
    _store_args(repair, positional=True)
    repair.add_argument("--json", action="store_true", help="print one JSON object")


def _location(args: argparse.Namespace, flag: str) -> str:
    given = [v for v in (args.directory, args.cache_store) if v is not None]
    if len(given) != 1:
        raise ConfigError(f"give exactly one of {flag} and --cache-store URL")
    return given[0]


def run(args: argparse.Namespace) -> int:
    action = args.cache_command
    if action == "stats":
        return _stats(args)
    if action == "export":
        from mmsearch_gym.search.cassette import export_cassette

        source = _location(args, "DIR")
        n = export_cassette(source, args.output, backend=args.backend)
        print(f"exported {n} entries from {source} to {args.output}")
        return 0
    if action == "import":
        from mmsearch_gym.search.cassette import import_cassette

        target = _location(args, "--dir DIR")
        n = import_cassette(target, args.cassette)
        print(f"imported {n} entries from {args.cassette} into {target}")
        return 0
    if action == "verify":
        if args.cassette is not None:
            if args.directory is not None or args.cache_store is not None:
                raise ConfigError("verify takes a cassette FILE or --dir DIR / --cache-store URL, not both")
            return _verify_cassette(args)
        return _verify_store(args)
    if action == "repair":
        return _repair(args)
    raise AssertionError(f"unknown cache action {action!r}")  # argparse guarantees one of the above


def _stats(args: argparse.Namespace) -> int:
    from mmsearch_gym.search.cache import summarize_cache

    summary = summarize_cache(_location(args, "DIR"))
    if args.json:
        print(json.dumps(summary.to_json(), sort_keys=True))
        return 0
    print(f"cache     {summary.directory}")
    print(f"entries   {summary.entries}"
          + (f" ({', '.join(f'{n} {kind}' for kind, n in summary.kinds.items())})" if summary.kinds else ""))
    print(f"bytes     {summary.bytes}")
    print(f"hits      {summary.hits} (lifetime, from closed SearchCaches)")
    print(f"misses    {summary.misses}")
    for backend, n in summary.backends.items():
        print(f"backend   {backend}: {n} entries")
    if summary.damaged:
        print(f"damaged   {summary.damaged} entries (served as misses; `mmsearch-gym cache repair` drops them)")
    for problem in summary.problems:
        print(f"problem   {problem}")
    return 0


def _verify_cassette(args: argparse.Namespace) -> int:
    from mmsearch_gym.search.cassette import verify_cassette

    try:
        info = verify_cassette(args.cassette)
    except MMSearchError as err:
        print(f"mmsearch-gym cache verify: {args.cassette} is not a valid cassette: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info.to_json(), sort_keys=True))
    else:
        print(f"ok: {info.path}: cassette format {info.format_version}, backend "
              f"{info.backend}@{info.backend_version}, {info.entries} entries ({info.text_entries} text, "
              f"{info.image_entries} image), {info.blobs} images, {info.bytes} bytes")
    return 0


def _verify_store(args: argparse.Namespace) -> int:
    from mmsearch_gym.search.store_check import verify_store

    location = _location(args, "a cassette FILE, --dir DIR")
    report = verify_store(location)
    if args.json:
        print(json.dumps(report.to_json(), sort_keys=True))
    else:
        status = "ok" if report.ok else "damaged"
        print(f"{status}: {report.location}: {report.entries} intact entries, {len(report.damaged)} damaged, "
              f"{len(report.orphans)} orphaned value files ({report.orphan_bytes} bytes)")
        for problem in report.problems:
            print(f"problem: {problem}")
        if not report.ok:
            print(f"run `mmsearch-gym cache repair {location}` to drop them")
    return 0 if report.ok else 1


def _repair(args: argparse.Namespace) -> int:
    from mmsearch_gym.search.store_check import repair_store

    result = repair_store(_location(args, "DIR"))
    if args.json:
        print(json.dumps(result.to_json(), sort_keys=True))
    else:
        print(f"repaired {result.location}: dropped {result.dropped_entries} damaged entries, removed "
              f"{result.removed_files} orphaned value files ({result.removed_bytes} bytes)"
              f"{', reset damaged counters' if result.counters_reset else ''}; {result.kept_entries} entries kept")
    return 0
