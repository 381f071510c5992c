"""Redaction: every written form of a secret is masked; credential headers are recognised."""

from __future__ import annotations

import base64
import json
import logging
import re
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmsearch_gym.search.redaction import (
    LOG_REDACTOR,
    RedactingLogFilter,
    Redactor,
    is_credential_header,
    secret_forms,
)

SECRET = "sk-live/7f3a+9c1e=SECRET"


def forms_written_by_others(value: str) -> list[str]:
    raw = value.encode()
    lower_escapes = re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), quote(value, safe=""))
    return [value, quote(value, safe=""), lower_escapes,
            quote_plus(value), raw.hex(), raw.hex().upper(), json.dumps(value)[1:-1],
            json.dumps(value)[1:-1].replace("/", "\\/"),
            base64.b64encode(raw).decode(), base64.b64encode(raw).decode().rstrip("="),
            base64.urlsafe_b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("="),
            base64.b64encode(b"admin:" + raw).decode(), base64.b64encode(b"x:" + raw + b"!").decode()]


@pytest.mark.parametrize("form", forms_written_by_others(SECRET))
def test_every_form_of_a_secret_is_masked(form: str) -> None:
    redactor = Redactor()
    redactor.add(SECRET)
    out = redactor.redact(f"before {form} after")
    assert "***" in out and form not in out
    assert out.startswith("before ") and out.endswith(" after")


@settings(max_examples=80, deadline=None)
@given(secret=st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=8, max_size=40),
       prefix=st.binary(max_size=12), suffix=st.binary(max_size=12))
def test_base64_of_any_text_holding_the_secret_is_masked(secret: str, prefix: bytes, suffix: bytes) -> None:
    """Whatever comes before it (a user name, a JSON blob), base64 never shows the secret's core."""
    redactor = Redactor()
    redactor.add(secret)
    token = base64.b64encode(prefix + secret.encode() + suffix).decode()
    masked = redactor.mask_secrets(token)
    assert "***" in masked
    kept = masked.replace("***", " ").split()
    visible = sum(len(part) for part in kept)
    assert visible <= len(token) - len(secret.encode()) * 4 // 3 + 4  # at most the edges survive


def test_short_derived_forms_are_not_registered() -> None:
    forms = secret_forms("ab")
    assert "ab" in forms and all(form == "ab" or len(form) >= 6 for form in forms)
    redactor = Redactor()
    redactor.add("ab")
    assert redactor.redact("YWI= x") == "YWI= x"  # a 4-character base64 would mask text by chance


def test_mask_secrets_leaves_urls_alone_but_redact_masks_their_credentials() -> None:
    redactor = Redactor()
    redactor.add(SECRET)
    url = "https://site.example/page?key=public-value"
    assert redactor.mask_secrets(url) == url
    assert redactor.redact(url) == "https://site.example/page?key=***"


@pytest.mark.parametrize("name, value, expected", [
    ("Authorization", "Bearer x", True), ("Cookie", "a=b", True), ("Proxy-Authorization", "x", True),
    ("x-goog-api-key", "k", True), ("X-Api-Key", "k", True), ("X-Session-Id", "s", True),
    ("X-Custom-Sig", "s", True), ("X-Trace", f"t {SECRET}", True), ("X-Trace", "t", False),
    ("Accept", "text/plain", False), ("X-Return-Format", "markdown", False),
])
def test_credential_headers(name: str, value: str, expected: bool) -> None:
    redactor = Redactor()
    redactor.add(SECRET)
    assert is_credential_header(name, value, declared=["x-custom-sig"], redactor=redactor) is expected


def test_log_filter_masks_registered_secrets_in_messages_and_arguments() -> None:
    LOG_REDACTOR.add(SECRET)
    record = logging.LogRecord("urllib3.connectionpool", logging.DEBUG, __file__, 1, "GET /?q=%s %s",
                               (base64.b64encode(SECRET.encode()).decode(), ValueError(SECRET)), None)
    RedactingLogFilter().filter(record)
    assert SECRET not in record.getMessage() and "***" in record.getMessage()


def test_backends_with_secrets_stay_picklable() -> None:
    """Vector envs and Ray ship backends to workers by pickling them."""
    import pickle

    from mmsearch_gym.search.reader import JinaReader, ReadingBackend
    from mmsearch_gym.search.searxng import SearxngBackend
    from mmsearch_gym.search.vision import GoogleVisionBackend

    searx = pickle.loads(pickle.dumps(SearxngBackend("http://admin:p4ssword-x@127.0.0.1:1")))
    token = base64.b64encode(b"admin:p4ssword-x").decode()
    assert searx.client.redact(f"p4ssword-x {token}") == "*** ***"
    vision = pickle.loads(pickle.dumps(GoogleVisionBackend(SECRET)))
    assert vision.client.is_credential_header("x-goog-api-key", "k") and SECRET not in vision.client.redact(SECRET)
    reading = pickle.loads(pickle.dumps(ReadingBackend(searx, JinaReader(SECRET, environ={}))))
    assert reading.reader.client.mask_secrets(SECRET) == "***"
