"""Env ids: each registered id is one declarative JSON spec in the shipped ``envs/`` folder.

``gym.make("MMSearch-v0", **overrides)`` calls ``make_env(**spec_kwargs | overrides)``, which
turns the spec's names (``"world:test"``, ``"world"``, a cache block) into objects. Users may
pass objects instead of names: ``gym.make("MMSearch-v0", tasks=my_taskset, backend=my_backend)``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.resources import resource_dir, resource_path
from mmsearch_gym.search.base import SearchBackend
from mmsearch_gym.tasks import TaskSet

ENTRY_POINT = "mmsearch_gym.registration:make_env"


def load_specs() -> list[dict[str, Any]]:
    """Every env spec shipped in ``envs/``, sorted by id."""
    specs = []
    for path in sorted(resource_dir("envs").glob("*.json")):
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ConfigError(f"env spec {path} is not valid JSON: {err}") from None
        if not isinstance(spec.get("id"), str) or not isinstance(spec.get("kwargs", {}), dict):
            raise ConfigError(f"env spec {path} needs an 'id' string and a 'kwargs' object")
        specs.append(spec)
    return sorted(specs, key=lambda s: s["id"])


def register_envs() -> list[str]:
    """Register every shipped spec with Gymnasium (idempotent); returns the ids."""
    ids = []
    for spec in load_specs():
        if spec["id"] not in gym.registry:
            gym.register(id=spec["id"], entry_point=ENTRY_POINT, kwargs=spec.get("kwargs", {}),
                         max_episode_steps=spec.get("max_episode_steps"))
        ids.append(spec["id"])
    return ids


def resolve_tasks(tasks: TaskSet | str | Mapping[str, Any]) -> TaskSet:
    """``"world:test"``, ``{"world": "train", "n": 5000, "seed": 0}``, any task-source string
    (``"jsonl:PATH"``, ``"fvqa:PATH"``, ``"infoseek:PATH"``, ``"hf:NAME"`` ...) or a TaskSet."""
    if isinstance(tasks, TaskSet):
        return tasks
    if isinstance(tasks, Mapping):
        options = dict(tasks)
        if "world" not in options:
            raise ConfigError(f"a tasks mapping needs a 'world' split key, got {sorted(options)}")
        from mmsearch_gym.world import load_tasks
        split = options.pop("world")
        return load_tasks(split, **options)
    if not isinstance(tasks, str):
        raise ConfigError(f"tasks must be a TaskSet or a source string such as 'world:SPLIT', 'jsonl:PATH', "
                          f"'infoseek:PATH' or 'hf:NAME'; got {tasks!r}")
    from mmsearch_gym.loaders import load_source  # one syntax: see mmsearch_gym.loaders.sources
    return load_source(tasks)


def resolve_backend(backend: SearchBackend | str | Mapping[str, Any]) -> SearchBackend:
    """A backend name or spec (``"world"``, ``"serpapi"``, ... see ``search/registry.py``) or a SearchBackend object."""
    from mmsearch_gym.search.registry import build_backend
    return build_backend(backend)


def wrap_cache(backend: SearchBackend, cache: Mapping[str, Any] | None) -> SearchBackend:
    """Put ``backend`` behind a SearchCache configured by a spec's ``cache`` block.

    Keys: ``mode`` (readthrough / record / replay), ``dir`` (default: the user cache dir,
    one sub-folder per backend name and version), ``cassette`` (a shipped cassette file name or
    a path, imported when the cache does not hold it yet), ``fallback`` (replay only: answer
    misses from a BM25/image index over the cassette instead of raising CacheMiss).
    """
    if not cache:
        return backend
    from mmsearch_gym.search.cache import SearchCache, default_cache_dir

    options = dict(cache)
    mode = options.pop("mode", "readthrough")
    directory = options.pop("dir", None)
    store = options.pop("store", None)
    cassette = options.pop("cassette", None)
    use_fallback = bool(options.pop("fallback", False))
    if options:
        raise ConfigError(f"unknown cache options {sorted(options)}; use mode, dir, store, cassette, fallback")
    if directory is None:
        directory = default_cache_dir() / f"{backend.name}-{backend.version}".replace("/", "_")
    cassette_path = _cassette_path(cassette) if cassette else None
    fallback = None
    if use_fallback:
        if cassette_path is None:
            raise ConfigError("cache fallback needs a cassette to index")
        from mmsearch_gym.search.fallback import CassetteFallback
        fallback = CassetteFallback.from_cassette(cassette_path)
    wrapped = SearchCache(backend, directory, mode=mode, fallback=fallback, store=store)
    if cassette_path is not None and store is not None:
        wrapped.import_cassette(cassette_path)  # idempotent; a shared store keeps no marker files
    elif cassette_path is not None:
        digest = hashlib.sha256(cassette_path.read_bytes()).hexdigest()[:16]
        marker = Path(directory) / f".imported-{digest}"  # import each cassette version once
        if not marker.exists():
            wrapped.import_cassette(cassette_path)
            marker.touch()
    return wrapped


def _cassette_path(cassette: str) -> Path:
    path = Path(cassette)
    return path if path.exists() else resource_path("offline_cache", cassette)


def make_env(*, tasks: TaskSet | str | Mapping[str, Any] = "world:test",
             backend: SearchBackend | str | Mapping[str, Any] = "world",
             cache: Mapping[str, Any] | None = None,
             grounder: Any = "annotations",
             judge: Any = None, summarizer: Any = None,
             **env_kwargs: Any):
    """Build an MMSearchEnv from spec values (names) or objects; see the module docstring.

    ``backend``, ``grounder``, ``judge`` and ``summarizer`` are named as in ``search/registry.py``.
    """
    from mmsearch_gym.env import MMSearchEnv
    from mmsearch_gym.search.registry import build_components

    parts = build_components(backend, cache=cache, grounder=grounder, judge=judge, summarizer=summarizer,
                             reward=env_kwargs.pop("reward", None), dialect=env_kwargs.get("dialect"))
    return MMSearchEnv(resolve_tasks(tasks), wrap_cache(parts.backend, cache),
                       grounder=parts.grounder, reward=parts.reward, **env_kwargs)
