"""The one HTTP client every live web backend uses.

Live search APIs fail in a handful of well-known ways: rate limits (429 with ``Retry-After``),
flaky gateways (5xx), dropped connections, slow or dripping servers, cut-off bodies, HTML error
pages or hostile JSON where JSON was expected, redirects to other hosts. ``HttpClient`` handles
them all in one place, the same way for every backend: bounded retries with exponential backoff
and full jitter, per-read timeouts *and* a total deadline, a cap on the response size, JSON
decoded with depth and number limits, redirects followed by hand so credential headers never
reach another origin, and messages and hits that never show a secret in any encoding.

Sleep, randomness and the clock are injectable so tests exercise every retry path in
microseconds and deterministically.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random as _random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

from mmsearch_gym.bounded_json import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_NUMBER_CHARS,
    JsonLimitError,
    loads_bounded,
)
from mmsearch_gym.errors import ConfigError
from mmsearch_gym.search.base import Hit, SearchError
from mmsearch_gym.search.deadline import (
    DEFAULT_REQUEST_DEADLINE,
    DEFAULT_SEARCH_DEADLINE,
    Deadline,
    Watchdog,
    WatchedAdapter,
    check_seconds,
    current_search_deadline,
    earliest,
    search_deadline,
)
from mmsearch_gym.search.redaction import (
    LOG_REDACTOR,
    REDACTED,
    Redactor,
    Secret,
    install_log_filter,
    is_credential_header,
    public_url,
    redact_url_text,
    secret_from,
)

__all__ = [
    "DEFAULT_MAX_BYTES", "DEFAULT_MAX_REDIRECTS", "DEFAULT_REQUEST_DEADLINE", "DEFAULT_SEARCH_DEADLINE",
    "REDACTED", "REDIRECT_STATUSES", "RETRY_STATUSES", "DeadlineError", "HttpClient", "HttpResponse",
    "HttpStatusError", "Secret", "hit_rank_score", "public_url", "redact_url_text", "require_positive_k",
    "same_origin", "search_deadline", "secret_from",
]

logger = logging.getLogger(__name__)

RETRY_STATUSES: frozenset[int] = frozenset({429, 500, 502, 503, 504})
"""Statuses that mean "try again later": rate limited or a transient server/gateway failure."""

REDIRECT_STATUSES: frozenset[int] = frozenset({301, 302, 303, 307, 308})
DEFAULT_MAX_BYTES = 5 * 1024 * 1024
DEFAULT_MAX_REDIRECTS = 5
_CHUNK = 64 * 1024
_MESSAGE_CHARS = 300

install_log_filter(["urllib3.connectionpool", *(f"mmsearch_gym.search.{m}" for m in
                                                 ("http", "serpapi", "searxng", "vision", "reader"))])


def require_positive_k(k: int) -> int:
    """Validate the number of hits asked for (a caller's configuration, not model text)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k (the number of hits) must be a positive integer, got {k!r}")
    return k


def hit_rank_score(rank: int) -> float:
    """The deterministic score web backends give the hit at 1-based ``rank``: 1/rank."""
    return 1.0 / rank


def same_origin(a: str, b: str) -> bool:
    """Same scheme, host and port (default ports filled in): where credentials may follow."""
    pa, pb = urlsplit(a), urlsplit(b)
    defaults = {"http": 80, "https": 443}
    try:
        ports = (pa.port or defaults.get(pa.scheme.lower()), pb.port or defaults.get(pb.scheme.lower()))
    except ValueError:  # a port that is not a number: never the same origin
        return False
    return (pa.scheme.lower() == pb.scheme.lower() and (pa.hostname or "") == (pb.hostname or "")
            and ports[0] == ports[1])


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
    max_depth: int = DEFAULT_MAX_DEPTH
    max_number_chars: int = DEFAULT_MAX_NUMBER_CHARS

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
        """The body as JSON within the depth and number limits; a SearchError if it is anything else."""
        if not self.content.strip():
            raise SearchError(f"{self.service} returned an empty body where JSON was expected ({self.url})")
        try:
            return loads_bounded(self.content, max_depth=self.max_depth, max_number_chars=self.max_number_chars)
        except JsonLimitError as exc:
            problem, malformed = str(exc), exc.malformed
        # Raised outside the except block: nothing holding the body is chained.
        kind = self.content_type or "no content type"
        what = "malformed or non-JSON content" if malformed else "JSON beyond the decoder's limits"
        start = self.redactor(self.text()[:2000])[:80].replace("\n", " ")
        raise SearchError(f"{self.service} returned {what} ({kind}, {len(self.content)} bytes) from {self.url}: "
                          f"{problem}; body starts {start!r}")


class HttpStatusError(SearchError):
    """The server answered with a non-retryable error status (4xx other than 429)."""

    def __init__(self, message: str, status: int, api_message: str) -> None:
        super().__init__(message)
        self.status = status
        self.api_message = api_message


class DeadlineError(SearchError):
    """A request or search ran out of time (or a ``Retry-After`` asked for more than was left)."""


@dataclass(frozen=True)
class _Retryable:
    """Internal: one attempt failed in a way worth retrying (``reason`` is already redacted)."""

    reason: str
    retry_after: float | None = None


def _no_auth(request: Any) -> Any:
    """An auth hook that adds nothing: stops session auth and .netrc on a cross-origin hop."""
    return request


class HttpClient:
    """A requests.Session with timeouts, a total deadline, a size cap, bounded retries and redaction.

    Retries (at most ``max_attempts`` tries in all) happen on HTTP 429/500/502/503/504, on
    connection errors, timeouts and bodies cut short. The wait before try ``n+1`` is
    ``Retry-After`` when the server sends one (seconds or an HTTP date), otherwise full jitter
    ``random() * min(max_delay, base_delay * 2**(n-1))``; either way at most ``max_delay``.
    Other 4xx statuses fail at once: retrying a bad key or a bad request only costs money.

    ``deadline`` bounds one logical request in all (tries, redirects, sleeps, body reads):
    ``"auto"`` is ``max(DEFAULT_REQUEST_DEADLINE, connect_timeout + read_timeout)``, ``None``
    no total limit. A ``search_deadline`` around the call can only shorten it. A ``Retry-After``
    that would end past the deadline fails at once with a ``DeadlineError``.

    Redirects (at most ``max_redirects``) are followed by hand: on a hop to another origin
    (scheme, host or port) every credential header is dropped for good (see
    ``redaction.is_credential_header``; ``secret_headers`` names more).

    ``sleep``, ``random`` and ``clock`` exist for tests: inject fakes and no test ever waits.
    ``trust_env=False`` ignores proxy environment variables (tests talking to 127.0.0.1).
    """

    def __init__(self, *, connect_timeout: float = 5.0, read_timeout: float = 30.0,
                 deadline: float | None | Literal["auto"] = "auto",
                 max_bytes: int = DEFAULT_MAX_BYTES, max_attempts: int = 4,
                 base_delay: float = 1.0, max_delay: float = 30.0,
                 retry_statuses: Iterable[int] = RETRY_STATUSES,
                 max_redirects: int = DEFAULT_MAX_REDIRECTS, secret_headers: Iterable[str] = (),
                 max_json_depth: int = DEFAULT_MAX_DEPTH, max_number_chars: int = DEFAULT_MAX_NUMBER_CHARS,
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
        if max_redirects < 0 or max_json_depth < 1 or max_number_chars < 1:
            raise ConfigError("max_redirects must be >= 0, max_json_depth and max_number_chars >= 1")
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.deadline = (max(DEFAULT_REQUEST_DEADLINE, self.connect_timeout + self.read_timeout)
                         if deadline == "auto" else check_seconds(deadline, "deadline"))  # type: ignore[arg-type]
        self.max_bytes = int(max_bytes)
        self.max_attempts = int(max_attempts)
        self.base_delay = float(base_delay)
        self.max_delay = float(max_delay)
        self.retry_statuses = frozenset(retry_statuses)
        self.max_redirects = int(max_redirects)
        self.max_json_depth = int(max_json_depth)
        self.max_number_chars = int(max_number_chars)
        self._secret_headers: set[str] = {name.lower() for name in secret_headers}
        self._sleep = sleep
        self._random = random
        self._clock = clock
        self._redactor = Redactor()
        self.session = session if session is not None else requests.Session()
        self.session.trust_env = trust_env
        self.session.headers["User-Agent"] = user_agent
        for prefix in ("https://", "http://"):
            if type(self.session.get_adapter(prefix)) is HTTPAdapter:  # not a custom one
                self.session.mount(prefix, WatchedAdapter())

    # -- secrets ---------------------------------------------------------------------------

    def add_secret(self, secret: str | Secret | None) -> None:
        """Register a value masked, in every encoding, in every message, hit and log line."""
        if secret is None:
            return
        value = secret.reveal() if isinstance(secret, Secret) else secret
        if value:
            self._redactor.add(value)
            LOG_REDACTOR.add(value)

    def add_secret_header(self, name: str) -> None:
        """Declare a header as a credential: it never follows a redirect to another origin."""
        self._secret_headers.add(name.lower())

    def redact(self, text: str) -> str:
        """``text`` with registered secrets and credential-looking URL parts masked."""
        return self._redactor.redact(text)

    def mask_secrets(self, text: str) -> str:
        """``text`` with every form of every registered secret masked (and nothing else).

        For content (hits, page text): a result URL's own ``?key=`` parameter is data, not ours.
        """
        return self._redactor.mask_secrets(text)

    def redact_hits(self, hits: Iterable[Hit]) -> list[Hit]:
        """``hits`` with every registered secret masked in title, URL and snippet."""
        mask = self._redactor.mask_secrets
        return [replace(hit, title=mask(hit.title), url=mask(hit.url), snippet=mask(hit.snippet)) for hit in hits]

    def is_credential_header(self, name: str, value: str) -> bool:
        return is_credential_header(name, value, declared=self._secret_headers, redactor=self._redactor)

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

        Raises SearchError (HttpStatusError for a non-retryable 4xx, DeadlineError when time
        runs out) with a redacted message.
        """
        call = _Call(method, url, service, params, json_body, dict(headers or {}),
                     self.max_bytes if max_bytes is None else int(max_bytes), self._budget(), self.redact(url))
        attempt = 0
        while True:
            attempt += 1
            outcome = self._attempt(call)
            if isinstance(outcome, HttpResponse):
                logger.debug("%s %s -> HTTP %d (%d bytes, attempt %d)", method, outcome.url,
                             outcome.status, len(outcome.content), attempt)
                return outcome
            where = f"[{method} {call.shown}]"
            if attempt >= self.max_attempts:
                raise SearchError(f"{service} request failed after {attempt} attempt(s): {outcome.reason} {where}")
            left = call.budget.remaining()
            if outcome.retry_after is not None and outcome.retry_after >= left:
                raise DeadlineError(
                    f"{service} request failed: {outcome.reason}; the server asks to retry in "
                    f"{outcome.retry_after:.0f} s, past {call.budget.describe()} ({max(left, 0.0):.1f} s left) {where}")
            delay = self._delay(attempt, outcome.retry_after)
            if delay >= left:
                raise DeadlineError(f"{service} request failed after {attempt} attempt(s): {outcome.reason}; "
                                    f"no time left to retry within {call.budget.describe()} {where}")
            logger.warning("%s: %s %s; retry %d of %d in %.2f s", service, outcome.reason, where,
                           attempt, self.max_attempts - 1, delay)
            self._sleep(delay)

    def _budget(self) -> Deadline:
        own = Deadline.after(self.deadline, "request") if self.deadline is not None else None
        outer = current_search_deadline()
        if own is None and outer is None:
            return Deadline(math.inf, math.inf, "request")
        return earliest(own, outer)

    def _past(self, call: _Call, detail: str = "") -> DeadlineError:
        return DeadlineError(f"{call.service} request stopped by {call.budget.describe()}"
                             f"{': ' + detail if detail else ''} [{call.method} {call.shown}]")

    def _attempt(self, call: _Call) -> HttpResponse | _Retryable:
        """One try under a watchdog that shuts its sockets at the deadline."""
        left = call.budget.remaining()
        if left <= 0:
            raise self._past(call)
        if math.isinf(left):
            return self._exchange(call)
        outcome: HttpResponse | _Retryable | None = None
        error: SearchError | None = None
        with Watchdog(left) as watchdog:
            try:
                outcome = self._exchange(call)
            except SearchError as exc:
                error = exc
        if watchdog.fired and not isinstance(outcome, HttpResponse) and not isinstance(error, HttpStatusError):
            raise self._past(call, "the server was still sending")  # outside except: nothing chained
        if error is not None:
            raise error
        assert outcome is not None
        return outcome

    def _exchange(self, call: _Call) -> HttpResponse | _Retryable:
        """Send, follow redirects by hand, and read the final answer.

        Credential headers (and session auth) are dropped for good at the first hop to another
        origin; user-info credentials follow same-origin hops only; a hop to another origin whose
        URL holds a registered secret (an API key in the query) is refused.
        """
        method, url, params, body = call.method, call.url, call.params, call.json_body
        headers: dict[str, str | None] = dict(call.headers)
        auth: Any = None
        for _ in range(self.max_redirects + 1):
            raw = self._send(call, method, url, params, body, headers, auth)
            if isinstance(raw, _Retryable):
                return raw
            location = raw.headers.get("Location", "").strip() if raw.status_code in REDIRECT_STATUSES else ""
            if not location:
                return self._receive(call, raw)
            with raw:
                previous = raw.url or url
                status = raw.status_code
            target = urljoin(previous, location)
            if urlsplit(target).scheme.lower() not in ("http", "https"):
                raise SearchError(f"{call.service} redirected to a non-http(s) URL "
                                  f"{self.redact(target)[:120]!r} [{call.method} {call.shown}]")
            if same_origin(previous, target):
                target = _keep_userinfo(previous, target)
            else:
                if self._redactor.carries_secret(unquote(target)) or self._redactor.carries_secret(target):
                    raise SearchError(f"{call.service} redirected to another origin with a secret in the URL "
                                      f"({self.redact(public_url(target))}); not followed [{call.method} {call.shown}]")
                headers = self._without_credentials(headers)
                auth = _no_auth
            if status == 303 and method != "HEAD" or status in (301, 302) and method == "POST":
                method, body = "GET", None
            url, params = target, None
        raise SearchError(f"{call.service}: more than {self.max_redirects} redirects [{call.method} {call.shown}]")

    def _without_credentials(self, headers: Mapping[str, str | None]) -> dict[str, str | None]:
        """``headers`` minus credential headers, with the session's own ones cancelled (None)."""
        kept: dict[str, str | None] = {k: v for k, v in headers.items()
                                       if v is not None and not self.is_credential_header(k, v)}
        for name, value in self.session.headers.items():
            if self.is_credential_header(name, str(value)):
                kept[name] = None  # requests drops session headers set to None per request
        return kept

    def _send(self, call: _Call, method: str, url: str, params: Mapping[str, Any] | None, body: Any,
              headers: Mapping[str, str | None], auth: Any) -> requests.Response | _Retryable:
        """One HTTP exchange without redirects: the raw response or a retryable failure.

        Failures are built *after* leaving the ``except`` blocks, so no raised exception keeps
        a requests exception (whose text holds the unredacted URL) in its ``__context__``.
        """
        left = call.budget.remaining()
        if left <= 0:
            raise self._past(call)
        failure: _Retryable | SearchError | None = None
        try:
            # a header set to None cancels the session's own (requests supports it; its stubs do not say so)
            return self.session.request(method, url, params=params, json=body, headers=headers,  # type: ignore[arg-type]
                                        auth=auth, stream=True, allow_redirects=False,
                                        timeout=(min(self.connect_timeout, left), min(self.read_timeout, left)))
        except requests.Timeout as exc:
            failure = _Retryable(f"timed out ({self._describe(exc)})")
        except requests.ConnectionError as exc:
            failure = _Retryable(f"connection failed ({self._describe(exc)})")
        except requests.RequestException as exc:
            failure = SearchError(f"{call.service} request could not be sent: {self._describe(exc)}")
        if isinstance(failure, SearchError):
            raise failure
        return failure

    def _receive(self, call: _Call, raw: requests.Response) -> HttpResponse | _Retryable:
        """Status handling and the body of a final (non-redirect) answer."""
        with raw:
            final_url = self.redact(raw.url or call.url)
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
                    f"{call.service} answered HTTP {status} {raw.reason or ''} for {call.method} {final_url}"
                    + (f": {message}" if message else ""), status, message)
            content = self._read_body(raw, call, final_url)
        if isinstance(content, _Retryable):
            return content
        return HttpResponse(status=status, headers=CaseInsensitiveDict(headers_out), content=content,
                            url=final_url, service=call.service, redactor=self.redact,
                            max_depth=self.max_json_depth, max_number_chars=self.max_number_chars)

    def _read_body(self, raw: requests.Response, call: _Call, shown: str) -> bytes | _Retryable:
        limit = call.limit
        declared = raw.headers.get("Content-Length")
        declared_n = int(declared) if declared and declared.strip().isdigit() else None
        if declared_n is not None and declared_n > limit:
            raise SearchError(f"{call.service} response too large: {declared_n} bytes declared, "
                              f"limit {limit} bytes [{shown}]")
        chunks: list[bytes] = []
        total = 0
        broken: str | None = None
        try:
            for chunk in raw.iter_content(_CHUNK):
                total += len(chunk)
                if total > limit or call.budget.remaining() <= 0:
                    break
                chunks.append(chunk)
        except requests.RequestException as exc:
            broken = self._describe(exc)
        if total > limit:
            raise SearchError(f"{call.service} response too large: more than {limit} bytes [{shown}]")
        if call.budget.remaining() <= 0:
            raise self._past(call, f"{total} bytes of the body read")
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
            data = loads_bounded(text, max_depth=self.max_json_depth, max_number_chars=self.max_number_chars)
        except JsonLimitError:
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
            except (TypeError, ValueError, IndexError, OverflowError):
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
        return (f"HttpClient(timeouts=({self.connect_timeout}, {self.read_timeout}), deadline={self.deadline}, "
                f"max_bytes={self.max_bytes}, max_attempts={self.max_attempts})")


@dataclass(frozen=True)
class _Call:
    """Internal: one logical request, as asked (``shown`` is the redacted URL for messages)."""

    method: str
    url: str
    service: str
    params: Mapping[str, Any] | None
    json_body: Any
    headers: Mapping[str, str]
    limit: int
    budget: Deadline
    shown: str


def _keep_userinfo(previous: str, target: str) -> str:
    """``target`` with ``previous``'s user:password when it has none (same-origin hops only)."""
    before, after = urlsplit(previous), urlsplit(target)
    if "@" not in before.netloc or "@" in after.netloc:
        return target
    userinfo = before.netloc.rsplit("@", 1)[0]
    return urlunsplit((after.scheme, f"{userinfo}@{after.netloc}", after.path, after.query, after.fragment))
