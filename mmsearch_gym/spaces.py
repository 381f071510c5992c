"""UnicodeText: a Gymnasium Text space that holds real natural language.

``gymnasium.spaces.Text`` only contains strings over its character set (ASCII letters and digits
by default), so questions, search results and model output would fall outside it. This subclass
contains *any* ``str`` up to ``max_length`` characters; it samples from a wide, tag-heavy
character set so that ``check_env`` and fuzzing exercise the parser. Being a ``Text`` subclass,
Gymnasium's vector utilities (``batch_space``, ``iterate``, ``concatenate``) handle it as text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces

_SAMPLE_CHARSET = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    " <>/,.-_:;'\"()[]{}!?\n"
    "éüßçñøåœЖжДдΩπ中文日本語한국어🙂"
)
_TAG_SNIPPETS = ("<reason>", "</reason>", "<answer>", "</answer>", "<text_search>", "</text_search>",
                 "<search><img></search>", "<crop>", "</crop>", "<img_search>", "</img_search>",
                 "<tool_call>", "</tool_call>")


class UnicodeText(spaces.Text):
    """Any Python ``str`` of ``min_length`` to ``max_length`` characters."""

    def __init__(self, max_length: int, *, min_length: int = 0,
                 seed: int | np.random.Generator | None = None) -> None:
        super().__init__(max_length, min_length=min_length, charset=_SAMPLE_CHARSET, seed=seed)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        """Random text mixing characters and whole dialect tags (tag soup for fuzzing)."""
        if mask is not None or probability is not None:
            return super().sample(mask=mask, probability=probability)
        rng = self.np_random
        limit = min(self.max_length, 256)
        length = int(rng.integers(self.min_length, max(self.min_length, limit) + 1))
        pieces: list[str] = []
        size = 0
        chars = self.character_list
        while size < length:
            if rng.random() < 0.15:
                piece = _TAG_SNIPPETS[int(rng.integers(len(_TAG_SNIPPETS)))]
            else:
                piece = chars[int(rng.integers(len(chars)))]
            piece = piece[: length - size]
            pieces.append(piece)
            size += len(piece)
        return "".join(pieces)

    def __repr__(self) -> str:
        return f"UnicodeText({self.min_length}, {self.max_length})"

    def __eq__(self, other: Any) -> bool:
        return (isinstance(other, UnicodeText) and self.min_length == other.min_length
                and self.max_length == other.max_length)


# ---- AsyncVectorEnv shared memory -------------------------------------------------------------
# Gymnasium's shared-memory functions for Text map characters through the space's charset, which
# would silently turn real text into garbage. UnicodeText stores each string as its length
# followed by its code points (UTF-32), so any unicode round-trips exactly.

from gymnasium.vector.utils.shared_memory import create_shared_memory, read_from_shared_memory, write_to_shared_memory  # noqa: E402


@create_shared_memory.register(UnicodeText)
def _create_unicode_shared_memory(space: UnicodeText, n: int = 1, ctx: Any = None) -> Any:
    import multiprocessing

    return (ctx or multiprocessing).Array(np.dtype(np.int32).char, n * (space.max_length + 1))


class SharedTextView(Sequence):
    """The batch of texts in shared memory, decoded on access.

    ``AsyncVectorEnv`` reads its shared memory once and then relies on the result being a live
    view (as numpy arrays are); a tuple of strings would be a stale snapshot. ``deepcopy`` (what
    the vector env does with ``copy=True``) returns a plain tuple.
    """

    def __init__(self, data: np.ndarray) -> None:
        self._data = data

    def __len__(self) -> int:
        return self._data.shape[0]

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(len(self))))
        row = self._data[index]
        return row[1:1 + int(row[0])].tobytes().decode("utf-32-le", "surrogatepass")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    def __deepcopy__(self, memo: dict) -> tuple[str, ...]:
        return tuple(self)

    def __repr__(self) -> str:
        return f"SharedTextView({tuple(self)!r})"


@read_from_shared_memory.register(UnicodeText)
def _read_unicode_from_shared_memory(space: UnicodeText, shared_memory: Any, n: int = 1) -> SharedTextView:
    return SharedTextView(np.frombuffer(shared_memory.get_obj(), dtype=np.int32).reshape((n, space.max_length + 1)))


@write_to_shared_memory.register(UnicodeText)
def _write_unicode_to_shared_memory(space: UnicodeText, index: int, values: str, shared_memory: Any) -> None:
    size = space.max_length + 1
    codes = np.frombuffer(values.encode("utf-32-le", "surrogatepass"), dtype=np.int32)
    destination = np.frombuffer(shared_memory.get_obj(), dtype=np.int32)
    destination[index * size] = len(codes)
    destination[index * size + 1:index * size + 1 + len(codes)] = codes
