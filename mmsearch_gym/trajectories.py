"""Trajectories: everything one episode did, as one JSON line, enough to replay it bit for bit.

``mmsearch-gym eval --trajectories run.jsonl`` writes one line per finished episode;
``replay`` re-executes the recorded action texts against the env in strict cache replay and
checks that every observation, hit list and reward comes out identical; ``rescore`` recomputes
the rewards of the recorded turns under another :class:`~mmsearch_gym.reward.RewardSpec`
without an env or a search; ``render`` turns the file into an HTML report.

Format (version 1; JSON Schema in ``docs/trajectory-schema.json``). UTF-8, one JSON object per
line, no pickle anywhere::

    {"schema": "mmsearch_gym.trajectory", "version": 1,
     "episode": 0, "task_index": 0, "task_id": "...", "category": "crop",
     "question": "...", "answers": ["gold", "alias"], "seed": 0, "policy": "rag",
     "env": {"id": "MMSearch-v0" | null, "kwargs": {overrides given to gym.make},
             "opaque_kwargs": [names of overrides that were objects, not JSON],
             "dialect": "mmsearch-r1", "reward": RewardSpec.describe(),
             "limits": {"max_turns", "image_search_budget", "text_search_budget", "top_k",
                        "on_invalid", "min_crop_side", "image_size", "max_text_length"},
             "backend": {"name", "version"},
             "cache": {"mode", "dir", "name", "version", "params"} | null,
             "tasks": {"name", "size"}},
     "image": {"digest": image_digest of the task image, "width", "height",
               "thumbnail": null | {"mime": "image/jpeg" | "image/png", "width", "height",
                                    "data": BASE64}},
     "turns": [{"text": raw action text, "action": action_to_json(parsed action),
                "observation": the env's text answer, "box": [x1, y1, x2, y2] | null,
                "hits": [{"url", "title", "snippet", "score", "source",
                          "thumbnail": null | {"digest": SHA256 of the bytes, "data": BASE64 | null}}],
                "search_error": null | "...", "reward": step reward,
                "terminated", "truncated",
                "counts": {"image_searches", "text_searches", "invalid_turns"},
                "timing": {"policy_s", "env_s"}}, ...],
     "reward": RewardBreakdown.to_json(), "return": sum of step rewards,
     "terminated": bool, "truncated": bool,
     "timing": {"policy_s": sum over turns, "env_s": sum over turns, "reset_s": env.reset}}

Images are referenced by content hash (:func:`mmsearch_gym.tasks.image_digest` for the task
image, sha256 of the encoded bytes for result thumbnails). Pixels are embedded only when
recording with ``embed_images=True`` (``--embed-images``): then a thumbnail of the task image
(JPEG, longest side 384 px) and the result thumbnails (their original bytes) are stored as
base64, and the HTML report shows them.

Writing appends one complete line per episode and flushes it as soon as the episode ends, so
a crash never loses a finished episode (:class:`TrajectoryWriter`); a partial last line left by a crash is
isolated on its own line and the reader reports it by line number (:class:`DataError`).
"""

from __future__ import annotations

import base64
import binascii
import difflib
import hashlib
import io
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from PIL import Image

from mmsearch_gym.actions import action_from_json, safe_text
from mmsearch_gym.errors import ConfigError, DataError
from mmsearch_gym.reward import RewardBreakdown

if TYPE_CHECKING:
    import gymnasium as gym

    from mmsearch_gym.env import MMSearchEnv
    from mmsearch_gym.reward import RewardSpec
    from mmsearch_gym.search.base import Hit

__all__ = [
    "SCHEMA", "SCHEMA_VERSION", "HitRecord", "ImageRecord", "Mismatch", "ReplayReport", "Trajectory",
    "TrajectoryWriter", "Turn", "describe_env", "encode_thumbnail", "hit_record", "iter_trajectories",
    "read_trajectories", "replay", "rescore",
]

