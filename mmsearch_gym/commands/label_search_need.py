"""``mmsearch-gym label-search-need``: which tasks a model answers without search.

    mmsearch-gym label-search-need --tasks simplevqa:hf:m-a-p/SimpleVQA:test \\
        --policy openai:http://127.0.0.1:8000/v1#Qwen2.5-VL-7B-Instruct -k 4 --min-correct 4 \\
        --out labels.jsonl --balanced balanced.jsonl

MMSearch-R1's recipe (:mod:`mmsearch_gym.search_need`): the policy answers every task ``k``
times with search disabled (search budgets 0, one turn, a tool-free system prompt); a task is
``search_free`` when at least ``--min-correct`` answers are correct (default: all ``k``), else
``search_required``. Labels are appended to ``--out`` chunk by chunk, and a rerun skips tasks
already labelled there; ``--balanced`` is rewritten from all labels: as many search-free as
search-required tasks (seeded sample of the larger group).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from mmsearch_gym.commands.components import add_env_options

HELP = "label tasks search-free / search-required by answering them k times without search"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", default="MMSearch-v0", metavar="ID", help="registered env id (default MMSearch-v0)")
    parser.add_argument("--policy", default="direct", metavar="SPEC",
                        help="the model to probe: direct | transformers:PATH | openai:URL[#model] ... (default direct)")
    add_env_options(parser)  # --tasks, --dialect, --set, --backend, --judge, --summarizer, --grounder
    parser.add_argument("--policy-set", action="append", default=[], metavar="KEY=VALUE", dest="policy_set",
                        help="a policy option, JSON value (e.g. --policy-set temperature=1.0)")
    parser.add_argument("-k", type=int, default=4, help="no-search answers per task (default 4)")
    parser.add_argument("--min-correct", type=int, default=None, metavar="M",
                        help="search-free when at least M of the k answers are correct (default: k)")
    parser.add_argument("--episodes", type=int, default=None, metavar="N", help="label tasks 0..N-1 (default all)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seeds the policy and the resets")
    parser.add_argument("--batch-size", type=int, default=32, metavar="B", help="episodes per policy.act call")
    parser.add_argument("--chunk", type=int, default=64, metavar="C",
                        help="tasks labelled (and appended to --out) at a time (default 64)")
    parser.add_argument("--out", required=True, metavar="PATH", help="labels JSONL (appended; a rerun resumes)")
    parser.add_argument("--balanced", default=None, metavar="PATH",
                        help="write the balanced subset of all labels here (replaced each run)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run(args: argparse.Namespace) -> int:
    from mmsearch_gym.commands.eval import env_overrides, parse_pairs
    from mmsearch_gym.errors import ConfigError
    from mmsearch_gym.search_need import (
        SearchNeedRule,
        balanced_labels,
        label_search_need,
        write_jsonl,
    )

    if args.chunk < 1 or args.batch_size < 1:
        raise ConfigError("--chunk and --batch-size must be >= 1")
    rule = SearchNeedRule(k=args.k, min_correct=args.min_correct)
    labels = label_search_need(args.env, args.policy, args.out, rule=rule, overrides=env_overrides(args),
                               episodes=args.episodes, seed=args.seed, batch_size=args.batch_size, chunk=args.chunk,
                               policy_kwargs=parse_pairs(args.policy_set, "--policy-set"),
                               progress=not args.no_progress)
    counts = Counter(r["label"] for r in labels.values())
    print(f"{len(labels)} tasks labelled in {args.out}: {counts.get('search_free', 0)} search-free, "
          f"{counts.get('search_required', 0)} search-required (rule: search-free if >= {rule.threshold} "
          f"of {rule.k} no-search answers are correct)")
    if args.balanced:
        n = write_jsonl(balanced_labels(labels, seed=args.seed), args.balanced)
        print(f"wrote {n} balanced labels ({n // 2} of each) to {args.balanced}", file=sys.stderr)
    return 0
