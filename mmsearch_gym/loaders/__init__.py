"""Task sources: the built-in world, JSONL, MMSearch-R1's FVQA, the papers' benchmarks, ``hf:``.

One syntax names them all (:func:`load_source`, used by specs, recipes and ``--tasks``):
``world:test``, ``jsonl:PATH``, ``fvqa:PATH``, ``infoseek:PATH?image_dir=DIR``,
``simplevqa:hf:m-a-p/SimpleVQA:test``, ``hf:NAME[:CONFIG][:SPLIT]`` ... Every malformed input
raises a :class:`~mmsearch_gym.errors.DataError` naming the file and row.

Modules: ``jsonl`` (the hand-written format), ``fvqa`` (FVQA parquet and its released search
cache), ``rows`` (reading files and the offline hub; images as bytes, paths, ids or URLs),
``benchmarks`` (one row mapper per benchmark, with where its schema comes from), ``sources``
(the source syntax).
"""

from mmsearch_gym.loaders.benchmarks import (
           BENCHMARKS,
           Benchmark,
           answer_aliases,
           load_benchmark,
)
from mmsearch_gym.loaders.fvqa import (
           extract_question,
           fvqa_search_cassette,
           load_fvqa_parquet,
)
from mmsearch_gym.loaders.jsonl import load_jsonl
from mmsearch_gym.loaders.sources import SOURCE_KINDS, load_source, parse_source

__all__ = ["BENCHMARKS", "SOURCE_KINDS", "Benchmark", "answer_aliases", "extract_question",
           "fvqa_search_cassette", "load_benchmark", "load_fvqa_parquet", "load_jsonl", "load_source",
           "parse_source"]