SCHEMA = "mmsearch_gym.trajectory"
SCHEMA_VERSION = 1
THUMBNAIL_SIDE = 384
"""Longest side of the embedded task-image thumbnail (pixels)."""
THUMBNAIL_MIMES = ("image/jpeg", "image/png")
"""Formats a task-image thumbnail may have. New files use JPEG (quality 85): for the world's
photo scenes PNG was 3 to 8 times larger and 10 to 25 times slower to encode."""

_JSON_SEPARATORS = (",", ":")


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class HitRecord:
    """One search result as recorded: enough to compare a replay and to show it in a report."""

    url: str
    title: str
    snippet: str
    score: float
    source: str
    thumbnail_digest: str | None = None
    """sha256 of the thumbnail's encoded bytes (None: the hit had no thumbnail)."""
    thumbnail: bytes | None = field(default=None, repr=False)
    """The encoded thumbnail bytes, only when recorded with ``embed_images``."""

    def to_json(self) -> dict[str, Any]:
        thumb = None
        if self.thumbnail_digest is not None:
            thumb = {"digest": self.thumbnail_digest,
                     "data": None if self.thumbnail is None else base64.b64encode(self.thumbnail).decode("ascii")}
        return {"url": self.url, "title": self.title, "snippet": self.snippet, "score": self.score,
                "source": self.source, "thumbnail": thumb}

    def comparable(self) -> dict[str, Any]:
        """What a replay must reproduce (the embedded pixels are covered by the digest)."""
        data = self.to_json()
        data["thumbnail"] = self.thumbnail_digest
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "HitRecord":
        thumb = data.get("thumbnail")
        digest = raw = None
        if thumb is not None:
            digest = _expect(thumb.get("digest"), str, "hit thumbnail digest")
            if thumb.get("data") is not None:
                raw = _b64(thumb["data"], "hit thumbnail data")
        return cls(url=_expect(data["url"], str, "hit url"), title=_expect(data["title"], str, "hit title"),
                   snippet=_expect(data.get("snippet", ""), str, "hit snippet"),
                   score=float(_expect(data["score"], (int, float), "hit score")),
                   source=_expect(data.get("source", ""), str, "hit source"),
                   thumbnail_digest=digest, thumbnail=raw)


def hit_record(hit: "Hit", *, embed: bool = False) -> HitRecord:
    """The record of a live Hit; its thumbnail bytes are kept only when ``embed``."""
    thumb = hit.thumbnail
    return HitRecord(url=hit.url, title=hit.title, snippet=hit.snippet, score=float(hit.score),
                     source=hit.source, thumbnail_digest=None if thumb is None else _sha256(bytes(thumb)),
                     thumbnail=bytes(thumb) if (embed and thumb is not None) else None)


@dataclass(frozen=True)
class ImageRecord:
    """The task image, by content hash; ``thumbnail`` (encoded bytes) only with ``embed_images``."""

    digest: str
    width: int
    height: int
    thumbnail: bytes | None = field(default=None, repr=False)
    thumbnail_size: tuple[int, int] | None = None
    thumbnail_mime: str = "image/jpeg"

    def to_json(self) -> dict[str, Any]:
        thumb = None
        if self.thumbnail is not None and self.thumbnail_size is not None:
            thumb = {"mime": self.thumbnail_mime, "width": self.thumbnail_size[0], "height": self.thumbnail_size[1],
                     "data": base64.b64encode(self.thumbnail).decode("ascii")}
        return {"digest": self.digest, "width": self.width, "height": self.height, "thumbnail": thumb}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ImageRecord":
        thumb = data.get("thumbnail")
        raw = size = None
        mime = "image/jpeg"
        if thumb is not None:
            mime = thumb.get("mime")
            if mime not in THUMBNAIL_MIMES:
                raise DataError(f"the task-image thumbnail must be one of {THUMBNAIL_MIMES}, got {mime!r}")
            raw = _b64(thumb.get("data"), "task-image thumbnail")
            size = (int(thumb["width"]), int(thumb["height"]))
        return cls(digest=_expect(data["digest"], str, "image digest"), width=int(data["width"]),
                   height=int(data["height"]), thumbnail=raw, thumbnail_size=size, thumbnail_mime=mime)


