"""Cache entries: the key scheme and the checksummed byte encoding every store holds.

A key depends only on what changes results (backend name, version and ``cache_params()``,
the normalised query or the image's content digest and crop box, and ``k``). A value is one
:class:`CacheEntry` encoded as JSON plus raw thumbnail bytes, never pickle, and carries the
sha256 of its own bytes: a value cut short or flipped on disk (or in Redis) is detected when
read and treated as absent, so a damaged cache can never answer with wrong data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import json.scanner
import struct
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring as _encode_str  # JSON string literal, ensure_ascii=False
from typing import Any, Literal

from mmsearch_gym.errors import ConfigError, DataError
from mmsearch_gym.search.base import Hit
from mmsearch_gym.tasks import Box

__all__ = ["CacheEntry", "DamagedValue", "cache_key", "check_value", "decode_hits", "encode_str",
           "normalize_query"]

_MAGIC = b"MSGC2"
"""Current values: magic, sha256 of the payload (32 bytes), payload."""
_LEGACY_MAGIC = b"MSGC1"
"""Values written before checksums: magic, payload (its lengths are still checked in full)."""
_LENGTH = struct.Struct(">I")
_DIGEST_SIZE = 32
_PAYLOAD = len(_MAGIC) + _DIGEST_SIZE
_JSON_SEPARATORS = (",", ":")
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=_JSON_SEPARATORS)
"""Reused: ``json.dumps`` with options builds a new encoder per call, which dominates key cost."""
_sha256 = hashlib.sha256
encode_str = _encode_str


class DamagedValue(DataError):
    """A stored value is not an intact mmsearch_gym entry (cut short, flipped, foreign)."""


def normalize_query(query: str) -> str:
    """The form of a text query that keys the cache: Unicode canonical caseless, whitespace collapsed.

    ``"  Capital of  FRANCE "`` and ``"capital of france"`` share one entry. Composed and
    decomposed accents match (NFD, case-fold, then NFC).
    """
    if query.isascii():
        return " ".join(query.lower().split())
    folded = unicodedata.normalize("NFD", query).casefold()
    return " ".join(unicodedata.normalize("NFC", folded).split())


def canonical_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """A JSON-safe copy of a backend's ``cache_params()``; ConfigError if it is not JSON."""
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"cache_params() must return a mapping of JSON values, got {type(params).__name__}")
    try:
        return json.loads(json.dumps(dict(params), sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"cache_params() must be JSON-serialisable (strings, numbers, lists, dicts): {err}") from None


def _subject(kind: str, query: str | None, digest: str | None, box: Box | None) -> Any:
    if kind == "text":
        return query
    return [digest, None if box is None else [int(v) for v in box]]


def cache_key(backend: str, version: str, params: Mapping[str, Any], kind: str, subject: Any, k: int) -> str:
    """The cache key: sha256 hex of canonical JSON ``[backend, version, params, kind, subject, k]``.

    ``subject`` is the normalised query for text searches and ``[digest, box or null]`` for
    image searches. Nothing else (and in particular no credential) ever enters a key.
    """
    canonical = json.dumps([backend, version, dict(params), kind, subject, int(k)], sort_keys=True,
                           ensure_ascii=False, separators=_JSON_SEPARATORS)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def key_head(name: str, version: str, params: Mapping[str, Any]) -> str:
    """Everything in a key but the kind, subject and k, as the head of a JSON list."""
    return json.dumps([name, version, dict(params)], sort_keys=True, ensure_ascii=False,
                      separators=_JSON_SEPARATORS)[:-1] + ","


@dataclass(frozen=True)
class CacheEntry:
    """One stored answer with everything needed to export it and to recompute its key."""

    kind: Literal["text", "image"]
    k: int
    backend: str
    backend_version: str
    hits: tuple[Hit, ...]
    query: str | None = None
    """Normalised query (text searches)."""
    digest: str | None = None
    """Content digest of the source image (image searches)."""
    box: Box | None = None
    """Crop box of an image search, or None for the whole image."""
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return cache_key(self.backend, self.backend_version, self.params, self.kind,
                         _subject(self.kind, self.query, self.digest, self.box), self.k)

    def encode(self) -> bytes:
        """Bytes stored in the cache: magic, sha256 of the payload, then the payload.

        Payload: u32 length + JSON list of hit rows ``[title, url, snippet, score, source,
        thumbnail length or null]``, u32 length + JSON metadata, then the raw thumbnail bytes
        in hit order. A cache hit parses only the hit rows; thumbnails travel as raw bytes (no
        base64). The encoding is a pure function of the entry.
        """
        thumbs: list[bytes] = []
        rows = []
        for hit in self.hits:
            thumb = hit.thumbnail
            if thumb is not None:
                thumb = bytes(thumb)
                thumbs.append(thumb)
            rows.append([hit.title, hit.url, hit.snippet, float(hit.score), hit.source,
                         None if thumb is None else len(thumb)])
        meta: dict[str, Any] = {"kind": self.kind, "k": int(self.k), "backend": self.backend,
                                "backend_version": self.backend_version, "params": dict(self.params)}
        if self.kind == "text":
            meta["query"] = self.query
        else:
            meta["digest"] = self.digest
            meta["box"] = None if self.box is None else [int(v) for v in self.box]
        head = _ENCODER.encode(rows).encode("utf-8", "surrogatepass")
        tail = _ENCODER.encode(meta).encode("utf-8", "surrogatepass")
        payload = b"".join([_LENGTH.pack(len(head)), head, _LENGTH.pack(len(tail)), tail, *thumbs])
        return _MAGIC + _sha256(payload).digest() + payload

    @classmethod
    def decode(cls, data: bytes) -> CacheEntry:
        """The entry in stored bytes; :class:`DamagedValue` if they are damaged or not ours."""
        hits, meta = decode_hits(data), _decode_meta(data)
        box = meta.get("box")
        try:
            return cls(kind=meta["kind"], k=int(meta["k"]), backend=meta["backend"],
                       backend_version=meta["backend_version"], hits=tuple(hits),
                       query=meta.get("query"), digest=meta.get("digest"),
                       box=None if box is None else tuple(int(v) for v in box),  # type: ignore[arg-type]
                       params=meta.get("params") or {})
        except (KeyError, TypeError, ValueError) as err:
            raise _corrupt(err) from None


def _corrupt(err: Exception | str) -> DamagedValue:
    why = err if isinstance(err, str) else repr(err)
    return DamagedValue(f"a cache value is damaged ({why}); `mmsearch-gym cache repair DIR` drops it")


def _payload_start(data: Any) -> int:
    """Offset of the payload after checking the magic and (current format) the checksum."""
    if type(data) is bytes and data[:5] == _MAGIC:
        if _sha256(memoryview(data)[_PAYLOAD:]).digest() != data[5:_PAYLOAD]:
            raise _corrupt(f"checksum mismatch over {len(data)} bytes: cut short or altered")
        return _PAYLOAD
    if type(data) is bytes and data[:5] == _LEGACY_MAGIC:
        return 5
    raise DamagedValue("a cache value is not an mmsearch_gym entry (bad magic); "
                       "was this directory written by another program? Use a fresh cache directory.")


def check_value(data: Any) -> str | None:
    """Why ``data`` is not an intact entry, or None if it is (used by verify and repair)."""
    try:
        CacheEntry.decode(data)
    except DataError as err:
        return str(err)
    return None


def _decode_meta(data: bytes) -> dict[str, Any]:
    start = _payload_start(data)
    try:
        (n_rows,) = _LENGTH.unpack_from(data, start)
        start += 4 + n_rows
        (n_meta,) = _LENGTH.unpack_from(data, start)
        meta = json.loads(data[start + 4:start + 4 + n_meta].decode("utf-8", "surrogatepass"))
        if not isinstance(meta, dict):
            raise TypeError("metadata is not an object")
        return meta
    except (ValueError, TypeError, struct.error) as err:
        raise _corrupt(err) from None


_HIT_FIELDS = ("title", "url", "snippet", "score", "source", "thumbnail")
_FAST_HIT = ("__slots__" not in vars(Hit) and not hasattr(Hit, "__post_init__")
             and tuple(f.name for f in dataclasses.fields(Hit)) == _HIT_FIELDS)
"""Whether decoded Hits may be built by filling ``__dict__`` instead of calling ``__init__``.

A frozen dataclass sets each field through ``object.__setattr__``, which was more than a third
of a cache hit's cost; filling ``__dict__`` directly gives an identical, equal Hit. The check
falls back to the constructor if Hit ever gains slots, validation or other fields.
"""
_object_new = object.__new__
_SCAN = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


def decode_hits(data: bytes) -> list[Hit]:
    """The hits of stored bytes (the hot path of a cache hit); DamagedValue if they are not intact.

    Verifies the checksum, then calls the C JSON scanner directly: ``json.loads(bytes)``
    spends more time sniffing the encoding and checking trailing whitespace in Python than
    parsing. Every length is checked, so even a legacy (unchecksummed) value cut short fails.
    """
    start = _payload_start(data)
    try:
        (n_rows,) = _LENGTH.unpack_from(data, start)
        text = data[start + 4:start + 4 + n_rows].decode("utf-8", "surrogatepass")
        rows, end = _SCAN(text, 0)
        if end != len(text):
            raise ValueError("trailing bytes after the hit rows")
        (n_meta,) = _LENGTH.unpack_from(data, start + 4 + n_rows)
        offset = start + 8 + n_rows + n_meta
        hits: list[Hit] = []
        append = hits.append
        for title, url, snippet, score, source, size in rows:
            thumb = None
            if size is not None:
                thumb = data[offset:offset + size]
                offset += size
            if _FAST_HIT:
                hit = _object_new(Hit)
                d = hit.__dict__
                d["title"], d["url"], d["snippet"], d["score"], d["source"], d["thumbnail"] = (
                    title, url, snippet, score, source, thumb)
            else:
                hit = Hit(title, url, snippet, score, source, thumb)
            append(hit)
        if offset != len(data):
            raise ValueError(f"value holds {len(data)} bytes, its lengths say {offset}")
    except (ValueError, TypeError, StopIteration, struct.error) as err:
        raise _corrupt(err) from None
    return hits
