"""The one HTTP client every live web backend uses.

Live search APIs fail in a handful of well-known ways: rate limits (429 with ``Retry-After``),
flaky gateways (5xx), dropped connections, slow servers, cut-off bodies, HTML error pages where
JSON was expected. ``HttpClient`` handles them all in one place, the same way for every
backend: bounded retries with exponential backoff and full jitter, hard timeouts, a cap on the
response size, and error messages that say what went wrong *without ever showing an API key*.

Sleep, randomness and the clock are injectable so tests exercise every retry path in
microseconds and deterministically.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import os
import random as _random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit, urlunsplit

import requests
from requests.structures import CaseInsensitiveDict

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.search.base import SearchError

logger = logging.getLogger(__name__)

RETRY_STATUSES: frozenset[int] = frozenset({429, 500, 502, 503, 504})
"""Statuses that mean "try again later": rate limited or a transient server/gateway failure."""

DEFAULT_MAX_BYTES = 5 * 1024 * 1024
_CHUNK = 64 * 1024
_MESSAGE_CHARS = 300

# Query parameters whose values are credentials; masked in every URL we show or log.
_SECRET_PARAM = re.compile(
    r"(?i)([?&;](?:api[_-]?key|key|access[_-]?token|token|password|secret|auth)=)[^&#\s\"'<>]*")
_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)[^/@\s\"'<>]+@")
REDACTED = "***"


def redact_url_text(text: str) -> str:
    """Mask credential-looking query parameters and URL user-info in free text."""
    text = _SECRET_PARAM.sub(lambda m: m.group(1) + REDACTED, text)
    return _USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", text)


def public_url(url: str) -> str:
    """``url`` without user-info, query or fragment: safe for names, cache params and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


class _RedactUrlFilter(logging.Filter):
    """Masks secrets in urllib3's debug log lines, which print full request URLs.

    Some APIs (SerpApi) only accept their key as a query parameter, and urllib3 logs every
    request line at DEBUG; without this filter, turning on debug logging would leak the key.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_url_text(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact_url_text(a) if isinstance(a, str) else a for a in record.args)
        return True


def _install_urllib3_filter() -> None:
    target = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(f, _RedactUrlFilter) for f in target.filters):
        target.addFilter(_RedactUrlFilter())


_install_urllib3_filter()


class Secret:
    """An API key that cannot leak by accident: its repr and str are masked.

    Backends keep keys in a ``Secret`` so that printing ``vars(backend)``, a traceback's locals
    or a debugger view never shows the key. ``reveal()`` is the one place the value comes out.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError("an API key must be a non-empty string")
        self._value = value.strip()

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))


def secret_from(value: str | Secret | None, env_var: str, service: str, *,
                environ: Mapping[str, str] | None = None, required: bool = True) -> Secret | None:
    """Resolve an API key: the explicit argument wins, else the environment variable.

    A missing required key raises ConfigError naming the variable to set.
    """
    if isinstance(value, Secret):
        return value
    if value is not None:
        if not value.strip():
            raise ConfigError(f"{service}: the API key argument is empty; pass a key or set {env_var}")
        return Secret(value)
    env = environ if environ is not None else os.environ
    found = env.get(env_var, "").strip()
    if found:
        return Secret(found)
    if required:
        raise ConfigError(
            f"{service} needs an API key: set the environment variable {env_var} "
            f"or pass api_key=... to the constructor")
    return None


