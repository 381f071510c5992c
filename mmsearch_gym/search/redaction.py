"""Secrets: holding API keys, masking them in every encoding, and knowing which headers carry them.

A key leaks in the form a server (or a log line) happens to write it: raw, URL-quoted, inside
a ``Basic`` token as base64 of ``user:secret``, hex, or JSON-escaped. ``Redactor`` masks all of
these, including base64 of any text that *contains* the secret (at each of the three byte
alignments base64 can put it), so an echoed ``Authorization: Basic ...`` header, a base64 JSON
blob or a hex dump never carries a key into a hit, an error, a log or an observation.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from urllib.parse import quote, quote_plus, urlsplit, urlunsplit

from mmsearch_gym.errors import ConfigError

REDACTED = "***"

# Query parameters whose values are credentials; masked in every URL we show or log.
_SECRET_PARAM = re.compile(
    r"(?i)([?&;](?:api[_-]?key|key|access[_-]?token|token|password|secret|auth)=)[^&#\s\"'<>]*")
_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)[^/@\s\"'<>]+@")
_MIN_DERIVED = 6  # shorter encoded fragments would mask ordinary text by chance

CREDENTIAL_HEADERS: frozenset[str] = frozenset({
    "authorization", "proxy-authorization", "cookie", "x-goog-api-key", "x-api-key", "api-key"})
"""Headers that always carry a credential, whatever their value."""

_CREDENTIAL_NAME = re.compile(r"(?i)key|auth|token|secret|password|passwd|cookie|session|credential|signature")


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


def secret_forms(value: str) -> set[str]:
    """Every written form of ``value`` that redaction masks.

    Raw; URL-quoted (``+`` or ``%20`` for spaces, upper- and lower-case escapes); JSON-escaped
    (ASCII or not, ``\\/`` or ``/``); hex (both cases); base64 (standard and URL-safe, with and
    without padding); and the part of base64 that the secret alone decides when it sits inside
    a longer encoded text, at each of the three byte offsets (this covers ``user:secret`` in a
    ``Basic`` header for any user name).
    """
    raw = value.encode("utf-8")
    quoted = quote(value, safe="")
    forms = {value, quote_plus(value), quoted, re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), quoted),
             raw.hex(), raw.hex().upper()}
    for ensure_ascii in (True, False):
        escaped = json.dumps(value, ensure_ascii=ensure_ascii)[1:-1]
        forms.update({escaped, escaped.replace("/", "\\/")})
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(raw).decode("ascii")
        forms.update({whole, whole.rstrip("=")})
        for offset in (0, 1, 2):
            inner = encode(b"\0" * offset + raw).decode("ascii")
            first = -(-8 * offset // 6)  # first character decided by the secret's bits only
            last = 8 * (offset + len(raw)) // 6  # characters after this mix in what follows
            forms.add(inner[first:last])
    return {form for form in forms if form == value or len(form) >= _MIN_DERIVED}


class Redactor:
    """Masks registered secrets, in every form of ``secret_forms``, plus credential-looking URL parts.

    Thread-safe: backends share one client across reader threads.
    """

    def __init__(self) -> None:
        self._forms: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()

    def add(self, value: str) -> None:
        if not value:
            return
        with self._lock:
            self._forms.update(secret_forms(value))
            self._compile()

    def _compile(self) -> None:
        ordered = sorted(self._forms, key=len, reverse=True)  # longest first: no half-masked keys
        self._pattern = re.compile("|".join(re.escape(form) for form in ordered)) if ordered else None

    def mask_secrets(self, text: str) -> str:
        """``text`` with every form of every registered secret masked (and nothing else)."""
        pattern = self._pattern
        return text if pattern is None else pattern.sub(REDACTED, text)

    def redact(self, text: str) -> str:
        """``text`` with every registered secret form and credential-looking URL part masked."""
        return redact_url_text(self.mask_secrets(text))

    def carries_secret(self, text: str) -> bool:
        pattern = self._pattern
        return pattern is not None and pattern.search(text) is not None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def __getstate__(self) -> dict[str, object]:  # picklable (vector envs, Ray): the lock stays behind
        return {"forms": sorted(self._forms)}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__()  # type: ignore[misc]
        forms = state.get("forms")
        if isinstance(forms, list):
            self._forms = {str(form) for form in forms}
            self._compile()


def is_credential_header(name: str, value: str, *, declared: Iterable[str] = (),
                         redactor: Redactor | None = None) -> bool:
    """Whether a header must not follow a redirect to another origin.

    True for the standard credential headers, any name that looks like one (``*key*``,
    ``*token*``, ``*auth*``, ``*secret*``, ``*cookie*``, ``*session*``...), the names a
    backend declared, and any header whose value holds a registered secret.
    """
    lowered = name.lower()
    return (lowered in CREDENTIAL_HEADERS or lowered in {d.lower() for d in declared}
            or _CREDENTIAL_NAME.search(lowered) is not None
            or (redactor is not None and redactor.carries_secret(value)))


LOG_REDACTOR = Redactor()
"""Every secret any HttpClient registered: masked in the log lines of the loggers below."""


class RedactingLogFilter(logging.Filter):
    """Masks secrets and credential-looking URL parts in log records.

    urllib3 prints full request URLs at DEBUG, and some APIs (SerpApi) only accept their key as
    a query parameter: without this filter, debug logging would leak the key.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = LOG_REDACTOR.redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(LOG_REDACTOR.redact(str(a)) if isinstance(a, (str, BaseException)) else a
                                for a in record.args)
        return True


def install_log_filter(names: Iterable[str] = ("urllib3.connectionpool", "mmsearch_gym.search")) -> None:
    """Attach one RedactingLogFilter to each named logger (idempotent)."""
    for name in names:
        target = logging.getLogger(name)
        if not any(isinstance(f, RedactingLogFilter) for f in target.filters):
            target.addFilter(RedactingLogFilter())
