"""Training speed-ups for deterministic worlds: search answers remembered in memory, task
images rendered once."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from mmsearch_gym.lru import LRU
from mmsearch_gym.search.base import Hit, ImageQuery, SearchBackend
from mmsearch_gym.tasks import TaskSet


@lru_cache(maxsize=4096)
def _decoded_thumbnail(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


@dataclass(frozen=True)
class _MemoHit(Hit):
    """A Hit whose thumbnail is decoded once per process (the env decodes every thumbnail of
    every image search into the chat; in training the same few hundred recur)."""

    def thumbnail_image(self) -> Image.Image | None:
        return None if self.thumbnail is None else _decoded_thumbnail(self.thumbnail).copy()


class MemoBackend:
    """Remembers a deterministic backend's answers in memory for one training run.

    Training asks the same searches of the same tasks over and over; the world's engine
    always gives the same answer, so computing it once is enough (and each thumbnail is
    decoded once). Not a :class:`SearchCache` (nothing is written anywhere), and only for
    backends whose results never change.
    """

    def __init__(self, inner: SearchBackend, max_entries: int = 200_000) -> None:
        self.inner = inner
        self.name = inner.name
        self.version = inner.version
        self._memo: LRU[tuple[Any, ...], list[Hit]] = LRU(max_entries)

    def cache_params(self) -> dict[str, Any]:
        params = getattr(self.inner, "cache_params", None)
        return params() if callable(params) else {}

    def _get(self, key: tuple[Any, ...], compute: Callable[[], list[Hit]]) -> list[Hit]:
        hits = self._memo.get_or_make(key, lambda: [_MemoHit(**{f.name: getattr(h, f.name)
                                                                 for f in dataclasses.fields(Hit)})
                                                    for h in compute()])
        return list(hits)

    def text_search(self, query: str, k: int) -> list[Hit]:
        return self._get(("text", query, k), lambda: self.inner.text_search(query, k))

    def image_search(self, image: ImageQuery, k: int) -> list[Hit]:
        return self._get(("image", image.digest, image.box, k), lambda: self.inner.image_search(image, k))


class _FrozenImage:
    """A task's ``render`` that hands out copies of pixels rendered once."""

    def __init__(self, image: Image.Image) -> None:
        self.image = image

    def __call__(self) -> Image.Image:
        return self.image.copy()


def preload_images(tasks: TaskSet, *, progress: bool = True) -> TaskSet:
    """The same tasks with their images rendered once and kept in memory.

    The world renders scenes on demand (tens of milliseconds each) and an env keeps only a
    few recent ones; training visits thousands of tasks many times, so rendering each once
    makes resets cheap. Same pixels, same ids, same everything else.
    """
    preloaded = [dataclasses.replace(task, render=_FrozenImage(task.load_image()))
                 for task in tqdm(tasks, desc="render", unit="task", disable=not progress)]
    return TaskSet(preloaded, name=tasks.name)
