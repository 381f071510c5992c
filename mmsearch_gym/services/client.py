"""ChatClient: one small client for any OpenAI-compatible ``/chat/completions`` endpoint.

vLLM, SGLang, llama.cpp's server and hosted APIs all speak ``POST {base_url}/chat/completions``.
The judge, the summariser and the VLM grounder send their requests through this client, on top
of the project's one :class:`~mmsearch_gym.search.http.HttpClient` (timeouts, bounded retries
on 429/5xx and dropped connections, secret redaction), the same one ``openai_policy`` uses.

The API key is read from the environment variable the spec names (default ``OPENAI_API_KEY``)
when the first request is sent, never earlier and never stored anywhere but in a masked
:class:`~mmsearch_gym.search.http.Secret`: a replayed run that sends no request needs no key.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mmsearch_gym.errors import ConfigError, MMSearchError
from mmsearch_gym.search.base import SearchError
from mmsearch_gym.search.http import HttpClient, Secret, public_url

__all__ = ["DEFAULT_KEY_ENV", "ChatClient", "ServiceError", "ServiceSpec", "parse_service_spec"]

DEFAULT_KEY_ENV = "OPENAI_API_KEY"


class ServiceError(MMSearchError):
    """A service (judge, summariser, grounder) failed: the server errored or its answer is unusable."""


@dataclass(frozen=True)
class ServiceSpec:
    """Where a service lives: ``openai:BASE_URL#MODEL`` plus options; never the key itself.

    ``api_key_env`` names the environment variable holding the key. When the spec names one
    explicitly the key is required (a missing variable is a ConfigError naming it); with the
    default ``OPENAI_API_KEY`` a server that needs no key (a local vLLM) works without it.
    """

    base_url: str
    model: str
    api_key_env: str = DEFAULT_KEY_ENV
    key_required: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    """Service options (``max_tokens``, ``temperature``, ``timeout``, ``max_attempts`` ...)."""

    def describe(self) -> str:
        """The spec as a string without credentials (for names, logs and reports)."""
        return f"openai:{public_url(self.base_url)}#{self.model}"


_CLIENT_OPTIONS = ("timeout", "max_attempts", "base_delay", "max_delay", "trust_env")


def parse_service_spec(spec: Any, *, what: str = "service") -> ServiceSpec:
    """``"openai:URL#MODEL"`` or ``{"name": "openai", "url": URL, "model": MODEL, "api_key_env": VAR, ...}``.

    A mapping may carry further options (``max_tokens``, ``temperature``, ``timeout``,
    ``max_attempts``, and the service's own ones). A key value (``api_key``) is refused: name
    the environment variable instead.
    """
    if isinstance(spec, ServiceSpec):
        return spec
    if isinstance(spec, str):
        kind, sep, rest = spec.strip().partition(":")
        if not sep or kind != "openai":
            raise ConfigError(f"{what} spec {spec!r}: use openai:BASE_URL#MODEL, e.g. "
                              "openai:http://127.0.0.1:8000/v1#Qwen2.5-7B-Instruct")
        spec = {"name": "openai", "url": rest}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{what} spec must be 'openai:URL#MODEL' or a mapping, got {type(spec).__name__}")
    options = dict(spec)
    if "api_key" in options:
        raise ConfigError(f"{what} spec holds an API key value; name its environment variable instead "
                          f"(\"api_key_env\": \"{DEFAULT_KEY_ENV}\") so that no key lands in a spec or a log")
    name = options.pop("name", "openai")
    if name != "openai":
        raise ConfigError(f"unknown {what} kind {name!r}; only OpenAI-compatible endpoints ('openai') exist")
    url = str(options.pop("url", "") or "")
    url, _, model_in_url = url.partition("#")
    model = str(options.pop("model", "") or model_in_url)
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{what} needs an http(s) base URL like http://127.0.0.1:8000/v1, got {public_url(url)!r}")
    if not model:
        raise ConfigError(f"{what} spec needs a model name: openai:{public_url(url)}#MODEL (recorded answers "
                          "are keyed by it, so it cannot be guessed from the server)")
    key_env = options.pop("api_key_env", None)
    if key_env is not None and (not isinstance(key_env, str) or not key_env.strip()):
        raise ConfigError(f"{what}: api_key_env must name an environment variable, got {key_env!r}")
    return ServiceSpec(base_url=url.rstrip("/"), model=model, api_key_env=key_env or DEFAULT_KEY_ENV,
                       key_required=key_env is not None, options=options)


class ChatClient:
    """Chat completions against one endpoint and model; thread-safe (one session per thread).

    ``complete(messages)`` returns the assistant's text. Transport failures are retried by the
    HttpClient; what is left becomes a :class:`ServiceError` whose message holds no key.
    """

    def __init__(self, spec: ServiceSpec | str | Mapping[str, Any], *, service: str = "service",
                 environ: Mapping[str, str] | None = None) -> None:
        self.spec = parse_service_spec(spec, what=service)
        opts = self.spec.options
        self.service = service
        self._environ = environ
        self._client_kw: dict[str, Any] = {"read_timeout": float(opts.get("timeout", 120.0)),
                           "max_attempts": int(opts.get("max_attempts", 4)),
                           "base_delay": float(opts.get("base_delay", 1.0)),
                           "max_delay": float(opts.get("max_delay", 30.0)),
                           "trust_env": bool(opts.get("trust_env", True))}
        HttpClient(**self._client_kw).close()  # validate the options now
        self._local = threading.local()
        self._key: Secret | None = None
        self._key_read = False
        self._lock = threading.Lock()
        self.calls = 0
        """Requests answered by the server (live calls), for accounting."""

    @property
    def model(self) -> str:
        return self.spec.model

    def _secret(self) -> Secret | None:
        with self._lock:
            if not self._key_read:
                env = self._environ if self._environ is not None else os.environ
                value = env.get(self.spec.api_key_env, "").strip()
                if not value and self.spec.key_required:
                    raise ConfigError(f"the {self.service} at {public_url(self.spec.base_url)} needs an API key: "
                                      f"set the environment variable {self.spec.api_key_env}")
                self._key = Secret(value) if value else None
                self._key_read = True
            return self._key

    def _client(self) -> HttpClient:
        client = getattr(self._local, "client", None)
        if client is None:
            client = HttpClient(**self._client_kw)
            client.add_secret(self._secret())
            self._local.client = client
        return client

    def complete(self, messages: Sequence[Mapping[str, Any]], *, max_tokens: int = 256,
                 temperature: float = 0.0, seed: int | None = 0, **extra: Any) -> str:
        """The assistant text for ``messages`` (one request; transient failures retried)."""
        body: dict[str, Any] = {"model": self.spec.model, "messages": list(messages),
                                "temperature": float(temperature), "max_tokens": int(max_tokens), **extra}
        if seed is not None:
            body["seed"] = int(seed)
        key = self._secret()
        headers = {"Authorization": f"Bearer {key.reveal()}"} if key is not None else {}
        try:
            data = self._client().post_json(self.spec.base_url + "/chat/completions", body,
                                            service=f"{self.service} {self.spec.describe()}", headers=headers)
        except SearchError as err:
            raise ServiceError(f"{self.service} {self.spec.describe()} failed: {err}") from None
        with self._lock:
            self.calls += 1
        return completion_text(data, f"{self.service} {self.spec.describe()}")

    def __repr__(self) -> str:
        return f"ChatClient({self.spec.describe()!r}, key from ${self.spec.api_key_env})"


def completion_text(data: Any, who: str) -> str:
    """``choices[0].message.content`` of a chat-completions answer (content parts joined)."""
    try:
        content = data["choices"][0]["message"].get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise ServiceError(f"{who}: the answer has no choices[0].message "
                           "(is this an OpenAI-compatible chat-completions endpoint?)") from None
    if isinstance(content, list):
        content = "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return content if isinstance(content, str) else ""