def require_positive_k(k: int) -> int:
    """Validate the number of hits asked for (a caller's configuration, not model text)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k (the number of hits) must be a positive integer, got {k!r}")
    return k


def hit_rank_score(rank: int) -> float:
    """The deterministic score web backends give the hit at 1-based ``rank``: 1/rank."""
    return 1.0 / rank


@dataclass(frozen=True)
class HttpResponse:
    """A fully read, size-checked response. ``url`` is already redacted."""

    status: int
    headers: Mapping[str, str]
    content: bytes
    url: str
    service: str
    redactor: Callable[[str], str] = field(default=redact_url_text, repr=False, compare=False)
    """Masks secrets in anything derived from the body (error messages)."""

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip().lower()

    def text(self) -> str:
        """The body decoded with the declared charset (UTF-8 if none), never raising."""
        match = re.search(r"charset=([\w.-]+)", self.headers.get("Content-Type", ""), re.IGNORECASE)
        encoding = match.group(1) if match else "utf-8"
        try:
            return self.content.decode(encoding, errors="replace")
        except LookupError:
            return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON; a SearchError (not a JSONDecodeError) if it is anything else."""
        if not self.content.strip():
            raise SearchError(f"{self.service} returned an empty body where JSON was expected ({self.url})")
        try:
            return json.loads(self.content.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            problem = f"{exc.__class__.__name__} at {getattr(exc, 'pos', getattr(exc, 'start', '?'))}"
        # Raised outside the except block: the decode error (which holds the body) stays unchained.
        kind = self.content_type or "no content type"
        start = self.redactor(self.text()[:2000])[:80].replace("\n", " ")
        raise SearchError(f"{self.service} returned malformed or non-JSON content ({kind}, {len(self.content)} "
                          f"bytes) from {self.url}: {problem}; body starts {start!r}")


class HttpStatusError(SearchError):
    """The server answered with a non-retryable error status (4xx other than 429)."""

    def __init__(self, message: str, status: int, api_message: str) -> None:
        super().__init__(message)
        self.status = status
        self.api_message = api_message


@dataclass(frozen=True)
class _Retryable:
    """Internal: one attempt failed in a way worth retrying (``reason`` is already redacted)."""

    reason: str
    retry_after: float | None = None


class HttpClient:
    """A requests.Session with timeouts, a size cap, bounded retries and secret redaction.

    Retries (at most ``max_attempts`` tries in all) happen on HTTP 429/500/502/503/504, on
    connection errors, timeouts and bodies cut short. The wait before try ``n+1`` is
    ``Retry-After`` when the server sends one (seconds or an HTTP date), otherwise full jitter
    ``random() * min(max_delay, base_delay * 2**(n-1))``; either way at most ``max_delay``.
    Other 4xx statuses fail at once: retrying a bad key or a bad request only costs money.

    ``sleep``, ``random`` and ``clock`` exist for tests: inject fakes and no test ever waits.
    ``trust_env=False`` ignores proxy environment variables (tests talking to 127.0.0.1).
    """

    def __init__(self, *, connect_timeout: float = 5.0, read_timeout: float = 30.0,
                 max_bytes: int = DEFAULT_MAX_BYTES, max_attempts: int = 4,
                 base_delay: float = 1.0, max_delay: float = 30.0,
                 retry_statuses: Iterable[int] = RETRY_STATUSES,
                 sleep: Callable[[float], None] = time.sleep,
                 random: Callable[[], float] = _random.random,
                 clock: Callable[[], float] = time.time,
                 user_agent: str = "mmsearch-gym (+https://pypi.org/project/mmsearch-gym/)",
                 trust_env: bool = True, session: requests.Session | None = None) -> None:
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ConfigError("timeouts must be positive numbers of seconds")
        if max_bytes <= 0:
            raise ConfigError("max_bytes must be a positive number of bytes")
        if max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1 (1 means no retries)")
        if base_delay < 0 or max_delay < 0:
            raise ConfigError("base_delay and max_delay must not be negative")
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.max_bytes = int(max_bytes)
        self.max_attempts = int(max_attempts)
        self.base_delay = float(base_delay)
        self.max_delay = float(max_delay)
        self.retry_statuses = frozenset(retry_statuses)
        self._sleep = sleep
        self._random = random
        self._clock = clock
        self._secrets: set[str] = set()
        self.session = session if session is not None else requests.Session()
        self.session.trust_env = trust_env
        self.session.headers["User-Agent"] = user_agent

    # -- secrets ---------------------------------------------------------------------------

    def add_secret(self, secret: str | Secret | None) -> None:
        """Register a value that must be masked in every message this client produces."""
        if secret is None:
            return
        value = secret.reveal() if isinstance(secret, Secret) else secret
        if value:
            self._secrets.update({value, quote_plus(value), quote(value, safe="")})

    def redact(self, text: str) -> str:
        """``text`` with registered secrets and credential-looking URL parts masked."""
        for value in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(value, REDACTED)
        return redact_url_text(text)

    # -- requests --------------------------------------------------------------------------

    def get_json(self, url: str, *, service: str, params: Mapping[str, Any] | None = None,
                 headers: Mapping[str, str] | None = None) -> Any:
        return self.request("GET", url, service=service, params=params, headers=headers).json()

    def post_json(self, url: str, body: Any, *, service: str, params: Mapping[str, Any] | None = None,
                  headers: Mapping[str, str] | None = None) -> Any:
        return self.request("POST", url, service=service, params=params, json_body=body,
                            headers=headers).json()

    def request(self, method: str, url: str, *, service: str, params: Mapping[str, Any] | None = None,
                json_body: Any = None, headers: Mapping[str, str] | None = None,
                max_bytes: int | None = None) -> HttpResponse:
        """Send one logical request (up to ``max_attempts`` tries) and read the whole body.

        Raises SearchError (HttpStatusError for a non-retryable 4xx) with a redacted message.
        """
        limit = self.max_bytes if max_bytes is None else int(max_bytes)
        shown = self.redact(url)
        attempt = 0
        while True:
            attempt += 1
            outcome = self._attempt(method, url, service, params, json_body, headers, limit)
            if isinstance(outcome, HttpResponse):
                logger.debug("%s %s -> HTTP %d (%d bytes, attempt %d)", method, outcome.url,
                             outcome.status, len(outcome.content), attempt)
                return outcome
            if attempt >= self.max_attempts:
                raise SearchError(f"{service} request failed after {attempt} attempt(s): {outcome.reason} "
                                  f"[{method} {shown}]")
            delay = self._delay(attempt, outcome.retry_after)
            logger.warning("%s: %s [%s %s]; retry %d of %d in %.2f s", service, outcome.reason,
                           method, shown, attempt, self.max_attempts - 1, delay)
            self._sleep(delay)

    def _attempt(self, method: str, url: str, service: str, params: Mapping[str, Any] | None,
                 json_body: Any, headers: Mapping[str, str] | None, limit: int) -> HttpResponse | _Retryable:
        """One try: the response, a retryable failure (returned), or a SearchError (raised).

        Failures are built *after* leaving the ``except`` blocks, so no raised exception keeps
        a requests exception (whose text holds the unredacted URL) in its ``__context__``.
        """
        failure: _Retryable | SearchError | None = None
        try:
            raw = self.session.request(method, url, params=params, json=json_body, headers=headers,
                                       timeout=(self.connect_timeout, self.read_timeout), stream=True)
        except requests.Timeout as exc:
            failure = _Retryable(f"timed out ({self._describe(exc)})")
        except requests.ConnectionError as exc:
            failure = _Retryable(f"connection failed ({self._describe(exc)})")
        except requests.RequestException as exc:
            failure = SearchError(f"{service} request could not be sent: {self._describe(exc)}")
        if isinstance(failure, SearchError):
            raise failure
        if failure is not None:
            return failure
        with raw:
            final_url = self.redact(raw.url or url)
            status = raw.status_code
            headers_out = dict(raw.headers)
            if status in self.retry_statuses:
                message = self._api_message(self._read_quietly(raw))
                reason = f"HTTP {status} {raw.reason or ''}".rstrip()
                if status == 429:
                    reason += " (rate limited)"
                if message:
                    reason += f": {message}"
                return _Retryable(reason, self._retry_after(raw.headers.get("Retry-After")))
            if status >= 400:
                message = self._api_message(self._read_quietly(raw))
                raise HttpStatusError(
                    f"{service} answered HTTP {status} {raw.reason or ''} for {method} {final_url}"
                    + (f": {message}" if message else ""), status, message)
            content = self._read_body(raw, limit, service, final_url)
        if isinstance(content, _Retryable):
            return content
        return HttpResponse(status=status, headers=CaseInsensitiveDict(headers_out), content=content,
                            url=final_url, service=service, redactor=self.redact)

    def _read_body(self, raw: requests.Response, limit: int, service: str, shown: str) -> bytes | _Retryable:
        declared = raw.headers.get("Content-Length")
        declared_n = int(declared) if declared and declared.strip().isdigit() else None
        if declared_n is not None and declared_n > limit:
            raise SearchError(f"{service} response too large: {declared_n} bytes declared, "
                              f"limit {limit} bytes [{shown}]")
        chunks: list[bytes] = []
        total = 0
        broken: str | None = None
        try:
            for chunk in raw.iter_content(_CHUNK):
                total += len(chunk)
                if total > limit:
                    break
                chunks.append(chunk)
        except requests.RequestException as exc:
            broken = self._describe(exc)
        if total > limit:
            raise SearchError(f"{service} response too large: more than {limit} bytes [{shown}]")
        if broken is not None:
            return _Retryable(f"response body cut short after {total} bytes ({broken})")
        body = b"".join(chunks)
        encoded = raw.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
        if declared_n is not None and not encoded and len(body) != declared_n:
            return _Retryable(f"response body truncated: {len(body)} of {declared_n} bytes")
        return body

    def _read_quietly(self, raw: requests.Response, limit: int = 64 * 1024) -> bytes:
        """Up to ``limit`` bytes of an error body, for its message; never raises."""
        try:
            out = b""
            for chunk in raw.iter_content(8192):
                out += chunk
                if len(out) >= limit:
                    break
            return out[:limit]
        except requests.RequestException:
            return b""

    def _api_message(self, body: bytes) -> str:
        """The human message inside an API error body (JSON ``error``/``message``, or text)."""
        text = body.decode("utf-8", errors="replace").strip()
        if not text:
            return ""
        message = text
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            err = data.get("error")
            if isinstance(err, dict):
                err = err.get("message") or err.get("status")
            message = str(err or data.get("message") or data.get("detail") or text)
        message = self.redact(" ".join(message.split()))  # redact before cutting: no half keys
        if len(message) > _MESSAGE_CHARS:
            message = message[:_MESSAGE_CHARS] + "..."
        return message

    def _retry_after(self, value: str | None) -> float | None:
        """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), if valid."""
        if value is None or not value.strip():
            return None
        value = value.strip()
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                return None
            if when is None:
                return None
            seconds = when.timestamp() - self._clock()
        if math.isnan(seconds):
            return None
        return max(0.0, seconds)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(self.max_delay, retry_after)
        ceiling = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return float(self._random() * ceiling)

    def _describe(self, exc: BaseException) -> str:
        text = self.redact(str(exc) or exc.__class__.__name__)
        if len(text) > _MESSAGE_CHARS:
            text = text[:_MESSAGE_CHARS] + "..."
        return f"{exc.__class__.__name__}: {text}"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"HttpClient(timeouts=({self.connect_timeout}, {self.read_timeout}), "
                f"max_bytes={self.max_bytes}, max_attempts={self.max_attempts})")
