"""Task and TaskSet: the questions an episode is about.

A Task is one question with its image, gold answers (aliases included), category and the scene
annotations (objects with boxes) that the oracle policy and the Grounder use. Its image can be
held as encoded bytes, a file path, or a deterministic render function (the built-in world
renders its scenes on demand so the wheel stays small).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from mmsearch_gym.errors import ConfigError

Box = tuple[int, int, int, int]
"""A pixel box ``(x1, y1, x2, y2)`` in the original image, x2/y2 exclusive."""

SEARCH_FREE = "search_free"


@dataclass(frozen=True)
class SceneObject:
    """One annotated object in a task image.

    ``label`` is what it is (e.g. "flag of France"), ``entity`` the knowledge-base id it
    depicts (e.g. "FR") if any, ``box`` where it is, and ``attributes`` free-form words a
    referring expression may use (position "top left", size rank "largest", colour ...).
    """

    label: str
    box: Box
    entity: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "box": list(self.box), "entity": self.entity,
                "attributes": dict(self.attributes)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SceneObject:
        box = tuple(int(v) for v in data["box"])
        if len(box) != 4:
            raise ConfigError(f"a scene object box needs 4 numbers, got {data['box']!r}")
        return cls(label=str(data["label"]), box=box,  # type: ignore[arg-type]
                   entity=data.get("entity"), attributes=dict(data.get("attributes") or {}))


@dataclass(frozen=True, eq=False)
class Task:
    """One question of a TaskSet.

    Exactly one of ``image_bytes``, ``image_path`` or ``render`` provides the image;
    ``image_url`` is an optional public URL of the same image (live reverse-image APIs such as
    Google Lens search by URL).
    """

    id: str
    question: str
    answers: tuple[str, ...]
    category: str = "unknown"
    split: str = "test"
    objects: tuple[SceneObject, ...] = ()
    image_bytes: bytes | None = None
    image_path: str | None = None
    image_url: str | None = None
    render: Callable[[], Image.Image] | None = field(default=None, repr=False)
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.answers:
            raise ConfigError(f"task {self.id!r} has no gold answer")
        if (self.image_bytes, self.image_path, self.render) == (None, None, None):
            raise ConfigError(f"task {self.id!r} has no image (image_bytes, image_path or render)")

    @property
    def search_required(self) -> bool:
        return self.category != SEARCH_FREE

    def load_image(self) -> Image.Image:
        """The task image as an RGB PIL image (a fresh object each call)."""
        if self.render is not None:
            image = self.render()
        elif self.image_bytes is not None:
            image = Image.open(io.BytesIO(self.image_bytes))
        else:
            path = Path(self.image_path)  # type: ignore[arg-type]
            if not path.exists():
                raise ConfigError(f"task {self.id!r}: image file {path} does not exist")
            image = Image.open(path)
        return image.convert("RGB")


def image_digest(image: Image.Image) -> str:
    """Content hash of an image's pixels (mode, size and RGB bytes), independent of encoding."""
    rgb = image.convert("RGB")
    h = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()


class TaskSet(Sequence[Task]):
    """An ordered, id-addressable collection of tasks."""

    def __init__(self, tasks: Iterable[Task], name: str = "tasks") -> None:
        self._tasks: list[Task] = list(tasks)
        self.name = name
        self._by_id: dict[str, int] = {}
        for i, task in enumerate(self._tasks):
            if task.id in self._by_id:
                raise ConfigError(f"task set {name!r} has the id {task.id!r} twice")
            self._by_id[task.id] = i
        if not self._tasks:
            raise ConfigError(f"task set {name!r} is empty")

    def __len__(self) -> int:
        return len(self._tasks)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return TaskSet(self._tasks[index], name=self.name)
        return self._tasks[index]

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks)

    def __repr__(self) -> str:
        return f"TaskSet({self.name!r}, {len(self)} tasks)"

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._by_id

    def by_id(self, task_id: str) -> Task:
        try:
            return self._tasks[self._by_id[task_id]]
        except KeyError:
            raise ConfigError(f"no task with id {task_id!r} in task set {self.name!r}") from None

    def filter(self, predicate: Callable[[Task], bool], name: str | None = None) -> TaskSet:
        return TaskSet([t for t in self._tasks if predicate(t)], name=name or self.name)

    @property
    def categories(self) -> list[str]:
        return sorted({t.category for t in self._tasks})
