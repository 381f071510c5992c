"""``mmsearch-gym make-sft``: DeepMMSearchVQA-style SFT data from a teacher's episodes.

    mmsearch-gym make-sft --env MMSearch-Train-v0 --teacher oracle --episodes 400 --out runs/sft-data
    mmsearch-gym make-sft --tasks infoseek:infoseek_train.jsonl?image_dir=oven --labels labels.jsonl \\
        --teacher openai:http://127.0.0.1:8000/v1#Qwen2.5-VL-72B-Instruct --dialect deepmmsearch-r1 \\
        --out runs/deepmmsearchvqa

The teacher plays every task with the env's real tools; the reward scorer judges; correct,
format-valid episodes are balanced 50:50 search-free / search-required (labels from
``label-search-need`` or the task category) and sampled uniformly over the taxonomy field
(:mod:`mmsearch_gym.sft_data`). Writes ``OUT/teacher.jsonl`` (resumable), ``OUT/sft.jsonl``
(for the SFT recipe: ``mmsearch-gym train sft-tiny-cpu --set sft.trajectories=OUT/sft.jsonl
--set sft.balance=null``, with the same env and tasks), ``OUT/hf/`` (a Hugging Face dataset)
and ``OUT/summary.json``.
"""

from __future__ import annotations

import argparse
import sys

from mmsearch_gym.commands.components import add_env_options

HELP = "build SFT data the DeepMMSearch-R1 way: teacher episodes, judged, balanced, topic-uniform"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", default="MMSearch-Train-v0", metavar="ID",
                        help="registered env id (default MMSearch-Train-v0)")
    parser.add_argument("--teacher", default="oracle", metavar="SPEC",
                        help="oracle | rag | transformers:PATH | openai:URL[#model] (default oracle)")
    add_env_options(parser)  # --tasks, --dialect, --set, --backend, --judge, --summarizer, --grounder
    parser.add_argument("--policy-set", action="append", default=[], metavar="KEY=VALUE", dest="policy_set",
                        help="a teacher option, JSON value")
    parser.add_argument("--labels", default=None, metavar="PATH",
                        help="label-search-need output (default: the task category decides)")
    parser.add_argument("--taxonomy", default="taxonomy", metavar="FIELD",
                        help="task meta field to sample uniformly over (default taxonomy; 'none' to skip)")
    parser.add_argument("--free-share", type=float, default=0.5, metavar="P",
                        help="share of search-free examples (default 0.5, i.e. 50:50)")
    parser.add_argument("--strict-balance", action="store_true",
                        help="fail instead of keeping unbalanced data when one label has no correct episode")
    parser.add_argument("--allow-search-on-free", action="store_true",
                        help="keep search-free episodes in which the teacher searched anyway")
    parser.add_argument("--max-examples", type=int, default=None, metavar="N", help="cap the kept examples")
    parser.add_argument("--episodes", type=int, default=None, metavar="N", help="play tasks 0..N-1 (default all)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seeds the teacher, resets and sampling")
    parser.add_argument("--batch-size", type=int, default=32, metavar="B", help="episodes per policy.act call")
    parser.add_argument("--no-hf", action="store_true", help="skip the Hugging Face dataset (OUT/hf)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (a rerun resumes)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run(args: argparse.Namespace) -> int:
    from mmsearch_gym.commands.eval import env_overrides, parse_pairs
    from mmsearch_gym.sft_data import make_sft

    summary = make_sft(args.env, args.teacher, args.out, overrides=env_overrides(args), labels=args.labels,
                       episodes=args.episodes, seed=args.seed, batch_size=args.batch_size,
                       policy_kwargs=parse_pairs(args.policy_set, "--policy-set"), progress=not args.no_progress,
                       hf=not args.no_hf, taxonomy=None if args.taxonomy == "none" else args.taxonomy,
                       free_share=args.free_share, max_examples=args.max_examples, strict=args.strict_balance,
                       allow_search_on_free=args.allow_search_on_free)
    print(summary.to_text(), end="")
    if not sum(summary.kept.values()):
        print(f"no episode kept: check the teacher (see {args.out}/teacher.jsonl)", file=sys.stderr)
        return 1
    print(f"wrote {args.out}/sft.jsonl, {args.out}/summary.json"
          + ("" if args.no_hf else f" and {args.out}/hf"), file=sys.stderr)
    return 0
