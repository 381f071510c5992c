"""Trajectories: everything one episode did, as one JSON line, enough to replay it bit for bit.

``mmsearch-gym eval --trajectories run.jsonl`` writes one line per finished episode;
:func:`mmsearch_gym.replay.replay` re-executes the recorded action texts in strict cache replay and
checks that every observation, hit list and reward comes out identical; ``rescore`` recomputes
the rewards of the recorded turns under another :class:`~mmsearch_gym.reward.RewardSpec`
without an env or a search; ``render`` turns the file into an HTML report.

Format (version 1): UTF-8, one JSON object per line, no pickle anywhere; every field is
described by the JSON Schema ``docs/trajectory-schema.json`` (the tests check records against
it). An episode records its task (id, question, gold answers, image digest), the policy, the
``env`` block (registered id, JSON overrides, dialect, reward spec, limits, backend, cache for
reference only: replay never reads a path or mode from the file), every turn (raw text,
parsed action, observation, box, hits, search error, step reward, flags, counters, timings) and
the final reward breakdown.

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
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from PIL import Image

from mmsearch_gym.actions import action_from_json, action_to_json, safe_text
from mmsearch_gym.env_factory import describe_env  # noqa: F401  (re-exported: the env block of a record)
from mmsearch_gym.errors import ConfigError, DataError, MMSearchError
from mmsearch_gym.reward import RewardBreakdown
from mmsearch_gym.runner import EpisodeEnd, StepEvent
from mmsearch_gym.validation import MAX_INT, MAX_LINE_CHARS, SHA256_HEX, Fields, at_line, check_tree, loads

if TYPE_CHECKING:
    from mmsearch_gym.reward import RewardSpec
    from mmsearch_gym.search.base import Hit
    from mmsearch_gym.tasks import TaskSet

__all__ = [
    "SCHEMA", "SCHEMA_VERSION", "HitRecord", "ImageRecord", "Trajectory",
    "TrajectoryRecorder", "TrajectoryWriter", "Turn", "describe_env", "encode_thumbnail", "hit_record",
    "iter_trajectories", "read_trajectories", "rescore", "turn_from_step",
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
    def from_json(cls, data: Mapping[str, Any], where: str = "hit") -> HitRecord:
        f = Fields(data, where)
        thumb = f.object("thumbnail", default=None, null=True)
        digest = raw = None
        if thumb is not None:
            digest = thumb.string("digest", pattern=SHA256_HEX)
            raw = thumb.base64_bytes("data", default=None, null=True)
        return cls(url=f.string("url"), title=f.string("title"), snippet=f.string("snippet", default=""),
                   score=f.number("score"), source=f.string("source", default=""),
                   thumbnail_digest=digest, thumbnail=raw)


def hit_record(hit: Hit, *, embed: bool = False) -> HitRecord:
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
    def from_json(cls, data: Mapping[str, Any], where: str = "image") -> ImageRecord:
        f = Fields(data, where)
        thumb = f.object("thumbnail", default=None, null=True)
        raw = size = None
        mime = "image/jpeg"
        if thumb is not None:
            if thumb.data.get("mime") not in THUMBNAIL_MIMES:
                raise DataError(f"the task-image thumbnail must be one of {THUMBNAIL_MIMES}, "
                                f"got {str(thumb.data.get('mime'))[:80]!r}")
            mime = thumb.string("mime")
            raw = thumb.base64_bytes("data")
            size = (thumb.integer("width", lo=1, hi=MAX_IMAGE_SIDE), thumb.integer("height", lo=1, hi=MAX_IMAGE_SIDE))
        return cls(digest=f.string("digest", pattern=SHA256_HEX), width=f.integer("width", lo=1, hi=MAX_IMAGE_SIDE),
                   height=f.integer("height", lo=1, hi=MAX_IMAGE_SIDE), thumbnail=raw, thumbnail_size=size,
                   thumbnail_mime=mime)


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
    def from_json(cls, data: Mapping[str, Any], where: str = "turn") -> Turn:
        f = Fields(data, where)
        action = f.object("action").data
        try:
            action_from_json(dict(action))
        except (MMSearchError, KeyError, TypeError, ValueError, AttributeError, OverflowError) as err:
            raise DataError(f"turn action {str(action)[:200]} is not a recorded action: {str(err)[:200]}") from None
        box = data.get("box")
        if box is not None:
            if not isinstance(box, list) or len(box) != 4:
                raise DataError(f"{f.name('box')} must be null or four integers, got {str(box)[:80]}")
            corners = Fields({str(i): v for i, v in enumerate(box)}, f.name("box"))
            box = tuple(corners.integer(str(i), hi=MAX_IMAGE_SIDE) for i in range(4))
        timing = f.object("timing", default=None, null=True) or Fields({}, f.name("timing"))
        counts = f.object("counts", default=None) or Fields({}, f.name("counts"))
        hits = f.array("hits", default=[])
        return cls(text=f.string("text"), action=dict(action), observation=f.string("observation"), box=box,
                   hits=[HitRecord.from_json(h, f"{f.name('hits')}[{i}]") for i, h in enumerate(hits)],
                   search_error=f.string("search_error", default=None, null=True),
                   reward=f.number("reward"), terminated=f.boolean("terminated"), truncated=f.boolean("truncated"),
                   counts={k: counts.integer(k) for k in counts.data},
                   policy_s=timing.number("policy_s", default=0.0, lo=0.0),
                   env_s=timing.number("env_s", default=0.0, lo=0.0))

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
    def from_json(cls, data: Any) -> Trajectory:
        """Check and read one parsed line (or a dict built in Python); a problem is a DataError naming the field."""
        if isinstance(data, dict):
            check_tree(data, "the trajectory")  # JSON types, depth, finite numbers, strings
        return cls._from_checked(data)

    @classmethod
    def _from_checked(cls, data: Any) -> Trajectory:
        """``from_json`` for a value that already passed check_tree (what validation.loads returns)."""
        if not isinstance(data, dict):
            raise DataError(f"a trajectory line must be a JSON object, got {type(data).__name__}")
        if data.get("schema") != SCHEMA:
            raise DataError(f"not an mmsearch_gym trajectory (schema {str(data.get('schema'))[:80]!r}, "
                            f"expected {SCHEMA!r})")
        version = data.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise DataError(f"trajectory version must be a positive integer, got {str(version)[:40]}")
        if version > SCHEMA_VERSION:
            raise DataError(f"trajectory version {version} was written by a newer mmsearch_gym "
                            f"(this one reads up to {SCHEMA_VERSION}); upgrade mmsearch-gym")
        f = Fields(data, "")
        turns = [Turn.from_json(t, f"turns[{i}]") for i, t in enumerate(f.array("turns"))]
        if not turns:
            raise DataError("a trajectory needs at least one turn")
        answers = f.array("answers")
        if not answers:
            raise DataError("answers must hold at least one gold answer")
        timing = f.object("timing", default=None, null=True) or Fields({}, "timing")
        return cls(
            episode=f.integer("episode"), task_id=f.string("task_id"), category=f.string("category"),
            question=f.string("question"),
            answers=[Fields({"answer": a}, f"answers[{i}]").string("answer") for i, a in enumerate(answers)],
            seed=f.integer("seed", default=None, null=True, lo=-MAX_INT),
            policy=f.string("policy"), env=dict(_checked_env(f.object("env")).data),
            image=ImageRecord.from_json(f.object("image").data), turns=turns,
            reward=_breakdown(f.object("reward")), terminated=f.boolean("terminated"),
            truncated=f.boolean("truncated"), task_index=f.integer("task_index", default=None, null=True),
            reset_s=timing.number("reset_s", default=0.0, lo=0.0), version=version,
        )

    @classmethod
    def from_line(cls, line: str | bytes) -> Trajectory:
        """Parse one JSONL line within the bounds of :func:`mmsearch_gym.validation.loads`."""
        return cls._from_checked(loads(line))


MAX_IMAGE_SIDE = 1_000_000
"""Largest image side or box coordinate a trajectory may hold (pixels)."""


def _breakdown(f: Fields) -> RewardBreakdown:
    """The episode's RewardBreakdown, every field typed (rescore and the tables read them)."""
    counts = {k: f.integer(k) for k in ("searches", "image_searches", "text_searches")}
    numbers = {k: f.number(k) for k in ("reward", "score", "raw_score", "format", "penalty")}
    return RewardBreakdown(**numbers, **counts, answer=f.string("answer", null=True))


