"""OpenAIPolicy: any OpenAI-compatible chat-completions server as a search policy.

vLLM, SGLang, llama.cpp's server and hosted APIs all speak ``POST {base_url}/chat/completions``.
The policy sends each episode's chat with images as ``data:image/png;base64,...`` URLs (every
thumbnail next to its title), asks the server to stop at the dialect's closing tags, and puts
the closing tag the server strips back on, so the env sees exactly what the papers' rollouts
produce. A batch of episodes is sent concurrently on a small thread pool; results come back in
order. Transient failures (429, 5xx, dropped connections) are retried with backoff by the
project's one HTTP client; the API key (``OPENAI_API_KEY``) is sent only in the
``Authorization`` header and masked in every message.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from PIL import Image

from mmsearch_gym.chat import MAX_IMAGE_PIXELS, image_data_url, interleave_images
from mmsearch_gym.errors import ConfigError
from mmsearch_gym.policies import PolicyError, cut_at_stop
from mmsearch_gym.search.base import SearchError
from mmsearch_gym.search.http import HttpClient, Secret, public_url, secret_from

if TYPE_CHECKING:
    from mmsearch_gym.policies import EpisodeView

__all__ = ["API_KEY_ENV", "OpenAIPolicy", "restore_stop", "to_openai_messages"]

API_KEY_ENV = "OPENAI_API_KEY"


def to_openai_messages(messages: Sequence[Mapping[str, Any]],
                       max_image_pixels: int | None = MAX_IMAGE_PIXELS) -> list[dict[str, Any]]:
    """The env's chat in the OpenAI format: text and ``image_url`` parts for user turns, plain
    strings for system and assistant turns (what every compatible server accepts)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        role = message["role"]
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        blocks = interleave_images(content or [])
        if role != "user":
            out.append({"role": role, "content": "".join(str(b.get("text", "")) for b in blocks
                                                         if b.get("type") == "text")})
            continue
        parts: list[dict[str, Any]] = []
        for block in blocks:
            if block.get("type") == "text":
                parts.append({"type": "text", "text": str(block["text"])})
            elif block.get("type") == "image" and isinstance(block.get("image"), Image.Image):
                parts.append({"type": "image_url",
                              "image_url": {"url": image_data_url(block["image"], max_image_pixels)}})
        out.append({"role": role, "content": parts})
    return out


def restore_stop(text: str, stops: Sequence[str], matched: Any = None) -> str:
    """``text`` with the closing tag the server stripped put back.

    Servers cut a completion *before* the stop string. vLLM reports which one matched
    (``stop_reason``); otherwise the tag to restore is the one whose opening tag is the last
    still open in the text (``<search><img>`` -> ``</search>``). Text with no open tag (the
    model ended on its own) is returned unchanged.
    """
    if isinstance(matched, str) and matched in stops:
        return text if text.endswith(matched) else text + matched
    best, best_at = None, -1
    for stop in stops:
        if not stop.startswith("</"):
            continue
        opener = "<" + stop[2:]
        at = text.rfind(opener)
        if at != -1 and text.find(stop, at) == -1 and at > best_at:
            best, best_at = stop, at
    return text + best if best is not None else text


def _recorder(cache: Mapping[str, Any] | None) -> Any:
    """A RecordedService for the policy's completions when ``cache`` (``{"mode", "dir"}``) is given."""
    if cache is None:
        return None
    from mmsearch_gym.search.registry import service_cache
    from mmsearch_gym.services.recorded import RecordedService

    directory, mode = service_cache(cache)
    return RecordedService("policy", "chat-v1", {}, directory=directory, mode=mode)


