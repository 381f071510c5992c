"""ChatClient and service specs: keys from the named variable only, typed errors, retries, no key in messages."""

from __future__ import annotations

import pytest
from search.webfake import FakeWebServer, Reply, exception_texts

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.services.client import ChatClient, ServiceError, parse_service_spec

from .fakes import completion

KEY = "sk-client-secret-777"


def test_spec_string_and_mapping_agree_and_refuse_key_values() -> None:
    a = parse_service_spec("openai:http://127.0.0.1:8000/v1#qwen")
    b = parse_service_spec({"name": "openai", "url": "http://127.0.0.1:8000/v1", "model": "qwen"})
    assert (a.base_url, a.model, a.api_key_env, a.key_required) == (b.base_url, b.model, "OPENAI_API_KEY", False)
    assert parse_service_spec({"url": "http://h/v1#m", "api_key_env": "MY_KEY"}).key_required
    with pytest.raises(ConfigError, match="api_key_env"):
        parse_service_spec({"url": "http://h/v1#m", "api_key": KEY})
    with pytest.raises(ConfigError, match="model name"):
        parse_service_spec("openai:http://h/v1")
    with pytest.raises(ConfigError, match="http"):
        parse_service_spec("openai:ftp://h#m")
    with pytest.raises(ConfigError, match="openai:BASE_URL#MODEL"):
        parse_service_spec("vllm:http://h#m")


def test_a_named_missing_key_is_an_error_naming_the_variable_at_the_first_request() -> None:
    client = ChatClient({"url": "http://127.0.0.1:9/v1#m", "api_key_env": "NO_SUCH_KEY_VAR"}, environ={})
    with pytest.raises(ConfigError, match="NO_SUCH_KEY_VAR"):
        client.complete([{"role": "user", "content": "hi"}])


def test_sends_the_key_as_bearer_and_retries_transient_failures() -> None:
    replies = [Reply(503, {"error": "busy"}, headers={"Retry-After": "0"}), Reply(200, completion("hello"))]
    with FakeWebServer(replies) as server:
        client = ChatClient({"url": server.url + "/v1#m", "api_key_env": "K", "base_delay": 0, "max_delay": 0,
                             "trust_env": False}, environ={"K": KEY})
        assert client.complete([{"role": "user", "content": "hi"}], max_tokens=5) == "hello"
        seen = server.requests[-1]
    assert seen.header("Authorization") == f"Bearer {KEY}"
    assert seen.json()["model"] == "m" and seen.json()["max_tokens"] == 5 and client.calls == 1
    assert KEY not in repr(client)


def test_failures_are_service_errors_without_the_key() -> None:
    with FakeWebServer([Reply(400, {"error": {"message": f"bad request for {KEY}"}})]) as server:
        client = ChatClient({"url": server.url + "/v1#m", "api_key_env": "K", "trust_env": False},
                            environ={"K": KEY})
        with pytest.raises(ServiceError) as info:
            client.complete([{"role": "user", "content": "hi"}])
    assert all(KEY not in text for text in exception_texts(info.value))
    with FakeWebServer([Reply(200, {"unexpected": True})]) as server:
        client = ChatClient(f"openai:{server.url}/v1#m", environ={})
        with pytest.raises(ServiceError, match="choices"):
            client.complete([{"role": "user", "content": "hi"}])