def _checked_env(f: Fields) -> Fields:
    """Type-check the ``env`` block's known fields (render, rescore and replay read them).

    Absent fields are allowed (a custom recorder may write less); present ones must have the
    documented types, so a reader never meets a string where a count belongs.
    """
    f.string("id", default=None, null=True)
    f.object("kwargs", default=None)
    for i, name in enumerate(f.array("opaque_kwargs", default=[])):
        Fields({"name": name}, f"env.opaque_kwargs[{i}]").string("name")
    f.string("dialect", default=None, max_chars=200)
    reward = f.object("reward", default=None)
    if reward is not None:
        for key in ("name", "scorer", "dialect"):
            reward.string(key, default=None, max_chars=200)
        for key in ("format_weight", "search_penalty"):
            reward.number(key, default=None, lo=0.0, hi=1.0)
        reward.boolean("penalty_per_search", default=None)
    limits = f.object("limits", default=None)
    if limits is not None:
        for key in ("max_turns", "top_k", "max_text_length"):
            limits.integer(key, default=None, lo=1)
        for key in ("image_search_budget", "text_search_budget", "min_crop_side"):
            limits.integer(key, default=None)
        limits.string("on_invalid", default=None, max_chars=200)
        size = limits.array("image_size", default=[1, 1], max_items=2)
        for i, side in enumerate(size):
            Fields({"side": side}, f"env.limits.image_size[{i}]").integer("side", lo=1, hi=MAX_IMAGE_SIDE)
    backend = f.object("backend", default=None)
    if backend is not None:
        backend.string("name", default=None, max_chars=1000)
        backend.string("version", default=None, max_chars=1000)
    cache = f.object("cache", default=None, null=True)
    if cache is not None:
        for key in ("mode", "dir", "name", "version"):
            cache.string(key, default=None, max_chars=10_000)
        cache.object("params", default=None)
    tasks = f.object("tasks", default=None)
    if tasks is not None:
        tasks.string("name", default=None, max_chars=10_000)
        tasks.integer("size", default=None, lo=1)
    return f


