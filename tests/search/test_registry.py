"""Components by name: backends, compositions, pipelines, grounders, judges; secrets only from named variables."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import pytest

import mmsearch_gym  # noqa: F401
from mmsearch_gym.errors import ConfigError
from mmsearch_gym.grounding import AnnotationGrounder
from mmsearch_gym.reward import RewardSpec
from mmsearch_gym.search.reader import ReadingBackend
from mmsearch_gym.search.registry import (
    ComposedBackend,
    build_backend,
    build_components,
    build_grounder,
    judged_reward,
    services_block,
)
from mmsearch_gym.search.serpapi import SerpApiBackend
from mmsearch_gym.services import LLMJudge, SummarizingBackend, VLMGrounder

KEY = "serp-registry-secret-1"


def test_backends_by_name_with_options_and_keys_from_the_named_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SERP", KEY)
    serp = build_backend({"name": "serpapi", "api_key_env": "MY_SERP", "gl": "fr"})
    assert isinstance(serp.inner, SerpApiBackend) and serp.gl == "fr" and KEY not in repr(serp)
    assert serp.name == "serpapi" and serp.cache_params() == serp.inner.cache_params()
    assert build_backend({"name": "serpapi:http://x/s.json", "api_key_env": "MY_SERP"}).base_url == "http://x/s.json"
    assert build_backend("searxng:http://localhost:8888").base_url == "http://localhost:8888"
    monkeypatch.setenv("GOOGLE_CLOUD_VISION_API_KEY", "v-key")
    composed = build_backend({"name": "compose", "text": "searxng:http://localhost:8888", "image": "google-vision"})
    assert isinstance(composed, ComposedBackend) and composed.name == "searxng|google-vision"
    assert all(k.startswith(("text.", "image.")) for k in composed.cache_params())
    assert build_backend("world").name.startswith("world")


def test_missing_or_inline_keys_are_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SERPAPI_API_KEY", raising=False)
    monkeypatch.delenv("ANOTHER_VAR", raising=False)
    with pytest.raises(ConfigError, match="SERPAPI_API_KEY"):
        build_backend("serpapi")
    with pytest.raises(ConfigError, match="ANOTHER_VAR"):
        build_backend({"name": "serpapi", "api_key_env": "ANOTHER_VAR"})
    with pytest.raises(ConfigError, match="api_key_env") as info:
        build_backend({"name": "serpapi", "api_key": KEY})
    assert KEY not in str(info.value)
    with pytest.raises(ConfigError, match="unknown backend 'bing'"):
        build_backend("bing")
    with pytest.raises(ConfigError, match="bad option"):
        build_backend({"name": "searxng:http://h", "colour": "red"})


def test_reader_and_summarizer_pipelines(monkeypatch: pytest.MonkeyPatch) -> None:
    llm = "openai:http://127.0.0.1:9/v1#sum"
    read = build_backend({"name": "searxng:http://h", "reader": "jina:http://127.0.0.1:9", "summarizer": llm})
    assert isinstance(read, ReadingBackend) and read.cache_params()["read.summarizer"] == "sum/summary-v1/120w"
    both = build_backend({"name": "searxng:http://h", "summarizer": llm, "summarize_images": True})
    assert isinstance(both, SummarizingBackend) and both.images
    with pytest.raises(ConfigError, match="reader"):
        build_backend({"name": "searxng:http://h", "reader": "firecrawl"})


def test_grounders_and_judges_by_name(tmp_path: Path) -> None:
    assert isinstance(build_grounder("annotations"), AnnotationGrounder)
    assert build_grounder("none") is None
    assert isinstance(build_grounder("openai:http://127.0.0.1:9/v1#vlm"), VLMGrounder)
    with pytest.raises(ConfigError, match="unknown grounder"):
        build_grounder("sam")
    judge = LLMJudge("openai:http://127.0.0.1:9/v1#j")
    assert judged_reward(None, "deepmmsearch-r1", judge).scorer is judge
    assert judged_reward("mmsearch-r1", None, judge).name == "mmsearch-r1"
    assert judged_reward(None, "tool-json", judge).dialect == "tool-json"
    assert judged_reward(RewardSpec.mmsearch_r1(), None, None).scorer == "em"


def test_services_record_next_to_the_search_cache(tmp_path: Path) -> None:
    parts = build_components("searxng:http://h", cache={"mode": "replay", "dir": str(tmp_path)},
                             summarizer="openai:http://127.0.0.1:9/v1#s", judge="openai:http://127.0.0.1:9/v1#j",
                             grounder="openai:http://127.0.0.1:9/v1#g")
    assert parts.backend.summarizer.recorder.directory == tmp_path / "services"
    assert parts.reward.scorer.recorder.directory == tmp_path / "services"
    assert parts.grounder.recorder.mode == "replay"
    assert services_block(parts.backend, None) is None


def test_env_specs_and_gym_make_take_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SERPAPI_API_KEY", KEY)
    env = gym.make("MMSearch-v0", backend="serpapi", cache={"mode": "readthrough", "dir": str(tmp_path)},
                   judge="openai:http://127.0.0.1:9/v1#j").unwrapped
    assert env.backend.name == "serpapi" and env.reward_spec.describe()["scorer"] == "judge:j"
    assert KEY not in json.dumps(env.spec.kwargs if env.spec else {}) + repr(env.backend)
    env.close()