class OpenAIPolicy:
    """A model behind an OpenAI-compatible ``/chat/completions`` endpoint.

    Args:
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1`` (vLLM) or
            ``https://api.openai.com/v1``.
        model: the served model name; ``None`` asks ``GET {base_url}/models`` and takes the
            first (vLLM serves one).
        api_key: the bearer token; default ``$OPENAI_API_KEY``; none is sent if neither is set.
        temperature: 0 (default) for greedy, reproducible decoding.
        max_tokens: completion budget of one turn.
        seed: sent to the server (vLLM and OpenAI honour it when sampling).
        workers: concurrent requests for a batch of episodes.
        timeout: read timeout of one request in seconds.
        max_attempts / base_delay / max_delay: retry policy for 429, 5xx and dropped connections.
        extra_body: more request fields (e.g. ``{"top_k": 20}`` for vLLM).
        max_image_pixels: images larger than this are scaled down before encoding.
        cache: ``{"mode": "readthrough" | "record" | "replay", "dir": DIR}``: record every
            completion under ``DIR/services`` keyed by the whole request, so a run replays offline.
    """

    def __init__(self, base_url: str, model: str | None = None, *, api_key: str | Secret | None = None,
                 temperature: float = 0.0, top_p: float | None = None, max_tokens: int = 512,
                 seed: int | None = 0, workers: int = 4, timeout: float = 120.0, max_attempts: int = 4,
                 base_delay: float = 1.0, max_delay: float = 30.0,
                 extra_body: Mapping[str, Any] | None = None,
                 max_image_pixels: int | None = MAX_IMAGE_PIXELS, name: str | None = None,
                 cache: Mapping[str, Any] | None = None) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url must be an http(s) URL like http://127.0.0.1:8000/v1, got {base_url!r}")
        if max_tokens < 1 or workers < 1:
            raise ConfigError("max_tokens and workers must be >= 1")
        if temperature < 0:
            raise ConfigError("temperature must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._key = secret_from(api_key, API_KEY_ENV, "OpenAI-compatible server", required=False)
        self.temperature = float(temperature)
        self.top_p = top_p
        self.max_tokens = int(max_tokens)
        self.seed = seed
        self.workers = int(workers)
        self.extra_body = dict(extra_body or {})
        self.max_image_pixels = max_image_pixels
        self._timeout = float(timeout)
        self._max_attempts = int(max_attempts)
        self._delays = (float(base_delay), float(max_delay))
        self._new_client().close()  # validate the options now, not in a worker thread
        self._local = threading.local()
        self._lock = threading.Lock()
        self._named = name is not None
        self.name: str = name or f"openai:{model or public_url(self.base_url)}"
        self._recorder = _recorder(cache)

    @classmethod
    def from_spec(cls, argument: str, *, seed: int | None = 0, **kwargs: Any) -> OpenAIPolicy:
        """The policy of ``make_policy("openai:BASE_URL[#model]")``: ``argument`` is ``BASE_URL[#model]``."""
        base_url, _, model = argument.partition("#")
        if not base_url:
            raise ConfigError("openai: needs a base URL, e.g. openai:http://127.0.0.1:8000/v1#Qwen2.5-VL-7B")
        return cls(base_url, model=model or None, seed=seed, **kwargs)

    # ------------------------------------------------------------------ acting ----------
    def act(self, episodes: Sequence[EpisodeView]) -> list[str]:
        """One completion per episode, requested concurrently, returned in order."""
        if not episodes:
            return []
        self._resolve_model()
        if len(episodes) == 1 or self.workers == 1:
            return [self.complete(e) for e in episodes]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(episodes)),
                                thread_name_prefix="openai-policy") as pool:
            return list(pool.map(self.complete, episodes))

    def request_body(self, episode: EpisodeView) -> dict[str, Any]:
        """The JSON body sent for one episode."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": to_openai_messages(episode.messages, self.max_image_pixels),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "stop": list(episode.dialect.stop_sequences),
        }
        if self.top_p is not None:
            body["top_p"] = self.top_p
        if self.seed is not None:
            body["seed"] = int(self.seed)
        body.update(self.extra_body)
        return body

    def complete(self, episode: EpisodeView) -> str:
        """The action text for one episode (one request, retried on transient failures)."""
        self._resolve_model()
        body = self.request_body(episode)
        if self._recorder is None:
            data = self._post("/chat/completions", body)
        else:  # recorded like a search: a replayed run asks no server
            data = json.loads(self._recorder.answer(body, lambda: json.dumps(self._post("/chat/completions", body))))
        try:
            choice = data["choices"][0]
            content = choice["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise PolicyError(f"{self.name}: the server's answer has no choices[0].message "
                              "(is this an OpenAI-compatible chat-completions endpoint?)") from None
        if isinstance(content, list):  # some servers return content parts
            content = "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
        text = content if isinstance(content, str) else ""
        stops = tuple(episode.dialect.stop_sequences)
        if choice.get("finish_reason") == "stop":
            text = restore_stop(text, stops, choice.get("stop_reason"))
        return cut_at_stop(text, stops)

    # ------------------------------------------------------------------ HTTP ------------
    def _client(self) -> HttpClient:
        """One client (and connection pool) per thread: a requests.Session is not thread-safe."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._new_client()
            client.add_secret(self._key)
            self._local.client = client
        return client

    def _new_client(self) -> HttpClient:
        return HttpClient(read_timeout=self._timeout, max_attempts=self._max_attempts,
                          base_delay=self._delays[0], max_delay=self._delays[1])

    def _headers(self) -> dict[str, str]:
        if self._key is None:
            return {}
        return {"Authorization": f"Bearer {self._key.reveal()}"}

    def _post(self, path: str, body: Any) -> Any:
        try:
            return self._client().post_json(self.base_url + path, body, service=self.name,
                                             headers=self._headers())
        except SearchError as err:
            raise PolicyError(f"{self.name}: the model server failed: {err}") from None

    def _resolve_model(self) -> None:
        if self.model is not None:
            return
        with self._lock:
            if self.model is not None:
                return
            try:
                data = self._client().get_json(self.base_url + "/models", service=self.name,
                                               headers=self._headers())
                self.model = str(data["data"][0]["id"])
                if not self._named:
                    self.name = f"openai:{self.model}"
            except SearchError as err:
                raise PolicyError(f"openai policy: no model name given and listing {self.base_url}/models "
                                  f"failed: {err}; use openai:BASE_URL#MODEL") from None
            except (KeyError, IndexError, TypeError):
                raise PolicyError(f"openai policy: {self.base_url}/models lists no model; "
                                  "use openai:BASE_URL#MODEL") from None

    def __repr__(self) -> str:
        return f"OpenAIPolicy({public_url(self.base_url)!r}, model={self.model!r})"
