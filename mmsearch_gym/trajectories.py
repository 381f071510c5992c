"""Trajectories: everything one episode did, as one JSON line, enough to replay it bit for bit.

``mmsearch-gym eval --trajectories run.jsonl`` writes one line per finished episode;
:func:`mmsearch_gym.replay.replay` re-executes the recorded action texts in strict cache replay and
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
             "cache": {"mode", "dir", "name", "version", "params"} | null  (for reference;
                      replay never reads a path or mode from the file),
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

from mmsearch_gym.actions import action_from_json, action_to_json
from mmsearch_gym.env_factory import describe_env  # noqa: F401  (re-exported: the env block of a record)
from mmsearch_gym.errors import ConfigError, DataError
from mmsearch_gym.reward import RewardBreakdown
from mmsearch_gym.runner import EpisodeEnd, StepEvent

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
        if self._file is None:
            raise ConfigError("this TrajectoryWriter is closed")
        self._file.write(trajectory.to_line() + "\n")
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
