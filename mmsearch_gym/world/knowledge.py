"""The built-in world's knowledge: entities (countries, photos), their facts, passages and pictures.

This is the ground truth that the offline search engine serves and the task generator asks
about. It is read from ``mmsearch_gym/world/data`` (built by ``python -m
mmsearch_gym.world.build`` from the CIA World Factbook, public-domain flag PNGs and
scikit-image sample photos) and needs nothing but the standard library, numpy and Pillow.

Passages are the world's "web pages". Each fact of an entity is written in one of its
passages as the sentence ``"<FACT_LABELS[key]>: <value>."``, so :func:`read_fact` recovers it
exactly, e.g. ``read_fact(passage.text, FACT_LABELS["capital"]) == "Paris"``.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
from PIL import Image

from mmsearch_gym.errors import ConfigError, DataError

__all__ = [
    "DATA_DIR",
    "FACT_LABELS",
    "Entity",
    "EntityKind",
    "Knowledge",
    "Passage",
    "load_knowledge",
    "read_fact",
]

DATA_DIR = Path(__file__).resolve().parent / "data"
"""Where the built world ships inside the package."""

DATA_FORMAT = 1
"""Version of the on-disk layout (entities.json, manifest.json, images/, thumbs/, features.npy)."""

FLAG_SIZE = (160, 112)
"""Width and height of the stored flag pictures (the flags' common 10:7 shape)."""

THUMBNAIL_SIDE = 96
"""Long side, in pixels, of the JPEG thumbnails returned with image-search hits."""

FACT_LABELS: dict[str, str] = {
    # countries
    "capital": "Capital",
    "region": "Map references",
    "highest_point": "Highest point",
    "national_symbol": "National symbol",
    "national_anthem": "National anthem",
    "independence": "Independence",
    "independence_from": "Independence from",
    "government_type": "Government type",
    "currency": "Currency",
    "currency_code": "Currency code",
    "demonym": "Nationality (adjective)",
    # photos
    "subject": "Subject",
    "credit": "Credit",
}
"""Fact key -> the label that introduces its value in a passage (``"Capital: Paris."``)."""

EntityKind = Literal["country", "photo", "monument"]
_KINDS = ("country", "photo", "monument")


def read_fact(text: str, label: str) -> str | None:
    """The value written as ``"<label>: <value>."`` in a passage, or None if absent.

    A value runs to the first period that ends a sentence (followed by a space or the end of
    the text); the world's fact values never contain ``". "``, so this is exact.
    """
    match = re.search(r"(?:^|\. )" + re.escape(label) + r": (.+?)\.(?= |$)", text)
    return match.group(1) if match else None


@dataclass(frozen=True)
class Passage:
    """One text-search result page of an entity (a Factbook section, a photo's page)."""

    title: str
    url: str
    text: str
    section: str


@dataclass(frozen=True)
class Entity:
    """One thing of the world with a name, facts, passages and a reference picture."""

    id: str
    kind: EntityKind
    name: str
    aliases: tuple[str, ...]
    facts: Mapping[str, str]
    passages: tuple[Passage, ...]
    image_file: str
    image_title: str
    image_url: str
    image_snippet: str
    thumbnail_file: str = ""
    description: str = ""
    """For countries the Factbook's flag description, for photos our description of the picture."""

    def __hash__(self) -> int:
        return hash((self.kind, self.id))

    @property
    def answers(self) -> tuple[str, ...]:
        """Every accepted way to name the entity: ``(name, *aliases)``."""
        return (self.name, *self.aliases)

    def passage(self, section: str) -> Passage | None:
        """The passage of a section ("Government", "Geography", ...) or None."""
        for passage in self.passages:
            if passage.section == section:
                return passage
        return None

    def fact_passage(self, key: str) -> Passage | None:
        """The passage that states fact ``key`` (None if the entity lacks that fact)."""
        value = self.facts.get(key)
        if value is None:
            return None
        label = FACT_LABELS[key]
        for passage in self.passages:
            if read_fact(passage.text, label) == value:
                return passage
        return None


class _ReadOnlyDict(dict):  # type: ignore[type-arg]
    """A dict that refuses changes: entities are shared by every user of the cached world,
    yet their facts must stay JSON-serialisable (``json.dumps`` accepts dict subclasses)."""

    def _refuse(self, *args: object, **kwargs: object) -> None:
        raise TypeError("entity facts are read-only; copy them with dict(entity.facts)")

    __setitem__ = __delitem__ = __ior__ = _refuse  # type: ignore[assignment]
    clear = pop = popitem = setdefault = update = _refuse  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _entity_from_json(raw: Mapping[str, Any]) -> Entity:
    try:
        kind = raw["kind"]
        if kind not in _KINDS:
            raise DataError(f"entity {raw.get('id')!r} has unknown kind {kind!r}")
        facts = {str(k): str(v) for k, v in sorted(raw["facts"].items())}
        unknown = set(facts) - set(FACT_LABELS)
        if unknown:
            raise DataError(f"entity {raw['id']!r} has facts without a label: {sorted(unknown)}")
        return Entity(
            id=str(raw["id"]),
            kind=kind,
            name=str(raw["name"]),
            aliases=tuple(str(a) for a in raw["aliases"]),
            facts=_ReadOnlyDict(facts),
            passages=tuple(Passage(title=str(p["title"]), url=str(p["url"]), text=str(p["text"]),
                                   section=str(p["section"])) for p in raw["passages"]),
            image_file=str(raw["image_file"]),
            image_title=str(raw["image_title"]),
            image_url=str(raw["image_url"]),
            image_snippet=str(raw["image_snippet"]),
            thumbnail_file=str(raw.get("thumbnail_file", "")),
            description=str(raw.get("description", "")),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"malformed entity in entities.json ({exc!r}); rebuild the world with "
                        "`python -m mmsearch_gym.world.build`") from exc


class Knowledge:
    """The loaded world: entities ordered by id, their pictures and the search features.

    Read-only after construction and safe to share between threads (picture decoding is
    cached behind a lock). Use :func:`load_knowledge` for the shipped world; construct one
    directly only to read a world built elsewhere (``Knowledge(Path("my/build"))``).
    """

    def __init__(self, root: Path | str = DATA_DIR) -> None:
        self.root = Path(root)
        manifest_path = self.root / "manifest.json"
        if not manifest_path.is_file():
            raise DataError(f"no world data at {self.root} (manifest.json missing); build it with "
                            "`python -m mmsearch_gym.world.build`")
        self.manifest: Mapping[str, Any] = json.loads(manifest_path.read_text("utf-8"))
        if self.manifest.get("format") != DATA_FORMAT:
            raise DataError(f"world data at {self.root} has format {self.manifest.get('format')!r}, "
                            f"this version reads format {DATA_FORMAT}; rebuild it")
        self._files: Mapping[str, str] = self.manifest["files"]
        raw = json.loads(self._read_verified("entities.json").decode("utf-8"))
        entities = [_entity_from_json(e) for e in raw["entities"]]
        by_id = {e.id: e for e in sorted(entities, key=lambda e: e.id)}
        if len(by_id) != len(entities):
            raise DataError("entities.json has duplicate ids; rebuild the world")
        self.entities: Mapping[str, Entity] = MappingProxyType(by_id)
        self.content_hash: str = str(self.manifest["content_hash"])
        self._lock = threading.Lock()
        self._images: dict[str, Image.Image] = {}
        self._features: np.ndarray | None = None

    def __repr__(self) -> str:
        return (f"Knowledge({len(self.countries())} countries, {len(self.photos())} photos, "
                f"{len(self.monuments())} monuments, hash={self.content_hash[:10]})")

    def __len__(self) -> int:
        return len(self.entities)

    def __contains__(self, entity_id: object) -> bool:
        return entity_id in self.entities

    # -- lookup ---------------------------------------------------------------------------

    def get(self, entity_id: str) -> Entity:
        """The entity with this id; a clear error naming close ids otherwise."""
        try:
            return self.entities[entity_id]
        except KeyError:
            near = [i for i in self.entities if i.startswith(entity_id[:1].lower())][:8]
            raise ConfigError(f"no entity {entity_id!r} in the world; ids are lowercase ISO "
                              f"codes or photo names, e.g. {near}") from None

    def of_kind(self, kind: EntityKind) -> list[Entity]:
        return [e for e in self.entities.values() if e.kind == kind]

    def countries(self) -> list[Entity]:
        return self.of_kind("country")

    def photos(self) -> list[Entity]:
        return self.of_kind("photo")

    def monuments(self) -> list[Entity]:
        return self.of_kind("monument")

    def passages(self) -> list[tuple[str, Passage]]:
        """``(entity_id, passage)`` for every passage: entities by id, passages in stored order."""
        return [(e.id, p) for e in self.entities.values() for p in e.passages]

    # -- pictures -------------------------------------------------------------------------

    def _read_verified(self, name: str) -> bytes:
        path = self.root / name
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"world file {path} is missing ({exc}); rebuild the world") from exc
        expected = self._files.get(name)
        if expected is None or _sha256(data) != expected:
            raise DataError(f"world file {path} does not match manifest.json; rebuild the world "
                            "with `python -m mmsearch_gym.world.build`")
        return data

    def image_bytes(self, entity_id: str) -> bytes:
        """The encoded reference picture (PNG for flags, JPEG for photos), hash-checked."""
        return self._read_verified(self.get(entity_id).image_file)

    def image(self, entity_id: str) -> Image.Image:
        """The reference picture as a fresh RGB image (decoded once, then copied)."""
        with self._lock:
            cached = self._images.get(entity_id)
        if cached is None:
            decoded = Image.open(io.BytesIO(self.image_bytes(entity_id))).convert("RGB")
            with self._lock:
                cached = self._images.setdefault(entity_id, decoded)
        return cached.copy()

    def thumbnail(self, entity_id: str) -> bytes:
        """JPEG bytes of the entity's search-result thumbnail."""
        entity = self.get(entity_id)
        if not entity.thumbnail_file:
            raise DataError(f"entity {entity_id!r} has no thumbnail; rebuild the world")
        return self._read_verified(entity.thumbnail_file)

    def features(self) -> np.ndarray:
        """Image features of every entity's picture, one row per entity in id order (read-only).

        Read from ``features.npy`` when it matches the manifest and the current feature
        version; recomputed from the pictures otherwise (e.g. after the descriptor changed).
        """
        with self._lock:
            if self._features is not None:
                return self._features
        from mmsearch_gym.search.image_features import FEATURE_DIM, FEATURE_VERSION, image_feature

        matrix: np.ndarray | None = None
        if self.manifest.get("feature_version") == FEATURE_VERSION:
            stored = np.load(io.BytesIO(self._read_verified("features.npy")), allow_pickle=False)
            if stored.shape == (len(self.entities), FEATURE_DIM) and stored.dtype == np.float32:
                matrix = stored
        if matrix is None:
            matrix = np.stack([image_feature(self.image(i)) for i in self.entities])
        matrix.setflags(write=False)
        with self._lock:
            if self._features is None:
                self._features = matrix
            return self._features


@functools.lru_cache(maxsize=1)
def load_knowledge() -> Knowledge:
    """The shipped world, loaded once per process."""
    return Knowledge(DATA_DIR)
