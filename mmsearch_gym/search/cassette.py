"""Cassettes: a search cache as one diffable, shippable JSONL file.

A cassette lets a recorded cache travel with a repository or a paper (``offline_cache/``):
anyone can replay the exact search results of a run without an API key. The file is
canonical, so the same contents always give the same bytes (whatever order entries were
recorded in) and a diff shows exactly which answers changed.

Format (UTF-8, one JSON object per line, keys sorted, no spaces)::

    {"backend":..,"backend_version":..,"blobs":B,"cache_params":{..},"entries":N,
     "format":"mmsearch-gym-cassette","version":1}                      <- line 1, the header
    {"blob":SHA256,"data":BASE64}                                        <- B lines, sorted by sha
    {"hits":[..],"k":5,"key":KEY,"kind":"text","query":NORMALISED}       <- N lines, sorted by key
    {"box":[x1,y1,x2,y2]|null,"digest":..,"hits":[..],"k":5,"key":KEY,"kind":"image"}

Each hit is ``{"score","snippet","source","thumbnail","title","url"}`` where ``thumbnail`` is
null or the sha256 of a blob line: thumbnails repeat a lot across searches, so each distinct
image is stored once. ``key`` is the cache key, recomputed and checked on import.

Import validates every line before writing anything; the first bad line is reported by its
1-based number in a :class:`~mmsearch_gym.errors.DataError`, and a bad file imports nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mmsearch_gym import validation
from mmsearch_gym.errors import ConfigError, DataError
from mmsearch_gym.search.base import Hit
from mmsearch_gym.search.entry import CacheEntry, normalize_query
from mmsearch_gym.search.store import Store, iter_entries, open_store


class CacheLike(Protocol):
    """What export and import need of a :class:`~mmsearch_gym.search.cache.SearchCache`: its
    backend identity, its store and its entries (a Protocol, so this module imports no cache)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def params(self) -> dict[str, Any]: ...
    @property
    def location(self) -> str: ...
    @property
    def store(self) -> Store: ...

    def entries(self) -> Iterable[tuple[str, CacheEntry]]: ...

__all__ = ["FORMAT", "FORMAT_VERSION", "CassetteInfo", "export_cassette", "import_cassette", "read_cassette",
           "verify_cassette", "write_cassette"]

FORMAT = "mmsearch-gym-cassette"
FORMAT_VERSION = 1

_HEADER_KEYS = {"format", "version", "backend", "backend_version", "cache_params", "entries", "blobs"}
_HIT_KEYS = {"title", "url", "snippet", "score", "source", "thumbnail"}
_TEXT_KEYS = {"key", "kind", "query", "k", "hits"}
_IMAGE_KEYS = {"key", "kind", "digest", "box", "k", "hits"}
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class CassetteInfo:
    """What a valid cassette holds (``mmsearch-gym cache verify`` prints it)."""

    path: str
    format_version: int
    backend: str
    backend_version: str
    cache_params: Mapping[str, Any]
    entries: int
    text_entries: int
    image_entries: int
    blobs: int
    bytes: int
    entry_list: tuple[CacheEntry, ...] = field(default=(), repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "format_version": self.format_version, "backend": self.backend,
                "backend_version": self.backend_version, "cache_params": dict(self.cache_params),
                "entries": self.entries, "text_entries": self.text_entries,
                "image_entries": self.image_entries, "blobs": self.blobs, "bytes": self.bytes}