# --------------------------------------------------------------------------------------------
# Recording runner events
# --------------------------------------------------------------------------------------------


def turn_from_step(text: str, observation: Mapping[str, Any], reward: float, terminated: bool, truncated: bool,
                   info: Mapping[str, Any], *, policy_s: float = 0.0, env_s: float = 0.0,
                   embed: bool = False) -> Turn:
    """The Turn record of one ``env.step(text)`` that returned ``(observation, reward, ..., info)``."""
    box = info.get("box")
    return Turn(text=text, action=action_to_json(info["action"]), observation=str(observation["text"]),
                box=None if box is None else (int(box[0]), int(box[1]), int(box[2]), int(box[3])),
                hits=[hit_record(h, embed=embed) for h in info.get("hits") or []],
                search_error=info.get("search_error"), reward=float(reward), terminated=bool(terminated),
                truncated=bool(truncated),
                counts={"image_searches": int(info["image_searches"]), "text_searches": int(info["text_searches"]),
                        "invalid_turns": int(info["invalid_turns"])},
                policy_s=policy_s, env_s=env_s)


class TrajectoryRecorder:
    """Turns :mod:`mmsearch_gym.runner` events into Trajectory records, one per ended episode.

    Args:
        tasks: the env's task set (for the gold answers).
        policy: the policy's label.
        env: the ``env`` block (:meth:`mmsearch_gym.env_factory.EnvFactory.describe`).
        embed_images: keep a thumbnail of the task image and the result thumbnails.
    """

    def __init__(self, *, tasks: TaskSet, policy: str, env: Mapping[str, Any], embed_images: bool = False) -> None:
        self.tasks = tasks
        self.policy = policy
        self.env = dict(env)
        self.embed_images = embed_images
        self._turns: dict[int, list[Turn]] = {}

    def record(self, event: StepEvent | EpisodeEnd) -> Trajectory | None:
        """Take one event; returns the finished Trajectory on an episode's end, else None."""
        if isinstance(event, EpisodeEnd):
            return self._finish(event)
        self._turns.setdefault(event.episode, []).append(
            turn_from_step(event.text, event.observation, event.reward, event.terminated, event.truncated,
                           event.info, policy_s=event.policy_s, env_s=event.env_s, embed=self.embed_images))
        return None

    def _finish(self, event: EpisodeEnd) -> Trajectory:
        from mmsearch_gym.tasks import image_digest

        turns = self._turns.pop(event.episode)
        image = event.view.image
        thumb = size = None
        if self.embed_images:
            thumb, size = encode_thumbnail(image)
        record = ImageRecord(digest=image_digest(image), width=image.width, height=image.height, thumbnail=thumb,
                             thumbnail_size=size)
        task = self.tasks[event.task_index]
        return Trajectory(episode=event.episode, task_id=event.view.task_id, category=str(event.info["category"]),
                          question=event.view.question, answers=list(task.answers), seed=event.seed,
                          policy=self.policy, env=self.env, image=record, turns=turns,
                          reward=event.info["reward_breakdown"], terminated=turns[-1].terminated,
                          truncated=turns[-1].truncated, task_index=event.task_index, reset_s=event.reset_s)


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

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def iter_trajectories(path: str | Path) -> Iterator[Trajectory]:
    """Trajectories of a JSONL file in file order; a bad line raises ``DataError("FILE line N: ...")``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no trajectories file at {path}")
    with path.open("rb") as handle:
        number = 0
        while True:
            raw = handle.readline(MAX_LINE_CHARS + 1)
            if not raw:
                return
            number += 1
            if not raw.strip():
                continue
            try:
                if len(raw) > MAX_LINE_CHARS:
                    raise DataError(f"the line is longer than {MAX_LINE_CHARS} bytes")
                trajectory = Trajectory.from_line(raw)
            except DataError as err:
                raise at_line(path, number, f"bad trajectory line: {err}. Fix or delete that line "
                                            "(a crash while writing leaves at most one partial line).") from None
            yield trajectory


def read_trajectories(path: str | Path) -> list[Trajectory]:
    """Every trajectory of a JSONL file (see :func:`iter_trajectories`)."""
    return list(iter_trajectories(path))


# --------------------------------------------------------------------------------------------
# Rescore
# --------------------------------------------------------------------------------------------


def rescore(trajectories: Iterable[Trajectory], spec: RewardSpec) -> list[RewardBreakdown]:
    """The reward breakdown of each recorded episode under ``spec`` (no env, no search).

    Scoring reads only the recorded assistant turns, the gold answers and the question, through
    :func:`mmsearch_gym.reward.score_episode` (the one source of truth for rewards).
    """
    from mmsearch_gym.reward import score_episode

    return [score_episode([t.text for t in traj.turns], traj.answers, spec, traj.question)
            for traj in trajectories]