def encode_thumbnail(image: Image.Image, side: int = THUMBNAIL_SIDE) -> tuple[bytes, tuple[int, int]]:
    """A JPEG thumbnail (quality 85) whose longest side is at most ``side`` pixels; bytes and size."""
    thumb = image.convert("RGB")
    if max(thumb.size) > side:
        thumb = thumb.copy()
        thumb.thumbnail((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=85)
    return buf.getvalue(), thumb.size


@dataclass
class Turn:
    """One assistant turn: what the policy said, how the env read it and what came back."""

    text: str
    action: dict[str, Any]
    """``action_to_json`` of the action the env parsed (and resolved)."""
    observation: str
    box: tuple[int, int, int, int] | None = None
    hits: list[HitRecord] = field(default_factory=list)
    search_error: str | None = None
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    """The env's counters after this turn: image_searches, text_searches, invalid_turns."""
    policy_s: float = 0.0
    env_s: float = 0.0

    def comparable(self) -> dict[str, Any]:
        """Every field a replay must reproduce exactly (timings left out)."""
        return {"text": self.text, "action": self.action, "observation": self.observation,
                "box": None if self.box is None else list(self.box),
                "hits": [h.comparable() for h in self.hits], "search_error": self.search_error,
                "reward": self.reward, "terminated": self.terminated, "truncated": self.truncated,
                "counts": dict(self.counts)}

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "action": self.action, "observation": self.observation,
                "box": None if self.box is None else list(self.box),
                "hits": [h.to_json() for h in self.hits], "search_error": self.search_error,
                "reward": self.reward, "terminated": self.terminated, "truncated": self.truncated,
                "counts": dict(self.counts), "timing": {"policy_s": self.policy_s, "env_s": self.env_s}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Turn":
        action = _expect(data["action"], dict, "turn action")
        try:
            action_from_json(action)
        except (ConfigError, KeyError, TypeError, ValueError) as err:
            raise DataError(f"turn action {action!r} is not a recorded action: {err}") from None
        box = data.get("box")
        if box is not None:
            if not isinstance(box, list) or len(box) != 4:
                raise DataError(f"turn box must be null or four integers, got {box!r}")
            box = tuple(int(v) for v in box)
        timing = data.get("timing") or {}
        return cls(text=_expect(data["text"], str, "turn text"), action=action,
                   observation=_expect(data["observation"], str, "turn observation"), box=box,
                   hits=[HitRecord.from_json(h) for h in _expect(data.get("hits", []), list, "turn hits")],
                   search_error=data.get("search_error"),
                   reward=float(_expect(data["reward"], (int, float), "turn reward")),
                   terminated=bool(data["terminated"]), truncated=bool(data["truncated"]),
                   counts={str(k): int(v) for k, v in _expect(data.get("counts", {}), dict, "turn counts").items()},
                   policy_s=float(timing.get("policy_s", 0.0)), env_s=float(timing.get("env_s", 0.0)))

    @property
    def reasoning(self) -> str:
        """The turn's reasoning: the ``<reason>`` text, else the text before the first action tag."""
        text = self.text
        start = text.find("<reason>")
        if start != -1:
            end = text.find("</reason>", start + 8)
            if end != -1:
                return text[start + 8:end].strip()
        cut = len(text)
        for tag in ("<tool_call>", "<answer>", "<search>", "<text_search>", "<img_search>", "<crop>"):
            pos = text.find(tag)
            if pos != -1:
                cut = min(cut, pos)
        return text[:cut].strip()


@dataclass
class Trajectory:
    """One episode, as written to (and read from) a trajectories file."""

    episode: int
    task_id: str
    category: str
    question: str
    answers: list[str]
    seed: int | None
    policy: str
    env: dict[str, Any]
    image: ImageRecord
    turns: list[Turn]
    reward: RewardBreakdown
    terminated: bool
    truncated: bool
    task_index: int | None = None
    reset_s: float = 0.0
    """Seconds inside env.reset (loading or rendering the task image)."""
    version: int = SCHEMA_VERSION

    @property
    def total_return(self) -> float:
        return math.fsum(t.reward for t in self.turns)

    @property
    def policy_s(self) -> float:
        return math.fsum(t.policy_s for t in self.turns)

    @property
    def env_s(self) -> float:
        return math.fsum(t.env_s for t in self.turns)

    @property
    def correct(self) -> bool:
        return self.reward.raw_score > 0.5

    @property
    def image_searches(self) -> int:
        return int(self.turns[-1].counts.get("image_searches", 0)) if self.turns else 0

    @property
    def text_searches(self) -> int:
        return int(self.turns[-1].counts.get("text_searches", 0)) if self.turns else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "version": self.version, "episode": self.episode, "task_index": self.task_index,
            "task_id": self.task_id, "category": self.category, "question": self.question,
            "answers": list(self.answers), "seed": self.seed, "policy": self.policy, "env": self.env,
            "image": self.image.to_json(), "turns": [t.to_json() for t in self.turns],
            "reward": self.reward.to_json(), "return": self.total_return,
            "terminated": self.terminated, "truncated": self.truncated,
            "timing": {"policy_s": self.policy_s, "env_s": self.env_s, "reset_s": self.reset_s},
        }

    def to_line(self) -> str:
        """The JSON line (no trailing newline)."""
        return json.dumps(self.to_json(), ensure_ascii=False, allow_nan=False, separators=_JSON_SEPARATORS)

    @classmethod
    def from_json(cls, data: Any) -> "Trajectory":
        if not isinstance(data, dict):
            raise DataError(f"a trajectory line must be a JSON object, got {type(data).__name__}")
        if data.get("schema") != SCHEMA:
            raise DataError(f"not an mmsearch_gym trajectory (schema {data.get('schema')!r}, expected {SCHEMA!r})")
        version = data.get("version")
        if not isinstance(version, int) or version < 1:
            raise DataError(f"trajectory version must be a positive integer, got {version!r}")
        if version > SCHEMA_VERSION:
            raise DataError(f"trajectory version {version} was written by a newer mmsearch_gym "
                            f"(this one reads up to {SCHEMA_VERSION}); upgrade mmsearch-gym")
        try:
            reward = data["reward"]
            breakdown = RewardBreakdown(**{k: reward[k] for k in RewardBreakdown.__dataclass_fields__})
            turns = [Turn.from_json(t) for t in _expect(data["turns"], list, "turns")]
            if not turns:
                raise DataError("a trajectory needs at least one turn")
            return cls(
                episode=int(data["episode"]), task_id=_expect(data["task_id"], str, "task_id"),
                category=_expect(data["category"], str, "category"),
                question=_expect(data["question"], str, "question"),
                answers=[_expect(a, str, "answer") for a in _expect(data["answers"], list, "answers")],
                seed=None if data.get("seed") is None else int(data["seed"]),
                policy=_expect(data["policy"], str, "policy"), env=_expect(data["env"], dict, "env"),
                image=ImageRecord.from_json(_expect(data["image"], dict, "image")), turns=turns,
                reward=breakdown, terminated=bool(data["terminated"]), truncated=bool(data["truncated"]),
                task_index=None if data.get("task_index") is None else int(data["task_index"]),
                reset_s=float((data.get("timing") or {}).get("reset_s", 0.0)), version=version,
            )
        except KeyError as err:
            raise DataError(f"missing field {err.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError) as err:
            if isinstance(err, DataError):
                raise
            raise DataError(f"malformed field: {err}") from None

    @classmethod
    def from_line(cls, line: str) -> "Trajectory":
        try:
            data = json.loads(line)
        except (ValueError, RecursionError) as err:
            raise DataError(f"not valid JSON ({err})") from None
        return cls.from_json(data)


def _expect(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, kind) or (kind in ((int, float), int) and isinstance(value, bool)):
        raise DataError(f"{what} has the wrong type ({type(value).__name__})")
    return value


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise DataError(f"{what} must be base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise DataError(f"{what} is not valid base64") from None


# --------------------------------------------------------------------------------------------
# Describing the env (what a replay needs to rebuild it)
# --------------------------------------------------------------------------------------------


def _json_safe(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def describe_env(env: "MMSearchEnv", *, env_id: str | None = None,
                 kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``env`` block of a trajectory: id, JSON-safe overrides and everything that changes results."""
    from mmsearch_gym.search.cache import SearchCache

    kwargs = dict(kwargs or {})
    safe = {k: v for k, v in sorted(kwargs.items()) if _json_safe(v)}
    backend = env.backend
    cache = None
    if isinstance(backend, SearchCache):
        cache = {"mode": backend.mode, "dir": str(Path(backend.directory).resolve()), "name": backend.name,
                 "version": backend.version, "params": dict(backend.params)}
    return {
        "id": env_id,
        "kwargs": safe,
        "opaque_kwargs": sorted(k for k in kwargs if k not in safe),
        "dialect": env.dialect.name,
        "reward": env.reward_spec.describe(),
        "limits": {"max_turns": env.max_turns, "image_search_budget": env.image_search_budget,
                   "text_search_budget": env.text_search_budget, "top_k": env.top_k,
                   "on_invalid": env.on_invalid, "min_crop_side": env.min_crop_side,
                   "image_size": list(env.image_size), "max_text_length": env.max_text_length},
        "backend": {"name": str(getattr(backend, "name", "")), "version": str(getattr(backend, "version", ""))},
        "cache": cache,
        "tasks": {"name": env.tasks.name, "size": len(env.tasks)},
    }


_REPLAY_CHECKED = ("dialect", "reward", "limits", "backend", "tasks")
"""The env-block fields a replay env must match before any turn is re-executed."""


# --------------------------------------------------------------------------------------------
# Writing and reading
# --------------------------------------------------------------------------------------------


class TrajectoryWriter:
    """Append trajectories to a JSONL file, one complete, flushed line per episode.

    Each line is handed to the operating system as soon as its episode ends, so a crash of the
    process never loses a finished episode. The file is also fsynced at most every
    ``fsync_interval`` seconds and on close (an fsync costs ~10 ms, more than a scripted
    episode), so even a power loss costs at most that last interval; 0 fsyncs every line.

    ``mode="a"`` (default) appends to an existing file; ``"w"`` starts a new one. If an earlier
    crash left a partial last line, appending starts on a fresh line so that the damage stays
    confined to that one line (which the reader reports by number).
    """

    def __init__(self, path: str | Path, *, mode: str = "a", fsync_interval: float = 1.0) -> None:
        if mode not in ("a", "w"):
            raise ConfigError(f"TrajectoryWriter mode must be 'a' or 'w', got {mode!r}")
        self.path = Path(path)
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.existing_lines = 0
        if mode == "a" and self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open("rb") as handle:
                self.existing_lines = sum(1 for _ in handle)
                handle.seek(-1, os.SEEK_END)
                needs_newline = handle.read(1) != b"\n"
        else:
            needs_newline = False
        self._file: IO[str] | None = self.path.open(mode, encoding="utf-8", newline="\n")
        if needs_newline:
            self._file.write("\n")
        self.fsync_interval = float(fsync_interval)
        self._synced = time.monotonic()
        self.written = 0

    def write(self, trajectory: Trajectory) -> None:
        """Append one line. Lone surrogates (no UTF-8 file can hold them) become U+FFFD, as the
        env does to model text at its boundary, so a replay of the line matches bit for bit."""
        if self._file is None:
            raise ConfigError("this TrajectoryWriter is closed")
        self._file.write(safe_text(trajectory.to_line()) + "\n")
        self._file.flush()
        if time.monotonic() - self._synced >= self.fsync_interval:
            self._sync()
        self.written += 1

    def _sync(self) -> None:
        os.fsync(self._file.fileno())  # type: ignore[union-attr]
        self._synced = time.monotonic()

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            self._sync()
            self._file.close()
            self._file = None

    def __enter__(self) -> "TrajectoryWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def iter_trajectories(path: str | Path) -> Iterator[Trajectory]:
    """Trajectories of a JSONL file in file order; a bad line raises DataError naming its number."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no trajectories file at {path}")
    with path.open("r", encoding="utf-8", errors="strict", newline="\n") as handle:
        number = 0
        while True:
            try:
                line = handle.readline()
            except UnicodeDecodeError as err:
                raise DataError(f"{path}:{number + 1}: not UTF-8 text ({err.reason})") from None
            if not line:
                return
            number += 1
            if not line.strip():
                continue
            try:
                yield Trajectory.from_line(line)
            except DataError as err:
                raise DataError(f"{path}:{number}: bad trajectory line: {err}. Fix or delete that line "
                                "(a crash while writing leaves at most one partial line).") from None


def read_trajectories(path: str | Path) -> list[Trajectory]:
    """Every trajectory of a JSONL file (see :func:`iter_trajectories`)."""
    return list(iter_trajectories(path))


# --------------------------------------------------------------------------------------------
# Replay
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mismatch:
    """The first turn of an episode whose replay differs from the recording."""

    episode: int
    task_id: str
    policy: str
    turn: int | None
    """1-based turn number, 0 for the reset, None for the final reward breakdown."""
    diff: str
    """A unified diff, recorded (---) against replayed (+++), or an error message."""

    def describe(self) -> str:
        where = ("reset" if self.turn == 0 else "final reward" if self.turn is None else f"turn {self.turn}")
        return f"episode {self.episode} (task {self.task_id}, policy {self.policy}), {where}"


@dataclass
class ReplayReport:
    """What a replay checked and where it first diverged."""

    episodes: int = 0
    turns: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def summary(self) -> str:
        if self.ok:
            return (f"replay OK: {self.episodes} episodes, {self.turns} turns; every observation, "
                    "hit list and reward is identical")
        return (f"replay FAILED: {len(self.mismatches)} of {self.episodes} episodes differ; first: "
                f"{self.mismatches[0].describe()}")


def _pretty(value: Any, indent: str = "") -> list[str]:
    """A YAML-like, line-per-fact view for diffs: multi-line strings (observations) stay readable."""
    lines: list[str] = []
    items = (sorted(value.items()) if isinstance(value, dict)
             else [("-", v) for v in value] if isinstance(value, list) else None)
    if items is None:
        return [indent + _scalar(value)]
    if not items:
        return [indent + ("{}" if isinstance(value, dict) else "[]")]
    for key, item in items:
        head = f"{indent}{key}:" if key != "-" or isinstance(value, dict) else f"{indent}-"
        if isinstance(item, str) and "\n" in item:
            lines.append(head + " |")
            lines += [f"{indent}  {part}" for part in item.split("\n")]
        elif isinstance(item, (dict, list)) and item:
            lines.append(head)
            lines += _pretty(item, indent + "  ")
        else:
            lines.append(f"{head} {_scalar(item)}")
    return lines


def _scalar(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _diff(recorded: Any, replayed: Any, label: str) -> str:
    lines = difflib.unified_diff(_pretty(recorded), _pretty(replayed), fromfile=f"recorded {label}",
                                 tofile=f"replayed {label}", n=3, lineterm="")
    return "\n".join(lines) + "\n"


def replay(trajectories: str | Path | Iterable[Trajectory], *, env: "str | Callable[[], gym.Env] | None" = None,
           cassette: str | Path | None = None, cache_dir: str | Path | None = None,
           stop_at_first: bool = False, progress: bool = False) -> ReplayReport:
    """Re-execute recorded action texts and check that the env answers exactly as recorded.

    The env is rebuilt from each trajectory's ``env`` block (its id and JSON overrides) unless
    ``env`` (an id or a factory) is given. Searches are answered in *strict* cache replay: a
    ``SearchCache(mode="replay")`` over the cache directory the run used (``cache_dir``
    overrides it), or over a fresh directory loaded from ``cassette``; a search that is not
    cached raises :class:`~mmsearch_gym.search.cache.CacheMiss` in the returned report's first
    mismatch instead of silently asking a live backend. Envs recorded in a replay mode already
    (e.g. ``MMSearch-Replay-v0``) are rebuilt unchanged.

    Compared at reset: the task's question, category, gold answers and image digest. Compared
    per turn: the parsed action, the observation text, the crop box, every hit
    (url, title, snippet, score, source, thumbnail digest), search errors, the step reward and
    the termination flags; at the end, the full reward breakdown. Timings are not compared.
    """
    from mmsearch_gym.evaluate import EnvRecipe

    items = read_trajectories(trajectories) if isinstance(trajectories, (str, Path)) else list(trajectories)
    report = ReplayReport()
    built: dict[str, Any] = {}
    temp_dirs: list[tempfile.TemporaryDirectory[str]] = []
    bar = _progress(len(items), "replay", progress)
    try:
        for traj in items:
            report.episodes += 1
            key = json.dumps([traj.env.get("id"), traj.env.get("kwargs"), traj.env.get("cache")], sort_keys=True)
            if key not in built:
                built[key] = _replay_env(traj, env, cassette, cache_dir, temp_dirs, EnvRecipe)
            game = built[key]
            mismatch = _replay_episode(game, traj, report)
            if mismatch is not None:
                report.mismatches.append(mismatch)
                if stop_at_first:
                    break
            bar.update(1)
    finally:
        bar.close()
        for game in built.values():
            game.close()
        for tmp in temp_dirs:
            tmp.cleanup()
    return report


def _replay_env(traj: Trajectory, env: Any, cassette: str | Path | None, cache_dir: str | Path | None,
                temp_dirs: list[tempfile.TemporaryDirectory[str]], recipe_cls: Any) -> "gym.Env":
    record = traj.env
    overrides: dict[str, Any] = dict(record.get("kwargs") or {})
    source = env if env is not None else record.get("id")
    if source is None:
        raise ConfigError(f"episode {traj.episode} was recorded with a custom env factory (no env id); "
                          "pass the env to replay (--env ID, or env= a factory in Python)")
    if env is None and record.get("opaque_kwargs"):
        raise ConfigError(f"episode {traj.episode} was recorded with object arguments "
                          f"{record['opaque_kwargs']} that a file cannot hold; pass env= a factory that builds it")
    cache = record.get("cache")
    if cassette is not None:
        tmp = tempfile.TemporaryDirectory(prefix="mmsearch-replay-")
        temp_dirs.append(tmp)
        overrides["cache"] = {"mode": "replay", "dir": tmp.name, "cassette": str(Path(cassette).resolve())}
    elif cache is not None and (cache.get("mode") != "replay" or cache_dir is not None):
        directory = Path(cache_dir if cache_dir is not None else cache["dir"]).expanduser()
        if not (directory / "cache.db").is_file():
            raise ConfigError(f"the search cache of the recorded run is not at {directory}; pass the cache "
                              "directory (--cache-dir DIR) or a cassette exported from it (--cassette FILE)")
        overrides["cache"] = {"mode": "replay", "dir": str(directory)}
    elif cache is None and env is None:
        raise ConfigError(f"episode {traj.episode} was recorded without a search cache, so its searches cannot "
                          "be replayed strictly; pass --cassette FILE, or env= an env whose backend is a replay cache")
    if not callable(source) and not isinstance(source, str):
        raise ConfigError(f"env must be an env id or a factory, got {type(source).__name__}")
    if callable(source):
        game = source()
    else:
        game = recipe_cls.create(source, overrides).build()
    live = describe_env(game.unwrapped)
    diffs = [name for name in _REPLAY_CHECKED if live[name] != record.get(name)]
    if diffs:
        details = "".join(_diff({n: record.get(n) for n in diffs}, {n: live[n] for n in diffs}, "env"))
        game.close()
        raise ConfigError(f"the replay env differs from the recorded one in {diffs}; it would not reproduce "
                          f"the run:\n{details}")
    return game


def _replay_episode(game: "gym.Env", traj: Trajectory, report: ReplayReport) -> Mismatch | None:
    from mmsearch_gym.actions import action_to_json
    from mmsearch_gym.search.cache import CacheMiss
    from mmsearch_gym.tasks import image_digest

    def mismatch(turn: int | None, recorded: Any, replayed: Any) -> Mismatch:
        label = "reset" if turn == 0 else "reward breakdown" if turn is None else f"turn {turn}"
        return Mismatch(traj.episode, traj.task_id, traj.policy, turn,
                        _diff(recorded, replayed, f"episode {traj.episode} {label}"))

    base = game.unwrapped
    if traj.task_id not in base.tasks:
        return Mismatch(traj.episode, traj.task_id, traj.policy, 0,
                        f"task {traj.task_id!r} is not in the replay env's task set {base.tasks.name!r}\n")
    _, info = game.reset(seed=traj.seed, options={"task_id": traj.task_id})
    image = base.task.load_image()
    start_rec = {"task_id": traj.task_id, "category": traj.category, "question": traj.question,
                 "answers": list(traj.answers), "image_digest": traj.image.digest}
    start_new = {"task_id": info["task_id"], "category": info["category"], "question": info["question"],
                 "answers": list(base.task.answers), "image_digest": image_digest(image)}
    if start_rec != start_new:
        return mismatch(0, start_rec, start_new)
    for number, turn in enumerate(traj.turns, 1):
        try:
            obs, reward, terminated, truncated, info = game.step(turn.text)
        except CacheMiss as err:
            return Mismatch(traj.episode, traj.task_id, traj.policy, number,
                            f"search not in the replay cache (CacheMiss): {err}\n")
        report.turns += 1
        box = info.get("box")
        replayed = Turn(text=turn.text, action=action_to_json(info["action"]), observation=str(obs["text"]),
                        box=None if box is None else tuple(int(v) for v in box),
                        hits=[hit_record(h) for h in info.get("hits") or []],
                        search_error=info.get("search_error"), reward=float(reward),
                        terminated=bool(terminated), truncated=bool(truncated),
                        counts={"image_searches": int(info["image_searches"]),
                                "text_searches": int(info["text_searches"]),
                                "invalid_turns": int(info["invalid_turns"])})
        if replayed.comparable() != turn.comparable():
            return mismatch(number, turn.comparable(), replayed.comparable())
        if (terminated or truncated) and number < len(traj.turns):
            nxt = traj.turns[number]
            return mismatch(number + 1, {"text": nxt.text, "action": nxt.action},
                            "the replayed episode ended before this turn")
        if number == len(traj.turns):
            if not (terminated or truncated):
                return mismatch(None, "the recorded episode ended here", "the replayed episode goes on")
            breakdown = info["reward_breakdown"].to_json()
            if breakdown != traj.reward.to_json():
                return mismatch(None, traj.reward.to_json(), breakdown)
    return None


# --------------------------------------------------------------------------------------------
# Rescore
# --------------------------------------------------------------------------------------------


def rescore(trajectories: Iterable[Trajectory], spec: "RewardSpec") -> list[RewardBreakdown]:
    """The reward breakdown of each recorded episode under ``spec`` (no env, no search).

    Scoring reads only the recorded assistant turns, the gold answers and the question, through
    :func:`mmsearch_gym.reward.score_episode` (the one source of truth for rewards).
    """
    from mmsearch_gym.reward import score_episode

    return [score_episode([t.text for t in traj.turns], traj.answers, spec, traj.question)
            for traj in trajectories]


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="ep", disable=not enabled, leave=False, dynamic_ncols=True)
