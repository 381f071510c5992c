"""OpenAIPolicy against a local OpenAI-compatible server on 127.0.0.1 that checks what it gets."""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image

from mmsearch_gym.actions import Answer, ImageSearch, TextSearch, get_dialect
from mmsearch_gym.env import MMSearchEnv
from mmsearch_gym.errors import ConfigError
from mmsearch_gym.openai_policy import (
    OpenAIPolicy,
    image_data_url,
    restore_stop,
    to_openai_messages,
)
from mmsearch_gym.policies import EpisodeView, Policy, PolicyError, make_policy

KEY = "sk-test-0123456789abcdef"
Reply = Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]


class FakeServer:
    """A chat-completions server: records every request, answers with ``reply(body)``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.reply: Reply = lambda body: (200, completion("<reason>x</reason><answer>none"))
        self.barrier: threading.Barrier | None = None
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": "served-model", "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": {"message": "not found"}})
                    return
                if server.barrier is not None:  # proves the batch's requests are in flight together
                    server.barrier.wait(timeout=20)
                status, payload = server.reply(body)
                self._send(status, payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(content: str, finish: str = "stop", stop_reason: Any = None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": content},
                              "finish_reason": finish}
    if stop_reason is not None:
        choice["stop_reason"] = stop_reason
    return {"id": "cmpl-1", "object": "chat.completion", "choices": [choice]}


def decode_png(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    data = base64.b64decode(url.split(",", 1)[1], validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(data))


@pytest.fixture
def server() -> Iterator[FakeServer]:
    srv = FakeServer()
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def _no_ambient_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


def start(env: MMSearchEnv, index: int) -> EpisodeView:
    obs, info = env.reset(options={"task_index": index})
    return EpisodeView.start(obs, info, dialect=env.dialect)


def paper_server_reply(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Stands in for a good model: image search first, then answer from the results.

    It strips the stop string as real servers do, and checks what the policy sent.
    """
    messages = body["messages"]
    assert body["stop"] == ["</search>", "</text_search>", "</answer>"] and body["temperature"] == 0
    assert [m["role"] for m in messages[:2]] == ["system", "user"]
    assert isinstance(messages[0]["content"], str) and "<search><img></search>" in messages[0]["content"]
    first = messages[1]["content"]
    assert first[0]["type"] == "image_url" and decode_png(first[0]["image_url"]["url"]).size == (320, 240)
    assert first[1]["type"] == "text" and first[1]["text"].startswith("Question: ")
    if len(messages) == 2:
        return 200, completion("<reason>I need to see what this flag is.</reason><search><img>")
    assert messages[2] == {"role": "assistant",
                           "content": "<reason>I need to see what this flag is.</reason><search><img></search>"}
    result = messages[3]["content"]  # the thumbnail sits between its number and its title
    kinds = [p["type"] for p in result]
    assert kinds == ["text", "image_url", "text"] and result[0]["text"].endswith("1. ")
    assert result[2]["text"].startswith(" Flag of France")
    assert decode_png(result[1]["image_url"]["url"]).size == (32, 24)
    return 200, completion("<reason>The flag is French.</reason><answer>Paris", stop_reason="</answer>")


# ---------------------------------------------------------------------------------------------


def test_an_episode_runs_end_to_end(server: FakeServer, tiny_tasks, memory_backend) -> None:
    server.reply = paper_server_reply
    policy = OpenAIPolicy(server.url, "tiny-vlm")
    assert isinstance(policy, Policy) and policy.name == "openai:tiny-vlm"
    env = MMSearchEnv(tiny_tasks, memory_backend)
    view = start(env, 1)
    while True:
        [text] = policy.act([view])
        obs, reward, terminated, truncated, info = env.step(text)
        view.record(text, obs, info)
        if terminated or truncated:
            break
    assert [s.action for s in view.steps] == [ImageSearch(), Answer("Paris")]
    assert info["reward_breakdown"].format == 1.0 and reward == pytest.approx(0.91)
    assert len(server.requests) == 2 and all(r["model"] == "tiny-vlm" for r in server.requests)
    assert "Authorization" not in server.headers[0] and server.requests[0]["seed"] == 0


