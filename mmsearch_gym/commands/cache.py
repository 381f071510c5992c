"""``mmsearch-gym cache``: inspect, export, import and verify search caches and cassettes.

    mmsearch-gym cache stats DIR [--json]
    mmsearch-gym cache export DIR -o FILE [--backend NAME[@VERSION]]
    mmsearch-gym cache import FILE --dir DIR
    mmsearch-gym cache verify FILE [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

from mmsearch_gym.errors import MMSearchError

HELP = "inspect, export, import and verify search caches and cassettes"


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cache_command", metavar="ACTION", required=True)

    stats = sub.add_parser("stats", help="entries, size, lifetime hits/misses and backends of a cache directory")
    stats.add_argument("directory", metavar="DIR", help="cache directory")
    stats.add_argument("--json", action="store_true", help="print one JSON object")

    export = sub.add_parser("export", help="write a cache directory to a cassette (JSONL)")
    export.add_argument("directory", metavar="DIR", help="cache directory")
    export.add_argument("-o", "--output", metavar="FILE", required=True, help="cassette file to write")
    export.add_argument("--backend", metavar="NAME[@VERSION]", default=None,
                        help="which backend's entries to export when the directory holds several")

    imp = sub.add_parser("import", help="validate a cassette and load it into a cache directory")
    imp.add_argument("cassette", metavar="FILE", help="cassette file")
    imp.add_argument("--dir", dest="directory", metavar="DIR", required=True, help="cache directory")

    verify = sub.add_parser("verify", help="check a cassette line by line (exit 1 if bad)")
    verify.add_argument("cassette", metavar="FILE", help="cassette file")
    verify.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from mmsearch_gym.search.cache import summarize_cache
    from mmsearch_gym.search.cassette import export_cassette, import_cassette, verify_cassette

    action = args.cache_command
    if action == "stats":
        summary = summarize_cache(args.directory)
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
        return 0
    if action == "export":
        n = export_cassette(args.directory, args.output, backend=args.backend)
        print(f"exported {n} entries from {args.directory} to {args.output}")
        return 0
    if action == "import":
        n = import_cassette(args.directory, args.cassette)
        print(f"imported {n} entries from {args.cassette} into {args.directory}")
        return 0
    if action == "verify":
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
    raise AssertionError(f"unknown cache action {action!r}")  # argparse guarantees one of the above