def _line(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n"


def write_cassette(entries: Iterable[CacheEntry], path: str | Path, *, backend: str, backend_version: str,
                   cache_params: Mapping[str, Any] | None = None) -> int:
    """Write entries of one backend as a canonical cassette (atomically); returns the entry count.

    Raises ConfigError if an entry belongs to another backend, DataError if a hit's score is
    not a finite number (JSON cannot hold it).
    """
    params = dict(cache_params or {})
    by_key: dict[str, CacheEntry] = {}
    for entry in entries:
        if (entry.backend, entry.backend_version, dict(entry.params)) != (backend, backend_version, params):
            raise ConfigError(f"entry of backend {entry.backend}@{entry.backend_version} cannot go into a cassette "
                              f"of {backend}@{backend_version}; export one backend per cassette")
        by_key[entry.key] = entry
    blobs: dict[str, bytes] = {}
    lines: list[str] = []
    for key in sorted(by_key):
        entry = by_key[key]
        hits = []
        for hit in entry.hits:
            thumb_ref = None
            if hit.thumbnail is not None:
                data = bytes(hit.thumbnail)
                thumb_ref = hashlib.sha256(data).hexdigest()
                blobs[thumb_ref] = data
            hits.append({"title": hit.title, "url": hit.url, "snippet": hit.snippet, "score": float(hit.score),
                         "source": hit.source, "thumbnail": thumb_ref})
        row: dict[str, Any] = {"key": key, "kind": entry.kind, "k": int(entry.k), "hits": hits}
        if entry.kind == "text":
            row["query"] = entry.query
        else:
            row["digest"] = entry.digest
            row["box"] = None if entry.box is None else [int(v) for v in entry.box]
        try:
            lines.append(_line(row))
        except ValueError as err:
            raise DataError(f"cannot write entry {key} ({entry.kind} search): {err}; "
                            "a hit score is NaN or infinite") from None
    header = {"format": FORMAT, "version": FORMAT_VERSION, "backend": backend, "backend_version": backend_version,
              "cache_params": params, "entries": len(lines), "blobs": len(blobs)}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(_line(header))
        for sha in sorted(blobs):
            handle.write(_line({"blob": sha, "data": base64.b64encode(blobs[sha]).decode("ascii")}))
        handle.writelines(lines)
    os.replace(tmp, out)
    return len(lines)


def _groups(store: Store) -> dict[tuple[str, str, str], list[CacheEntry]]:
    groups: dict[tuple[str, str, str], list[CacheEntry]] = {}
    for _, entry in iter_entries(store):
        ident = (entry.backend, entry.backend_version, json.dumps(dict(entry.params), sort_keys=True))
        groups.setdefault(ident, []).append(entry)
    return groups


def export_cassette(cache: CacheLike | str | Path, path: str | Path, *, backend: str | None = None) -> int:
    """Export a cache to a cassette file; returns the number of entries written.

    From a :class:`SearchCache`, the entries of its own backend are exported. From a cache
    directory or ``redis://`` URL, the store must hold one backend, or ``backend`` (``NAME``
    or ``NAME@VERSION``) picks one. The cassette depends only on the entries, never on the
    store they come from.
    """
    if not isinstance(cache, (str, Path)):
        entries = [entry for _, entry in cache.entries()]
        return write_cassette(entries, path, backend=cache.name, backend_version=cache.version,
                              cache_params=cache.params)
    store = open_store(cache, create=False, readonly="auto")
    try:
        groups = _groups(store)
    finally:
        store.close()
    if backend is not None:
        groups = {ident: es for ident, es in groups.items()
                  if backend in (ident[0], f"{ident[0]}@{ident[1]}")}
    names = ", ".join(sorted(f"{n}@{v}" + ("" if p == "{}" else f" {p}") for n, v, p in groups))
    if not groups:
        what = f" of backend {backend!r}" if backend else ""
        raise ConfigError(f"the cache at {cache} holds no entries{what} to export")
    if len(groups) > 1:
        raise ConfigError(f"the cache at {cache} holds entries of several backends ({names}); "
                          "choose one with --backend NAME@VERSION")
    (name, version, params), = groups
    (entries,) = groups.values()
    return write_cassette(entries, path, backend=name, backend_version=version, cache_params=json.loads(params))


# -- reading and validation -------------------------------------------------------------------


class _Bad(Exception):
    """A validation failure inside one line (turned into DataError with the line number)."""


def _expect(cond: bool, message: str) -> None:
    if not cond:
        raise _Bad(message)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_keys(obj: Mapping[str, Any], expected: set[str], what: str) -> None:
    keys = set(obj)
    missing, extra = sorted(expected - keys), sorted(keys - expected)
    problems = ([f"missing fields {missing}"] if missing else []) + ([f"unknown fields {extra}"] if extra else [])
    _expect(not problems, f"{what} has " + "; ".join(problems))


def _parse_header(obj: Any) -> dict[str, Any]:
    _expect(isinstance(obj, dict), "the header must be a JSON object")
    _expect(obj.get("format") == FORMAT, f"not a cassette: the header's format must be {FORMAT!r}")
    _expect(obj.get("version") == FORMAT_VERSION,
            f"cassette format version {obj.get('version')!r} is not supported (this library reads version "
            f"{FORMAT_VERSION}); upgrade mmsearch_gym or re-export the cassette")
    _check_keys(obj, _HEADER_KEYS, "the header")
    _expect(isinstance(obj["backend"], str) and obj["backend"] != "", "header 'backend' must be a non-empty string")
    _expect(isinstance(obj["backend_version"], str), "header 'backend_version' must be a string")
    _expect(isinstance(obj["cache_params"], dict), "header 'cache_params' must be an object")
    _expect(_is_int(obj["entries"]) and obj["entries"] >= 0, "header 'entries' must be a count")
    _expect(_is_int(obj["blobs"]) and obj["blobs"] >= 0, "header 'blobs' must be a count")
    return obj


def _parse_blob(obj: dict[str, Any]) -> tuple[str, bytes]:
    _check_keys(obj, {"blob", "data"}, "a blob line")
    sha, data = obj["blob"], obj["data"]
    _expect(isinstance(sha, str) and _SHA256.fullmatch(sha) is not None, "'blob' must be a lowercase sha256 hex")
    _expect(isinstance(data, str), "'data' must be base64 text")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as err:
        raise _Bad(f"'data' is not valid base64 ({err})") from None
    _expect(hashlib.sha256(raw).hexdigest() == sha, "the blob's data does not match its sha256")
    return sha, raw


def _parse_entry(obj: dict[str, Any], header: Mapping[str, Any]) -> tuple[CacheEntry, list[str | None]]:
    kind = obj.get("kind")
    _expect(kind in ("text", "image"), f"an entry's 'kind' must be 'text' or 'image', got {kind!r}")
    _check_keys(obj, _TEXT_KEYS if kind == "text" else _IMAGE_KEYS, f"a {kind} entry")
    _expect(_is_int(obj["k"]) and obj["k"] >= 1, "'k' must be a positive integer")
    _expect(isinstance(obj["key"], str), "'key' must be a string")
    query = digest = box = None
    if kind == "text":
        query = obj["query"]
        _expect(isinstance(query, str), "'query' must be a string")
        _expect(normalize_query(query) == query, f"'query' {query!r} is not normalised "
                f"(expected {normalize_query(query)!r}: case-folded, whitespace collapsed)")
    else:
        digest = obj["digest"]
        _expect(isinstance(digest, str) and digest != "", "'digest' must be a non-empty string")
        raw_box = obj["box"]
        if raw_box is not None:
            _expect(isinstance(raw_box, list) and len(raw_box) == 4 and all(_is_int(v) for v in raw_box),
                    "'box' must be null or 4 integers [x1, y1, x2, y2]")
            box = tuple(raw_box)
    _expect(isinstance(obj["hits"], list), "'hits' must be a list")
    hits: list[Hit] = []
    refs: list[str | None] = []
    for i, item in enumerate(obj["hits"]):
        _expect(isinstance(item, dict), f"hit {i} must be an object")
        _check_keys(item, _HIT_KEYS, f"hit {i}")
        for name in ("title", "url", "snippet", "source"):
            _expect(isinstance(item[name], str), f"hit {i}: {name!r} must be a string")
        score = item["score"]
        _expect(isinstance(score, (int, float)) and not isinstance(score, bool), f"hit {i}: 'score' must be a number")
        ref = item["thumbnail"]
        _expect(ref is None or (isinstance(ref, str) and _SHA256.fullmatch(ref) is not None),
                f"hit {i}: 'thumbnail' must be null or the sha256 of a blob line")
        refs.append(ref)
        hits.append(Hit(item["title"], item["url"], item["snippet"], float(score), item["source"], None))
    entry = CacheEntry(kind="text" if kind == "text" else "image", k=obj["k"], backend=header["backend"],
                       backend_version=header["backend_version"], hits=tuple(hits), query=query, digest=digest, box=box,  # type: ignore[arg-type]
                       params=header["cache_params"])
    _expect(entry.key == obj["key"], f"'key' {obj['key']!r} does not match the entry (expected {entry.key}); "
            "was the line edited by hand? Fix or drop the key, or re-export the cassette")
    return entry, refs


def read_cassette(path: str | Path) -> CassetteInfo:
    """Parse and validate a whole cassette; returns its info with the entries (``entry_list``).

    Raises DataError naming the 1-based line number of the first bad line, ConfigError if the
    file does not exist.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"cassette {file} does not exist")
    header: dict[str, Any] | None = None
    blobs: dict[str, bytes] = {}
    parsed: list[tuple[int, CacheEntry, list[str | None]]] = []
    seen_keys: dict[str, int] = {}
    lineno = 0
    size = 0
    with open(file, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            size += len(raw)
            try:
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise _Bad(f"not UTF-8 ({err.reason} at byte {err.start})") from None
                _expect(text.strip() != "", "empty line")
                try:
                    obj = validation.loads(text)  # bounded: depth, integer digits, finite numbers, text
                except DataError as err:
                    raise _Bad(str(err)) from None
                if lineno == 1:
                    header = _parse_header(obj)
                    continue
                _expect(isinstance(obj, dict), "each line must be a JSON object")
                assert header is not None
                if "blob" in obj:
                    sha, data = _parse_blob(obj)
                    _expect(sha not in blobs, f"blob {sha} appears twice")
                    blobs[sha] = data
                    continue
                entry, refs = _parse_entry(obj, header)
                first = seen_keys.setdefault(obj["key"], lineno)
                _expect(first == lineno, f"key {obj['key']} already appeared on line {first}")
                parsed.append((lineno, entry, refs))
            except _Bad as err:
                raise DataError(f"{file}, line {lineno}: {err}") from None
    if header is None:
        raise DataError(f"{file}, line 1: empty file; a cassette starts with a header line")
    for lineno, _, refs in parsed:
        for ref in refs:
            if ref is not None and ref not in blobs:
                raise DataError(f"{file}, line {lineno}: thumbnail {ref} has no blob line")
    if header["entries"] != len(parsed):
        raise DataError(f"{file}, line 1: the header says {header['entries']} entries but the file has "
                        f"{len(parsed)}; the file may be truncated")
    if header["blobs"] != len(blobs):
        raise DataError(f"{file}, line 1: the header says {header['blobs']} blobs but the file has {len(blobs)}")
    entries = []
    for _, entry, refs in parsed:
        if any(ref is not None for ref in refs):
            hits = tuple(Hit(h.title, h.url, h.snippet, h.score, h.source, None if ref is None else blobs[ref])
                         for h, ref in zip(entry.hits, refs, strict=True))
            entry = CacheEntry(kind=entry.kind, k=entry.k, backend=entry.backend,
                               backend_version=entry.backend_version, hits=hits, query=entry.query,
                               digest=entry.digest, box=entry.box, params=entry.params)
        entries.append(entry)
    n_text = sum(e.kind == "text" for e in entries)
    return CassetteInfo(path=str(file), format_version=header["version"], backend=header["backend"],
                        backend_version=header["backend_version"], cache_params=header["cache_params"],
                        entries=len(entries), text_entries=n_text, image_entries=len(entries) - n_text,
                        blobs=len(blobs), bytes=size, entry_list=tuple(entries))


def verify_cassette(path: str | Path) -> CassetteInfo:
    """Check a cassette line by line without importing it; DataError names the first bad line."""
    return read_cassette(path)


def import_cassette(cache: CacheLike | str | Path, path: str | Path | CassetteInfo) -> int:
    """Validate a whole cassette, then store every entry; returns the number of entries.

    ``path`` may also be a :class:`CassetteInfo` already read by :func:`read_cassette`.
    Nothing is written unless every line is valid. Importing twice changes nothing. A
    SearchCache must serve the cassette's backend (name, version and cache params) or
    ConfigError says how to open one that does; a plain directory accepts any backend.
    """
    info = path if isinstance(path, CassetteInfo) else read_cassette(path)
    path = info.path
    if not isinstance(cache, (str, Path)):
        ident = (info.backend, info.backend_version, dict(info.cache_params))
        if ident != (cache.name, cache.version, cache.params):
            params = "" if not info.cache_params else f", params={dict(info.cache_params)!r}"
            raise ConfigError(
                f"cassette {path} was recorded by backend {info.backend}@{info.backend_version}"
                f"{' with cache params ' + json.dumps(dict(info.cache_params)) if info.cache_params else ''}, "
                f"but this cache serves {cache.name}@{cache.version}"
                f"{' with cache params ' + json.dumps(cache.params) if cache.params else ''}. Import it into a "
                f"cache opened for that backend: SearchCache(None, {cache.location!r}, mode='replay', "
                f"name={info.backend!r}, version={info.backend_version!r}{params}), or into a directory with "
                "`mmsearch-gym cache import FILE --dir DIR`")
        store, own = cache.store, False
    else:
        store, own = open_store(cache), True
    try:
        store.put_many((entry.key, entry.encode()) for entry in info.entry_list)
    finally:
        if own:
            store.close()
    return info.entries
