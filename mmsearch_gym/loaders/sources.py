"""One task-source syntax for specs, recipes and ``--tasks``.

    world:SPLIT                         the built-in world (train / test)
    jsonl:PATH                          the hand-written JSONL format
    fvqa:PATH | fvqa:hf:NAME[:CONFIG][:SPLIT]
    BENCH:PATH | BENCH:hf:NAME[:CONFIG][:SPLIT]
                                        BENCH: infoseek, mmsearch, simplevqa, livevqa, encvqa,
                                        dynvqa, okvqa, aokvqa (see loaders.benchmarks)
    hf:NAME[:CONFIG][:SPLIT]            any hub dataset with common field names

Options follow a ``?``: ``?image_dir=DIR&split=NAME&limit=N`` (image_dir: where the images of
benchmarks that ship ids or URLs were downloaded; split: the Task split to assign; limit:
keep the first N tasks), e.g. ``infoseek:data/infoseek_val.jsonl?image_dir=data/oven&limit=500``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.tasks import TaskSet

__all__ = ["SOURCE_KINDS", "load_source", "parse_source"]

SOURCE_KINDS = ("world", "jsonl", "fvqa", "infoseek", "mmsearch", "simplevqa", "livevqa", "encvqa", "dynvqa",
                "okvqa", "aokvqa", "hf")
_OPTIONS = {"image_dir", "split", "limit"}


def parse_source(source: str) -> tuple[str, str, dict[str, Any]]:
    """``(kind, location, options)`` of a task-source string; ConfigError on a bad one."""
    from mmsearch_gym.loaders.benchmarks import _ALIASES

    if not isinstance(source, str) or ":" not in source:
        raise ConfigError(f"a task source looks like KIND:LOCATION (KIND one of {list(SOURCE_KINDS)}); "
                          f"got {source!r}")
    kind, _, rest = source.partition(":")
    kind = _ALIASES.get(kind.lower(), kind.lower())
    if kind not in SOURCE_KINDS:
        raise ConfigError(f"unknown task source {kind!r} in {source!r}; use one of {list(SOURCE_KINDS)}")
    location, sep, query = rest.partition("?")
    options: dict[str, Any] = {}
    if sep:
        for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
            if key not in _OPTIONS:
                raise ConfigError(f"unknown task-source option {key!r} in {source!r}; use {sorted(_OPTIONS)}")
            options[key] = value
        if "limit" in options:
            try:
                options["limit"] = int(options["limit"])
            except ValueError:
                raise ConfigError(f"limit must be an integer in {source!r}") from None
            if options["limit"] < 1:
                raise ConfigError(f"limit must be >= 1 in {source!r}")
    if not location:
        raise ConfigError(f"task source {source!r} names no location (a path or hf:NAME)")
    return kind, location, options


def load_source(source: str) -> TaskSet:
    """The TaskSet a task-source string names (see the module docstring)."""
    kind, location, options = parse_source(source)
    if kind == "world":
        if options:
            raise ConfigError("world: sources take no ?options")
        from mmsearch_gym.world import load_tasks
        return load_tasks(location)
    if kind == "hf":
        location, kind = f"hf:{location}", "tasks"
    if kind == "jsonl" and not location.startswith("hf:") and set(options) <= {"split"}:
        from mmsearch_gym.loaders.jsonl import load_jsonl
        return load_jsonl(location, split=options.get("split"))
    if kind == "fvqa" and not location.startswith("hf:") and not options:
        from mmsearch_gym.loaders.fvqa import load_fvqa_parquet
        return load_fvqa_parquet(location)
    from mmsearch_gym.loaders.benchmarks import load_benchmark
    return load_benchmark("tasks" if kind == "jsonl" else kind, location, **options)
