"""Components by name: search backends, readers, summarisers, judges and grounders from specs.

A spec is a name or a JSON mapping, so env specs, recipes, ``--set`` and CLI flags can name
every live part of a run and a trajectory can rebuild it::

    "world"                                       the built-in offline engine
    "serpapi"  or  "serpapi:BASE_URL"             Google web search + Google Lens via SerpApi
    {"name": "serpapi", "api_key_env": "SERPAPI_API_KEY", "gl": "us", "image_host": {...}}
    "searxng:http://localhost:8888"               a SearXNG instance (text only)
    "google-vision"                               Google Cloud Vision web detection (images only)
    {"name": "compose", "text": "serpapi", "image": "google-vision"}
    any of them + {"reader": "jina", "summarizer": "openai:URL#MODEL", "summarize_images": true}

Judges, summarisers and VLM grounders are ``openai:BASE_URL#MODEL`` (or a mapping, see
:func:`mmsearch_gym.services.client.parse_service_spec`); grounders are also ``annotations``
(the built-in one), ``none``, or ``detector:MODEL_DIR_OR_HUB_ID`` (Grounding DINO / OWLv2,
needs the transformers extra).

Secrets come only from environment variables: a spec names the variable (``api_key_env``),
never the value; a spec holding ``api_key`` is refused, and a missing key is a ConfigError
naming the variable, except in a strict replay (cache mode ``replay``), which never calls a
backend and so replays a shared cassette without anyone's key.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.search.base import Hit, ImageQuery, SearchBackend
from mmsearch_gym.search.http import Secret

__all__ = [
    "BACKENDS",
    "Components",
    "ComposedBackend",
    "build_backend",
    "build_components",
    "build_grounder",
    "build_judge",
    "build_summarizer",
    "service_cache",
]


_REPLAY: contextvars.ContextVar[bool] = contextvars.ContextVar("mmsearch_gym_replay", default=False)
"""Set while building the backend of a strict-replay env: missing keys are then not an error."""


def _secret(options: dict[str, Any], default_env: str, service: str, *, required: bool = True) -> Secret | None:
    """The key named by ``options['api_key_env']`` (default ``default_env``), from the environment."""
    if "api_key" in options:
        raise ConfigError(f"{service} spec holds an API key value; name its environment variable instead "
                          f"(\"api_key_env\": \"{default_env}\") so that no key lands in a spec, a log or a trajectory")
    var = options.pop("api_key_env", None) or default_env
    value = os.environ.get(str(var), "").strip()
    if not value:
        if required and _REPLAY.get():  # a strict replay never calls the backend: no key needed
            return Secret(f"unset-{var}-in-replay")
        if required:
            raise ConfigError(f"{service} needs an API key: set the environment variable {var}")
        return None
    return Secret(value)


_DETECTOR_MODULE = "mmsearch_gym.integrations.detector_grounder"
"""Where ``detector:`` grounders live (transformers extra), resolved on use."""


def _options(spec: Any, what: str) -> tuple[str, str | None, dict[str, Any]]:
    """(name, value after ``name:``, options) of a spec string or mapping."""
    if isinstance(spec, str):
        name, sep, value = spec.strip().partition(":")
        return name, (value if sep else None), {}
    if isinstance(spec, Mapping):
        options = dict(spec)
        name = options.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(f"a {what} mapping needs a 'name', got {sorted(options)}")
        name, sep, value = name.strip().partition(":")  # {"name": "serpapi:URL", ...} as in strings
        return name, (value if sep else None), options
    raise ConfigError(f"a {what} spec is a name or a mapping with a 'name', got {type(spec).__name__}")


def _call(factory: Callable[..., Any], options: dict[str, Any], what: str) -> Any:
    try:
        return factory(**options)
    except TypeError as err:
        raise ConfigError(f"{what}: bad option ({err})") from None


def _world(value: str | None, options: dict[str, Any]) -> SearchBackend:
    if value or options:
        raise ConfigError("backend 'world' takes no options")
    from mmsearch_gym.world import WorldSearchEngine
    return WorldSearchEngine.load()


def _serpapi(value: str | None, options: dict[str, Any]) -> SearchBackend:
    from mmsearch_gym.search.serpapi import SERPAPI_KEY_ENV, SerpApiBackend

    key = _secret(options, SERPAPI_KEY_ENV, "SerpApi")
    if value:
        options.setdefault("base_url", value)
    host = options.pop("image_host", None)
    if host is not None:
        from mmsearch_gym.search.hosting import build_image_host
        options["uploader"] = build_image_host(host).upload
    return _call(lambda **kw: SerpApiBackend(key, **kw), options, "backend serpapi")


def _searxng(value: str | None, options: dict[str, Any]) -> SearchBackend:
    from mmsearch_gym.search.searxng import SearxngBackend

    if value:
        options.setdefault("base_url", value)
    return _call(SearxngBackend, options, "backend searxng")


def _vision(value: str | None, options: dict[str, Any]) -> SearchBackend:
    from mmsearch_gym.search.vision import VISION_KEY_ENV, GoogleVisionBackend

    key = _secret(options, VISION_KEY_ENV, "Google Cloud Vision")
    if value:
        options.setdefault("base_url", value)
    return _call(lambda **kw: GoogleVisionBackend(key, **kw), options, "backend google-vision")


def _compose(value: str | None, options: dict[str, Any]) -> SearchBackend:
    text, image = options.pop("text", None), options.pop("image", None)
    if text is None or image is None or options or value:
        raise ConfigError("backend 'compose' takes exactly 'text' and 'image' backend specs, e.g. "
                          "{\"name\": \"compose\", \"text\": \"serpapi\", \"image\": \"google-vision\"}")
    return ComposedBackend(build_backend(text), build_backend(image))


BACKENDS: dict[str, Callable[[str | None, dict[str, Any]], SearchBackend]] = {
    "world": _world, "serpapi": _serpapi, "searxng": _searxng, "google-vision": _vision, "compose": _compose}
"""Backend names and their builders ``(value after 'name:', options) -> SearchBackend``."""

_PIPELINE_KEYS = ("reader", "summarizer", "summarize_images", "summarize_top_n", "read_top_n")


class ComposedBackend:
    """Text searches from one backend, image searches from another (e.g. SerpApi + Google Vision)."""

    def __init__(self, text: SearchBackend, image: SearchBackend) -> None:
        self.text, self.image = text, image
        self.name = f"{text.name}|{image.name}"
        self.version = f"{text.version}|{image.version}"

    def cache_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for prefix, backend in (("text", self.text), ("image", self.image)):
            own = getattr(backend, "cache_params", None)
            params.update({f"{prefix}.{k}": v for k, v in (own() if callable(own) else {}).items()})
        return params

    def text_search(self, query: str, k: int) -> list[Hit]:
        return self.text.text_search(query, k)

    def image_search(self, image: ImageQuery, k: int) -> list[Hit]:
        return self.image.image_search(image, k)

    def __repr__(self) -> str:
        return f"ComposedBackend(text={self.text!r}, image={self.image!r})"


def build_backend(spec: Any) -> SearchBackend:
    """A SearchBackend from a name, ``name:VALUE`` or a mapping (see the module docstring).

    ``reader`` / ``summarizer`` keys wrap it in the reading and summarising pipeline (the
    summariser records in ``<user cache>/services`` unless :func:`build_components` moves it
    next to the env's search cache).
    """
    if isinstance(spec, SearchBackend) and not isinstance(spec, (str, Mapping)):
        return spec
    name, value, options = _options(spec, "backend")
    pipeline = {key: options.pop(key) for key in _PIPELINE_KEYS if key in options}
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; use one of {sorted(BACKENDS)} or a SearchBackend object")
    backend = BACKENDS[name](value, options)
    if name not in ("world", "compose"):  # live web backends: count the calls that reach them
        from mmsearch_gym.services.accounting import CountingBackend
        backend = CountingBackend(backend)
    return _pipeline(backend, pipeline) if pipeline else backend


def _pipeline(backend: SearchBackend, options: dict[str, Any]) -> SearchBackend:
    summarizer = build_summarizer(options["summarizer"]) if options.get("summarizer") else None
    reader_spec = options.get("reader")
    if reader_spec:
        from mmsearch_gym.search.reader import JINA_KEY_ENV, JinaReader, ReadingBackend

        name, value, reader_opts = _options(reader_spec, "reader")
        if name != "jina":
            raise ConfigError(f"unknown page reader {name!r}; use 'jina' (or 'jina:BASE_URL')")
        key = _secret(reader_opts, JINA_KEY_ENV, "Jina reader", required=False)
        if value:
            reader_opts.setdefault("base_url", value)
        reader = _call(lambda **kw: JinaReader(key, **kw), reader_opts, "reader jina")
        backend = ReadingBackend(backend, reader, summarizer, top_n=int(options.get("read_top_n", 5)),
                                 summarizer_id=summarizer.identity if summarizer else None)
        if summarizer is None or not options.get("summarize_images"):
            return backend
        from mmsearch_gym.services.summarizer import SummarizingBackend
        return SummarizingBackend(backend, summarizer, images=True, text=False,
                                  top_n=int(options.get("summarize_top_n", 5)))
    if summarizer is None:
        raise ConfigError("summarize_images / read_top_n need a summarizer (and a reader for read_top_n)")
    from mmsearch_gym.services.summarizer import SummarizingBackend
    return SummarizingBackend(backend, summarizer, images=bool(options.get("summarize_images")),
                              top_n=int(options.get("summarize_top_n", 5)))


# ---------------------------------------------------------------------------------------------
# Services: where their answers are recorded, and their builders (memoised per process)
# ---------------------------------------------------------------------------------------------


def service_cache(cache: Mapping[str, Any] | None) -> tuple[Path | None, str]:
    """(directory, mode) where services record, from a ``{"dir", "mode"}`` block: ``<dir>/services``.

    The block is the env's search cache location (see :func:`services_block`); without a
    ``dir`` services record in ``<user cache>/services``; without a mode, ``readthrough``.
    """
    cache = dict(cache or {})
    mode = str(cache.get("mode", "readthrough"))
    directory = cache.get("dir")
    return (Path(directory).expanduser() / "services" if directory else None), mode


def services_block(backend: SearchBackend, cache: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Where an env's services record: next to its search cache, in the same mode.

    The search cache directory is the cache block's ``dir`` or its default
    (``<user cache>/<backend name>-<version>``, as ``registration.wrap_cache`` picks it); a
    backend that already is a SearchCache (shared by a sibling env) gives its own directory.
    """
    from mmsearch_gym.search.cache import SearchCache, default_cache_dir

    if isinstance(backend, SearchCache):
        return {"dir": str(backend.directory), "mode": backend.mode}
    if not cache:
        return None
    directory = cache.get("dir") or default_cache_dir() / f"{backend.name}-{backend.version}".replace("/", "_")
    return {"dir": str(directory), "mode": str(cache.get("mode", "readthrough"))}


_BUILT: dict[tuple[str, str, str, str], Any] = {}


def _memo(kind: str, spec: Any, cache: Mapping[str, Any] | None, factory: Callable[..., Any]) -> Any:
    import json

    directory, mode = service_cache(cache)
    key = (kind, json.dumps(spec, sort_keys=True, default=str), str(directory), mode)
    if key not in _BUILT:
        _BUILT[key] = factory(spec, cache_dir=directory, cache_mode=mode)
    return _BUILT[key]


def build_judge(spec: Any, cache: Mapping[str, Any] | None = None) -> Any:
    """An LLMJudge from ``openai:URL#MODEL`` (or a mapping); a callable passes through."""
    if callable(spec):
        return spec
    from mmsearch_gym.services.judge import LLMJudge
    return _memo("judge", spec, cache, LLMJudge)


def build_summarizer(spec: Any, cache: Mapping[str, Any] | None = None) -> Any:
    """An LLMSummarizer from ``openai:URL#MODEL`` (or a mapping); a new one per backend pipeline."""
    from mmsearch_gym.services.summarizer import LLMSummarizer

    directory, mode = service_cache(cache)
    return LLMSummarizer(spec, cache_dir=directory, cache_mode=mode)


def build_grounder(spec: Any, cache: Mapping[str, Any] | None = None) -> Any:
    """``annotations``, ``none``, ``openai:URL#MODEL`` (VLM), ``detector:DIR_OR_ID``, or a Grounder object."""
    if spec is None or spec == "none":
        return None
    if not isinstance(spec, (str, Mapping)):
        return spec
    name, value, options = _options(spec, "grounder")
    if name == "annotations" and not value and not options:
        from mmsearch_gym.grounding import AnnotationGrounder
        return AnnotationGrounder()
    if name == "openai":
        from mmsearch_gym.services.grounder import VLMGrounder
        return _memo("grounder", spec, cache, VLMGrounder)
    if name == "detector":
        import importlib

        # Named, not imported: the core never imports an integration (it needs torch).
        DetectorGrounder = importlib.import_module(_DETECTOR_MODULE).DetectorGrounder  # noqa: N806
        model = value or options.pop("model", None)
        if not model:
            raise ConfigError("grounder detector: needs a model directory or hub id, e.g. "
                              "detector:IDEA-Research/grounding-dino-tiny")
        return _call(lambda **kw: DetectorGrounder.from_pretrained(model, **kw), options, "grounder detector")
    raise ConfigError(f"unknown grounder {spec!r}; use annotations, none, openai:URL#MODEL or detector:MODEL")


# ---------------------------------------------------------------------------------------------
# Everything an env needs, from names
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Components:
    """The live parts of an env built from their specs."""

    backend: SearchBackend
    grounder: Any
    reward: Any


def judged_reward(reward: Any, dialect: Any, judge: Any) -> Any:
    """The env's reward with ``judge`` as its scorer (the dialect's preset when ``reward`` is None)."""
    if judge is None:
        return reward
    from mmsearch_gym.reward import RewardSpec

    if isinstance(reward, RewardSpec):
        return replace(reward, scorer=judge)
    if isinstance(reward, str):
        return RewardSpec.from_name(reward, scorer=judge)
    dialect_name = getattr(dialect, "name", dialect) or "mmsearch-r1"
    if dialect_name == "tool-json":
        return RewardSpec.mmsearch_r1(dialect="tool-json", name="tool-json", scorer=judge)
    return RewardSpec.from_name(dialect_name, scorer=judge)


def build_components(backend: Any = "world", *, cache: Mapping[str, Any] | None = None,
                     grounder: Any = "annotations", judge: Any = None, summarizer: Any = None,
                     reward: Any = None, dialect: Any = None) -> Components:
    """Backend (with ``summarizer`` added to its pipeline), grounder and reward from their specs.

    Objects pass through unchanged (a SearchBackend object gets no summariser added).
    """
    if summarizer is not None and isinstance(backend, (str, Mapping)):
        # A backend object is used as given: it is complete (sibling envs share one built from specs).
        backend = {**({"name": backend} if isinstance(backend, str) else backend), "summarizer": summarizer}
    token = _REPLAY.set(str((cache or {}).get("mode")) == "replay")
    try:
        built = build_backend(backend)
    finally:
        _REPLAY.reset(token)
    block = services_block(built, cache)
    directory, mode = service_cache(block)
    for recorder in _recorders(built):  # the summariser records next to the search cache too
        recorder.locate(directory if directory is not None else recorder.directory, mode)
    judge_fn = build_judge(judge, block) if judge is not None else None
    return Components(backend=built, grounder=build_grounder(grounder, block),
                      reward=judged_reward(reward, dialect, judge_fn))


def _recorders(backend: Any) -> list[Any]:
    """The RecordedServices inside a backend pipeline (summarisers of reading/summarising wrappers)."""
    found = []
    while backend is not None:
        recorder = getattr(getattr(backend, "summarizer", None), "recorder", None)
        if recorder is not None:
            found.append(recorder)
        backend = getattr(backend, "inner", None)
    return found
