"""A scripted fake web API on 127.0.0.1 for testing live backends without the internet.

``FakeWebServer`` answers each request with the next scripted ``Reply`` (or with whatever a
handler function returns), records every request it saw, and answers at most
``max_requests`` requests, so no client retry loop can run away. Replies can misbehave the
ways real APIs do: slow answers (client timeouts), a Content-Length larger than the body
(truncation), dropped connections, oversized bodies.

    with FakeWebServer([Reply(429, {"error": "slow down"}, headers={"Retry-After": "3"}),
                        Reply(200, {"organic_results": [...]})]) as server:
        backend = SerpApiBackend("KEY", base_url=server.url + "/search.json", client=...)
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from PIL import Image


@dataclass
class Reply:
    """One scripted answer.

    ``body``: bytes are sent as is, str as UTF-8, anything else as JSON.
    ``delay``: seconds to wait before answering (cut short when the server stops).
    ``declared_length``: Content-Length to announce instead of the true length (truncation).
    ``drop``: close the connection without answering at all.
    ``omit_length``: send no Content-Length; the body ends when the connection closes.
    ``drip``: seconds between bytes: the answer is written one byte at a time, each write well
    inside any read timeout (a server that never quite stalls); with ``drip_head=False`` the
    status line and headers go at once and only the body drips.
    """

    status: int = 200
    body: Any = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None
    delay: float = 0.0
    declared_length: int | None = None
    drop: bool = False
    omit_length: bool = False
    drip: float = 0.0
    drip_head: bool = True

    def encoded(self) -> tuple[bytes, str]:
        if isinstance(self.body, bytes):
            return self.body, self.content_type or "application/octet-stream"
        if isinstance(self.body, str):
            return self.body.encode("utf-8"), self.content_type or "text/plain; charset=utf-8"
        return json.dumps(self.body).encode("utf-8"), self.content_type or "application/json"


@dataclass
class SeenRequest:
    """What the fake server received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


Handler = Callable[[SeenRequest], Reply]


class FakeWebServer:
    """A ThreadingHTTPServer on a free 127.0.0.1 port serving scripted replies.

    Use as a context manager; on exit it stops, releases slow handlers and closes the port.
    Requests beyond the script or beyond ``max_requests`` get HTTP 410 and are counted in
    ``unexpected``.
    """

    def __init__(self, replies: Sequence[Reply] | Handler, *, max_requests: int = 20) -> None:
        self._script: list[Reply] | None = None if callable(replies) else list(replies)
        self._handler: Handler | None = replies if callable(replies) else None
        self.max_requests = max_requests
        self.requests: list[SeenRequest] = []
        self.unexpected = 0
        self.dripped: list[int] = []
        """For each dripping answer: how many bytes went out before the client left (or the end)."""
        self._lock = threading.Lock()
        self._drips_done = threading.Condition(self._lock)
        self._dripping = 0
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_port}"

    def __enter__(self) -> FakeWebServer:
        fake = self

        class _RequestHandler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake._serve(self)

            def do_POST(self) -> None:
                fake._serve(self)

            def log_message(self, format: str, *args: Any) -> None:  # silence stderr
                return

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _RequestHandler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with self._drips_done:  # let dripping handlers record their counts (they stop at once)
            self._drips_done.wait_for(lambda: self._dripping == 0, timeout=5)
        assert self._httpd is not None and self._thread is not None
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _next_reply(self, seen: SeenRequest) -> Reply:
        with self._lock:
            self.requests.append(seen)
            if len(self.requests) > self.max_requests:
                self.unexpected += 1
                return Reply(410, {"error": "fake server: request budget exhausted"})
            if self._handler is not None:
                handler = self._handler
            else:
                assert self._script is not None
                if not self._script:
                    self.unexpected += 1
                    return Reply(410, {"error": "fake server: no scripted reply left"})
                return self._script.pop(0)
        return handler(seen)

    def _serve(self, http: BaseHTTPRequestHandler) -> None:
        length = int(http.headers.get("Content-Length") or 0)
        body = http.rfile.read(length) if length else b""
        parts = urlsplit(http.path)
        seen = SeenRequest(method=http.command, path=parts.path, query=parse_qs(parts.query),
                           headers=dict(http.headers.items()), body=body)
        reply = self._next_reply(seen)
        if reply.delay:
            self._stop.wait(reply.delay)
        if reply.drop:
            http.close_connection = True
            return
        payload, content_type = reply.encoded()
        if reply.drip:
            self._drip(http, reply, payload, content_type)
            return
        try:
            http.send_response(reply.status)
            http.send_header("Content-Type", content_type)
            if not reply.omit_length:
                declared = len(payload) if reply.declared_length is None else reply.declared_length
                http.send_header("Content-Length", str(declared))
            for name, value in reply.headers.items():
                http.send_header(name, value)
            http.end_headers()
            http.wfile.write(payload)
            http.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout): fine
            pass

    def _drip(self, http: BaseHTTPRequestHandler, reply: Reply, payload: bytes, content_type: str) -> None:
        """Write the answer a byte at a time until done, the client leaves or the server stops."""
        head = [f"HTTP/1.1 {reply.status} Slow", f"Content-Type: {content_type}",
                f"Content-Length: {len(payload)}", *(f"{k}: {v}" for k, v in reply.headers.items())]
        head_bytes = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        http.close_connection = True
        sent = 0
        with self._lock:
            self._dripping += 1
        try:
            if not reply.drip_head:
                http.wfile.write(head_bytes)
            data = head_bytes + payload if reply.drip_head else payload
            for i in range(len(data)):
                if self._stop.wait(reply.drip if i else 0):
                    break
                http.wfile.write(data[i:i + 1])
                http.wfile.flush()
                sent += 1
        except OSError:  # the client gave up: done
            pass
        with self._drips_done:
            self.dripped.append(sent)
            self._dripping -= 1
            self._drips_done.notify_all()


def png_bytes(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (8, 6)) -> bytes:
    """A tiny real PNG, for thumbnails and image queries."""
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def recording_sleep() -> tuple[list[float], Callable[[float], None]]:
    """A fake ``sleep`` that records the delays it was asked for instead of waiting."""
    delays: list[float] = []
    return delays, delays.append


def fast_client(delays: list[float] | None = None, *, read_timeout: float = 5.0, max_attempts: int = 3,
                max_bytes: int = 1 << 20, jitter: float = 0.5, base_delay: float = 1.0, **kwargs: Any) -> Any:
    """An HttpClient for tests: records sleeps instead of waiting, fixed jitter, no proxies."""
    from mmsearch_gym.search.http import HttpClient

    sink = delays if delays is not None else []
    return HttpClient(connect_timeout=2.0, read_timeout=read_timeout, max_bytes=max_bytes,
                      max_attempts=max_attempts, base_delay=base_delay, max_delay=30.0, sleep=sink.append,
                      random=lambda: jitter, trust_env=False, **kwargs)


def exception_texts(exc: BaseException) -> list[str]:
    """str and repr of an exception and of everything chained to it (cause and context).

    Secrets must be absent from the whole chain: error reporters walk it even when a
    traceback hides it.
    """
    out: list[str] = []
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        out += [str(item), repr(item)]
        todo += [item.__cause__, item.__context__]
    return out