def test_a_batch_is_sent_concurrently_and_returned_in_order(server: FakeServer, tiny_tasks,
                                                             memory_backend) -> None:
    server.barrier = threading.Barrier(3)

    def reply(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        question = body["messages"][1]["content"][1]["text"]
        return 200, completion(f"<reason>r</reason><text_search>{question[10:20]}", stop_reason="</text_search>")

    server.reply = reply
    env = MMSearchEnv(tiny_tasks, memory_backend)
    views = [start(env, i) for i in range(3)]
    out = OpenAIPolicy(server.url, "m", workers=3).act(views)
    assert [get_dialect("mmsearch-r1").parse(t) for t in out] == \
        [TextSearch(t.question[:10]) for t in tiny_tasks]


def test_stripped_closing_tags_are_restored() -> None:
    stops = ("</search>", "</text_search>", "</answer>")
    assert restore_stop("<reason>a</reason><search><img>", stops) == "<reason>a</reason><search><img></search>"
    assert restore_stop("<reason>a</reason><text_search>q", stops) == "<reason>a</reason><text_search>q</text_search>"
    assert restore_stop("<reason>a</reason><answer>b", stops) == "<reason>a</reason><answer>b</answer>"
    assert restore_stop("<reason>a</reason><answer>b</answer>", stops) == "<reason>a</reason><answer>b</answer>"
    assert restore_stop("plain text", stops) == "plain text"
    assert restore_stop("<answer>b", stops, matched="</answer>") == "<answer>b</answer>"
    tool = get_dialect("tool-json").stop_sequences
    call = '<tool_call>{"name": "image_search"}'
    assert restore_stop(call, tool) == call + "</tool_call>"


@pytest.mark.parametrize("dialect", ["deepmmsearch-r1", "tool-json"])
def test_stop_list_follows_the_dialect(dialect: str, server: FakeServer, tiny_tasks, memory_backend) -> None:
    server.reply = lambda body: (200, completion("<reason>r</reason><answer>Paris"))
    env = MMSearchEnv(tiny_tasks, memory_backend, dialect=dialect)
    [text] = OpenAIPolicy(server.url, "m").act([start(env, 1)])
    assert server.requests[0]["stop"] == list(get_dialect(dialect).stop_sequences)
    assert text == "<reason>r</reason><answer>Paris</answer>"


def test_text_past_the_first_closing_tag_is_cut(server: FakeServer, tiny_tasks, memory_backend) -> None:
    """A server that ignores ``stop`` still yields one action per turn."""
    server.reply = lambda body: (200, completion("<reason>r</reason><search><img></search><answer>x</answer>",
                                                 finish="length"))
    [text] = OpenAIPolicy(server.url, "m").act([start(MMSearchEnv(tiny_tasks, memory_backend), 0)])
    assert text == "<reason>r</reason><search><img></search>"


def test_retries_on_rate_limits_and_server_errors(server: FakeServer, tiny_tasks, memory_backend) -> None:
    statuses = iter([429, 503, 200])

    def reply(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        status = next(statuses)
        return status, completion("<reason>r</reason><answer>ok") if status == 200 else {"error": {"message": "busy"}}

    server.reply = reply
    policy = OpenAIPolicy(server.url, "m", base_delay=0, max_delay=0)
    assert policy.act([start(MMSearchEnv(tiny_tasks, memory_backend), 0)]) == \
        ["<reason>r</reason><answer>ok</answer>"]
    assert len(server.requests) == 3


def test_persistent_failures_raise_a_policy_error(server: FakeServer, tiny_tasks, memory_backend) -> None:
    server.reply = lambda body: (500, {"error": {"message": "boom"}})
    policy = OpenAIPolicy(server.url, "m", base_delay=0, max_delay=0, max_attempts=2)
    with pytest.raises(PolicyError, match="500"):
        policy.act([start(MMSearchEnv(tiny_tasks, memory_backend), 0)])
    assert len(server.requests) == 2
    server.reply = lambda body: (200, {"unexpected": True})
    with pytest.raises(PolicyError, match="choices"):
        policy.act([start(MMSearchEnv(tiny_tasks, memory_backend), 0)])


def test_the_api_key_is_sent_but_never_shown(server: FakeServer, tiny_tasks, memory_backend,
                                            monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    server.reply = lambda body: (401, {"error": {"message": f"invalid key {KEY}"}})
    policy = OpenAIPolicy(server.url, "m", base_delay=0, max_delay=0)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(PolicyError) as err:
        policy.act([start(MMSearchEnv(tiny_tasks, memory_backend), 0)])
    assert server.headers[0]["Authorization"] == f"Bearer {KEY}" and len(server.requests) == 1  # 401: no retry
    assert KEY not in str(err.value) and KEY not in repr(policy) and KEY not in str(vars(policy))
    assert KEY not in caplog.text


def test_the_model_name_is_discovered_when_not_given(server: FakeServer, tiny_tasks, memory_backend) -> None:
    server.reply = lambda body: (200, completion("<reason>r</reason><answer>a"))
    policy = make_policy(f"openai:{server.url}")
    assert isinstance(policy, OpenAIPolicy) and policy.model is None
    policy.act([start(MMSearchEnv(tiny_tasks, memory_backend), 0)])
    assert policy.model == "served-model" and server.requests[0]["model"] == "served-model"
    assert policy.name == "openai:served-model"
    policy = make_policy(f"openai:{server.url}#other", temperature=0.7, seed=3, extra_body={"top_k": 5})
    policy.act([start(MMSearchEnv(tiny_tasks, memory_backend), 0)])
    sent = server.requests[-1]
    assert (sent["model"], sent["temperature"], sent["seed"], sent["top_k"]) == ("other", 0.7, 3, 5)


def test_messages_convert_to_the_openai_format(tiny_tasks, memory_backend) -> None:
    env = MMSearchEnv(tiny_tasks, memory_backend)
    view = start(env, 1)
    text = "<reason>r</reason><text_search>France capital</text_search>"
    obs, _, _, _, info = env.step(text)
    view.record(text, obs, info)
    messages = to_openai_messages(view.messages)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"] == text
    assert messages[3]["content"] == [{"type": "text", "text": obs["text"]}]  # text results: no images
    big = Image.new("RGB", (2000, 1000))
    assert decode_png(image_data_url(big)).width * decode_png(image_data_url(big)).height <= 672 * 672
    assert decode_png(image_data_url(big, None)).size == (2000, 1000)


def test_bad_settings_raise_config_errors() -> None:
    with pytest.raises(ConfigError, match="http"):
        OpenAIPolicy("127.0.0.1:8000/v1")
    with pytest.raises(ConfigError, match="max_tokens"):
        OpenAIPolicy("http://127.0.0.1:9/v1", max_tokens=0)
    with pytest.raises(ConfigError, match="temperature"):
        OpenAIPolicy("http://127.0.0.1:9/v1", temperature=-0.1)
    with pytest.raises(ConfigError, match="max_attempts"):
        OpenAIPolicy("http://127.0.0.1:9/v1", max_attempts=0)
